"""The profile export plan: merged profiles → filters → projection → events → Parquet files.

One SQL statement (DuckDB) per batch, streamed as Arrow record batches into Parquet files of at most
`rows_per_file` rows; nothing holds the whole export in memory. The order of operations is
aep-semantics.md §4.2's: merge under the policy (oversized graphs already left out by the fragment
relations) → `emptyProfiles` → segment filter → `fromIngestTimestamp` (merged last modification
strictly later) → `fields` projection → `timeSeriesEvents` (the profile's events inside the
ingestion-time window, projected by the event-list fields, attached after the audience filter).

Choices where the docs are silent: with `fields`, only the selected columns are written (ask for
`identityMap` or `identities` explicitly, as the docs' events-only example does); `timeSeriesEvents`
is ordered by event time; the segment filter's `segmentQualificationTime` bounds are inclusive; a
profile with only events (`emptyProfiles: true`) carries the identities its events name.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openprofile.engine.fields import project_sql, project_structure
from openprofile.engine.merge import FragmentSource, MergeRule, merge_sql, profile_structure
from openprofile.engine.profile_store import DatasetFiles, StoreFiles, indexed_rows
from openprofile.engine.structure import Structure, quote_identifier

BATCH_ROWS = 65_536
ROW_GROUP_ROWS = 16_384


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class SegmentCondition:
    segment_id: str
    namespace: str
    statuses: tuple[str, ...]


@dataclass(frozen=True)
class EventPlan:
    """Event relations carrying `_group` (as fragments do), the event fields, and the ingestion window."""

    relations: list[str]
    structure: Structure
    paths: list[str] | None
    from_ingest_ms: int | None = None
    to_ingest_ms: int | None = None


@dataclass(frozen=True)
class ExportPlan:
    sources: list[FragmentSource]
    rule: MergeRule
    members: Path | None = None  # with identity stitching: the members index, for a cluster's whole identity list
    paths: list[str] | None = None
    segments: tuple[SegmentCondition, ...] = ()
    qualified_from_ms: int | None = None
    qualified_to_ms: int | None = None
    from_ingest_ms: int | None = None
    empty_profiles: bool = False
    events: EventPlan | None = None


def output_structure(plan: ExportPlan) -> Structure:
    """The record columns a profile row can have: the merged union structure plus `identities`."""
    return profile_structure(plan.sources)


def _segment_condition(structure: Structure) -> Callable[[SegmentCondition, ExportPlan], str]:
    def condition(segment: SegmentCondition, plan: ExportPlan) -> str:
        if "segmentMembership" not in structure:
            return "FALSE"
        statuses = ", ".join(_quote(s) for s in segment.statuses)
        checks = [f"v.status IN ({statuses})"]
        if plan.qualified_from_ms is not None:
            checks.append(f"epoch_ms(v.lastQualificationTime) >= {int(plan.qualified_from_ms)}")
        if plan.qualified_to_ms is not None:
            checks.append(f"epoch_ms(v.lastQualificationTime) <= {int(plan.qualified_to_ms)}")
        memberships = (f"list_transform(list_filter(map_entries(m.\"segmentMembership\"), "
                       f"lambda e: lower(e.key) = {_quote(segment.namespace.lower())}), "
                       f"lambda e: e.value[{_quote(segment.segment_id)}])")
        return f"len(list_filter({memberships}, lambda v: v IS NOT NULL AND {' AND '.join(checks)})) > 0"
    return condition


def _events_cte(events: EventPlan) -> str:
    """Per group with events, the list of its events inside the ingestion window (projected, by event time; NULL
    when none is inside), and the identities its events name (an events-only profile's identities)."""
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM {r}" for r in events.relations)
    window = ["TRUE"]
    if events.from_ingest_ms is not None:
        window.append(f"e._ingest_ms > {int(events.from_ingest_ms)}")
    if events.to_ingest_ms is not None:
        window.append(f"e._ingest_ms < {int(events.to_ingest_ms)}")
    names = list(project_structure(events.paths, events.structure))
    items = project_sql(events.paths, events.structure, source="e")
    fields = ", ".join(f"{quote_identifier(n)} := {item[: -len(' AS ' + quote_identifier(n))]}"
                       for n, item in zip(names, items, strict=True))
    order = 'e."timestamp"' if "timestamp" in events.structure else "e._ingest_ms"
    return (f"SELECT e._group, list(struct_pack({fields}) ORDER BY {order}, e._xid) "
            f"FILTER (WHERE {' AND '.join(window)}) AS \"timeSeriesEvents\", "
            f"list(DISTINCT {{'id': e._identity_id, 'namespace': {{'code': e._identity_ns}}, 'primary': true}}) "
            f"AS __event_identities FROM ({union}) e GROUP BY e._group")


def with_cluster_identities(merged: str, members: Path) -> str:
    """A stitched profile's `identities` are every identity of its cluster (aep-semantics §2.5), not only those
    its record fragments name: members the fragments do not name are added, not primary, in (namespace, id) order."""
    return f"""
        SELECT m.* REPLACE (list_sort(list_concat(m."identities", list_filter(c.ids, lambda x: NOT list_contains(
                   list_transform(m."identities", lambda i: i.namespace.code || ':' || i.id),
                   x.namespace.code || ':' || x.id))), 'ASC', 'NULLS LAST') AS "identities")
        FROM ({merged}) m LEFT JOIN (
            SELECT replace(cluster::VARCHAR, '-', '') AS _group,
                   list({{'id': id, 'namespace': {{'code': ns}}, 'primary': false}}) AS ids
            FROM read_parquet('{members}') GROUP BY cluster
        ) c USING (_group)"""


def export_sql(plan: ExportPlan, *, only_segment: SegmentCondition | None = None) -> str:
    """The rows of one export batch (all profiles, or one segment's with `segmentPerBatch`)."""
    structure = output_structure(plan)
    merged = merge_sql(plan.sources, plan.rule)
    if plan.members is not None:
        merged = with_cluster_identities(merged, plan.members)
    conditions = []
    segments = (only_segment,) if only_segment else plan.segments
    if segments:
        condition = _segment_condition(structure)
        conditions.append("(" + " OR ".join(condition(s, plan) for s in segments) + ")")
    if plan.from_ingest_ms is not None:
        conditions.append(f"m._last_modified_ms > {int(plan.from_ingest_ms)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    projection = project_sql(plan.paths, structure, source="m")
    namespace = ("coalesce(list_filter(m.\"identities\", lambda i: i.\"primary\")[1], "
                 "m.\"identities\"[1]).namespace.code AS __ns")
    if plan.events is None:
        return f"SELECT {', '.join([*projection, namespace])} FROM ({merged}) m {where}"
    events = _events_cte(plan.events)
    if not plan.empty_profiles or segments:
        return (f"WITH ev AS ({events}) SELECT {', '.join([*projection, namespace])}, "
                f"ev.\"timeSeriesEvents\" FROM ({merged}) m LEFT JOIN ev USING (_group) {where}")
    # emptyProfiles: profiles with only events join in, carrying the identities their events name.
    identities = 'coalesce(m."identities", ev.__event_identities)'
    projection = project_sql(plan.paths, structure, source={"identities": identities})
    namespace = (f"coalesce(list_filter({identities}, lambda i: i.\"primary\")[1], {identities}[1])"
                 ".namespace.code AS __ns")
    return (f"WITH ev AS ({events}), m AS (SELECT * FROM ({merged}) m {where}) "
            f"SELECT {', '.join([*projection, namespace])}, ev.\"timeSeriesEvents\" "
            f"FROM m FULL OUTER JOIN ev USING (_group)")


@dataclass
class WrittenBatch:
    files: list[tuple[str, int, int]] = field(default_factory=list)  # (name, bytes, rows)
    rows: int = 0
    by_namespace: Counter[str] = field(default_factory=Counter)
    query_ms: float = 0.0
    write_ms: float = 0.0
    schema: pa.Schema | None = None


def write_parquet(conn: duckdb.DuckDBPyConnection, sql: str, out_dir: Path, *, rows_per_file: int,
                  prefix: str = "part", result: WrittenBatch | None = None) -> WrittenBatch:
    """Stream the query into Parquet files of at most `rows_per_file` rows, counting profiles per namespace.

    `result` (if given) is filled as the files are written, so another thread can report progress."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = result if result is not None else WrittenBatch()
    started = time.perf_counter()
    reader = conn.sql(sql).to_arrow_reader(BATCH_ROWS)
    result.query_ms += (time.perf_counter() - started) * 1000
    schema = reader.schema
    keep = [i for i, f in enumerate(schema) if f.name != "__ns"]
    out_schema = pa.schema([schema.field(i) for i in keep])
    result.schema = out_schema
    writer: pq.ParquetWriter | None = None
    in_file = 0

    def open_file() -> pq.ParquetWriter:
        name = f"{prefix}-{len(result.files):05d}.parquet"
        result.files.append((name, 0, 0))
        return pq.ParquetWriter(out_dir / name, out_schema, compression="zstd")

    def close_file(current: pq.ParquetWriter) -> None:
        current.close()
        name, _, _ = result.files[-1]
        result.files[-1] = (name, (out_dir / name).stat().st_size, in_file)

    try:
        while True:
            started = time.perf_counter()
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                result.query_ms += (time.perf_counter() - started) * 1000
                break
            result.query_ms += (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            if "__ns" in schema.names:
                counts = pc.value_counts(batch.column(schema.get_field_index("__ns")))
                for item in counts.to_pylist():
                    result.by_namespace[str(item["values"])] += int(item["counts"])
            data = pa.RecordBatch.from_arrays([batch.column(i) for i in keep], schema=out_schema)
            offset = 0
            while offset < data.num_rows:
                if writer is None:
                    writer, in_file = open_file(), 0
                take = min(data.num_rows - offset, rows_per_file - in_file)
                writer.write_batch(data.slice(offset, take), row_group_size=ROW_GROUP_ROWS)
                offset += take
                in_file += take
                result.rows += take
                if in_file >= rows_per_file:
                    close_file(writer)
                    writer = None
            result.write_ms += (time.perf_counter() - started) * 1000
        if writer is None and not result.files:
            writer, in_file = open_file(), 0  # an empty export is one empty file with the export's schema
        if writer is not None:
            close_file(writer)
            writer = None
    finally:
        if writer is not None:
            writer.close()
    return result


def event_relations(lake_root: Path, store: StoreFiles, entries: list[DatasetFiles], *, stitched: bool,
                    identities: Path | None, max_cluster_size: int | None) -> list[str]:
    """Every event with the `_group` of the profile it belongs to (as `fragment_sources` gives fragments)."""
    relations = []
    for entry in entries:
        rows = indexed_rows(lake_root, store, entry)
        if stitched and identities is not None:
            limit = f"WHERE i.cluster_size <= {int(max_cluster_size)}" if max_cluster_size else ""
            relations.append(f"(SELECT e.*, replace(i.cluster::VARCHAR, '-', '') AS _group FROM {rows} e "
                             f"JOIN read_parquet('{identities}') i ON i.xid = e._xid {limit})")
        else:
            relations.append(f"(SELECT *, replace(_xid::VARCHAR, '-', '') AS _group FROM {rows})")
    return relations
