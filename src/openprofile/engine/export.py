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

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openprofile.engine.fields import project_sql, project_structure
from openprofile.engine.merge import FragmentSource, MergeRule, merge_sql, profile_structure
from openprofile.engine.profile_store import DatasetFiles, StoreFiles, indexed_rows
from openprofile.engine.structure import Structure, quote_identifier

BATCH_ROWS = 65_536
EVENT_BATCH_ROWS = 16_384
"""Profile rows per batch when each row carries its events."""
ROW_GROUP_ROWS = 16_384
WRITER_LANES = 2
"""Parquet files written at the same time (each batch goes to one of them)."""


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


def _event_union(events: EventPlan) -> str:
    return " UNION ALL BY NAME ".join(f"SELECT * FROM {r}" for r in events.relations)


def _events_select(events: EventPlan, rows: str) -> str:
    """The exported rows' events inside the ingestion window, projected, one row each — `__pos`, the position of
    its profile in `rows` by `__group`, and `__event` — ordered by (`__pos`, event time)."""
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
    return (f"WITH __g AS (SELECT __group, row_number() OVER (ORDER BY __group) AS __pos FROM {rows}) "
            f"SELECT g.__pos, struct_pack({fields}) AS __event FROM ({_event_union(events)}) e "
            f"JOIN __g g ON g.__group = e._group WHERE {' AND '.join(window)} ORDER BY g.__pos, {order}, e._xid")


def with_cluster_identities(merged: str, members: Path) -> str:
    """A stitched profile's `identities` are every identity of its cluster (aep-semantics §2.5), not only those
    its record fragments name: members the fragments do not name are added, not primary. The list is ordered
    by (id, namespace): the items keyed (id, namespace, not primary) and sorted, the first of each run kept."""
    keyed = ("list_sort(list_concat(list_transform(m.\"identities\", lambda x: {'i': x.id, 'n': x.namespace.code, "
             "'q': NOT x.\"primary\"}), coalesce(c.ids, [])))")
    return f"""
        SELECT m.* REPLACE (list_transform(list_filter(__s, lambda x, k: k = 1 OR __s[k - 1].i IS DISTINCT FROM x.i
                                                              OR __s[k - 1].n IS DISTINCT FROM x.n),
                                           lambda x: {{'id': x.i, 'namespace': {{'code': x.n}}, 'primary': NOT x.q}})
                            AS "identities")
        FROM (SELECT m.*, {keyed} AS __s
              FROM ({merged}) m LEFT JOIN (
                  SELECT replace(cluster::VARCHAR, '-', '') AS _group, list({{'i': id, 'n': ns, 'q': true}}) AS ids
                  FROM read_parquet('{members}') GROUP BY cluster
              ) c USING (_group)) m"""


@dataclass(frozen=True)
class ExportQuery:
    """One export batch's rows as DuckDB statements: run `setup`, stream `profiles` (rows with `__ns`, the
    namespace counted for the metrics); with an event list, `events` streams each row's events (`__pos`, the
    row's 1-based position in `profiles`, then `__event`), ordered by position, and `write_parquet` attaches
    them as `timeSeriesEvents`; `cleanup` runs last, whatever happened."""

    profiles: str
    events: str | None = None
    setup: tuple[str, ...] = ()
    cleanup: tuple[str, ...] = ()


def export_query(plan: ExportPlan, *, only_segment: SegmentCondition | None = None,
                 table: str = "__export_rows") -> ExportQuery:
    """The rows of one export batch (all profiles, or one segment's with `segmentPerBatch`). With an event
    list, the profile rows are first kept in `table` (a table of the connection's database)."""
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
        return ExportQuery(f"SELECT {', '.join([*projection, namespace])} FROM ({merged}) m {where}")
    # Aggregating every profile's events into a list in SQL is the costliest step by far (DuckDB's list()
    # over wide nested structs); instead the profile rows are kept, and their events streamed in the same
    # order, sorted once, to be cut into lists on the Arrow side.
    if not plan.empty_profiles or segments:
        rows = (f"SELECT {', '.join([*projection, namespace])}, m._group AS __group "
                f"FROM ({merged}) m {where}")
    else:
        # emptyProfiles: profiles with only events join in, carrying the identities their events name.
        identities = 'coalesce(m."identities", ev.__event_identities)'
        projection = project_sql(plan.paths, structure, source={"identities": identities})
        namespace = (f"coalesce(list_filter({identities}, lambda i: i.\"primary\")[1], {identities}[1])"
                     ".namespace.code AS __ns")
        named = (f"SELECT e._group, list(DISTINCT {{'id': e._identity_id, 'namespace': {{'code': e._identity_ns}}, "
                 f"'primary': true}}) AS __event_identities FROM ({_event_union(plan.events)}) e GROUP BY e._group")
        rows = (f"WITH ev AS ({named}), m AS (SELECT * FROM ({merged}) m {where}) "
                f"SELECT {', '.join([*projection, namespace])}, _group AS __group "
                f"FROM m FULL OUTER JOIN ev USING (_group)")
    return ExportQuery(
        profiles=f"SELECT * EXCLUDE (__group) FROM {table} ORDER BY __group",
        events=_events_select(plan.events, table),
        setup=(f"CREATE OR REPLACE TABLE {table} AS {rows}",),
        cleanup=(f"DROP TABLE IF EXISTS {table}",),
    )


@dataclass
class WrittenBatch:
    files: list[tuple[str, int, int]] = field(default_factory=list)  # (name, bytes, rows)
    rows: int = 0
    by_namespace: Counter[str] = field(default_factory=Counter)
    query_ms: float = 0.0
    write_ms: float = 0.0
    schema: pa.Schema | None = None
    cursors: list[duckdb.DuckDBPyConnection] = field(default_factory=list)  # also running this batch's queries


class _EventLists:
    """Cuts the position-ordered event stream into each profile row's `timeSeriesEvents` (NULL when none)."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self.reader = reader
        event_type = reader.schema.field("__event").type
        self.type = pa.list_(pa.field("l", event_type))
        self.positions: list[npt.NDArray[np.int64]] = []
        self.values: list[pa.Array] = []
        self.done = False

    def _buffered_last(self) -> int:
        return int(self.positions[-1][-1]) if self.positions and len(self.positions[-1]) else -1

    def lists(self, first: int, count: int) -> pa.Array:
        """The lists of the rows at positions first .. first + count - 1 (the rows before were asked already)."""
        last = first + count - 1
        while not self.done and self._buffered_last() <= last:
            try:
                batch = self.reader.read_next_batch()
            except StopIteration:
                self.done = True
                break
            if batch.num_rows:
                self.positions.append(batch.column(0).to_numpy())
                self.values.append(batch.column(1))
        positions = np.concatenate(self.positions) if self.positions else np.empty(0, np.int64)
        values = pa.concat_arrays(self.values) if self.values else pa.array([], self.type.value_type)
        cut = int(np.searchsorted(positions, last, side="right"))
        self.positions, self.values = [positions[cut:]], [values.slice(cut)]
        offsets = np.searchsorted(positions[:cut], np.arange(first, last + 2), side="left").astype(np.int32)
        empty = offsets[1:] == offsets[:-1]
        return pa.ListArray.from_arrays(pa.array(offsets), values.slice(0, cut), type=self.type,
                                        mask=pa.array(empty))


def write_parquet(conn: duckdb.DuckDBPyConnection, query: ExportQuery | str, out_dir: Path, *, rows_per_file: int,
                  prefix: str = "part", result: WrittenBatch | None = None) -> WrittenBatch:
    """Stream the query into Parquet files of at most `rows_per_file` rows, counting profiles per namespace.

    `result` (if given) is filled as the files are written, so another thread can report progress."""
    if isinstance(query, str):
        query = ExportQuery(query)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = result if result is not None else WrittenBatch()
    events_conn: duckdb.DuckDBPyConnection | None = None
    try:
        started = time.perf_counter()
        for statement in query.setup:
            conn.execute(statement)
        reader = conn.sql(query.profiles).to_arrow_reader(BATCH_ROWS if query.events is None else EVENT_BATCH_ROWS)
        events: _EventLists | None = None
        if query.events is not None:
            events_conn = conn.cursor()  # a second stream, read in step with the first
            result.cursors.append(events_conn)
            events = _EventLists(events_conn.sql(query.events).to_arrow_reader(BATCH_ROWS))
        result.query_ms += (time.perf_counter() - started) * 1000
        _write_batches(reader, events, out_dir, rows_per_file, prefix, result)
    finally:
        if events_conn is not None:
            result.cursors.remove(events_conn)
            events_conn.close()
        for statement in query.cleanup:
            conn.execute(statement)
    return result


class _Lane:
    """Writes its share of the batches into Parquet files of at most `rows_per_file` rows, one file at a time,
    on its own thread (pyarrow encodes without the GIL, so lanes run in parallel with each other and with the
    query)."""

    def __init__(self, files: _Files) -> None:
        self.files = files
        self.thread = ThreadPoolExecutor(max_workers=1)
        self.writer: pq.ParquetWriter | None = None
        self.index = 0
        self.in_file = 0

    def write(self, data: pa.RecordBatch) -> None:
        offset = 0
        while offset < data.num_rows:
            if self.writer is None:
                self.index, self.writer = self.files.open()
                self.in_file = 0
            take = min(data.num_rows - offset, self.files.rows_per_file - self.in_file)
            self.writer.write_batch(data.slice(offset, take), row_group_size=ROW_GROUP_ROWS)
            offset += take
            self.in_file += take
            self.files.wrote(take)
            if self.in_file >= self.files.rows_per_file:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            self.files.closed(self.index, self.in_file)


class _Files:
    """The batch's files, numbered in the order they are opened (by any lane)."""

    def __init__(self, out_dir: Path, prefix: str, schema: pa.Schema, rows_per_file: int,
                 result: WrittenBatch) -> None:
        self.out_dir, self.prefix, self.schema, self.rows_per_file = out_dir, prefix, schema, rows_per_file
        self.result = result
        self.lock = threading.Lock()

    def open(self) -> tuple[int, pq.ParquetWriter]:
        with self.lock:
            index = len(self.result.files)
            name = f"{self.prefix}-{index:05d}.parquet"
            self.result.files.append((name, 0, 0))
        return index, pq.ParquetWriter(self.out_dir / name, self.schema, compression="zstd")

    def wrote(self, rows: int) -> None:
        with self.lock:
            self.result.rows += rows

    def closed(self, index: int, rows: int) -> None:
        with self.lock:
            name = self.result.files[index][0]
            self.result.files[index] = (name, (self.out_dir / name).stat().st_size, rows)


def _write_batches(reader: pa.RecordBatchReader, events: _EventLists | None, out_dir: Path, rows_per_file: int,
                   prefix: str, result: WrittenBatch) -> None:
    """Batch k goes to lane k mod WRITER_LANES; at most two batches per lane wait to be written."""
    schema = reader.schema
    keep = [i for i, f in enumerate(schema) if f.name != "__ns"]
    fields = [schema.field(i) for i in keep]
    if events is not None:
        fields.append(pa.field("timeSeriesEvents", events.type))
    out_schema = pa.schema(fields)
    result.schema = out_schema
    files = _Files(out_dir, prefix, out_schema, rows_per_file, result)
    lanes = [_Lane(files) for _ in range(WRITER_LANES)]
    pending: deque[Future[None]] = deque()
    position = 1
    count = 0
    try:
        while True:
            started = time.perf_counter()
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                result.query_ms += (time.perf_counter() - started) * 1000
                break
            columns = [batch.column(i) for i in keep]
            if events is not None:
                columns.append(events.lists(position, batch.num_rows))
                position += batch.num_rows
            result.query_ms += (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            if "__ns" in schema.names:
                counts = pc.value_counts(batch.column(schema.get_field_index("__ns")))
                for item in counts.to_pylist():
                    result.by_namespace[str(item["values"])] += int(item["counts"])
            lane = lanes[count % len(lanes)]
            pending.append(lane.thread.submit(lane.write, pa.RecordBatch.from_arrays(columns, schema=out_schema)))
            count += 1
            while len(pending) > 2 * len(lanes):
                pending.popleft().result()
            result.write_ms += (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        while pending:
            pending.popleft().result()
        if not result.files:  # an empty export is one empty file with the export's schema
            lanes[0].index, lanes[0].writer = files.open()
            lanes[0].in_file = 0
        for lane in lanes:
            lane.thread.submit(lane.close).result()
        result.write_ms += (time.perf_counter() - started) * 1000
    finally:
        for future in pending:
            future.cancel()
        for lane in lanes:
            lane.thread.shutdown(wait=True)
            if lane.writer is not None:
                lane.writer.close()


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
