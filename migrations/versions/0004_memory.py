"""Memory beyond the window: a message can be pinned, and a reply keeps which messages were recalled for it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (see 0003): batch mode would copy the messages table.
    op.add_column("messages", sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("messages", sa.Column("recalled", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "recalled")
    op.drop_column("messages", "pinned")
