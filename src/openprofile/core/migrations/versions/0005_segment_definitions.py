"""Segment definitions.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_definitions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("org_id", "sandbox_id", "name", name="uq_segment_definitions_name"),
    )


def downgrade() -> None:
    op.drop_table("segment_definitions")
