"""The chat page's JSON routes for conversations: list, new, open, rename, pin, settings, delete and undo,
switch branch, search, export and import. The routes that make the model write are in `messages.py`.

Every route names the owner (`web.current_owner`), so someone else's conversation
behaves exactly like one that does not exist: a 404.
"""

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import secure_filename

from webbot import config
from webbot.storage import transfer
from webbot.storage.branches import newest_leaf, path_to, sibling_ids
from webbot.storage.documents import columns
from webbot.storage.transfer import ExportError
from webbot.web import chat_settings
from webbot.web.document_memory import with_documents
from webbot.web.document_reading import read
from webbot.web.errors import ApiError
from webbot.web.inputs import INVALID_JSON, json_body, parse_json, text_field
from webbot.web.owners import current_owner
from webbot.web.rendering import render_markdown
from webbot.web.services import services

bp = Blueprint("conversations", __name__, url_prefix="/api")
EXPORTS = {"json": ("application/json", "json"), "markdown": ("text/markdown; charset=utf-8", "md")}


def own(conversation_id: str) -> dict:
    """This person's conversation, or a 404."""
    conversation = services().store.get_conversation(current_owner(), conversation_id)
    if conversation is None:
        raise ApiError(404, "There is no such conversation here; it may have been deleted.", "conversation_not_found")
    return conversation


def document_view(document: dict) -> dict:
    """A stored document as the page and the API show it (no bytes, no text)."""
    return {key: document[key] for key in ("id", "name", "kind", "size", "pages", "tokens", "created_at")}


def message_view(message: dict, versions: list[int] | None = None, documents: dict | None = None) -> dict:
    """A stored message as the page shows it: assistant text rendered to safe HTML, its versions (the
    ids of the branches at this point, when there are several), the files attached to it (from `documents`,
    the conversation's by id) and, for a reply, the document passages it was given."""
    view = {key: message[key] for key in ("id", "role", "content", "status", "created_at")}
    view["parent_id"] = message.get("parent_id")
    if message["role"] == "assistant":
        view["html"] = render_markdown(message["content"])
    view["versions"] = versions or [message["id"]]
    view["pinned"] = bool(message.get("pinned"))
    view["recalled"] = list(message.get("recalled") or [])
    view["documents"] = [document_view(documents[i]) for i in message.get("documents") or [] if i in (documents or {})]
    view["sources"] = list(message.get("sources") or [])
    view["note"] = message.get("note")  # None: no notes end here; "": noted, nothing worth keeping
    return view


def _chat(messages: list[dict]) -> list[dict]:
    """The stored messages the model's memory reads: the person's and the replies."""
    return [m for m in messages if m["role"] in ("user", "assistant")]


def history_of(messages: list[dict]) -> list[dict]:
    """Stored messages as chat-template messages."""
    return [{"role": m["role"], "content": m["content"]} for m in _chat(messages)]


def memory_of(messages: list[dict]) -> tuple[list[dict], list[int], list[int]]:
    """A branch of stored messages as the model's memory sees it: the chat-template messages, their ids (a plan's
    history indexes map to message ids through it), and the indexes of the pinned ones."""
    chat = _chat(messages)
    return history_of(chat), [m["id"] for m in chat], [i for i, m in enumerate(chat) if m.get("pinned")]


def notes_of(messages: list[dict]) -> dict[int, str]:
    """The notes kept on a branch of stored messages, by their history index (as `memory_of` counts)."""
    return {i: m["note"] for i, m in enumerate(_chat(messages)) if m.get("note") is not None}


def branch_plan(bot, documents, owner: str, shown: list[dict], system_prompt: str | None, recall: bool):
    """What the next reply's prompt after a branch of `owner`'s would hold, for an empty message (the model must
    be ready). `documents`: the DocumentStore (the branch's files count)."""
    history, _, pins = memory_of(shown)
    passages = []
    if shown:
        history, _, passages = with_documents(documents, bot, shown[0]["conversation_id"], shown, history, [], "",
                                               owner)
    return bot.plan(history, "", system_prompt, owner=owner, pins=pins, recall=recall, passages=passages,
                    notes=notes_of(shown))


def memory_gauge(bot, documents, owner: str, shown: list[dict], system_prompt: str | None,
                 recall: bool = False) -> dict | None:
    """The memory gauge for a branch of `owner`'s (None while the model loads): what the next reply's prompt
    holds, and how many messages were recalled for the branch's last reply. Needs no request (a reply's stream
    counts it after the request has returned). `documents`: the DocumentStore (the branch's files count);
    `recall`: the conversation recalls (room is kept for it once anything is outside memory)."""
    if not bot.ready:
        return None
    gauge = branch_plan(bot, documents, owner, shown, system_prompt, recall).as_dict()
    last_reply = shown[-1] if shown and shown[-1]["role"] == "assistant" else {}
    gauge["recalled"] = len(last_reply.get("recalled") or [])
    gauge["passages"] = len(last_reply.get("sources") or [])
    return gauge


def reply_settings(conversation: dict) -> dict:
    """The settings a reply in this conversation uses: the server's, the person's defaults, then its own."""
    app_services = services()
    defaults = chat_settings.server_defaults(app_services.bot, current_app.config)
    return chat_settings.effective(defaults, app_services.store.preferences(current_owner()), conversation["settings"])


def conversation_view(conversation: dict, keep_reply_going: bool = False) -> dict:
    """A conversation as the page opens it: the shown branch, the memory gauge, its settings.

    With `keep_reply_going` (the page opening or polling it), a reply being written in it
    counts as watched for WEBBOT_RECONNECT_GRACE_S more: a page that lost its stream polls
    here, and a reply nobody looks for stops (page_reply.py).
    """
    app_services = services()
    cid = conversation["id"]
    # Look before reading the messages: a reply is stored in its final state before it stops
    # counting as running, so "not generating" here means the messages below are final.
    generating = app_services.replies.get(cid) is not None
    if generating and keep_reply_going:
        app_services.replies.seen(cid, current_app.config["WEBBOT_RECONNECT_GRACE_S"])
    stored = app_services.store.messages(cid)
    shown = path_to(stored, conversation["leaf_id"])
    chosen = reply_settings(conversation)
    memory = memory_gauge(app_services.bot, app_services.documents, current_owner(), shown, chosen["system_prompt"],
                          chosen["recall"])
    documents = {d["id"]: d for d in app_services.documents.in_conversation(current_owner(), cid)}
    return {"conversation": conversation,
            "messages": [message_view(m, sibling_ids(stored, m), documents) for m in shown],
            "drafts": [document_view(d) for d in documents.values() if not d["sent"]],
            "memory": memory, "generating": generating, "settings": chosen}


@bp.get("/conversations")
def list_conversations():
    return jsonify(conversations=services().store.list_conversations(current_owner()))


def _title(body: dict, required: bool) -> str | None:
    title = body.get("title")
    if title is None and not required:
        return None
    if not isinstance(title, str) or not title.strip() or len(title) > config.MAX_TITLE_CHARS:
        raise ApiError(400, f"'title' must be non-empty text of at most {config.MAX_TITLE_CHARS} characters.",
                       "invalid_title")
    return " ".join(text_field(title, "The title").split())


def _room_for(count: int) -> None:
    store, owner, most = services().store, current_owner(), current_app.config["WEBBOT_MAX_CONVERSATIONS"]
    have = store.count_conversations(owner)
    if have + count > most:
        advice = "delete some to start a new one" if count == 1 else f"delete some or import fewer than {count}"
        raise ApiError(409, f"You have {have} conversations and this server keeps at most {most} for one person; "
                            f"{advice}.", "too_many_conversations")


@bp.post("/conversations")
def new_conversation():
    body = json_body()
    title = _title(body, False) if body.get("title") else None
    _room_for(1)
    made = services().store.create_conversation(current_owner(), title or "New chat", "person" if title else "message")
    return jsonify(made), 201


@bp.get("/conversations/<conversation_id>")
def get_conversation(conversation_id):
    return jsonify(conversation_view(own(conversation_id), keep_reply_going=True))


@bp.patch("/conversations/<conversation_id>")
def update_conversation(conversation_id):
    """Change the title, the pin or the conversation's own settings (null: back to the defaults)."""
    own(conversation_id)
    body = json_body()
    changes = {}
    if "title" in body:
        changes["title"], changes["titled_by"] = _title(body, True), "person"
    if "pinned" in body:
        if not isinstance(body["pinned"], bool):
            raise ApiError(400, "'pinned' must be true or false.", "invalid_pinned")
        changes["pinned"] = body["pinned"]
    if "settings" in body:
        allowed = chat_settings.limits(services().bot, current_app.config)
        changes["settings"] = chat_settings.check(body["settings"], allowed) if body["settings"] is not None else None
    if not changes:
        raise ApiError(400, "Send at least one of 'title', 'pinned' or 'settings'.", "nothing_to_change")
    services().store.update_conversation(current_owner(), conversation_id, **changes)
    return jsonify(own(conversation_id))


@bp.post("/conversations/<conversation_id>/messages/<int:message_id>/pin")
def pin_message(conversation_id, message_id):
    """Pin a message (`{"pinned": true}`) so the model keeps it in mind ahead of the window, or unpin it. A pin
    that would not fit the pinned messages' share of the prompt is refused (413) and nothing changes."""
    conversation = own(conversation_id)
    pinned = json_body().get("pinned")
    if not isinstance(pinned, bool):
        raise ApiError(400, "'pinned' must be true or false.", "invalid_pinned")
    store, owner = services().store, current_owner()
    message = store.pin_message(owner, conversation_id, message_id, pinned)
    if message is None:
        raise ApiError(404, "This conversation has no such message; reload the page.", "message_not_found")
    shown = path_to(store.messages(conversation_id), conversation["leaf_id"])
    bot = services().bot
    chosen = reply_settings(conversation)
    gauge = memory_gauge(bot, services().documents, owner, shown, chosen["system_prompt"], chosen["recall"])
    if pinned and gauge is not None and gauge["pinned"] < len(memory_of(shown)[2]):
        store.pin_message(owner, conversation_id, message_id, False)
        raise ApiError(413, f"This message does not fit beside the other pinned ones: pinned messages share "
                            f"{bot.memory.pin_budget} tokens of memory. Unpin another message or pin a shorter one.",
                       "pins_full")
    return jsonify(message=message_view(message), memory=gauge)


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id):
    """Hide a conversation; POST .../restore brings it back for a minute (config.UNDO_S)."""
    own(conversation_id)
    app_services = services()
    running = app_services.replies.get(conversation_id)
    if running is not None:
        running.cancel()
    _, purged = app_services.store.delete(current_owner(), conversation_id)
    app_services.bot.forget(set(purged))  # deleted for good: their kept KV caches go too
    return "", 204


@bp.post("/conversations/<conversation_id>/restore")
def restore_conversation(conversation_id):
    if services().store.restorable(current_owner(), conversation_id):
        _room_for(1)  # a restored conversation counts like a new one
    conversation = services().store.restore(current_owner(), conversation_id)
    if conversation is None:
        raise ApiError(404, "This conversation cannot be restored any more; deleted conversations are kept for a "
                            "minute.", "conversation_not_found")
    return jsonify(conversation)


@bp.post("/conversations/<conversation_id>/branch")
def show_branch(conversation_id):
    """Show another version of a message (`message_id`): the newest branch below it."""
    own(conversation_id)
    body = json_body()
    stored = services().store.messages(conversation_id)
    target = body.get("message_id")
    if not any(m["id"] == target for m in stored):
        raise ApiError(404, "This conversation has no such message; reload the page.", "message_not_found")
    if services().replies.get(conversation_id) is not None:
        raise ApiError(409, "A reply is still being written in this conversation; stop it or wait for it.", "busy")
    services().store.show_branch(conversation_id, newest_leaf(stored, target))
    return jsonify(conversation_view(own(conversation_id)))


@bp.get("/search")
def search_conversations():
    """Conversations whose title or messages hold every word of `q` (by word prefix)."""
    query = request.args.get("q", "")
    if len(query) > config.SEARCH_CHARS:
        raise ApiError(400, f"The search is {len(query)} characters; use at most {config.SEARCH_CHARS}.",
                       "query_too_long")
    return jsonify(results=services().store.search(current_owner(), query))


def _export_kind() -> tuple[str, str, str]:
    kind = request.args.get("format", "json")
    if kind not in EXPORTS:
        raise ApiError(400, "'format' must be json or markdown.", "invalid_format")
    return kind, *EXPORTS[kind]


def _download(kind: tuple[str, str, str], items: list[tuple[dict, list[dict]]], name: str) -> Response:
    kind, mimetype, suffix = kind
    store, owner = services().documents, current_owner()
    if kind == "json":
        body = transfer.as_json(items, {c["id"]: store.sent_files(owner, c["id"]) for c, _ in items})
    else:
        names = {d["id"]: d["name"] for c, _ in items for d in store.in_conversation(owner, c["id"])}
        body = transfer.as_markdown([(c, [{**m, "document_names": [names[i] for i in m.get("documents") or []
                                                                    if i in names]} for m in messages])
                                     for c, messages in items])
    return Response(body, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'})


@bp.get("/conversations/<conversation_id>/export")
def export_conversation(conversation_id):
    """One conversation as a download: `?format=json` (the default, every branch) or `markdown`."""
    conversation = own(conversation_id)
    kind = _export_kind()
    items = [(conversation, services().store.messages(conversation_id))]
    return _download(kind, items, secure_filename(conversation["title"]) or "conversation")


@bp.get("/export")
def export_all():
    """Every conversation of this person as one download."""
    kind = _export_kind()
    store = services().store
    items = [(c, store.messages(c["id"])) for c in store.list_conversations(current_owner())]
    return _download(kind, items, "conversations")


@bp.post("/import")
def import_conversations():
    """Conversations from a JSON export, stored as new ones (all or none)."""
    if not request.is_json:
        raise ApiError(415, "Send the exported file as JSON with the header Content-Type: application/json.",
                       "unsupported_media_type")
    try:  # the body may be config.IMPORT_MAX_BYTES (app.body_limits raised the limit before the CSRF check read it)
        data = parse_json(request.get_data())
    except RequestEntityTooLarge:
        raise ApiError(413, f"The file is larger than {config.IMPORT_MAX_BYTES // 2**20} MB; export and import fewer "
                            "conversations at a time.", "import_too_large") from None
    if data is INVALID_JSON:
        raise ApiError(400, "The file is not valid JSON; import a .json file exported from this app.",
                       "invalid_json")
    settings = current_app.config
    try:
        items = transfer.parse(data, settings["WEBBOT_MAX_CONVERSATIONS"], settings["WEBBOT_MAX_MESSAGE_CHARS"] * 20)
    except ExportError as exc:
        raise ApiError(400, str(exc), "invalid_import") from None
    allowed = chat_settings.limits(services().bot, settings)
    for item in items:
        try:
            item["settings"] = chat_settings.check(item["settings"], allowed) if item["settings"] else None
        except ApiError:
            item["settings"] = None  # settings another server allowed may not fit this model: use the defaults
    _room_for(len(items))
    _read_files(items)
    made = services().store.import_conversations(current_owner(), items)
    return jsonify(imported=len(made), conversations=made), 201


def _read_files(items: list[dict]) -> None:
    """Read every file of an import as an upload would be (each a 4xx naming it when it cannot be), within the
    person's quota; each gets the columns it is stored with."""
    files = [file for item in items for file in item["documents"].values()]
    if not files:
        return
    quota, owner = current_app.config["WEBBOT_DOCUMENT_QUOTA_BYTES"], current_owner()
    used = services().documents.used_bytes(owner) + sum(len(file["data"]) for file in files)
    if used > quota:
        raise ApiError(413, f"With the files in this import you would keep {used / 1_000_000:.1f} MB of files; each "
                            f"person may keep {quota / 1_000_000:g} MB. Delete conversations with files you no longer "
                            "need, or import fewer.", "quota_exceeded")
    for file in files:
        document, tokens = read(file["data"], file["name"], None)
        file["row"] = columns(document, file["data"], tokens)


@bp.get("/settings")
def get_settings():
    """This person's default settings, the server's, and the model's limits."""
    bot, settings = services().bot, current_app.config
    return jsonify(saved=services().store.preferences(current_owner()), limits=chat_settings.limits(bot, settings),
                   defaults=chat_settings.server_defaults(bot, settings))


@bp.put("/settings")
def save_settings():
    """Replace this person's default settings (fields left out fall back to the server's)."""
    values = chat_settings.check(json_body(), chat_settings.limits(services().bot, current_app.config))
    services().store.save_preferences(current_owner(), values)
    return get_settings()
