"""Chat page features: branches (a message's parent, a conversation's shown leaf), pins, undoable deletes,
per-conversation settings, per-person default settings, and full-text search (FTS5 on SQLite).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SQLITE_SEARCH = [
    # External-content FTS5 indexes kept in step with their tables by triggers.
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE VIRTUAL TABLE titles_fts USING fts5(title, content='conversations', content_rowid='rowid', "
    "tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER titles_fts_insert AFTER INSERT ON conversations BEGIN "
    "INSERT INTO titles_fts(rowid, title) VALUES (new.rowid, new.title); END",
    "CREATE TRIGGER titles_fts_delete AFTER DELETE ON conversations BEGIN "
    "INSERT INTO titles_fts(titles_fts, rowid, title) VALUES ('delete', old.rowid, old.title); END",
    "CREATE TRIGGER titles_fts_update AFTER UPDATE OF title ON conversations BEGIN "
    "INSERT INTO titles_fts(titles_fts, rowid, title) VALUES ('delete', old.rowid, old.title); "
    "INSERT INTO titles_fts(rowid, title) VALUES (new.rowid, new.title); END",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
    "INSERT INTO titles_fts(titles_fts) VALUES ('rebuild')",
]


def upgrade() -> None:
    # Plain ADD COLUMN, never batch mode: on SQLite batch mode copies a table, and dropping the old
    # conversations table would cascade to every message.
    op.add_column("messages", sa.Column("parent_id", sa.Integer, nullable=True))
    op.add_column("conversations", sa.Column("leaf_id", sa.Integer, nullable=True))
    op.add_column("conversations", sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("conversations", sa.Column("deleted_at", sa.Float, nullable=True))
    op.add_column("conversations", sa.Column("settings", sa.Text, nullable=True))
    op.create_index("ix_messages_parent_id", "messages", ["parent_id"])
    op.create_table(
        "preferences",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("settings", sa.Text, nullable=False),
    )
    # Messages stored before branches existed form one line: each one's parent is the one before it.
    op.execute("UPDATE messages SET parent_id = (SELECT MAX(m.id) FROM messages m WHERE "
               "m.conversation_id = messages.conversation_id AND m.id < messages.id)")
    op.execute("UPDATE conversations SET leaf_id = (SELECT MAX(m.id) FROM messages m WHERE "
               "m.conversation_id = conversations.id)")
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_SEARCH:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in ("messages", "titles"):
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_fts_{event}")
            op.execute(f"DROP TABLE IF EXISTS {table}_fts")
    op.drop_table("preferences")
    op.drop_index("ix_messages_parent_id", "messages")
    for column in ("settings", "deleted_at", "pinned", "leaf_id"):  # SQLite 3.35+ drops columns in place
        op.drop_column("conversations", column)
    op.drop_column("messages", "parent_id")
