"""Checks on what a request sends, shared by the chat page's routes and the /v1 API.

Each failed check raises `ApiError` with a status and a sentence that says what to change,
before anything is stored. The ranges come from `webbot.config`, where the chat settings,
the OpenAPI description and the page read them too.
"""

import json

from flask import current_app, request

from webbot import config
from webbot.model.stream import SamplingParams
from webbot.storage.text import unstorable
from webbot.web.errors import ApiError

INVALID_JSON = object()  # what parse_json gives for text that is not JSON


def text_field(value: str, what: str) -> str:
    """`value` unchanged, or a 400 when it holds a character no database can keep (NUL, an unpaired surrogate)."""
    found = unstorable(value)
    if found:
        raise ApiError(400, f"{what} holds {found}, which cannot be stored; remove it and send again.",
                       "invalid_characters")
    return value


def parse_json(data: bytes | str):
    """JSON text as Python values, INVALID_JSON for text that is not JSON; a 400 for JSON nested too deeply."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ApiError(400, "The JSON is nested too deeply to read; send a flat object such as "
                            "{\"content\": \"your message\"}.", "invalid_json") from None
    except ValueError:
        return INVALID_JSON


def json_body() -> dict:
    """The request's JSON object, or a 415/400 that says how to send one."""
    if not request.is_json:
        raise ApiError(415, "Send the body as JSON with the header Content-Type: application/json.",
                       "unsupported_media_type")
    body = parse_json(request.get_data(cache=True))
    if not isinstance(body, dict):
        raise ApiError(400, "The body is not a JSON object; send {\"content\": \"your message\"} or similar.",
                       "invalid_json")
    return body


def message_text(value, field: str = "content") -> str:
    """A non-empty message of at most WEBBOT_MAX_MESSAGE_CHARS characters."""
    if not isinstance(value, str):
        raise ApiError(400, f"'{field}' must be a string with your message.", "invalid_message")
    if not value.strip():
        raise ApiError(400, "The message is empty; type something to send.", "empty_message")
    text_field(value, "The message")
    most = current_app.config["WEBBOT_MAX_MESSAGE_CHARS"]
    if len(value) > most:
        raise ApiError(413, f"The message is {len(value)} characters; the limit is {most}. "
                            "Shorten it or split it into several messages.", "message_too_long")
    return value


def number(body: dict, name: str, allowed: tuple, default, integer: bool = False):
    """`body[name]` when it is a number within `allowed` (low, high), `default` when absent; else a 400."""
    value = body.get(name)
    if value is None:
        return default
    low, high = allowed
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "a whole number" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {what} from {low:g} to {high:g}.", f"invalid_{name}")
    return value


def sampling_params(body: dict, default_temperature: float = config.PAGE_TEMPERATURE) -> SamplingParams:
    """Sampling settings from a request body (OpenAI names), each checked against the ranges in webbot.config."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = number({"max_tokens": max_tokens}, "max_tokens", config.REPLY_TOKENS_RANGE, 0, integer=True)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    most = config.MAX_STOP_STRINGS
    if not isinstance(stop, list) or len(stop) > most or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a string or a list of at most {most} non-empty strings.",
                       "invalid_stop")
    for text in stop:
        text_field(text, "'stop'")
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=float(number(body, "temperature", config.TEMPERATURE_RANGE, default_temperature)),
        top_p=float(number(body, "top_p", config.TOP_P_RANGE, 1.0)),
        stop=stop,
    )
