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
from webbot.model.stream import ReplyFailed
from webbot.model.upstream import UpstreamError
from webbot.web import files_api
from webbot.web.auth import check_api_key
from webbot.web.errors import ApiError
from webbot.web.files_api import request_documents
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


def _content(content, index: int) -> tuple[str, list[dict]]:
    """Message content as text and file parts: a string, or a list of OpenAI text and file parts."""
    files = []
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "file" and isinstance(part.get("file"), dict):
                files.append(part["file"])
            else:
                raise ApiError(400, f"messages[{index}].content may hold text parts ({{\"type\": \"text\", "
                                    "\"text\": \"...\"}) and file parts ({\"type\": \"file\", \"file\": {\"filename\", "
                                    "\"file_data\"} or {\"file_id\"}}); images and audio are not supported.",
                               "unsupported_content")
        content = "".join(texts)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content must be a string.", "invalid_message")
    return content, files


def parse_messages(body: dict) -> tuple[str, list[dict], str]:
    """(system prompt, earlier turns, the new user message) from an OpenAI messages list; each turn's file parts
    are in its "files" (the new message's in the last turn's)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects.",
                       "invalid_messages")
    system, turns, total = [], [], 0
    most = current_app.config["WEBBOT_MAX_REQUEST_CHARS"]
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"messages[{index}] needs a 'role' of system, user or assistant.", "invalid_role")
        text, files = _content(message.get("content"), index)
        text = text_field(text, f"messages[{index}].content")
        total += len(text)
        if total > most:
            raise ApiError(413, f"The messages hold more than {most} characters in all, more than this server reads "
                                "in one request; send only the newest ones (the model sees at most "
                                f"{current_app.config['WEBBOT_MAX_TOKENS']} tokens of them).", "request_too_long")
        if message["role"] == "system":
            system.append(text)
        else:
            turns.append({"role": message["role"], "content": text, "files": files})
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "The last message must have the role 'user'.", "invalid_messages")
    last = turns[-1]
    new = last["content"] if last["files"] and not last["content"].strip() else message_text(
        last["content"], "messages[-1].content")  # a file alone is a message too
    return "\n\n".join(system), turns, new


@bp.post("/chat/completions")
def chat_completions():
    body = json_body()
    if body.get("n", 1) != 1:
        raise ApiError(400, "Only n=1 is supported; ask once per reply.", "invalid_n")
    system, turns, question = parse_messages(body)
    params = sampling_params(body, default_temperature=config.API_TEMPERATURE)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object such as {\"include_usage\": true}.",
                       "invalid_stream_options")
    include_usage = bool(options.get("include_usage"))
    bot = services().bot
    history, message, passages = request_documents(turns, question, g.api_owner)
    plan, stream = start_reply(bot, history, message, params, system,
                               ("Shorten the last message.", "context_length_exceeded"), g.api_owner,
                               recall=current_app.config["WEBBOT_RECALL"], passages=passages, question=question)
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
            message = error.sentence if error else str(stream.error) if isinstance(stream.error, ReplyFailed) \
                else "The model failed while writing this reply."
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


# OpenAI's files: uploads that chat completions name by file_id (files_api.py)
bp.add_url_rule("/files", view_func=files_api.upload_file, methods=["POST"])
bp.add_url_rule("/files", view_func=files_api.list_files, methods=["GET"])
bp.add_url_rule("/files/<file_id>", view_func=files_api.get_file, methods=["GET"])
bp.add_url_rule("/files/<file_id>/content", view_func=files_api.file_content, methods=["GET"])
bp.add_url_rule("/files/<file_id>", view_func=files_api.delete_file, methods=["DELETE"])
