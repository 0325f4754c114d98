"""Checks on requests, shared by the chat page's routes and the /v1 API, and their one way to the model.

Each failed check raises `BadInput` with a status and a sentence that says what to
change; the app turns it into a JSON error (or a page) without touching stored data.
"""

from flask import request

import settings
from engine import EngineBusy, SamplingParams
from memory import MessageTooLong


class BadInput(Exception):
    """A client error: HTTP status, a sentence for the user, and a machine-readable code."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def require_ready(bot) -> None:
    """A 503 that says whether the model is still loading or failed to load."""
    if bot.ready:
        return
    if bot.error:
        raise BadInput(503, f"The model {bot.model_id} could not be loaded ({bot.error}); check WEBBOT_MODEL "
                            "and the server log, then restart the server.", "model_failed")
    raise BadInput(503, "The model is still loading; try again in a moment.", "model_loading", {"Retry-After": "5"})


def start_reply(bot, history: list[dict], message: str, params: SamplingParams, system_prompt: str | None,
                too_long: tuple[str, str]) -> tuple:
    """Plan the prompt and queue the reply: the page's and the API's one way in to the model.

    Returns (plan, stream). A model not ready or a full queue is a 503; a message that
    alone overflows the context is a 413 whose sentence ends with `too_long`'s advice.
    """
    require_ready(bot)
    try:
        plan = bot.plan(history, message, system_prompt)
    except MessageTooLong as exc:
        advice, code = too_long
        raise BadInput(413, f"{exc.sentence()}. {advice}", code) from None
    try:
        return plan, bot.generate(plan, params)
    except EngineBusy:
        raise BadInput(503, "The server is busy with other replies; try again in a few seconds.", "busy",
                       {"Retry-After": "10"}) from None


def json_body() -> dict:
    """The request's JSON object, or a 415/400 that says how to send one."""
    if not request.is_json:
        raise BadInput(415, "Send the body as JSON with the header Content-Type: application/json.",
                       "unsupported_media_type")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadInput(400, "The body is not a JSON object; send {\"content\": \"your message\"} or similar.",
                       "invalid_json")
    return body


def message_text(value, field: str = "content") -> str:
    """A non-empty message of at most MAX_MESSAGE_CHARS characters."""
    if not isinstance(value, str):
        raise BadInput(400, f"'{field}' must be a string with your message.", "invalid_message")
    if not value.strip():
        raise BadInput(400, "The message is empty; type something to send.", "empty_message")
    if len(value) > settings.MAX_MESSAGE_CHARS:
        raise BadInput(413, f"The message is {len(value)} characters; the limit is {settings.MAX_MESSAGE_CHARS}. "
                            "Shorten it or split it into several messages.", "message_too_long")
    return value


def _number(body: dict, name: str, low: float, high: float, default, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "a whole number" if integer else "a number"
        raise BadInput(400, f"'{name}' must be {what} from {low} to {high}.", f"invalid_{name}")
    return value


def sampling_params(body: dict, default_temperature: float = 0.7) -> SamplingParams:
    """Sampling settings from a request body (OpenAI names), each checked for range."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", 1, 1_000_000, 0, integer=True)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadInput(400, "'stop' must be a string or a list of at most 4 non-empty strings.", "invalid_stop")
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 0, 2, default_temperature)),
        top_p=float(_number(body, "top_p", 0.01, 1, 1.0)),
        stop=stop,
    )
