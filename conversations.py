"""The chat page's JSON routes: conversations (list, new, rename, delete, export), sending and stopping.

Sending a message streams the reply as server-sent events: `start` (the stored user
message and the memory gauge), `token` (text, and now and then the Markdown so far as
sanitised HTML), then `done` or `error`. The reply is written to the database while it
streams, so a crash or a closed tab loses at most a couple of seconds of it, and a
closed tab or the Stop button halts generation on the server.
"""

import json
import logging
import threading
import time

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.utils import secure_filename

import settings
from rendering import render_markdown
from store import title_from
from streaming import event_stream, pieces, sse
from upstream import UpstreamError
from validation import BadInput, json_body, message_text, sampling_params, start_reply
from web import current_owner

log = logging.getLogger(__name__)
bp = Blueprint("conversations", __name__, url_prefix="/api")
HTML_EVERY_S = 0.25  # how often a streaming reply's Markdown is re-rendered for the page
SAVE_RETRY_S, SAVE_RETRY_FOR_S = 2.0, 600.0  # a finished reply waits this long for a database that is down
EXPORTS = {"json": ("application/json", "json"), "markdown": ("text/markdown; charset=utf-8", "md")}


def _state():
    return current_app.extensions["webbot"]


def _own(conversation_id: str) -> dict:
    conversation = _state().store.get_conversation(current_owner(), conversation_id)
    if conversation is None:
        raise BadInput(404, "There is no such conversation here; it may have been deleted.", "conversation_not_found")
    return conversation


def message_view(message: dict) -> dict:
    """A stored message as the page shows it: assistant text rendered to safe HTML."""
    view = {key: message[key] for key in ("id", "role", "content", "status", "created_at")}
    if message["role"] == "assistant":
        view["html"] = render_markdown(message["content"])
    return view


def save_when_back(store, message_id: int, text: str, status: str) -> None:
    """Keep trying to store a finished reply (every SAVE_RETRY_S, for up to SAVE_RETRY_FOR_S) in a thread."""
    def retry():
        deadline = time.monotonic() + SAVE_RETRY_FOR_S
        while time.monotonic() < deadline:
            time.sleep(SAVE_RETRY_S)
            try:
                store.finish_message(message_id, text, status)
                log.info("reply %s saved after the database came back", message_id)
                return
            except DBAPIError:
                continue
        log.error("reply %s could not be saved: the database stayed unreachable", message_id)

    threading.Thread(target=retry, daemon=True, name="save-when-back").start()


def history_of(messages: list[dict]) -> list[dict]:
    """Stored messages as chat-template messages."""
    return [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] in ("user", "assistant")]


@bp.get("/conversations")
def list_conversations():
    return jsonify(conversations=_state().store.list_conversations(current_owner()))


@bp.post("/conversations")
def new_conversation():
    body = json_body()
    title = body.get("title") or "New chat"
    if not isinstance(title, str) or len(title) > settings.MAX_TITLE_CHARS:
        raise BadInput(400, f"'title' must be text of at most {settings.MAX_TITLE_CHARS} characters.", "invalid_title")
    store, owner, most = _state().store, current_owner(), current_app.config["WEBBOT_MAX_CONVERSATIONS"]
    if store.count_conversations(owner) >= most:
        raise BadInput(409, f"You have {most} conversations, the most this server keeps for one person; delete some "
                            "to start a new one.", "too_many_conversations")
    return jsonify(store.create_conversation(owner, title.strip() or "New chat")), 201


@bp.get("/conversations/<conversation_id>")
def get_conversation(conversation_id):
    conversation = _own(conversation_id)
    state = _state()
    # Look before reading the messages: a reply is stored in its final state before it stops
    # counting as running, so "not generating" here means the messages below are final.
    generating = state.active.get(conversation_id) is not None
    stored = state.store.messages(conversation_id)
    memory = None
    if state.bot.ready:
        memory = state.bot.plan(history_of(stored), "").as_dict()
    return jsonify(conversation=conversation, messages=[message_view(m) for m in stored], memory=memory,
                   generating=generating)


@bp.get("/conversations/<conversation_id>/export")
def export_conversation(conversation_id):
    """One conversation as a download: `?format=json` (the default) or `markdown`."""
    conversation = _own(conversation_id)
    kind = request.args.get("format", "json")
    if kind not in EXPORTS:
        raise BadInput(400, "'format' must be json or markdown.", "invalid_format")
    stored = _state().store.messages(conversation_id)
    fields = ("role", "content", "status", "created_at")
    if kind == "json":
        body = json.dumps({"title": conversation["title"], "created_at": conversation["created_at"],
                           "messages": [{k: m[k] for k in fields} for m in stored]}, ensure_ascii=False, indent=2)
    else:
        parts = [f"# {conversation['title']}\n"]
        parts += [f"**{m['role'].capitalize()}:**\n\n{m['content']}\n" for m in stored]
        body = "\n".join(parts)
    mimetype, suffix = EXPORTS[kind]
    name = secure_filename(conversation["title"]) or "conversation"
    return Response(body, mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'})


@bp.patch("/conversations/<conversation_id>")
def rename_conversation(conversation_id):
    _own(conversation_id)
    body = json_body()
    title = body.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > settings.MAX_TITLE_CHARS:
        raise BadInput(400, f"'title' must be non-empty text of at most {settings.MAX_TITLE_CHARS} characters.",
                       "invalid_title")
    _state().store.rename(current_owner(), conversation_id, title.strip())
    return jsonify(_own(conversation_id))


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id):
    _own(conversation_id)
    state = _state()
    running = state.active.get(conversation_id)
    if running is not None:
        running.cancel()
    state.store.delete(current_owner(), conversation_id)
    return "", 204


@bp.post("/conversations/<conversation_id>/stop")
def stop(conversation_id):
    _own(conversation_id)
    running = _state().active.get(conversation_id)
    if running is not None:
        running.cancel()
    return jsonify(stopped=running is not None)


@bp.post("/conversations/<conversation_id>/messages")
def send_message(conversation_id):
    conversation = _own(conversation_id)
    body = json_body()
    content = message_text(body.get("content"))
    params = sampling_params(body, default_temperature=current_app.config["WEBBOT_TEMPERATURE"])
    state = _state()
    bot, store = state.bot, state.store
    plan, stream = start_reply(bot, history_of(store.messages(conversation_id)), content, params, None,
                               ("Shorten it or split it into several messages.", "message_too_long"))
    try:
        claimed = state.active.claim(conversation_id, stream)
    except Exception:  # Redis is down: a 503, and the reply never starts
        stream.cancel()
        raise
    if not claimed:
        stream.cancel()
        raise BadInput(409, "A reply is still being written in this conversation; stop it or wait for it.", "busy")
    title = title_from(content) if conversation["title"] == "New chat" else conversation["title"]
    try:  # one transaction: the message, the empty reply and the title are all stored, or none of them
        user, reply = store.add_turn(conversation_id, content, title)
    except Exception:
        stream.cancel()
        state.active.release(conversation_id, stream)
        raise
    finished = {}

    def finish(status: str) -> None:
        if not finished:
            finished["status"] = status
            try:
                store.finish_message(reply["id"], stream.text, status)
            except DBAPIError:  # the database is down: the reply lands when it is back
                log.warning("database unreachable; reply %s will be saved when it returns", reply["id"])
                save_when_back(store, reply["id"], stream.text, status)

    def events():
        yield sse({"user": message_view(user), "reply_id": reply["id"], "title": title,
                   "memory": plan.as_dict()}, "start")
        last_html = last_save = time.monotonic()
        sent = ""  # the worker may be ahead of the events; the HTML must match what was sent
        for piece in pieces(stream, settings.STREAM_HEARTBEAT_S):
            if piece is None:
                yield ": waiting for the model\n\n"
                continue
            sent += piece
            event = {"text": piece}
            now = time.monotonic()
            if now - last_html >= HTML_EVERY_S:
                event["html"], last_html = render_markdown(sent), now
            if now - last_save >= settings.PARTIAL_SAVE_S:
                last_save = now
                try:
                    store.finish_message(reply["id"], stream.text, "streaming")
                except DBAPIError:  # the database is down for a moment: the final save tries again
                    log.warning("could not save the partial reply %s", reply["id"])
            yield sse(event, "token")
        if stream.finish_reason == "error":
            if isinstance(stream.error, UpstreamError):  # the model server went away: keep what came
                finish("interrupted")
                yield sse({"message": f"{stream.error.sentence} What arrived is kept.", "code": stream.error.code,
                           "status": "interrupted"}, "error")
                return
            finish("error")
            yield sse({"message": "The model failed while writing this reply; the error is in the server log."},
                      "error")
            return
        finish("stopped" if stream.finish_reason == "cancelled" else "complete")
        done = message_view({**reply, "content": stream.text, "status": finished["status"]})
        try:
            after = bot.plan(history_of(store.messages(conversation_id)), "").as_dict()  # the gauge for the next turn
        except DBAPIError:
            after = None  # the database is down; the page hides the gauge until the next turn
        yield sse({"message": done, "finish_reason": stream.finish_reason, "usage": stream.usage(),
                   "memory": after}, "done")

    def on_close():
        stream.cancel()  # no effect once finished; halts generation when the client left early
        finish("stopped")
        state.active.release(conversation_id, stream)

    return event_stream(events(), on_close)
