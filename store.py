"""Conversations and their messages, kept in a SQL database (SQLite under the data dir by default, or
WEBBOT_DATABASE_URL; `database.py` connects and migrates it).

Every read and write names the owner (the browser session that made the conversation),
so one session can never see or change another's conversations: a foreign id behaves
exactly like an unknown one. Messages are only appended or finished, never cut, so
memory trimming can never lose stored history.
"""

import time
import uuid

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    select,
    update,
)

metadata = MetaData()

conversations = Table(
    "conversations", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("title", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
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
)

TITLE_CHARS = 60


def title_from(text: str) -> str:
    """A short conversation title from its first message."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1].rstrip() + "…"


class Store:
    """Reads and writes conversations; safe to share between threads."""

    def __init__(self, engine):
        self.engine = engine  # from database.connect, its schema upgraded by database.upgrade

    def create_conversation(self, owner: str, title: str = "New chat") -> dict:
        """Make an empty conversation for this owner."""
        now = time.time()
        row = {"id": uuid.uuid4().hex, "owner": owner, "title": title, "created_at": now, "updated_at": now}
        with self.engine.begin() as db:
            db.execute(conversations.insert().values(**row))
        return row

    def list_conversations(self, owner: str) -> list[dict]:
        """This owner's conversations, most recently used first."""
        with self.engine.connect() as db:
            rows = db.execute(select(conversations).where(conversations.c.owner == owner)
                              .order_by(conversations.c.updated_at.desc())).mappings().all()
        return [dict(r) for r in rows]

    def count_conversations(self, owner: str) -> int:
        """How many conversations this owner has."""
        with self.engine.connect() as db:
            return db.execute(select(func.count()).select_from(conversations)
                              .where(conversations.c.owner == owner)).scalar_one()

    def reassign(self, from_owner: str, to_owner: str) -> int:
        """Give all of one owner's conversations to another (claiming a browser's chats on sign-in)."""
        with self.engine.begin() as db:
            return db.execute(update(conversations).where(conversations.c.owner == from_owner)
                              .values(owner=to_owner)).rowcount

    def get_conversation(self, owner: str, conversation_id: str) -> dict | None:
        """One conversation, or None when it does not exist or belongs to someone else."""
        with self.engine.connect() as db:
            row = db.execute(select(conversations).where(
                conversations.c.id == conversation_id, conversations.c.owner == owner)).mappings().first()
        return dict(row) if row else None

    def rename(self, owner: str, conversation_id: str, title: str) -> bool:
        """Give a conversation a new title; False when it is not this owner's."""
        with self.engine.begin() as db:
            result = db.execute(update(conversations).where(
                conversations.c.id == conversation_id, conversations.c.owner == owner).values(title=title))
        return result.rowcount == 1

    def delete(self, owner: str, conversation_id: str) -> bool:
        """Delete a conversation and its messages; False when it is not this owner's."""
        with self.engine.begin() as db:
            if db.execute(select(conversations.c.id).where(
                    conversations.c.id == conversation_id, conversations.c.owner == owner)).first() is None:
                return False
            db.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
            db.execute(delete(conversations).where(conversations.c.id == conversation_id))
        return True

    def messages(self, conversation_id: str) -> list[dict]:
        """All stored messages of a conversation, oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(messages).where(messages.c.conversation_id == conversation_id)
                              .order_by(messages.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def add_message(self, conversation_id: str, role: str, content: str, status: str = "complete") -> dict:
        """Append a message and mark the conversation as just used."""
        now = time.time()
        with self.engine.begin() as db:
            new_id = db.execute(messages.insert().values(
                conversation_id=conversation_id, role=role, content=content, status=status,
                created_at=now)).inserted_primary_key[0]
            db.execute(update(conversations).where(conversations.c.id == conversation_id).values(updated_at=now))
        return {"id": new_id, "conversation_id": conversation_id, "role": role, "content": content,
                "status": status, "created_at": now}

    def add_turn(self, conversation_id: str, content: str, title: str) -> tuple[dict, dict]:
        """In one transaction: the user's message, an empty reply marked streaming, and the title; returns
        (user message, reply)."""
        now = time.time()
        rows = []
        with self.engine.begin() as db:
            for role, text, status in (("user", content, "complete"), ("assistant", "", "streaming")):
                row = {"conversation_id": conversation_id, "role": role, "content": text, "status": status,
                       "created_at": now}
                rows.append({"id": db.execute(messages.insert().values(**row)).inserted_primary_key[0], **row})
            db.execute(update(conversations).where(conversations.c.id == conversation_id)
                       .values(updated_at=now, title=title))
        return rows[0], rows[1]

    def finish_message(self, message_id: int, content: str, status: str) -> None:
        """Store the final text and status of a reply that was streaming."""
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

