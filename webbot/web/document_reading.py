"""The one way from a file's bytes to a document the model can read, for uploads, /v1 file parts and imports:
the size limit, the extraction (in a limited child process) and the tokens, each failure a 4xx with a sentence."""

from flask import current_app

from webbot.documents.extraction import DocumentRefused, extract
from webbot.web.errors import ApiError
from webbot.web.generation import require_ready
from webbot.web.services import services

STATUS = {"unsupported": 415, "too_many_pages": 413}  # any other refusal is a 400: the file itself is at fault


def read(data: bytes, filename: str, media_type: str | None):
    """(the extracted Document, its tokens) for a file's bytes, or a 4xx with a sentence."""
    settings = current_app.config
    most = settings["WEBBOT_MAX_DOCUMENT_BYTES"]
    if len(data) > most:
        raise ApiError(413, f"\"{filename}\" is {len(data) / 1_000_000:.1f} MB; the limit is {most / 1_000_000:g} MB. "
                            "Split it or attach the part you need.", "document_too_large")
    if not data:
        raise ApiError(400, f"\"{filename}\" is empty; attach a file with something in it.", "empty_document")
    bot = services().bot
    require_ready(bot)  # its tokenizer counts the text
    try:
        document = extract(data, filename, media_type, settings["WEBBOT_MAX_DOCUMENT_PAGES"])
    except DocumentRefused as exc:
        raise ApiError(STATUS.get(exc.code, 400), f"\"{filename}\": {exc.sentence}", exc.code) from None
    return document, len(bot.memory.encode(document.text))
