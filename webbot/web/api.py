"""The OpenAI-compatible /v1 API: models, chat completions (JSON or SSE), audio transcriptions and speech.

Usable by the official `openai` Python client unchanged (point `base_url` at
`http://host:port/v1`). The prompt goes through the same memory trimming and the same
generation engine as the chat page. Which `Authorization: Bearer <key>` a call needs
depends on WEBBOT_AUTH and WEBBOT_API_KEY (see auth.py); open mode without a key needs none.
"""

import math
import time
import uuid

from flask import Blueprint, current_app, g, jsonify

from webbot import config
from webbot.model.upstream import UpstreamError
from webbot.web.auth import check_api_key
from webbot.web.errors import ApiError
from webbot.web.generation import start_reply
from webbot.web.inputs import json_body, message_text, sampling_params, text_field
from webbot.web.services import services
from webbot.web.speaking import speech_response
from webbot.web.streaming import event_stream, pieces, sse
from webbot.web.transcription import transcribe_upload

bp = Blueprint("api", __name__, url_prefix="/v1")
ROLES = ("system", "user", "assistant")


bp.before_request(check_api_key)


@bp.get("/models")
def models():
    bot = services().bot
    return jsonify(object="list", data=[{"id": bot.name, "object": "model", "created": 0, "owned_by": "webbot"}])


def _text(content, index: int) -> str:
    """Message content as text: a string, or a list of OpenAI text parts."""
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(400, f"messages[{index}].content may only hold text parts "
                                "({\"type\": \"text\", \"text\": \"...\"}); images and audio are not supported.",
                           "unsupported_content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content must be a string.", "invalid_message")
    return content


def parse_messages(body: dict) -> tuple[str, list[dict], str]:
    """(system prompt, earlier turns, the new user message) from an OpenAI messages list."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects.",
                       "invalid_messages")
    system, turns, total = [], [], 0
    most = current_app.config["WEBBOT_MAX_REQUEST_CHARS"]
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"messages[{index}] needs a 'role' of system, user or assistant.", "invalid_role")
        text = text_field(_text(message.get("content"), index), f"messages[{index}].content")
        total += len(text)
        if total > most:
            raise ApiError(413, f"The messages hold more than {most} characters in all, more than this server reads "
                                "in one request; send only the newest ones (the model sees at most "
                                f"{current_app.config['WEBBOT_MAX_TOKENS']} tokens of them).", "request_too_long")
        if message["role"] == "system":
            system.append(text)
        else:
            turns.append({"role": message["role"], "content": text})
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "The last message must have the role 'user'.", "invalid_messages")
    return "\n\n".join(system), turns[:-1], message_text(turns[-1]["content"], "messages[-1].content")


@bp.post("/chat/completions")
def chat_completions():
    body = json_body()
    if body.get("n", 1) != 1:
        raise ApiError(400, "Only n=1 is supported; ask once per reply.", "invalid_n")
    system, history, message = parse_messages(body)
    params = sampling_params(body, default_temperature=config.API_TEMPERATURE)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object such as {\"include_usage\": true}.",
                       "invalid_stream_options")
    include_usage = bool(options.get("include_usage"))
    bot = services().bot
    plan, stream = start_reply(bot, history, message, params, system,
                               ("Shorten the last message.", "context_length_exceeded"), g.api_owner,
                               recall=current_app.config["WEBBOT_RECALL"])
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": ident, "created": created, "model": bot.name}

    if not body.get("stream"):
        try:
            text = "".join(stream)
        finally:
            stream.cancel()
        return jsonify(**head, object="chat.completion", usage=stream.usage(), choices=[{
            "index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": _finish_reason(stream)}])

    def chunk(delta: dict, finish_reason=None, **extra) -> str:
        return sse({**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra})

    def events():
        yield chunk({"role": "assistant", "content": ""})
        for piece in pieces(stream, config.STREAM_HEARTBEAT_S):
            yield ": waiting for the model\n\n" if piece is None else chunk({"content": piece})
        if stream.finish_reason == "error":
            error = stream.error if isinstance(stream.error, UpstreamError) else None
            message = error.sentence if error else "The model failed while writing this reply."
            yield sse({"error": {"message": message, "type": "server_error", "code": error.code if error else None}})
            return
        if include_usage:
            yield chunk({}, _finish_reason(stream))
            yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": stream.usage()})
        else:
            yield chunk({}, _finish_reason(stream), usage=stream.usage())
        yield sse("[DONE]")

    return event_stream(events(), stream.cancel)


def _finish_reason(stream) -> str:
    return "length" if stream.finish_reason == "length" else "stop"


@bp.post("/audio/transcriptions")
def audio_transcriptions():
    """OpenAI's transcription call: multipart `file` (+ `model`, `response_format`, `language`)."""
    app_services = services()
    transcript, response_format = transcribe_upload(app_services.transcriber,
                                                    current_app.config["WEBBOT_MAX_AUDIO_BYTES"])
    if response_format == "text":
        return transcript.text, 200, {"Content-Type": "text/plain; charset=utf-8"}
    if response_format == "verbose_json":
        return jsonify(transcript.verbose())
    return jsonify(text=transcript.text, usage={"type": "duration", "seconds": math.ceil(transcript.duration)})


@bp.post("/audio/speech")
def audio_speech():
    """OpenAI's speech call: JSON `input` (+ `model`, `voice`, `response_format`, `speed`); the audio, streamed."""
    return speech_response(services().speaker)
