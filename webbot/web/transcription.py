"""The one way from an uploaded clip to a transcript, for the page's microphone and /v1/audio/transcriptions.

It reads the multipart `file` (and `response_format`, `language`), enforces the upload
size, and maps every failure to a 4xx or 503 with a sentence.
"""

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from speech import SpeechBusy, SpeechUnavailable
from webbot import config
from webbot.voice.uploads import AudioError
from webbot.voice.whisper import language_code
from webbot.web.errors import ApiError

RESPONSE_FORMATS = ("json", "text", "verbose_json")


def transcribe_upload(transcriber, max_bytes: int) -> tuple:
    """(transcript, response_format) for the request's upload, or an ApiError with a sentence."""
    request.max_content_length = max_bytes + config.FORM_OVERHEAD_BYTES
    too_large = ApiError(413, f"The recording is larger than {max_bytes / 1_000_000:g} MB; send a shorter clip.",
                         "audio_too_large")
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "Send the audio as multipart/form-data with the clip in a field named 'file'.",
                       "unsupported_media_type")
    try:
        upload, form = request.files.get("file"), request.form
    except RequestEntityTooLarge:
        raise too_large from None
    if upload is None:
        raise ApiError(400, "No audio came with the request; put the clip in a multipart field named 'file'.",
                       "missing_file")
    response_format = form.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}.",
                       "invalid_response_format")
    try:
        language = language_code(form.get("language"))
    except ValueError as exc:
        raise ApiError(400, str(exc), "invalid_language") from None
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large
    try:
        return transcriber.transcribe_bytes(data, language), response_format
    except AudioError as exc:
        raise ApiError(exc.status, exc.message, exc.code) from None
    except SpeechBusy:
        raise ApiError(503, "The server is busy transcribing other recordings; try again in a few seconds.",
                       "speech_busy", {"Retry-After": "5"}) from None
    except SpeechUnavailable as exc:
        raise ApiError(503, f"The speech model {transcriber.model_id} could not be loaded ({exc}); check "
                            "WEBBOT_WHISPER_MODEL and the server log, then restart the server.",
                       "speech_model_failed") from None
