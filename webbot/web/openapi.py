"""The OpenAPI 3.1 description of the /v1 API, served at /v1/openapi.json.

It describes what the server accepts and answers (a subset of OpenAI's API): the ranges
come from webbot.config, as the request checks (inputs.py) read them, and every error is
the same `{"error": {...}}` object. Fuzzers (schemathesis) and client generators read it;
tests check the server against it.
"""

from webbot import config
from webbot.voice.encoding import CONTENT_TYPES

ERROR = {"$ref": "#/components/schemas/Error"}


def _range(kind: str, allowed: tuple) -> dict:
    """A JSON schema for an optional number within `allowed` (low, high)."""
    return {"type": [kind, "null"], "minimum": allowed[0], "maximum": allowed[1]}


def _errors(*statuses: int) -> dict:
    reasons = {400: "The request is malformed; the message says what to change.",
               401: "Missing or wrong API key.",
               404: "No such file for this key's owner, or the feature is turned off on this server (speech: "
                    "WEBBOT_TTS=off).",
               413: "The request, its messages' text (WEBBOT_MAX_REQUEST_CHARS), the audio, the text to speak "
                    "(WEBBOT_TTS_MAX_CHARS) or a file (WEBBOT_MAX_DOCUMENT_MB, the owner's quota) is too large.",
               415: "Wrong content type.",
               429: "Too many requests, or too many wrong keys from this address; see Retry-After.",
               502: "The model or speech server (WEBBOT_BACKEND=openai, WEBBOT_SPEECH_URL) failed or is unreachable.",
               503: "The model is loading, the server is busy (see Retry-After), or a voice could not be loaded.",
               504: "The model or speech server did not answer in time."}
    return {str(s): {"description": reasons[s], "content": {"application/json": {"schema": ERROR}}} for s in statuses}


TEXT_PART = {"type": "object", "required": ["type", "text"],
             "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}

FILE_PART = {"type": "object", "required": ["type", "file"],
             "properties": {"type": {"const": "file"}, "file": {
                 "type": "object", "description": "Either filename and file_data (a base64 data URL) or file_id "
                                                  "(from POST /files). A small file goes in whole; a large one by "
                                                  "the passages that best match the last message.",
                 "properties": {"filename": {"type": "string"}, "file_data": {"type": "string"},
                                "file_id": {"type": "string"}}}}}

MESSAGE = {
    "type": "object", "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [TEXT_PART, FILE_PART]}}]},
    },
}

FILE_OBJECT = {"type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
               "properties": {"id": {"type": "string"}, "object": {"const": "file"},
                              "bytes": {"type": "integer", "minimum": 0}, "created_at": {"type": "integer"},
                              "filename": {"type": "string"}, "purpose": {"const": "user_data"},
                              "status": {"const": "processed"}}}
FILE_ID = [{"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}]

CHAT_REQUEST = {
    "type": "object", "required": ["messages"],
    "properties": {
        "model": {"type": "string", "description": "Ignored: the server answers with the model it runs."},
        "messages": {"type": "array", "minItems": 1, "items": MESSAGE,
                     "description": "The last message must be the user's, with text in it."},
        "max_tokens": _range("integer", config.REPLY_TOKENS_RANGE),
        "max_completion_tokens": _range("integer", config.REPLY_TOKENS_RANGE),
        "temperature": _range("number", config.TEMPERATURE_RANGE),
        "top_p": _range("number", config.TOP_P_RANGE),
        "stop": {"anyOf": [{"type": "null"}, {"type": "string"},
                           {"type": "array", "maxItems": config.MAX_STOP_STRINGS,
                            "items": {"type": "string", "minLength": 1}}]},
        "n": {"const": 1},
        "stream": {"type": "boolean"},
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
    },
}

USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {**{k: {"type": "integer", "minimum": 0}
                           for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
                        "prompt_tokens_details": {
                            "type": "object", "properties": {"cached_tokens": {
                                "type": "integer", "minimum": 0,
                                "description": "Prompt tokens read from this requester's own earlier prompts "
                                               "(and the server's public head), not computed again."}}}}}

CHAT_RESPONSE = {
    "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "usage": USAGE,
        "choices": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["index", "message", "finish_reason"],
            "properties": {"index": {"type": "integer"}, "finish_reason": {"enum": ["stop", "length"]},
                           "message": {"type": "object", "required": ["role", "content"],
                                       "properties": {"role": {"const": "assistant"},
                                                      "content": {"type": "string"}}}}}},
    },
}

TRANSCRIPTION_REQUEST = {
    "type": "object", "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "Audio in any format ffmpeg reads."},
        "model": {"type": "string", "description": "Ignored: the server uses its own Whisper."},
        "response_format": {"enum": ["json", "text", "verbose_json"]},
        "language": {"type": "string", "description": "An ISO-639-1 code or a language name."},
    },
}


SPEECH_REQUEST = {
    "type": "object", "required": ["input"],
    "properties": {
        "input": {"type": "string", "minLength": 1, "description": "The text to speak (Markdown is read as speech "
                                                                   "would read it; code is not spelled out)."},
        "model": {"type": ["string", "null"], "description": "Any name; the server speaks with Piper."},
        "voice": {"type": ["string", "null"],
                  "description": "A voice of this server (/healthz lists them) or an OpenAI voice name, which means "
                                 "the server's default voice."},
        "response_format": {"enum": [*config.SPEECH_FORMATS, None], "default": config.SPEECH_FORMATS[0]},
        "speed": {**_range("number", config.SPEECH_SPEED_RANGE), "default": 1.0},
    },
}


def describe(version: str) -> dict:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Web chat robot API", "version": version,
                 "description": "An OpenAI-compatible subset: models, chat completions (JSON or server-sent "
                                "events, with files), files, audio transcriptions and speech."},
        "servers": [{"url": "/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/models": {"get": {
                "operationId": "listModels", "summary": "The model this server runs.",
                "responses": {"200": {"description": "The model list.", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["object", "data"],
                               "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
                                   "type": "object", "required": ["id", "object"],
                                   "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}}}}}}},
                              **_errors(401, 429)}}},
            "/chat/completions": {"post": {
                "operationId": "createChatCompletion", "summary": "A reply to a conversation.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST}}},
                "responses": {"200": {"description": "The reply, whole or as server-sent events (stream: true).",
                                      "content": {"application/json": {"schema": CHAT_RESPONSE},
                                                  "text/event-stream": {"schema": {"type": "string"}}}},
                              **_errors(400, 401, 404, 413, 415, 429, 502, 503, 504)}}},
            "/files": {
                "post": {"operationId": "createFile", "summary": "Keep a file to name in chat completions.",
                         "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                             "type": "object", "required": ["file", "purpose"],
                             "properties": {"file": {"type": "string", "format": "binary",
                                                     "description": "PDF, DOCX, HTML, Markdown, text, CSV, JSON "
                                                                    "or source code."},
                                            "purpose": {"const": "user_data"}}}}}},
                         "responses": {"200": {"description": "The file, read.",
                                               "content": {"application/json": {"schema": FILE_OBJECT}}},
                                       **_errors(400, 401, 413, 415, 429, 503)}},
                "get": {"operationId": "listFiles", "summary": "The files this key's owner keeps, newest first.",
                        "responses": {"200": {"description": "The list.", "content": {"application/json": {
                            "schema": {"type": "object", "required": ["object", "data"],
                                       "properties": {"object": {"const": "list"},
                                                      "data": {"type": "array", "items": FILE_OBJECT}}}}}},
                                      **_errors(401, 429)}}},
            "/files/{file_id}": {
                "parameters": FILE_ID,
                "get": {"operationId": "retrieveFile", "summary": "One file.",
                        "responses": {"200": {"description": "The file.",
                                              "content": {"application/json": {"schema": FILE_OBJECT}}},
                                      **_errors(401, 404, 429)}},
                "delete": {"operationId": "deleteFile", "summary": "Delete a file.",
                           "responses": {"200": {"description": "Deleted.", "content": {"application/json": {
                               "schema": {"type": "object", "required": ["id", "object", "deleted"],
                                          "properties": {"id": {"type": "string"}, "object": {"const": "file"},
                                                         "deleted": {"const": True}}}}}},
                                         **_errors(401, 404, 429)}}},
            "/files/{file_id}/content": {
                "parameters": FILE_ID,
                "get": {"operationId": "downloadFile", "summary": "The file's bytes, as uploaded.",
                        "responses": {"200": {"description": "The file.", "content": {"application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}}}},
                                      **_errors(401, 404, 429)}}},
            "/audio/transcriptions": {"post": {
                "operationId": "createTranscription", "summary": "The text spoken in a recording.",
                "requestBody": {"required": True,
                                "content": {"multipart/form-data": {"schema": TRANSCRIPTION_REQUEST}}},
                "responses": {"200": {"description": "The transcript (text/plain for response_format=text).",
                                      "content": {"application/json": {"schema": {
                                          "type": "object", "required": ["text"],
                                          "properties": {"text": {"type": "string"}}}},
                                          "text/plain": {"schema": {"type": "string"}}}},
                              **_errors(400, 401, 413, 415, 429, 502, 503, 504)}}},
            "/audio/speech": {"post": {
                "operationId": "createSpeech", "summary": "The text spoken aloud (Piper, on this server), streamed "
                                                          "sentence by sentence.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": SPEECH_REQUEST}}},
                "responses": {"200": {"description": "The audio, in response_format.",
                                      "content": {kind: {"schema": {"type": "string", "format": "binary"}}
                                                  for kind in sorted(set(CONTENT_TYPES.values()))}},
                              **_errors(400, 401, 404, 413, 415, 429, 503)}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "WEBBOT_API_KEY, a user's key (accounts mode) or the "
                                                          "shared password (password mode). Not needed in open "
                                                          "mode without WEBBOT_API_KEY."}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "type"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                               "code": {"type": ["string", "null"]}}}}}},
        },
    }
