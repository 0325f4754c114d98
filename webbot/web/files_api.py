"""Files on the /v1 API, as OpenAI's clients send them: `file` content parts in chat completions (inline as a
base64 data URL, or a `file_id`) and the /v1/files uploads those ids name, each owned by the key's owner.
`api.py` routes to the views here."""

import base64
import binascii
import itertools
import re

from flask import g, jsonify, request

from webbot.web.attachments import file_response, upload
from webbot.web.document_memory import arrange
from webbot.web.document_reading import read
from webbot.web.errors import ApiError
from webbot.web.services import services

DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(?:;[\w=.-]+)*;base64,", re.ASCII)
PURPOSE = "user_data"  # OpenAI's purpose for files given to a model as input


def _file_object(document: dict) -> dict:
    return {"id": document["id"], "object": "file", "bytes": document["size"],
            "created_at": int(document["created_at"]), "filename": document["name"], "purpose": PURPOSE,
            "status": "processed"}


def _inline(part: dict, where: str, number: int) -> dict:
    """An inline file part, read: {id, name, text, tokens, passages}."""
    name, data_url = part.get("filename"), part.get("file_data")
    if not isinstance(data_url, str) or not DATA_URL.match(data_url):
        raise ApiError(400, f"{where}: 'file_data' must be a data URL such as data:application/pdf;base64,..., or "
                            "give a 'file_id' from /v1/files.", "invalid_file")
    media_type = DATA_URL.match(data_url).group(1)
    try:
        data = base64.b64decode(data_url[data_url.index(",") + 1:], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: 'file_data' is not valid base64.", "invalid_file") from None
    name = " ".join(name.split())[:200] if isinstance(name, str) and name.strip() else f"file{number}"
    document, tokens = read(data, name, media_type)
    return {"id": f"inline-{number}", "name": name, "text": document.text, "tokens": tokens,
            "passages": document.passages}


def _documents(files: list[dict], where: str, owner: str, numbers) -> list[dict]:
    """The file parts of one message, read (inline) or found (by id); `numbers` names unnamed inline files."""
    found = []
    for part, number in zip(files, numbers, strict=False):  # numbers never ends
        if "file_id" in part:
            ident = part["file_id"]
            stored = services().documents.texts(None, [ident], owner) if isinstance(ident, str) else {}
            if ident not in stored:
                raise ApiError(404, f"{where}: there is no file {str(ident)[:64]!r} here; upload it with POST "
                                    "/v1/files first.", "file_not_found")
            found.append(stored[ident])
        else:
            found.append(_inline(part, where, number))
    return found


def request_documents(turns: list[dict], question: str, owner: str) -> tuple[list[dict], str, list]:
    """The history and new message of a chat completion with their files placed (small ones whole, large ones as
    candidate passages), and those passages."""
    history = [{"role": t["role"], "content": t["content"]} for t in turns[:-1]]
    if not any(t["files"] for t in turns):
        return history, question, []
    numbers = itertools.count(1)
    by_message = [_documents(t["files"], f"messages[{i}]", owner, numbers) for i, t in enumerate(turns[:-1])]
    new = _documents(turns[-1]["files"], "messages[-1]", owner, numbers)
    return arrange(history, question, by_message, new, services().bot.memory.budget)


def upload_file():
    """OpenAI's file upload: multipart `file` and `purpose` (user_data); the file object."""
    purpose = request.form.get("purpose") if request.mimetype == "multipart/form-data" else None
    if purpose != PURPOSE:
        raise ApiError(400, f"'purpose' must be {PURPOSE}: files here are kept to be read in chat completions.",
                       "invalid_purpose")
    return jsonify(_file_object(upload(None, g.api_owner))), 200


def list_files():
    """The files the key's owner uploaded, newest first."""
    return jsonify(object="list", data=[_file_object(d) for d in services().documents.files(g.api_owner)],
                   has_more=False)


def _owned(file_id: str) -> dict:
    document = services().documents.get(g.api_owner, file_id)
    if document is None or document["conversation_id"] is not None:
        raise ApiError(404, f"There is no file {file_id[:64]!r} here.", "file_not_found")
    return document


def get_file(file_id):
    """One file's object."""
    return jsonify(_file_object(_owned(file_id)))


def file_content(file_id):
    """The file's bytes, as uploaded."""
    _owned(file_id)
    return file_response(*services().documents.content(g.api_owner, file_id))


def delete_file(file_id):
    """Delete a file; chat completions that named it are unaffected, later ones get a 404."""
    _owned(file_id)
    services().documents.remove(g.api_owner, file_id, None)
    return jsonify(id=file_id, object="file", deleted=True)
