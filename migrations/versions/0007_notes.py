"""The model's notes of turns that fell out of memory (WEBBOT_MEMORY_SUMMARY): kept on the last message they cover.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (see 0003): batch mode would copy the messages table.
    op.add_column("messages", sa.Column("note", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "note")
