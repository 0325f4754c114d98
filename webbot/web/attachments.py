"""Documents in the conversation, on the web side: taking an upload (the quota, then `document_reading.read`) and
the chat page's routes for attaching, removing and downloading a file. What a branch's documents put in the
model's memory is `document_memory.py`.

A document is read once, when it is attached: its text and passages are kept, and a file
that cannot be read is refused then with a sentence, never later while a reply is planned.
"""

import io

from flask import Blueprint, current_app, jsonify, request, send_file
from werkzeug.exceptions import RequestEntityTooLarge

from webbot import config
from webbot.storage.text import unstorable
from webbot.web.conversations import document_view, own
from webbot.web.document_reading import read
from webbot.web.errors import ApiError
from webbot.web.owners import current_owner
from webbot.web.services import services

bp = Blueprint("documents", __name__, url_prefix="/api")


def upload(conversation_id: str | None, owner: str) -> dict:
    """Read the request's multipart `file` and keep it for `owner` (in that conversation); its stored view."""
    settings = current_app.config  # app.raise_body_limit set this request's limit before anything read the body
    most = settings["WEBBOT_MAX_DOCUMENT_BYTES"]
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "Send the file as multipart/form-data in a field named 'file'.", "unsupported_media_type")
    try:
        file = request.files.get("file")
    except RequestEntityTooLarge:
        raise ApiError(413, f"The file is larger than {most / 1_000_000:g} MB; split it or attach the part you "
                            "need.", "document_too_large") from None
    if file is None:
        raise ApiError(400, "No file came with the request; put it in a multipart field named 'file'.",
                       "missing_file")
    name = " ".join((file.filename or "").replace("/", " ").replace("\\", " ").split())[:200] or "document.txt"
    if unstorable(name):
        raise ApiError(400, "The file's name holds a character that cannot be stored; rename it.",
                       "invalid_characters")
    data = file.read(most + 1)
    document, tokens = read(data, name, file.mimetype)
    store = services().documents
    quota, used = settings["WEBBOT_DOCUMENT_QUOTA_BYTES"], store.used_bytes(owner)
    if used + len(data) > quota:
        raise ApiError(413, f"Your files take {used / 1_000_000:.1f} MB and this one {len(data) / 1_000_000:.1f} MB; "
                            f"each person may keep {quota / 1_000_000:g} MB. Delete conversations with files you no "
                            "longer need.", "quota_exceeded")
    return store.add(owner, conversation_id, document, data, tokens)


def attached_ids(body: dict) -> list[str]:
    """The ids a message is sent with (`documents`), checked for shape only."""
    ids = body.get("documents") or []
    most = config.MAX_DOCUMENTS_PER_MESSAGE
    if not isinstance(ids, list) or len(ids) > most or not all(isinstance(i, str) and len(i) <= 64 for i in ids):
        raise ApiError(400, f"'documents' must be a list of at most {most} document ids.", "invalid_documents")
    return list(dict.fromkeys(ids))


@bp.post("/conversations/<conversation_id>/documents")
def attach(conversation_id):
    """Attach a file to the next message of a conversation (a draft until a message is sent with it)."""
    own(conversation_id)
    return jsonify(document_view(upload(conversation_id, current_owner()))), 201


@bp.delete("/conversations/<conversation_id>/documents/<document_id>")
def remove(conversation_id, document_id):
    """Take back a file attached but not sent yet."""
    own(conversation_id)
    if not services().documents.remove(current_owner(), document_id, conversation_id):
        raise ApiError(404, "There is no such unsent file in this conversation; a file already sent stays with its "
                            "message.", "document_not_found")
    return "", 204


@bp.get("/conversations/<conversation_id>/documents/<document_id>")
def download(conversation_id, document_id):
    """The file as it was attached, always as a download (never shown inline, so no page runs from it)."""
    own(conversation_id)
    found = services().documents.content(current_owner(), document_id)
    if found is None or found[0]["conversation_id"] != conversation_id:
        raise ApiError(404, "There is no such file in this conversation.", "document_not_found")
    return file_response(*found)


def file_response(document: dict, data: bytes):
    """A stored file as an attachment download, sandboxed."""
    response = send_file(io.BytesIO(data), mimetype="application/octet-stream", as_attachment=True,
                         download_name=document["name"])
    response.headers["Content-Security-Policy"] = "sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
