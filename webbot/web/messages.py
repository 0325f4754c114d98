"""The chat page's routes that make the model write: send, edit and resend, regenerate, continue, stop, and
the generated title. Each streams the reply through `page_reply.PageReply`.

Editing a message or regenerating a reply adds a new branch beside the old one (see
`branches.py`); the old branch stays stored and the page can switch back to it.
Continuing appends to a reply that stopped early (at the reply token limit, a Stop, or a
dropped model server) instead of starting a new one.
"""

import logging

from flask import Blueprint, current_app, jsonify, request

from webbot import config
from webbot.model import titles
from webbot.storage.branches import path_to
from webbot.storage.conversations import title_from
from webbot.storage.errors import StorageUnavailable
from webbot.web.attachments import attached_ids
from webbot.web.conversations import (
    conversation_view,
    memory_gauge,
    memory_of,
    message_view,
    notes_of,
    own,
    reply_settings,
)
from webbot.web.document_memory import sources_of, with_documents
from webbot.web.errors import ApiError
from webbot.web.generation import start_reply
from webbot.web.inputs import json_body, message_text, sampling_params
from webbot.web.owners import current_owner
from webbot.web.page_reply import PageReply
from webbot.web.services import services
from webbot.web.streaming import event_stream

log = logging.getLogger(__name__)
bp = Blueprint("messages", __name__, url_prefix="/api")


def _stored(conversation_id: str, message_id: int, role: str) -> tuple[dict, list[dict]]:
    """A message of this conversation with the given role, and all the conversation's messages; else a 404."""
    messages = services().store.messages(conversation_id)
    message = next((m for m in messages if m["id"] == message_id and m["role"] == role), None)
    if message is None:
        raise ApiError(404, f"This conversation has no {role} message {message_id}; reload the page.",
                       "message_not_found")
    return message, messages


def _question(messages: list[dict], reply: dict) -> dict:
    """The user message a reply answers; a 409 for a reply that answers none (an imported file may hold one)."""
    question = next((m for m in messages if m["id"] == reply["parent_id"] and m["role"] == "user"), None)
    if question is None:
        raise ApiError(409, "This reply does not answer a message of yours, so there is nothing to write it from; "
                            "send a new message instead.", "no_question")
    return question


def _params(conversation: dict, body: dict):
    """Sampling settings (the conversation's, the person's defaults, the server's, then the request's own), the
    system prompt, and whether to recall messages outside memory."""
    chosen = reply_settings(conversation)
    asked = {"temperature": chosen["temperature"], "top_p": chosen["top_p"], "max_tokens": chosen["max_tokens"]}
    asked.update({k: body[k] for k in ("temperature", "top_p", "max_tokens", "stop") if body.get(k) is not None})
    return sampling_params(asked), chosen["system_prompt"], chosen["recall"]


def _write(conversation: dict, history: list[dict], message: str, body: dict, store_turn, partial: str | None = None,
           title: str | None = None, attached: list[str] = ()):
    """Plan and queue a reply, claim the conversation, store what `store_turn(recalled, sources)` stores, and
    stream the reply.

    `attached`: the ids of the documents the new message comes with. `store_turn(recalled,
    sources)` gets the ids of the messages recalled for the reply and the document passages it
    was given, and returns (the user's new message or None, the reply's stored row); it runs
    only once the model has accepted the request, so a refused reply stores nothing.
    """
    cid, app_services, owner = conversation["id"], services(), current_owner()
    params, system_prompt, recall = _params(conversation, body)
    chat, ids, pins = memory_of(history)
    notes = notes_of(history)
    chat, with_files, passages = with_documents(app_services.documents, app_services.bot, cid, history, chat,
                                                list(attached), message, owner)
    plan, stream = start_reply(app_services.bot, chat, with_files, params, system_prompt,
                               ("Shorten it or split it into several messages.", "message_too_long"),
                               owner, partial, cid, pins, recall, passages, message, notes)
    recalled, sources = [ids[index] for index in plan.recalled], sources_of(plan, passages)
    try:
        claimed = app_services.replies.claim(cid, stream)
    except Exception:  # Redis is down: a 503, and the reply never starts
        stream.cancel()
        raise
    if not claimed:
        stream.cancel()
        raise ApiError(409, "A reply is still being written in this conversation; stop it or wait for it.", "busy")
    try:  # one transaction: the message, the empty reply and the title are all stored, or none of them
        user, reply = store_turn(recalled, sources)
    except Exception:
        stream.cancel()
        app_services.replies.release(cid, stream)
        raise
    writer = PageReply(app_services, cid, reply, stream, current_app.config["WEBBOT_RECONNECT_GRACE_S"],
                       prefix=partial or "")

    def gauge():
        try:
            return memory_gauge(app_services.bot, app_services.documents, owner,
                                path_to(app_services.store.messages(cid), reply["id"]),
                                system_prompt, recall)
        except StorageUnavailable:  # the database is down; the page hides the gauge until the next turn
            log.warning("could not count memory after reply %s", reply["id"], exc_info=True)
            return None

    documents = {d["id"]: d for d in app_services.documents.in_conversation(owner, cid)} if attached else {}
    start = {"user": message_view(user, documents=documents) if user else None, "reply": message_view(reply),
             "reply_id": reply["id"],
             "title": title or conversation["title"], "memory": plan.as_dict()}
    return event_stream(writer.events(start, message_view, gauge), writer.on_close)


@bp.post("/conversations/<conversation_id>/messages")
def send_message(conversation_id):
    """A new message at the end of the shown branch."""
    conversation = own(conversation_id)
    body = json_body()
    content = message_text(body.get("content"))
    messages = services().store.messages(conversation_id)
    history = path_to(messages, conversation["leaf_id"])
    parent_id = history[-1]["id"] if history else None
    title = title_from(content) if conversation["title"] == "New chat" else conversation["title"]
    attached = attached_ids(body)
    return _write(conversation, history, content, body,
                  lambda recalled, sources: services().store.add_turn(conversation_id, content, title, parent_id,
                                                                      recalled, attached, sources),
                  title=title, attached=attached)


@bp.post("/conversations/<conversation_id>/messages/<int:message_id>/edit")
def edit_message(conversation_id, message_id):
    """Send an edited version of a user message: a new branch from the same point; the old one is kept."""
    conversation = own(conversation_id)
    body = json_body()
    content = message_text(body.get("content"))
    original, messages = _stored(conversation_id, message_id, "user")
    history = path_to(messages, original["parent_id"]) if original["parent_id"] else []
    # An edited first message names the conversation again, unless a person named it (the page then asks the model)
    retitle = original["parent_id"] is None and conversation.get("titled_by") in ("message", "model")
    title = title_from(content) if retitle else conversation["title"]
    return _write(conversation, history, content, body,
                  lambda recalled, sources: services().store.add_turn(
                      conversation_id, content, title, original["parent_id"], recalled, original["documents"],
                      sources, "message" if retitle else None),
                  title=title, attached=original["documents"])


@bp.post("/conversations/<conversation_id>/messages/<int:message_id>/regenerate")
def regenerate(conversation_id, message_id):
    """Write another version of an assistant reply; the old version is kept as a branch."""
    conversation = own(conversation_id)
    body = json_body() if request.data else {}
    old, messages = _stored(conversation_id, message_id, "assistant")
    question = _question(messages, old)
    history = path_to(messages, question["parent_id"]) if question["parent_id"] else []
    return _write(conversation, history, question["content"], body,
                  lambda recalled, sources: (None, services().store.add_message(
                      conversation_id, "assistant", "", "streaming", parent_id=question["id"], recalled=recalled,
                      sources=sources)),
                  attached=question["documents"])


@bp.post("/conversations/<conversation_id>/messages/<int:message_id>/continue")
def continue_reply(conversation_id, message_id):
    """Go on writing a reply that stopped early, appending to it."""
    conversation = own(conversation_id)
    body = json_body() if request.data else {}
    reply, messages = _stored(conversation_id, message_id, "assistant")
    if reply["status"] not in config.CONTINUABLE or not reply["content"]:
        raise ApiError(409, "Only a reply that was cut off (by the length limit, Stop or a dropped model server) "
                            "and has some text can be continued; regenerate it instead.", "not_continuable")
    question = _question(messages, reply)
    history = path_to(messages, question["parent_id"]) if question["parent_id"] else []

    def reopen(recalled, sources):
        store = services().store
        recalled = sorted(set(reply["recalled"]) | set(recalled))  # the first part's and this part's
        sources = reply["sources"] + [s for s in sources if s not in reply["sources"]]
        store.finish_message(reply["id"], reply["content"], "streaming")
        store.set_recalled(reply["id"], recalled, sources)
        store.show_branch(conversation_id, reply["id"])
        return None, {**reply, "status": "streaming", "recalled": recalled, "sources": sources}

    return _write(conversation, history, question["content"], body, reopen, partial=reply["content"],
                  attached=question["documents"])


@bp.post("/conversations/<conversation_id>/stop")
def stop(conversation_id):
    own(conversation_id)
    running = services().replies.get(conversation_id)
    if running is not None:
        running.cancel()
    return jsonify(stopped=running is not None)


@bp.post("/conversations/<conversation_id>/title")
def generate_title(conversation_id):
    """Name the conversation from its first exchange, unless someone renamed it already."""
    conversation = own(conversation_id)
    app_services = services()
    shown = path_to(app_services.store.messages(conversation_id), conversation["leaf_id"])
    if len(shown) < 2 or shown[1]["role"] != "assistant" or not shown[1]["content"]:
        raise ApiError(409, "A title is written once the first reply is there; send a message first.", "no_exchange")
    provisional = (conversation["titled_by"] == "message" if conversation.get("titled_by")
                   else conversation["title"] == title_from(shown[0]["content"]))  # kept before titled_by was
    if not provisional or not current_app.config["WEBBOT_GENERATE_TITLES"]:
        return jsonify(conversation_view(conversation))  # renamed by hand (or titled already): keep it
    try:
        title = titles.generate(app_services.bot, shown[0]["content"], shown[1]["content"], current_owner())
    except Exception:  # a busy or failing model keeps the provisional title; nothing is lost
        log.warning("could not generate a title for %s", conversation_id, exc_info=True)
        title = ""
    now = own(conversation_id)  # the model took a while: an edit or a rename meanwhile wins
    still = path_to(app_services.store.messages(conversation_id), now["leaf_id"])
    if title and now.get("titled_by") == conversation.get("titled_by") and still and still[0]["id"] == shown[0]["id"]:
        app_services.store.rename(current_owner(), conversation_id, title, titled_by="model")
    return jsonify(conversation_view(own(conversation_id)))

