"""Merge policies: the current version of each policy, and every version ever written.

Partial unique indexes keep one default per (sandbox, schema class) and one edge policy per sandbox.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merge_policies",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("schema_name", sa.String(64), nullable=False),
        sa.Column("identity_graph", sa.String(16), nullable=False),
        sa.Column("attribute_merge", sa.String(32), nullable=False),
        sa.Column("dataset_order", sa.JSON, nullable=False),
        sa.Column("is_default", sa.Integer, nullable=False),
        sa.Column("is_active_on_edge", sa.Integer, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("org_id", "sandbox_id", "id", name="uq_merge_policies_tenant_id"),
    )
    is_default = sa.text("is_default = 1")
    on_edge = sa.text("is_active_on_edge = 1")
    op.create_index("uq_merge_policies_default", "merge_policies", ["org_id", "sandbox_id", "schema_name"],
                    unique=True, sqlite_where=is_default, postgresql_where=is_default)
    op.create_index("uq_merge_policies_edge", "merge_policies", ["org_id", "sandbox_id"],
                    unique=True, sqlite_where=on_edge, postgresql_where=on_edge)
    op.create_table(
        "merge_policy_versions",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(128), nullable=False),
        sa.Column("sandbox_id", sa.String(36), nullable=False),
        sa.Column("policy_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("schema_name", sa.String(64), nullable=False),
        sa.Column("identity_graph", sa.String(16), nullable=False),
        sa.Column("attribute_merge", sa.String(32), nullable=False),
        sa.Column("dataset_order", sa.JSON, nullable=False),
        sa.Column("is_default", sa.Integer, nullable=False),
        sa.Column("is_active_on_edge", sa.Integer, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("org_id", "sandbox_id", "policy_id", "version", name="uq_merge_policy_versions_key"),
    )


def downgrade() -> None:
    op.drop_table("merge_policy_versions")
    op.drop_index("uq_merge_policies_edge", table_name="merge_policies")
    op.drop_index("uq_merge_policies_default", table_name="merge_policies")
    op.drop_table("merge_policies")
