"""Attached files, kept in the database beside the conversations (`conversations.documents`).

Every read names the owner: another person's document behaves exactly like one that does
not exist. A document attached on the chat page belongs to a conversation: it is a draft
until a message is sent with it, is hidden while its conversation is deleted (and comes back
with Undo), and is purged with it. A file uploaded through /v1/files belongs to no
conversation. The bytes are kept as they came, so the file can be downloaded and exported.
"""

import json
import time
import uuid

from sqlalchemy import delete, func, or_, select

from webbot.storage.conversations import conversations, documents

META = [documents.c[name] for name in ("id", "owner", "conversation_id", "name", "kind", "media_type", "size",
                                       "pages", "tokens", "sent", "created_at")]


def _visible(owner: str):
    """This owner's documents whose conversation (if any) is not deleted."""
    live = select(conversations.c.id).where(conversations.c.deleted_at.is_(None))
    return (documents.c.owner == owner) & or_(documents.c.conversation_id.is_(None),
                                              documents.c.conversation_id.in_(live))


def columns(document, data: bytes, tokens: int) -> dict:
    """What a row keeps of an extracted document and its file (besides who owns it, where and when)."""
    return {"name": document.name, "kind": document.kind, "media_type": document.media_type, "size": len(data),
            "pages": document.pages, "tokens": tokens, "data": data, "text": document.text,
            "passages": json.dumps(document.passages)}


class DocumentStore:
    """Reads and writes attached files; safe to share between threads."""

    def __init__(self, engine):
        self.engine = engine

    def add(self, owner: str, conversation_id: str | None, document, data: bytes, tokens: int) -> dict:
        """Keep an extracted document (`documents.extraction.Document`) and its file's bytes; its stored view."""
        row = {"id": uuid.uuid4().hex, "owner": owner, "conversation_id": conversation_id,
               **columns(document, data, tokens), "sent": conversation_id is None, "created_at": time.time()}
        with self.engine.begin() as db:
            db.execute(documents.insert().values(**row))
        return {column.name: row[column.name] for column in META}

    def used_bytes(self, owner: str) -> int:
        """The bytes of every file this owner keeps (deleted conversations count until they are purged)."""
        with self.engine.connect() as db:
            return db.execute(select(func.coalesce(func.sum(documents.c.size), 0))
                              .where(documents.c.owner == owner)).scalar_one()

    def get(self, owner: str, document_id: str) -> dict | None:
        """A document's stored view (no bytes, no text), or None when it is not this owner's."""
        with self.engine.connect() as db:
            row = db.execute(select(*META).where(_visible(owner), documents.c.id == document_id)).mappings().first()
        return dict(row) if row else None

    def content(self, owner: str, document_id: str) -> tuple[dict, bytes] | None:
        """A document's view and its file's bytes, or None."""
        with self.engine.connect() as db:
            row = db.execute(select(*META, documents.c.data).where(_visible(owner), documents.c.id == document_id)
                             ).mappings().first()
        return (dict(row), bytes(row["data"])) if row else None

    def texts(self, conversation_id: str | None, ids: list[str], owner: str) -> dict[str, dict]:
        """The named documents of this owner (in that conversation) with their text and passages, by id."""
        if not ids:
            return {}
        query = select(*META, documents.c.text, documents.c.passages).where(_visible(owner), documents.c.id.in_(ids))
        if conversation_id is not None:
            query = query.where(documents.c.conversation_id == conversation_id)
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return {row["id"]: {**row, "passages": json.loads(row["passages"])} for row in rows}

    def in_conversation(self, owner: str, conversation_id: str) -> list[dict]:
        """Every document attached in one of this owner's conversations (sent or draft), oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(*META).where(_visible(owner), documents.c.conversation_id == conversation_id)
                              .order_by(documents.c.created_at))
            return [dict(row) for row in rows.mappings()]

    def sent_files(self, owner: str, conversation_id: str) -> list[dict]:
        """The files sent in one of this owner's conversations, with their bytes, for an export."""
        with self.engine.connect() as db:
            rows = db.execute(select(documents.c.id, documents.c.name, documents.c.data).where(
                documents.c.owner == owner, documents.c.conversation_id == conversation_id,
                documents.c.sent.is_(True)).order_by(documents.c.created_at))
            return [{"id": r["id"], "name": r["name"], "data": bytes(r["data"])} for r in rows.mappings()]

    def files(self, owner: str) -> list[dict]:
        """Files this owner uploaded through /v1/files, newest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(*META).where(documents.c.owner == owner, documents.c.conversation_id.is_(None))
                              .order_by(documents.c.created_at.desc()))
            return [dict(row) for row in rows.mappings()]

    def remove(self, owner: str, document_id: str, conversation_id: str | None) -> bool:
        """Delete a draft of this owner's conversation (or, with None, a /v1 file); False when there is none."""
        query = delete(documents).where(documents.c.owner == owner, documents.c.id == document_id)
        if conversation_id is None:
            query = query.where(documents.c.conversation_id.is_(None))
        else:
            query = query.where(documents.c.conversation_id == conversation_id, documents.c.sent.is_(False))
        with self.engine.begin() as db:
            return db.execute(query).rowcount == 1
