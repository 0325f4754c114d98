"""Conversations as files: export to JSON (every branch, re-importable) or Markdown (the shown branch, for
reading), and the checks an imported JSON file goes through before anything is stored.

The JSON format: {"format": FORMAT, "conversations": [{"title", "created_at", "settings",
"leaf", "messages": [{"id", "parent", "role", "content", "status", "created_at", "pinned",
"recalled" (the ids of earlier messages recalled for a reply), "documents" (the ids of the files a message came
with), "sources" (the document passages a reply was given), "note" (the notes of the messages up to it, once
they fell out of memory; absent or null: none)}], "documents": [{"id", "name", "data" (the file,
base64)}]}]}.
Message ids are only meaningful inside the file; an import gets new ones. A file holding
one conversation ({"title", "messages", ...} at the top) imports too.
"""

import base64
import binascii
import json
import math

from webbot.config import MAX_NOTE_CHARS, REPLY_STATUSES
from webbot.storage.branches import path_to
from webbot.storage.text import UNSTORABLE


class ExportError(ValueError):
    """An uploaded file that cannot be imported; the message is a sentence naming the first problem."""

FORMAT = "webbot-conversations/1"
ROLES = ("user", "assistant")


def as_json(items: list[tuple[dict, list[dict]]], files: dict[str, list[dict]] | None = None) -> str:
    """(conversation, all its messages) pairs as the JSON export, with the files sent in each conversation
    (`files`: by conversation id, each {"id", "name", "data": bytes})."""
    conversations = []
    for conversation, messages in items:
        conversations.append({
            "title": conversation["title"], "created_at": conversation["created_at"],
            "settings": conversation["settings"], "leaf": conversation["leaf_id"],
            "messages": [{"id": m["id"], "parent": m["parent_id"], "role": m["role"], "content": m["content"],
                          "status": m["status"], "created_at": m["created_at"], "pinned": m["pinned"],
                          "recalled": m["recalled"], "documents": m.get("documents") or [],
                          "sources": m.get("sources") or [], "note": m.get("note")} for m in messages],
            "documents": [{"id": d["id"], "name": d["name"], "data": base64.b64encode(d["data"]).decode()}
                          for d in (files or {}).get(conversation["id"], [])]})
    return json.dumps({"format": FORMAT, "conversations": conversations}, ensure_ascii=False, indent=2)


def as_markdown(items: list[tuple[dict, list[dict]]]) -> str:
    """(conversation, all its messages) pairs as Markdown: each conversation's shown branch."""
    parts = []
    for conversation, messages in items:
        parts.append(f"# {conversation['title']}\n")
        for message in path_to(messages, conversation["leaf_id"]):
            attached = "".join(f"\n*Attached: {name}*\n" for name in message.get("document_names") or [])
            parts.append(f"**{message['role'].capitalize()}:**\n{attached}\n{message['content']}\n")
    return "\n".join(parts)


def _fail(where: str, what: str):
    raise ExportError(f"The file cannot be imported: {where} {what}. Import a JSON file exported from this app.")


def parse(data, max_conversations: int, max_message_chars: int) -> list[dict]:
    """The conversations in an uploaded export, each checked; ExportError naming the first problem otherwise."""
    if isinstance(data, dict) and "messages" in data and "conversations" not in data:
        data = {"conversations": [data]}
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        _fail("the top level", "is not an export (it needs a 'conversations' list)")
    items = data["conversations"]
    if not items:
        _fail("the file", "holds no conversations")
    if len(items) > max_conversations:
        _fail("the file", f"holds {len(items)} conversations, more than the {max_conversations} allowed")
    return [_conversation(item, n + 1, max_message_chars) for n, item in enumerate(items)]


def _conversation(item, number: int, max_chars: int) -> dict:
    where = f"conversation {number}"
    if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
        _fail(where, "has no 'messages' list")
    title = item.get("title") or "Imported chat"
    if not isinstance(title, str):
        _fail(where, "has a title that is not text")
    if UNSTORABLE.search(title):
        _fail(where, "has a title with a NUL character or an unpaired surrogate")
    settings = item.get("settings")
    if settings is not None and not isinstance(settings, dict):
        _fail(where, "has 'settings' that are not an object")
    files = _files(item.get("documents"), where)
    messages, ids = [], set()
    for index, message in enumerate(item["messages"]):
        spot = f"message {index + 1} of {where}"
        if not isinstance(message, dict):
            _fail(spot, "is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            _fail(spot, f"has the role {role!r}; only {' and '.join(ROLES)} are allowed")
        if not isinstance(content, str) or len(content) > max_chars:
            _fail(spot, f"needs 'content' as text of at most {max_chars} characters")
        if UNSTORABLE.search(content):
            _fail(spot, "has a NUL character or an unpaired surrogate in its 'content'")
        ident = message.get("id", index)
        if isinstance(ident, bool) or not isinstance(ident, (int, str)) or ident in ids:
            _fail(spot, "needs an 'id' (a number or text) that no other message in it has")
        parent = message.get("parent", messages[-1]["id"] if messages and "id" not in message else None)
        if parent is not None and (not isinstance(parent, (int, str)) or parent not in ids):
            _fail(spot, "names a parent that does not come before it")
        ids.add(ident)
        status = message.get("status") or "complete"
        recalled = message.get("recalled") or []
        if not isinstance(recalled, list) or not all(isinstance(old, (int, str)) and not isinstance(old, bool)
                                                     and old in ids for old in recalled):
            _fail(spot, "has 'recalled' that is not a list of the ids of messages before it")
        attached = message.get("documents") or []
        if not isinstance(attached, list) or not all(isinstance(d, str) and d in files for d in attached):
            _fail(spot, "has 'documents' that are not ids of the conversation's 'documents'")
        sources = message.get("sources") or []
        if not isinstance(sources, list) or not all(isinstance(s, dict) and isinstance(s.get("source"), str)
                                                    and len(s["source"]) <= 300 for s in sources):
            _fail(spot, "has 'sources' that are not a list of {\"document\", \"source\"}")
        note = message.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS or UNSTORABLE.search(note)):
            _fail(spot, f"has a 'note' that is not text of at most {MAX_NOTE_CHARS} characters without NUL characters "
                        "or unpaired surrogates")
        messages.append({"id": ident, "parent": parent, "role": role, "content": content, "note": note,
                         "status": status if status in REPLY_STATUSES else "complete",
                         "created_at": _time(message.get("created_at"), spot),
                         "pinned": message.get("pinned") is True, "recalled": recalled,
                         "documents": attached if role == "user" else [],
                         "sources": [{"document": s.get("document"), "source": s["source"]} for s in sources]})
    created, leaf = _time(item.get("created_at"), where), item.get("leaf")
    if leaf is not None and (isinstance(leaf, bool) or not isinstance(leaf, (int, str)) or leaf not in ids):
        leaf = None  # no shown branch named (or none of its messages): the newest is shown
    return {"title": " ".join(title.split())[:200] or "Imported chat", "settings": settings,
            "created_at": created, "leaf": leaf, "messages": messages, "documents": files}


def _files(value, where: str) -> dict[str, dict]:
    """A conversation's exported files by their id in the file: {"name", "data": bytes}."""
    if value is None:
        return {}
    if not isinstance(value, list):
        _fail(where, "has 'documents' that are not a list")
    files = {}
    for number, entry in enumerate(value, 1):
        spot = f"file {number} of {where}"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or entry["id"] in files:
            _fail(spot, "needs an 'id' (text) that no other file in it has")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 255 or UNSTORABLE.search(name):
            _fail(spot, "needs a 'name' of at most 255 characters")
        try:
            data = base64.b64decode(entry.get("data") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            _fail(spot, "has 'data' that is not base64")
        files[entry["id"]] = {"name": name, "data": data}
    return files


def _time(value, where: str) -> float | None:
    """A stored time (seconds since 1970) from the file, None when it has none; NaN or infinity is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        _fail(where, f"has 'created_at' {value}, which is not a time; give seconds since 1970 or leave it out")
    return float(value)
