"""The profile store service: which lake batches feed it, applying them, reading it, rebuilding it.

A batch that succeeds in a profile-enabled dataset is registered here in the same transaction that
marks it `success`, and a `profile.apply` job is queued. The job takes the tenant's store lock and
applies every pending batch of the tenant, in commit order, as one new generation
(`engine/profile_store.py`). The store is derived: `rebuild` forgets it and applies every
registered batch again. Deleted profiles are tombstones in the metadata store, so they stay
deleted through a rebuild.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openprofile.catalog import service as catalog
from openprofile.core.clock import now_ms
from openprofile.core.errors import NotFound
from openprofile.core.locks import named_lock
from openprofile.core.platform import Platform
from openprofile.core.queue import ClaimedJob, Handler, enqueue
from openprofile.core.tables import profile_batches, profile_deletions
from openprofile.core.tenancy import Tenant
from openprofile.engine.export import EventFiles, event_relations
from openprofile.engine.merge import FragmentSource, MergeRule
from openprofile.engine.profile_store import BatchInput, DatasetFiles, Manifest, StoreFiles, Tombstone, apply_batches
from openprofile.engine.profiles import Partition, StoreView, fragment_sources, partitioned_sources
from openprofile.engine.structure import Structure, merge_structures
from openprofile.identity.namespaces import xid
from openprofile.profile import memberships
from openprofile.profile.policies import MergePolicy

JOB_KIND = "profile.apply"
PENDING, APPLIED, SKIPPED = "pending", "applied", "skipped"
APPLY_MEMORY_LIMIT = "3GB"  # DuckDB's memory for one apply; past it, sorts, joins and aggregates spill to disk


def store_files(platform: Platform, tenant: Tenant) -> StoreFiles:
    return StoreFiles(platform.settings.profile_dir / tenant.org_id / tenant.sandbox_name)


def _tenant_filter(table: sa.Table, tenant: Tenant) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.org_id == tenant.org_id, table.c.sandbox_id == tenant.sandbox_id)


def register_batch(conn: Connection, tenant: Tenant, dataset: catalog.Dataset, batch_id: str) -> None:
    """Called when a batch succeeds: a profile-enabled record or event dataset feeds the store."""
    if not dataset.profile_enabled or dataset.xdm_class is None:
        return
    conn.execute(profile_batches.insert().values(
        batch_id=batch_id, org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, dataset_id=dataset.id,
        status=PENDING, created_ms=now_ms(),
    ))
    enqueue(conn, JOB_KIND, tenant, tenant.sandbox_id, {})


def _pending(conn: Connection, tenant: Tenant) -> list[Any]:
    return list(conn.execute(
        sa.select(profile_batches).where(_tenant_filter(profile_batches, tenant), profile_batches.c.status == PENDING)
        .order_by(profile_batches.c.seq)
    ))


def _tombstones(conn: Connection, tenant: Tenant) -> list[Tombstone]:
    rows = conn.execute(sa.select(profile_deletions).where(_tenant_filter(profile_deletions, tenant)))
    return [Tombstone(xid(r.namespace, r.identity), r.deleted_ms) for r in rows]


def apply_pending(platform: Platform, tenant: Tenant) -> int:
    """Apply every pending batch of the tenant as one generation; returns how many were applied."""
    files = store_files(platform, tenant)
    applied = 0
    with named_lock(platform.engine, platform.settings.data_dir / "locks", f"profile-store:{tenant.sandbox_id}"):
        while True:
            with platform.engine.connect() as conn:
                pending = _pending(conn, tenant)
                tombstones = _tombstones(conn, tenant)
                inputs: list[BatchInput] = []
                skipped: list[str] = []
                for row in pending:
                    try:
                        batch = catalog.get_batch(conn, tenant, row.batch_id)
                        dataset = catalog.get_dataset(conn, tenant, row.dataset_id)
                    except NotFound:
                        skipped.append(row.batch_id)
                        continue
                    if batch.status != "success" or dataset.xdm_class is None:
                        skipped.append(row.batch_id)
                        continue
                    paths = [f.path for f in catalog.list_files(conn, tenant, batch.id)]
                    inputs.append(BatchInput(batch.id, dataset.id, dataset.xdm_class.kind, paths,
                                             batch.completed_ms or batch.updated_ms, dataset.structure))
            if not pending:
                return applied
            if inputs:
                apply_batches(files, platform.lake.root, inputs, tombstones=tombstones, now_ms=now_ms(),
                              threads=platform.settings.engine_threads, memory_limit=APPLY_MEMORY_LIMIT)
            with platform.engine.begin() as conn:
                for batch_input in inputs:
                    _mark(conn, batch_input.batch_id, APPLIED)
                for batch_id in skipped:
                    _mark(conn, batch_id, SKIPPED)
            applied += len(inputs)


def _mark(conn: Connection, batch_id: str, status: str) -> None:
    conn.execute(profile_batches.update().where(profile_batches.c.batch_id == batch_id)
                 .values(status=status, applied_ms=now_ms()))


def handler(platform: Platform) -> Handler:
    return Handler(run=lambda job: _run(platform, job), give_up=lambda job, reason: None)


def _run(platform: Platform, job: ClaimedJob) -> None:
    apply_pending(platform, job.tenant)


def rebuild(platform: Platform, tenant: Tenant) -> int:
    """Forget the store and apply every registered batch again (deleted profiles stay deleted). Segment
    memberships (`memberships.py`, beside the store) are kept: they are not derived from the lake, and the
    profiles they name keep their keys (a cluster's key is derived from its identities)."""
    files = store_files(platform, tenant)
    with named_lock(platform.engine, platform.settings.data_dir / "locks", f"profile-store:{tenant.sandbox_id}"):
        for child in files.root.iterdir() if files.root.is_dir() else []:
            if child.name == memberships.DIRECTORY:
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        with platform.engine.begin() as conn:
            conn.execute(profile_batches.update().where(_tenant_filter(profile_batches, tenant))
                         .values(status=PENDING, applied_ms=None))
    return apply_pending(platform, tenant)


def pending_count(platform: Platform, tenant: Tenant) -> int:
    with platform.engine.connect() as conn:
        return len(_pending(conn, tenant))


def ingested_segments(conn: Connection, platform: Platform, tenant: Tenant) -> set[str] | None:
    """The `segmentMembership.ups` segment ids the store's records carry; None when it cannot tell (batches not
    applied yet, or an index written before these were recorded)."""
    if _pending(conn, tenant):
        return None
    found: set[str] = set()
    for entry in store_files(platform, tenant).current(shared=True).datasets.values():
        if entry.kind == "profile" and entry.files:
            if entry.segments is None:
                return None
            found.update(entry.segments)
    return found


@dataclass(frozen=True)
class StoreSnapshot:
    """One generation of a tenant's store, with the datasets that are still live in the catalog."""

    view: StoreView
    manifest: Manifest
    live_datasets: dict[str, catalog.Dataset]
    tenant: Tenant

    def path(self, name: str) -> Path:
        return self.view.files.path(name)

    def _of_kind(self, kind: str) -> dict[str, DatasetFiles]:
        return {d: f for d, f in self.manifest.datasets.items()
                if f.kind == kind and f.files and d in self.live_datasets}

    def record_datasets(self) -> dict[str, DatasetFiles]:
        return self._of_kind("profile")

    def event_datasets(self) -> dict[str, DatasetFiles]:
        return self._of_kind("experienceevent")


@dataclass(frozen=True)
class MergeInputs:
    """What a merge policy merges in one store generation, for the plans that scan every profile (exports,
    segment jobs, previews): the rule, the record datasets' fragment sources grouped by the policy's identity
    graph (oversized clusters left out), the members index under `pdg`, and the event relations with their
    structure (both empty without event datasets)."""

    rule: MergeRule
    stitched: bool
    sources: list[FragmentSource]
    members: Path | None
    events: list[str]
    event_structure: Structure
    fragments: int  # index rows of the merged datasets: how many fragments the merge reads
    partitions: list[Partition] | None = None  # under `pdg`: the sources as the store keeps them by cluster
    event_files: EventFiles | None = None  # the files the event relations read


def merge_inputs(platform: Platform, snapshot: StoreSnapshot, policy: MergePolicy) -> MergeInputs:
    rule = MergeRule(policy.attribute_merge, tuple(policy.order))
    stitched = policy.identity_graph == "pdg"
    identities = snapshot.path(snapshot.manifest.identities) if snapshot.manifest.identities else None
    limit = platform.settings.max_graph_identities
    records = {d: f for d, f in snapshot.record_datasets().items() if rule.includes(d)}
    sources = fragment_sources(snapshot.view, records, stitched=stitched, identities=identities,
                               max_cluster_size=limit)
    entries = list(snapshot.event_datasets().values())
    structure: Structure = {}
    for entry in entries:
        structure = merge_structures(structure, entry.structure)
    events = event_relations(snapshot.view.lake_root, snapshot.view.files, entries, stitched=stitched,
                             identities=identities, max_cluster_size=limit) if entries else []
    members = snapshot.path(snapshot.manifest.members) if stitched and snapshot.manifest.members else None
    fragments = sum(pq.read_metadata(snapshot.path(f)).num_rows for entry in records.values() for f in entry.files)
    stored = snapshot.manifest.partitions
    partitions = (partitioned_sources(snapshot.view, stored, records, max_cluster_size=limit)
                  if stitched and stored is not None and stored.current and set(records) <= set(stored.datasets)
                  else None)
    event_files = EventFiles(
        tuple((name, snapshot.view.lake_root / name) for entry in entries for name in entry.lake_files),
        tuple(snapshot.path(f) for entry in entries for f in entry.files),
        identities if stitched else None, limit) if entries else None
    return MergeInputs(rule, stitched, sources, members, events, structure, fragments, partitions, event_files)


def snapshot(platform: Platform, tenant: Tenant) -> StoreSnapshot:
    files = store_files(platform, tenant)
    with platform.engine.connect() as conn:
        live = {d.id: d for d in catalog.find_datasets(conn, tenant) if d.profile_enabled}
    return StoreSnapshot(StoreView(platform.lake.root, files), files.current(shared=True), live, tenant)


def record_deletion(conn: Connection, tenant: Tenant, identities: list[tuple[str, str]]) -> None:
    """Tombstone identities (namespace, id); the next apply drops their fragments and events."""
    when = now_ms()
    conn.execute(profile_deletions.insert(), [
        {"org_id": tenant.org_id, "sandbox_id": tenant.sandbox_id, "namespace": ns, "identity": ident,
         "deleted_ms": when} for ns, ident in identities
    ])
    enqueue(conn, JOB_KIND, tenant, tenant.sandbox_id, {"deletion": True})


def apply_now(platform: Platform, tenant: Tenant) -> None:
    """Apply pending work synchronously (deletions must take effect before the call returns)."""
    files = store_files(platform, tenant)
    with named_lock(platform.engine, platform.settings.data_dir / "locks", f"profile-store:{tenant.sandbox_id}"):
        with platform.engine.connect() as conn:
            tombstones = _tombstones(conn, tenant)
        if files.current().generation:
            apply_batches(files, platform.lake.root, [], tombstones=tombstones, now_ms=now_ms(),
                          threads=platform.settings.engine_threads, memory_limit=APPLY_MEMORY_LIMIT)
    apply_pending(platform, tenant)
