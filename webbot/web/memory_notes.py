"""The routes of the model's notes of turns outside memory (WEBBOT_MEMORY_SUMMARY=on, see `model/notes.py`).

After a reply, when the gauge counts messages outside memory that no note covers yet
("unnoted"), the page asks for notes of them; they are kept on the last message they
cover and shown under it, where a person can correct them or clear them (kept as "nothing
worth keeping": the model does not write them again). Every route names the owner:
someone else's conversation or message is a 404.
"""

import logging
import queue

from flask import Blueprint, current_app, jsonify

from webbot.config import MAX_NOTE_CHARS
from webbot.model import notes
from webbot.model.memory import MessageTooLong
from webbot.model.stream import EngineBusy
from webbot.storage.branches import path_to
from webbot.web.conversations import branch_plan, memory_gauge, memory_of, message_view, own, reply_settings
from webbot.web.errors import ApiError
from webbot.web.generation import require_ready
from webbot.web.inputs import json_body, text_field
from webbot.web.owners import current_owner
from webbot.web.services import services

log = logging.getLogger(__name__)
bp = Blueprint("memory_notes", __name__, url_prefix="/api")


def _gauge(conversation: dict) -> dict | None:
    app_services, chosen = services(), reply_settings(conversation)
    shown = path_to(app_services.store.messages(conversation["id"]), conversation["leaf_id"])
    return memory_gauge(app_services.bot, app_services.documents, current_owner(), shown, chosen["system_prompt"],
                        chosen["recall"])


@bp.post("/conversations/<conversation_id>/notes")
def write_notes(conversation_id):
    """Have the model write notes of the shown branch's messages outside memory that no note covers yet (as many
    as one prompt holds: the answer's "unnoted" says how many are left)."""
    conversation = own(conversation_id)
    if not current_app.config["WEBBOT_MEMORY_SUMMARY"]:
        raise ApiError(409, "Notes of earlier messages are off on this server; its admin turns them on with "
                            "WEBBOT_MEMORY_SUMMARY=on.", "notes_off")
    app_services, owner = services(), current_owner()
    require_ready(app_services.bot)
    chosen = reply_settings(conversation)
    shown = path_to(app_services.store.messages(conversation_id), conversation["leaf_id"])
    plan = branch_plan(app_services.bot, app_services.documents, owner, shown, chosen["system_prompt"],
                       chosen["recall"])
    if not plan.unnoted:
        return jsonify(message=None, noted=0, memory=_gauge(conversation))
    history, ids, _ = memory_of(shown)
    first = plan.first_kept - plan.unnoted
    try:
        count, note = notes.generate(app_services.bot, history[first:plan.first_kept], owner)
    except EngineBusy:
        raise ApiError(503, "The server is busy with replies; the notes are written after a later reply.", "busy",
                       {"Retry-After": "10"}) from None
    except queue.Empty:
        raise ApiError(503, "The model took too long to write the notes; they are written after a later reply.",
                       "notes_timeout") from None
    except MessageTooLong:  # the instruction alone overflows a very small context (WEBBOT_MAX_TOKENS)
        raise ApiError(409, "The model's context is too small to write notes; raise WEBBOT_MAX_TOKENS or turn "
                            "WEBBOT_MEMORY_SUMMARY off.", "notes_do_not_fit") from None
    last = ids[first + count - 1]
    stored = app_services.store.message(conversation_id, last)
    if stored is not None and stored.get("note") is None:  # a note written meanwhile (another tab) is kept
        stored = app_services.store.set_note(owner, conversation_id, last, note)
    if stored is None:  # the conversation was deleted meanwhile
        raise ApiError(404, "There is no such conversation here; it may have been deleted.", "conversation_not_found")
    return jsonify(message=message_view(stored), noted=count, memory=_gauge(own(conversation_id)))


def _note_of(body: dict) -> str:
    note = body.get("note")
    if not isinstance(note, str):
        raise ApiError(400, "'note' must be text: the notes to keep (empty: nothing worth keeping).", "invalid_note")
    note = "\n".join(line.rstrip() for line in note.strip().splitlines())
    if len(note) > MAX_NOTE_CHARS:
        raise ApiError(400, f"The note is {len(note)} characters; keep it to {MAX_NOTE_CHARS}.", "note_too_long")
    return text_field(note, "The note")


@bp.put("/conversations/<conversation_id>/messages/<int:message_id>/note")
def save_note(conversation_id, message_id):
    """Keep `{"note": "..."}` as the notes ending at this message ("" for nothing worth keeping: the model does
    not write them again)."""
    conversation = own(conversation_id)
    note = _note_of(json_body())
    message = services().store.set_note(current_owner(), conversation_id, message_id, note)
    if message is None:
        raise ApiError(404, "This conversation has no such message; reload the page.", "message_not_found")
    return jsonify(message=message_view(message), memory=_gauge(conversation))

