"""Checks on requests, shared by the chat page's routes and the /v1 API, and their one way to the model.

Each failed check raises `BadInput` with a status and a sentence that says what to
change; the app turns it into a JSON error (or a page) without touching stored data.
"""

import re

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from speech import SpeechBusy, SpeechUnavailable
from webbot.model.engine import EngineBusy, SamplingParams
from webbot.model.memory import MessageTooLong
from webbot.voice.uploads import AudioError

RESPONSE_FORMATS = ("json", "text", "verbose_json")
FORM_OVERHEAD_BYTES = 65_536  # an upload's form fields and multipart framing beside the file
# NUL cannot be stored in PostgreSQL, and an unpaired UTF-16 surrogate (JSON's "\ud800") cannot be encoded at all.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


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
                too_long: tuple[str, str], owner: str, partial_reply: str | None = None) -> tuple:
    """Plan the prompt and queue the reply for `owner`: the page's and the API's one way in to the model.

    Returns (plan, stream). A model not ready or a full queue is a 503; a message that
    alone overflows the context is a 413 whose sentence ends with `too_long`'s advice.
    """
    require_ready(bot)
    try:
        plan = bot.plan(history, message, system_prompt, partial_reply, owner)
    except MessageTooLong as exc:
        advice, code = too_long
        raise BadInput(413, f"{exc.sentence()}. {advice}", code) from None
    try:
        return plan, bot.generate(plan, params, owner)
    except EngineBusy:
        raise BadInput(503, "The server is busy with other replies; try again in a few seconds.", "busy",
                       {"Retry-After": "10"}) from None


def text_field(value: str, what: str) -> str:
    """`value` unchanged, or a 400 when it holds a character no database can keep (NUL, an unpaired surrogate)."""
    found = UNSTORABLE.search(value)
    if found:
        char = found.group()
        name = "a NUL character (\\u0000)" if char == "\x00" else f"an unpaired surrogate (\\u{ord(char):04x})"
        raise BadInput(400, f"{what} holds {name}, which cannot be stored; remove it and send again.",
                       "invalid_characters")
    return value


def parse_json(data: bytes | str):
    """JSON text as Python values; a 400 for JSON that is not valid or is nested too deeply to read."""
    import json

    try:
        return json.loads(data)
    except RecursionError:
        raise BadInput(400, "The JSON is nested too deeply to read; send a flat object such as "
                            "{\"content\": \"your message\"}.", "invalid_json") from None
    except ValueError:
        return _INVALID


_INVALID = object()


def json_body() -> dict:
    """The request's JSON object, or a 415/400 that says how to send one."""
    if not request.is_json:
        raise BadInput(415, "Send the body as JSON with the header Content-Type: application/json.",
                       "unsupported_media_type")
    body = parse_json(request.get_data(cache=True))
    if not isinstance(body, dict):
        raise BadInput(400, "The body is not a JSON object; send {\"content\": \"your message\"} or similar.",
                       "invalid_json")
    return body


def message_text(value, field: str = "content") -> str:
    """A non-empty message of at most WEBBOT_MAX_MESSAGE_CHARS characters."""
    if not isinstance(value, str):
        raise BadInput(400, f"'{field}' must be a string with your message.", "invalid_message")
    if not value.strip():
        raise BadInput(400, "The message is empty; type something to send.", "empty_message")
    text_field(value, "The message")
    most = current_app.config["WEBBOT_MAX_MESSAGE_CHARS"]
    if len(value) > most:
        raise BadInput(413, f"The message is {len(value)} characters; the limit is {most}. "
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
    for text in stop:
        text_field(text, "'stop'")
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 0, 2, default_temperature)),
        top_p=float(_number(body, "top_p", 0.01, 1, 1.0)),
        stop=stop,
    )


def _language(value: str | None) -> str | None:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if not value:
        return None
    value = value.strip().lower()
    code = value if value in LANGUAGES else TO_LANGUAGE_CODE.get(value)
    if code is None:
        raise BadInput(400, f"'language' {value!r} is not a language Whisper knows; give an ISO-639-1 code "
                            "such as en, fr or de, or leave it out to detect it.", "invalid_language")
    return code


def transcribe_upload(transcriber, max_bytes: int) -> tuple:
    """The one way from an uploaded clip to a transcript, for the page and for /v1/audio/transcriptions.

    Reads the multipart `file` (and `response_format`, `language`), enforces the upload
    size, and maps every failure to a 4xx or 503 with a sentence. Returns (transcript,
    response_format).
    """
    request.max_content_length = max_bytes + FORM_OVERHEAD_BYTES
    too_large = BadInput(413, f"The recording is larger than {max_bytes / 1_000_000:g} MB; send a shorter clip.",
                         "audio_too_large")
    if request.mimetype != "multipart/form-data":
        raise BadInput(415, "Send the audio as multipart/form-data with the clip in a field named 'file'.",
                       "unsupported_media_type")
    try:
        upload, form = request.files.get("file"), request.form
    except RequestEntityTooLarge:
        raise too_large from None
    if upload is None:
        raise BadInput(400, "No audio came with the request; put the clip in a multipart field named 'file'.",
                       "missing_file")
    response_format = form.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise BadInput(400, f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}.",
                       "invalid_response_format")
    language = _language(form.get("language"))
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large
    try:
        return transcriber.transcribe_bytes(data, language), response_format
    except AudioError as exc:
        raise BadInput(exc.status, exc.message, exc.code) from None
    except SpeechBusy:
        raise BadInput(503, "The server is busy transcribing other recordings; try again in a few seconds.",
                       "speech_busy", {"Retry-After": "5"}) from None
    except SpeechUnavailable as exc:
        raise BadInput(503, f"The speech model {transcriber.model_id} could not be loaded ({exc}); check "
                            "WEBBOT_WHISPER_MODEL and the server log, then restart the server.",
                       "speech_model_failed") from None
