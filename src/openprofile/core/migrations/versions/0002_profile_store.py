"""Profile store bookkeeping: which lake batches feed the store, and deleted profiles.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_batches",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(64), nullable=False, unique=True),
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("dataset_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("applied_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_profile_batches_tenant", "profile_batches", ["org_id", "sandbox_id", "status", "seq"])
    op.create_table(
        "profile_deletions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(128), nullable=False),
        sa.Column("identity", sa.String(1024), nullable=False),
        sa.Column("deleted_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_profile_deletions_tenant", "profile_deletions", ["org_id", "sandbox_id"])


def downgrade() -> None:
    op.drop_table("profile_deletions")
    op.drop_table("profile_batches")
