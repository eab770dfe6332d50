"""Profile Access: one merged profile by identity, its events, several profiles at once, and deletion.

A lookup runs the same merge plan as an export, restricted to one profile's fragments: the requested
identity → its cluster (`pdg`) or itself (`none`) → the member identities → their fragments in the
datasets the merge policy includes → `engine/merge.py`. The answer is keyed by the requested
identity's XID. A cluster over the size limit answers 422 "Too many related identities", as AEP does.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import duckdb

from openprofile.core.clock import ms_to_iso
from openprofile.core.errors import FieldError, NotFound, PlatformError, Unprocessable, ValidationFailed
from openprofile.core.platform import Platform
from openprofile.core.tenancy import Tenant
from openprofile.engine import profiles as plans
from openprofile.engine.export import SEGMENT_MEMBERSHIP, with_cluster_identities
from openprofile.engine.fields import UnknownField, check_fields, parse_fields, project_sql
from openprofile.engine.merge import FragmentSource, MergeRule, merge_sql, profile_structure
from openprofile.engine.profile_store import DatasetFiles
from openprofile.engine.structure import Structure, merge_structures
from openprofile.identity.namespaces import looks_like_xid, xid
from openprofile.profile import memberships, store
from openprofile.profile.policies import MergePolicy

PROFILE_SCHEMA = "_xdm.context.profile"
EVENT_SCHEMA = "_xdm.context.experienceevent"
MAX_PREPARED = 16  # lookup statements kept per thread (per store generation, policy and projection)
MAX_GENERATIONS = 32  # store generations read before the lookup database (and its metadata cache) is renewed
LOOKUP_MEMORY_LIMIT = "2GB"
_local = threading.local()
_database_lock = threading.Lock()
_database: duckdb.DuckDBPyConnection | None = None
_generations: set[tuple[str, int]] = set()


def _shared_database(generation: tuple[str, int] | None) -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for every lookup thread, so the Parquet metadata cache (store and lake files are
    immutable) and the buffer pool are shared; each query runs on its caller's thread. Each generation of a
    store names new index files, so after `MAX_GENERATIONS` the database is replaced by a fresh one: the
    cache keeps only files that are still read, and memory stays bounded."""
    global _database
    with _database_lock:
        if generation is not None and generation not in _generations:
            if len(_generations) >= MAX_GENERATIONS:
                _generations.clear()
                _database = None
            _generations.add(generation)
        if _database is None:
            database = duckdb.connect()
            database.execute("SET threads = 1")
            database.execute(f"SET memory_limit = '{LOOKUP_MEMORY_LIMIT}'")
            database.execute("SET GLOBAL parquet_metadata_cache = true")
            database.execute("SET GLOBAL preserve_insertion_order = false")
            _database = database
        return _database


@dataclass
class _Session:
    """A thread's DuckDB connection (a cursor of the shared database) and the lookup statements it prepared."""

    database: duckdb.DuckDBPyConnection
    conn: duckdb.DuckDBPyConnection
    prepared: OrderedDict[tuple[Any, ...], _Prepared] = field(default_factory=OrderedDict)
    names: itertools.count[int] = field(default_factory=itertools.count)


@dataclass(frozen=True)
class _Prepared:
    name: str
    row_types: list[str]
    structure: Structure
    paths: list[str] | None
    members: bool = False  # takes the cluster's members (a last parameter) for the whole `identities` list


def _session(snapshot: store.StoreSnapshot | None = None) -> _Session:
    generation = None if snapshot is None else (str(snapshot.view.files.root), snapshot.manifest.generation)
    database = _shared_database(generation)
    session: _Session | None = getattr(_local, "session", None)
    if session is None or session.database is not database:
        if session is not None:
            session.conn.close()
        session = _Session(database, database.cursor())
        _local.session = session
    return session


def _duck(snapshot: store.StoreSnapshot | None = None) -> duckdb.DuckDBPyConnection:
    """This thread's DuckDB connection."""
    return _session(snapshot).conn


def access_error(error: PlatformError) -> PlatformError:
    """Profile Access errors also carry the spec's `message` and `statusCode` (a string) fields."""
    error.extra = {**error.extra, "message": error.detail, "statusCode": str(error.status)}
    return error


def jsonable(value: Any) -> Any:
    """Arrow values as AEP's JSON: maps (lists of key/value tuples) as objects, times as RFC 3339."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): jsonable(v) for k, v in value}
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


@dataclass(frozen=True)
class Profile:
    """A profile's identities under a policy: the group key and its member XIDs."""

    requested_xid: str
    group: str
    members: list[tuple[str, str, str]]


def _requested_xid(entity_id: str, namespace: str | None, field: str = "entityId") -> str:
    if not entity_id:
        raise access_error(ValidationFailed(f"{field} is required", fields=[FieldError(field, "required")]))
    if namespace:
        return xid(namespace, entity_id)
    if not looks_like_xid(entity_id):
        raise access_error(ValidationFailed(
            f"{field} '{entity_id}' is not an XID; give its namespace in {field}NS",
            fields=[FieldError(f"{field}NS", "required unless the id is an XID")]))
    return entity_id


def find_profile(platform: Platform, snapshot: store.StoreSnapshot, policy: MergePolicy, entity_id: str,
                 namespace: str | None, field: str = "entityId", *, ids: bool = True) -> Profile:
    """The requested identity's profile: its group and members (xid, namespace, id); without `ids` the members'
    ids are not read (`""`), which is all a lookup needs."""
    requested = _requested_xid(entity_id, namespace, field)
    described = f"{namespace}:{entity_id}" if namespace else entity_id
    identities = snapshot.manifest.identities
    hit = plans.find_identity(_duck(snapshot), snapshot.path(identities), requested, ids=ids) if identities else None
    if hit is None:
        raise access_error(NotFound(f"No profile found for identity '{described}'."))
    if policy.identity_graph == "pdg":
        if hit.cluster_size > platform.settings.max_graph_identities:
            raise access_error(Unprocessable(
                f"Too many related identities: the graph of '{described}' links {hit.cluster_size} identities, "
                f"more than {platform.settings.max_graph_identities}."))
        assert snapshot.manifest.members is not None
        members = plans.cluster_members(_duck(), snapshot.path(snapshot.manifest.members), hit.cluster, ids=ids)
        return Profile(requested, hit.cluster, members)
    return Profile(requested, hit.xid, [(hit.xid, hit.namespace, hit.id)])


def merge_rule(policy: MergePolicy) -> MergeRule:
    return MergeRule(policy.attribute_merge, tuple(policy.order))


def _record_datasets(snapshot: store.StoreSnapshot, policy: MergePolicy) -> dict[str, DatasetFiles]:
    rule = merge_rule(policy)
    return {d: f for d, f in snapshot.record_datasets().items() if rule.includes(d)}


def profile_fields(snapshot: store.StoreSnapshot) -> Structure:
    """Every record field of the profile-enabled datasets, plus `identities` and `segmentMembership` (segment
    jobs fill it): what `fields` may name."""
    sources = [FragmentSource(d, "", f.structure) for d, f in snapshot.record_datasets().items()]
    return profile_structure([FragmentSource("", "", {"segmentMembership": SEGMENT_MEMBERSHIP}), *sources])


def parse_and_check_fields(fields: str | list[str] | None, structure: Structure,
                           name: str = "fields") -> list[str] | None:
    paths = parse_fields(fields)
    if paths is not None:
        try:
            check_fields(paths, structure)
        except UnknownField as exc:
            raise access_error(ValidationFailed(
                f"{name}: '{exc.path}' is not a field of any profile-enabled dataset",
                fields=[FieldError(name, f"unknown path '{exc.path}'")])) from None
    return paths


def _lookup_statement(session: _Session, snapshot: store.StoreSnapshot, datasets: dict[str, DatasetFiles],
                      rule: MergeRule, paths: list[str] | None, stitched: bool) -> _Prepared:
    """The merge of one group's fragments (given as parameters) and its projection, prepared once per store
    generation, datasets, merge rule and projection on this thread's connection. Under identity stitching a
    profile's `identities` are its cluster's (as exports list them: `with_cluster_identities`), given as one
    more parameter."""
    members = stitched and selects(paths, "identities")
    key = (str(snapshot.view.files.root), snapshot.manifest.generation, tuple(datasets), rule,
           None if paths is None else tuple(paths), members)
    found = session.prepared.get(key)
    if found is not None:
        session.prepared.move_to_end(key)
        return found
    sources, row_types = plans.parameter_sources(datasets)
    structure = profile_structure(sources)
    if paths is not None:  # a path the policy's datasets do not have is simply absent
        paths = [p for p in paths if _known(p, structure)]
    projection = ", ".join(project_sql(paths, structure, source="m")) or "NULL AS \"__none\""
    name = f"__op_lookup_{next(session.names)}"
    merged = merge_sql(sources, rule)
    if members:
        parameter = f"${len(sources) + 1}"
        merged = with_cluster_identities(
            merged, f"(SELECT __m._group AS _group, __m.ns AS ns, __m.id AS id "
                    f"FROM (SELECT unnest(CAST({parameter} AS {_MEMBER_TYPE}[])) AS __m))")
    session.conn.execute(f"PREPARE {name} AS SELECT {projection}, m._sources, m._tags, m._last_modified_ms "
                         f"FROM ({merged}) m")
    prepared = _Prepared(name, row_types, structure, paths, members)
    session.prepared[key] = prepared
    while len(session.prepared) > MAX_PREPARED:
        _, evicted = session.prepared.popitem(last=False)
        session.conn.execute(f"DEALLOCATE {evicted.name}")
    return prepared


def merged_entity(platform: Platform, tenant: Tenant, snapshot: store.StoreSnapshot, policy: MergePolicy,
                  profile: Profile, paths: list[str] | None) -> dict[str, Any] | None:
    """The merged, projected entity of one profile with its envelope fields, or None without fragments."""
    datasets = _record_datasets(snapshot, policy)
    if not datasets:
        return None
    session = _session(snapshot)
    hits = plans.fragment_hits(session.conn, snapshot.view, datasets, profile.members)
    if not any(hits):
        return None
    statement = _lookup_statement(session, snapshot, datasets, merge_rule(policy), paths,
                                  policy.identity_graph == "pdg")
    variable = "__op_fragments_"
    script, registered = plans.fetch_sql(session.conn, snapshot.view, datasets, statement.row_types, hits,
                                         profile.group, variable)
    arguments = ", ".join(f"getvariable('{variable}{n}')" for n in range(len(datasets)))
    if statement.members:
        assert all(m[2] for m in profile.members), "find_profile(ids=True) for the cluster's identities"
        listed = ", ".join(f"{{'_group': {_sql_text(profile.group)}, 'ns': {_sql_text(ns)}, 'id': {_sql_text(i)}}}"
                           for _, ns, i in profile.members)
        arguments += f", CAST([{listed}] AS {_MEMBER_TYPE}[])"
    script.append(f"EXECUTE {statement.name}({arguments})")
    try:
        table = session.conn.sql(";\n".join(script)).to_arrow_table()
    finally:
        for name in registered:
            session.conn.unregister(name)
    if table.num_rows == 0:
        return None
    row = table.to_pylist()[0]
    _add_memberships(platform, tenant, policy, profile.group, paths, row)
    return {
        "entityId": profile.requested_xid,
        "sources": row.pop("_sources"),
        "tags": row.pop("_tags"),
        "identityGraph": [m[0] for m in profile.members],
        "mergePolicy": {"id": policy.id},
        "entity": jsonable({k: v for k, v in row.items() if k not in ("_last_modified_ms", "__none")}),
        "lastModifiedAt": ms_to_iso(int(row["_last_modified_ms"])),
    }


def _add_memberships(platform: Platform, tenant: Tenant, policy: MergePolicy, group: str, paths: list[str] | None,
                     row: dict[str, Any]) -> None:
    """Overlay the memberships segment jobs computed for this profile under `segmentMembership.ups` (a computed
    segment replaces an ingested one of the same id; exports do the same: `engine.export.with_memberships`)."""
    if not selects(paths, "segmentMembership"):
        return
    selected = [p.split(".")[1:] for p in paths or [] if p.split(".")[0] == "segmentMembership"]
    path = memberships.current_memberships(platform, tenant, policy.id)
    computed = memberships.of_profile(path, group) if path is not None else {}
    if not computed:
        return
    leaves = {s[0] for s in selected if s} if selected and all(selected) else None  # e.g. segmentMembership.status
    if leaves is not None:
        computed = {k: {f: v for f, v in value.items() if f in leaves} for k, value in computed.items()}
    namespaces = dict(row.get("segmentMembership") or [])  # a map comes as (key, value) pairs
    ups = dict(namespaces.get("ups") or [])
    ups.update(computed)
    namespaces["ups"] = ups
    row["segmentMembership"] = namespaces


_MEMBER_TYPE = 'STRUCT("_group" VARCHAR, "ns" VARCHAR, "id" VARCHAR)'


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def selects(paths: list[str] | None, column: str) -> bool:
    """Whether a projection (None: everything) includes the top-level column or part of it."""
    return paths is None or any(p.split(".")[0] == column for p in paths)


def _known(path: str, structure: Structure) -> bool:
    try:
        check_fields([path], structure)
    except UnknownField:
        return False
    return True


def lookup(platform: Platform, tenant: Tenant, policy: MergePolicy, entity_id: str, namespace: str | None,
           fields: str | list[str] | None) -> dict[str, Any]:
    snapshot = store.snapshot(platform, tenant)
    paths = parse_and_check_fields(fields, profile_fields(snapshot))
    profile = find_profile(platform, snapshot, policy, entity_id, namespace,
                           ids=policy.identity_graph == "pdg" and selects(paths, "identities"))
    entity = merged_entity(platform, tenant, snapshot, policy, profile, paths)
    if entity is None:
        raise access_error(NotFound(f"No profile found for identity '{entity_id}'."))
    return {profile.requested_xid: entity}


def event_fields(snapshot: store.StoreSnapshot) -> Structure:
    merged: Structure = {}
    for entry in snapshot.event_datasets().values():
        merged = merge_structures(merged, entry.structure)
    return merged


def events(platform: Platform, tenant: Tenant, policy: MergePolicy, entity_id: str, namespace: str | None, *,
           fields: str | None, start_ms: int | None, end_ms: int | None, descending: bool, limit: int,
           offset: int) -> tuple[list[dict[str, Any]], bool]:
    """One page of a profile's events (and whether more follow), newest or oldest first."""
    snapshot = store.snapshot(platform, tenant)
    structure = event_fields(snapshot)
    paths = parse_and_check_fields(fields, structure)
    profile = find_profile(platform, snapshot, policy, entity_id, namespace, "relatedEntityId", ids=False)
    # Events are appended, never merged: every profile-enabled event dataset contributes, under any policy.
    datasets = list(snapshot.event_datasets().values())
    if not datasets:
        return [], False
    base = plans.events_sql(snapshot.view, datasets, profile.members, start_ms=start_ms,
                            end_ms=end_ms, descending=descending, limit=limit + 1, offset=offset)
    projection = ", ".join(project_sql(paths, structure, source="e"))
    table = _duck(snapshot).sql(
        f"SELECT {projection}, e._id AS __event_id, epoch_ms(e.\"timestamp\") AS __ts, e._ingest_ms AS __ingest "
        f"FROM ({base}) e").to_arrow_table()
    rows = table.to_pylist()
    children = [
        {
            "relatedEntityId": profile.requested_xid,
            "entityId": row.pop("__event_id"),
            "timestamp": row.pop("__ts"),
            "lastModifiedAt": ms_to_iso(int(row.pop("__ingest"))),
            "entity": jsonable(row),
        }
        for row in rows[:limit]
    ]
    return children, len(rows) > limit
