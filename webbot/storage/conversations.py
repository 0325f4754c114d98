"""Conversations and their messages, kept in a SQL database (SQLite under the data dir by default, or
WEBBOT_DATABASE_URL; `database.py` connects and migrates it).

Every read and write names the owner (the browser session that made the conversation),
so one session can never see or change another's conversations: a foreign id behaves
exactly like an unknown one. Messages are only appended or finished, never cut, so
memory trimming can never lose stored history. Messages form a tree (`branches.py`):
an edit or a regenerated reply is a new sibling, and `leaf_id` says which branch is shown.
A deleted conversation is hidden at once and purged after UNDO_S, so Undo can bring it back.
"""

import json
import time
import uuid

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    false,
    func,
    select,
    update,
)

from webbot.config import TITLE_FROM_MESSAGE_CHARS, UNDO_S
from webbot.storage import database, search

metadata = MetaData()

conversations = Table(
    "conversations", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("title", String(200), nullable=False),
    # who wrote the title: message (cut from the first message), model, person (renamed or imported); None: before
    # this was kept
    Column("titled_by", String(16)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("leaf_id", Integer),  # the last message of the branch the page shows; None: the newest
    Column("pinned", Boolean, nullable=False, default=False, server_default=false()),
    Column("deleted_at", Float),  # set by Delete; the row is purged UNDO_S later unless restored
    Column("settings", Text),  # JSON: this conversation's own sampling settings and system prompt
)

messages = Table(
    "messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", String(32), ForeignKey("conversations.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    # complete | streaming | stopped (by the user or a closed tab) | interrupted (the server died) | error
    Column("status", String(16), nullable=False, default="complete"),
    Column("created_at", Float, nullable=False),
    Column("parent_id", Integer, index=True),  # the message this one follows; None for a first message
    Column("pinned", Boolean, nullable=False, default=False, server_default=false()),  # kept ahead of the window
    Column("recalled", Text),  # JSON: for a reply, the ids of the messages recalled from outside memory for it
    Column("documents", Text),  # JSON: for a user message, the ids of the documents attached to it
    Column("sources", Text),  # JSON: for a reply, the document passages it was given ({"document", "source"})
    # the model's notes (or a person's edit of them) of the messages up to this one since the previous note on its
    # branch, written once they fell out of memory; "": noted, with nothing worth keeping
    Column("note", Text),
)

documents = Table(
    "documents", metadata,  # attached files (storage/documents.py reads and writes them)
    Column("id", String(32), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),
    # the conversation it was attached in; None for a file uploaded through /v1/files
    Column("conversation_id", String(32), ForeignKey("conversations.id", ondelete="CASCADE"), index=True),
    Column("name", String(255), nullable=False),
    Column("kind", String(16), nullable=False),  # pdf | docx | html | markdown | text
    Column("media_type", String(128), nullable=False),
    Column("size", Integer, nullable=False),  # bytes of the file, counted against the owner's quota
    Column("pages", Integer, nullable=False),
    Column("tokens", Integer, nullable=False),  # of its text, counted with the model's tokenizer when attached
    Column("data", LargeBinary, nullable=False),
    Column("text", Text, nullable=False),
    Column("passages", Text, nullable=False),  # JSON: [{"source", "text"}]
    Column("sent", Boolean, nullable=False, default=False, server_default=false()),  # on a message (not a draft)
    Column("created_at", Float, nullable=False),
)

preferences = Table(
    "preferences", metadata,
    Column("owner", String(64), primary_key=True),
    Column("settings", Text, nullable=False),  # JSON: this person's default settings for new replies
)

AFTER_LEAF = object()  # add_message's default place: after the last message of the shown branch


def title_from(text: str) -> str:
    """A short conversation title from its first message."""
    line = " ".join(text.split())
    most = TITLE_FROM_MESSAGE_CHARS
    return line if len(line) <= most else line[:most - 1].rstrip() + "…"


def _message(row) -> dict:
    message = dict(row)
    message["pinned"] = bool(message["pinned"])
    message["recalled"] = json.loads(message["recalled"]) if message["recalled"] else []
    message["documents"] = json.loads(message["documents"]) if message.get("documents") else []
    message["sources"] = json.loads(message["sources"]) if message.get("sources") else []
    return message


def _conversation(row) -> dict:
    conversation = dict(row)
    conversation["pinned"] = bool(conversation["pinned"])
    conversation["settings"] = json.loads(conversation["settings"]) if conversation["settings"] else None
    return conversation


class Store:
    """Reads and writes conversations; safe to share between threads."""

    def __init__(self, engine):
        self.engine = engine  # from database.connect, its schema upgraded by database.upgrade

    def check(self) -> dict:
        """The database's state for /healthz."""
        return database.check(self.engine)

    def _mine(self, owner: str, conversation_id: str | None = None):
        """The WHERE clause for this owner's conversations that are not deleted."""
        clause = (conversations.c.owner == owner) & conversations.c.deleted_at.is_(None)
        return clause if conversation_id is None else clause & (conversations.c.id == conversation_id)

    def create_conversation(self, owner: str, title: str = "New chat", titled_by: str = "message") -> dict:
        """Make an empty conversation for this owner."""
        now = time.time()
        row = {"id": uuid.uuid4().hex, "owner": owner, "title": title, "titled_by": titled_by, "created_at": now,
               "updated_at": now, "pinned": False}
        with self.engine.begin() as db:
            db.execute(conversations.insert().values(**row))
        return {**row, "leaf_id": None, "deleted_at": None, "settings": None}

    def list_conversations(self, owner: str) -> list[dict]:
        """This owner's conversations: pinned first, then the most recently used."""
        with self.engine.connect() as db:
            rows = db.execute(select(conversations).where(self._mine(owner))
                              .order_by(conversations.c.pinned.desc(), conversations.c.updated_at.desc())).mappings()
            return [_conversation(r) for r in rows]

    def count_conversations(self, owner: str) -> int:
        """How many conversations this owner has."""
        with self.engine.connect() as db:
            return db.execute(select(func.count()).select_from(conversations).where(self._mine(owner))).scalar_one()

    def reassign(self, from_owner: str, to_owner: str) -> int:
        """Give all of one owner's conversations to another (claiming a browser's chats on sign-in)."""
        with self.engine.begin() as db:
            return db.execute(update(conversations).where(conversations.c.owner == from_owner)
                              .values(owner=to_owner)).rowcount

    def get_conversation(self, owner: str, conversation_id: str) -> dict | None:
        """One conversation, or None when it does not exist, is deleted or belongs to someone else."""
        with self.engine.connect() as db:
            row = db.execute(select(conversations).where(self._mine(owner, conversation_id))).mappings().first()
        return _conversation(row) if row else None

    def update_conversation(self, owner: str, conversation_id: str, **values) -> bool:
        """Change a conversation's title, pin or settings; False when it is not this owner's."""
        if "settings" in values:
            values["settings"] = json.dumps(values["settings"]) if values["settings"] else None
        with self.engine.begin() as db:
            result = db.execute(update(conversations).where(self._mine(owner, conversation_id)).values(**values))
        return result.rowcount == 1

    def rename(self, owner: str, conversation_id: str, title: str, titled_by: str = "person") -> bool:
        """Give a conversation a new title (written by a person, or the model); False when it is not this owner's."""
        return self.update_conversation(owner, conversation_id, title=title, titled_by=titled_by)

    def delete(self, owner: str, conversation_id: str) -> tuple[bool, list[str]]:
        """Hide a conversation at once (restorable for UNDO_S) and purge ones deleted longer ago; returns whether
        it was hidden, and the ids of the conversations purged for good."""
        now = time.time()
        with self.engine.begin() as db:
            hidden = db.execute(update(conversations).where(self._mine(owner, conversation_id))
                                .values(deleted_at=now)).rowcount == 1
        return hidden, self.purge_deleted(now - UNDO_S)

    def restorable(self, owner: str, conversation_id: str) -> bool:
        """Whether this owner deleted this conversation less than UNDO_S ago."""
        with self.engine.connect() as db:
            return db.execute(select(conversations.c.id).where(
                conversations.c.id == conversation_id, conversations.c.owner == owner,
                conversations.c.deleted_at > time.time() - UNDO_S)).first() is not None

    def restore(self, owner: str, conversation_id: str) -> dict | None:
        """Bring back a conversation deleted less than UNDO_S ago; None when it is gone."""
        with self.engine.begin() as db:
            db.execute(update(conversations).where(
                conversations.c.id == conversation_id, conversations.c.owner == owner,
                conversations.c.deleted_at > time.time() - UNDO_S).values(deleted_at=None))
        return self.get_conversation(owner, conversation_id)

    def purge_deleted(self, before: float) -> list[str]:
        """Remove conversations (and their messages) deleted before `before`; returns their ids."""
        with self.engine.begin() as db:
            ids = list(db.execute(select(conversations.c.id).where(conversations.c.deleted_at < before)).scalars())
            if ids:
                db.execute(delete(documents).where(documents.c.conversation_id.in_(ids)))
                db.execute(delete(messages).where(messages.c.conversation_id.in_(ids)))
                db.execute(delete(conversations).where(conversations.c.id.in_(ids)))
            return ids

    def messages(self, conversation_id: str) -> list[dict]:
        """All stored messages of a conversation (every branch), oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(messages).where(messages.c.conversation_id == conversation_id)
                              .order_by(messages.c.id)).mappings().all()
        return [_message(r) for r in rows]

    def message(self, conversation_id: str, message_id) -> dict | None:
        """One message of a conversation, or None."""
        with self.engine.connect() as db:
            row = db.execute(select(messages).where(messages.c.conversation_id == conversation_id,
                                                    messages.c.id == message_id)).mappings().first()
        return _message(row) if row else None

    def add_message(self, conversation_id: str, role: str, content: str, status: str = "complete",
                    parent_id: int | None | object = AFTER_LEAF, recalled: list[int] = (),
                    sources: list[dict] = ()) -> dict:
        """Add a message after `parent_id` (by default at the end of the shown branch), show its branch and mark
        the conversation as just used. `recalled` and `sources`: for a reply, the messages recalled for it and
        the document passages it was given."""
        now = time.time()
        row = {"conversation_id": conversation_id, "role": role, "content": content, "status": status,
               "created_at": now, "parent_id": parent_id, "pinned": False,
               "recalled": json.dumps(list(recalled)) if recalled else None,
               "sources": json.dumps(list(sources)) if sources else None}
        with self.engine.begin() as db:
            if parent_id is AFTER_LEAF:
                row["parent_id"] = db.execute(select(conversations.c.leaf_id).where(
                    conversations.c.id == conversation_id)).scalar()
            row["id"] = db.execute(messages.insert().values(**row)).inserted_primary_key[0]
            db.execute(update(conversations).where(conversations.c.id == conversation_id)
                       .values(updated_at=now, leaf_id=row["id"]))
        return _message(row)

    def add_turn(self, conversation_id: str, content: str, title: str, parent_id: int | None = None,
                 recalled: list[int] = (), attached: list[str] = (), sources: list[dict] = (),
                 titled_by: str | None = None) -> tuple[dict, dict]:
        """In one transaction: the user's message after `parent_id` (with the documents `attached` to it, no
        longer drafts), an empty reply marked streaming (with the ids of the messages `recalled` for it and the
        document passages `sources` it was given), the title, and that branch shown; returns (user message,
        reply)."""
        now = time.time()
        rows = []
        with self.engine.begin() as db:
            for role, text, status in (("user", content, "complete"), ("assistant", "", "streaming")):
                row = {"conversation_id": conversation_id, "role": role, "content": text, "status": status,
                       "created_at": now, "parent_id": rows[-1]["id"] if rows else parent_id, "pinned": False,
                       "recalled": json.dumps(list(recalled)) if recalled and role == "assistant" else None,
                       "documents": json.dumps(list(attached)) if attached and role == "user" else None,
                       "sources": json.dumps(list(sources)) if sources and role == "assistant" else None}
                rows.append({"id": db.execute(messages.insert().values(**row)).inserted_primary_key[0], **row})
            if attached:
                db.execute(update(documents).where(documents.c.conversation_id == conversation_id,
                                                   documents.c.id.in_(list(attached))).values(sent=True))
            values = {"titled_by": titled_by} if titled_by else {}
            db.execute(update(conversations).where(conversations.c.id == conversation_id)
                       .values(updated_at=now, title=title, leaf_id=rows[1]["id"], **values))
        return _message(rows[0]), _message(rows[1])

    def show_branch(self, conversation_id: str, leaf_id: int) -> None:
        """Make the branch ending at `leaf_id` the one the page shows."""
        with self.engine.begin() as db:
            db.execute(update(conversations).where(conversations.c.id == conversation_id).values(leaf_id=leaf_id))

    def pin_message(self, owner: str, conversation_id: str, message_id: int, pinned: bool) -> dict | None:
        """Pin a message of this owner's conversation (or unpin it); the message, or None when there is no such
        message for this owner."""
        return self._change_message(owner, conversation_id, message_id, pinned=pinned)

    def set_note(self, owner: str, conversation_id: str, message_id: int, note: str) -> dict | None:
        """Keep `note` (the notes of the messages up to this one; "" for none worth keeping) on a message of this
        owner's conversation; the message, or None when there is no such message for this owner."""
        return self._change_message(owner, conversation_id, message_id, note=note)

    def _change_message(self, owner: str, conversation_id: str, message_id: int, **values) -> dict | None:
        with self.engine.begin() as db:
            mine = db.execute(select(conversations.c.id).where(self._mine(owner, conversation_id))).first()
            if mine is None:
                return None
            changed = db.execute(update(messages).where(messages.c.conversation_id == conversation_id,
                                                        messages.c.id == message_id).values(**values)).rowcount
        return self.message(conversation_id, message_id) if changed else None

    def set_recalled(self, message_id: int, recalled: list[int], sources: list[dict] = ()) -> None:
        """Record which messages were recalled for a reply and which document passages it was given (a
        continued reply gets those of both its parts)."""
        with self.engine.begin() as db:
            db.execute(update(messages).where(messages.c.id == message_id)
                       .values(recalled=json.dumps(list(recalled)) if recalled else None,
                               sources=json.dumps(list(sources)) if sources else None))

    def finish_message(self, message_id: int, content: str, status: str) -> None:
        """Store the text and status of a reply (while it streams, and when it ends)."""
        with self.engine.begin() as db:
            db.execute(update(messages).where(messages.c.id == message_id).values(content=content, status=status))

    def count_messages(self) -> int:
        """All messages stored, for every owner (used by health checks and tests)."""
        with self.engine.connect() as db:
            return db.execute(select(func.count()).select_from(messages)).scalar_one()

    def close_interrupted(self, live: set[str] = frozenset()) -> int:
        """Mark replies left 'streaming' by a process that died as interrupted, except in the conversations
        `live` (still being written by another replica); returns how many."""
        query = update(messages).where(messages.c.status == "streaming")
        if live:
            query = query.where(messages.c.conversation_id.not_in(live))
        with self.engine.begin() as db:
            return db.execute(query.values(status="interrupted")).rowcount

    def search(self, owner: str, query: str, limit: int = 30) -> list[dict]:
        """This owner's conversations whose title or messages match `query`, best first, with a snippet."""
        with self.engine.connect() as db:
            return search.find(db, owner, query, limit)

    def preferences(self, owner: str) -> dict:
        """This owner's default settings ({} when none are saved)."""
        with self.engine.connect() as db:
            saved = db.execute(select(preferences.c.settings).where(preferences.c.owner == owner)).scalar()
        return json.loads(saved) if saved else {}

    def save_preferences(self, owner: str, values: dict) -> None:
        """Replace this owner's default settings."""
        with self.engine.begin() as db:
            db.execute(delete(preferences).where(preferences.c.owner == owner))
            db.execute(preferences.insert().values(owner=owner, settings=json.dumps(values)))

    def import_conversations(self, owner: str, items: list[dict]) -> list[dict]:
        """Store checked conversations from an export (`transfer.parse`) as new ones, all in one transaction; each
        file of an item's "documents" carries its columns (read by the web layer) in "row"."""
        made = []
        with self.engine.begin() as db:
            for item in items:
                now = time.time()
                conversation = {"id": uuid.uuid4().hex, "owner": owner, "title": item["title"], "titled_by": "person",
                                "created_at": item["created_at"] or now, "updated_at": now, "pinned": False,
                                "settings": json.dumps(item["settings"]) if item["settings"] else None}
                db.execute(conversations.insert().values(**conversation))
                new_ids, leaf, file_ids = {}, None, {}
                for old_id, file in item.get("documents", {}).items():  # read already: see `stored_document`
                    file_ids[old_id] = uuid.uuid4().hex
                    db.execute(documents.insert().values(id=file_ids[old_id], owner=owner,
                                                         conversation_id=conversation["id"], sent=True,
                                                         created_at=now, **file["row"]))
                for message in item["messages"]:
                    recalled = [new_ids[old] for old in message["recalled"] if old in new_ids]
                    attached = [file_ids[old] for old in message.get("documents", []) if old in file_ids]
                    sources = [{**s, "document": file_ids.get(s["document"])} for s in message.get("sources", [])]
                    new_ids[message["id"]] = db.execute(messages.insert().values(
                        conversation_id=conversation["id"], role=message["role"], content=message["content"],
                        status=message["status"], created_at=message["created_at"] or now,
                        parent_id=new_ids.get(message["parent"]), pinned=message["pinned"],
                        recalled=json.dumps(recalled) if recalled else None,
                        documents=json.dumps(attached) if attached else None,
                        sources=json.dumps(sources) if sources else None,
                        note=message.get("note"))).inserted_primary_key[0]
                    leaf = new_ids[message["id"]]
                leaf = new_ids.get(item["leaf"], leaf)
                db.execute(update(conversations).where(conversations.c.id == conversation["id"]).values(leaf_id=leaf))
                made.append(_conversation({**conversation, "leaf_id": leaf, "deleted_at": None}))
        return made
