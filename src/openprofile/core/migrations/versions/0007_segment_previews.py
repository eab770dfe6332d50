"""Segment previews and estimates.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_previews",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("query_id", sa.String(36), nullable=False),
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("error", sa.JSON, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_segment_previews_tenant", "segment_previews", ["org_id", "sandbox_id", "created_ms"])


def downgrade() -> None:
    op.drop_index("ix_segment_previews_tenant", table_name="segment_previews")
    op.drop_table("segment_previews")
