"""The metadata store's tables, in one place so the whole picture reads at a glance.

Every tenant-owned row carries `org_id` and `sandbox_id`; every query filters on both.
Migrations under `migrations/versions` create and change these; this module is what code queries.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

server_config = Table(
    "server_config",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
)

sandboxes = Table(
    "sandboxes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(128), nullable=False),
    Column("name", String(64), nullable=False),
    Column("title", String(256), nullable=False),
    Column("type", String(32), nullable=False),
    Column("is_default", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("org_id", "name", name="uq_sandboxes_org_name"),
)

credentials = Table(
    "credentials",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("org_id", String(128), nullable=False),
    Column("secret_hash", String(256), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

schemas = Table(
    "schemas",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("schema_id", String(512), nullable=False),
    Column("alt_id", String(512), nullable=False),
    Column("class_id", String(512), nullable=False),
    Column("title", String(512), nullable=False),
    Column("body", JSON, nullable=False),
    Column("version", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("org_id", "sandbox_id", "schema_id", name="uq_schemas_tenant_id"),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("name", String(512), nullable=False),
    Column("body", JSON, nullable=False),
    Column("structure", JSON, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_datasets_tenant", "org_id", "sandbox_id", "created_ms"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("dataset_id", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("input_format", JSON, nullable=True),
    Column("body", JSON, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("started_ms", BigInteger, nullable=True),
    Column("completed_ms", BigInteger, nullable=True),
    Index("ix_batches_tenant", "org_id", "sandbox_id", "created_ms"),
    Index("ix_batches_dataset", "dataset_id", "status"),
)

batch_files = Table(
    "batch_files",
    metadata,
    Column("id", String(96), primary_key=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("batch_id", String(64), nullable=False),
    Column("dataset_id", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("records", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_batch_files_batch", "batch_id"),
)

queue_jobs = Table(
    "queue_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(64), nullable=False),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("ref", String(128), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_ms", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_queue_jobs_claim", "status", "lease_expires_ms"),
)

# --- the profile store's bookkeeping (its data lives in Parquet generations, see profile/store.py) ------------

profile_batches = Table(
    "profile_batches",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", String(64), nullable=False, unique=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("dataset_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("applied_ms", BigInteger, nullable=True),
    Index("ix_profile_batches_tenant", "org_id", "sandbox_id", "status", "seq"),
)

profile_deletions = Table(
    "profile_deletions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("namespace", String(128), nullable=False),
    Column("identity", String(1024), nullable=False),
    Column("deleted_ms", BigInteger, nullable=False),
    Index("ix_profile_deletions_tenant", "org_id", "sandbox_id"),
)

# --- merge policies (profile/policies.py): the current version of each, and every version ever written ---------

merge_policies = Table(
    "merge_policies",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", String(512), nullable=False),
    Column("schema_name", String(64), nullable=False),
    Column("identity_graph", String(16), nullable=False),
    Column("attribute_merge", String(32), nullable=False),
    Column("dataset_order", JSON, nullable=False),
    Column("is_default", Integer, nullable=False),
    Column("is_active_on_edge", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("org_id", "sandbox_id", "id", name="uq_merge_policies_tenant_id"),
)
# One default per schema class and one edge policy per sandbox, even if two writers race.
Index("uq_merge_policies_default", merge_policies.c.org_id, merge_policies.c.sandbox_id,
      merge_policies.c.schema_name, unique=True, sqlite_where=merge_policies.c.is_default == 1,
      postgresql_where=merge_policies.c.is_default == 1)
Index("uq_merge_policies_edge", merge_policies.c.org_id, merge_policies.c.sandbox_id, unique=True,
      sqlite_where=merge_policies.c.is_active_on_edge == 1, postgresql_where=merge_policies.c.is_active_on_edge == 1)

merge_policy_versions = Table(
    "merge_policy_versions",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("policy_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", String(512), nullable=False),
    Column("schema_name", String(64), nullable=False),
    Column("identity_graph", String(16), nullable=False),
    Column("attribute_merge", String(32), nullable=False),
    Column("dataset_order", JSON, nullable=False),
    Column("is_default", Integer, nullable=False),
    Column("is_active_on_edge", Integer, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("org_id", "sandbox_id", "policy_id", "version", name="uq_merge_policy_versions_key"),
)

# --- profile export jobs -------------------------------------------------------------------------------------

export_jobs = Table(
    "export_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("status", String(16), nullable=False),
    Column("request", JSON, nullable=False),
    Column("destination", JSON, nullable=False),
    Column("merge_policy", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("compute_job_id", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_export_jobs_tenant_page", "org_id", "sandbox_id", "created_ms", "id"),
)

# --- segmentation ---------------------------------------------------------------------------------------------

segment_definitions = Table(
    "segment_definitions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("name", String(512), nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("org_id", "sandbox_id", "name", name="uq_segment_definitions_name"),
)

segment_jobs = Table(
    "segment_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("status", String(16), nullable=False),
    Column("segments", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_segment_jobs_tenant_page", "org_id", "sandbox_id", "created_ms", "id"),
)

segment_previews = Table(
    "segment_previews",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("query_id", String(36), nullable=False),
    Column("org_id", String(128), nullable=False),
    Column("sandbox_id", String(36), nullable=False),
    Column("state", String(16), nullable=False),
    Column("request", JSON, nullable=False),
    Column("result", JSON, nullable=False),
    Column("error", JSON, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_segment_previews_tenant", "org_id", "sandbox_id", "created_ms"),
)
