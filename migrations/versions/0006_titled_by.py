"""Who wrote a conversation's title (the first message, the model or a person), so an edited first message can
be retitled unless a person renamed the conversation.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("titled_by", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("conversations", "titled_by")
