"""Segment evaluation jobs.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("segments", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("errors", sa.JSON, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_segment_jobs_tenant_page", "segment_jobs", ["org_id", "sandbox_id", "created_ms", "id"])


def downgrade() -> None:
    op.drop_index("ix_segment_jobs_tenant_page", table_name="segment_jobs")
    op.drop_table("segment_jobs")
