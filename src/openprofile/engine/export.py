"""The profile export plan: merged profiles → filters → projection → events → Parquet files.

DuckDB reads the fragments and splits them into slices of groups; each slice is merged on Arrow arrays
(`merge_arrow`), and DuckDB filters and projects the merged rows, streamed as Arrow record batches into
Parquet files of at most `rows_per_file` rows; nothing holds the whole export in memory. The order of operations is
aep-semantics.md §4.2's: merge under the policy (oversized graphs already left out by the fragment
relations) → `emptyProfiles` → segment filter → `fromIngestTimestamp` (merged last modification
strictly later) → `fields` projection → `timeSeriesEvents` (the profile's events inside the
ingestion-time window, projected by the event-list fields, attached after the audience filter).

Event lists: when the store's partitions are merged (a stitched export), the events are split once by the
same partitions (the lake files read once, never joined: `_split_events`), and each partition's events are
ordered for its profiles and cut into their lists (`_PartEvents`); otherwise the profile rows are kept in a
table and every event, joined to its row's position, is sorted in buckets (`_EventLists`).

Choices where the docs are silent: with `fields`, only the selected columns are written (ask for
`identityMap` or `identities` explicitly, as the docs' events-only example does); `timeSeriesEvents`
is ordered by event time; the segment filter's `segmentQualificationTime` bounds are inclusive; a
profile with only events (`emptyProfiles: true`) carries the identities its events name.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from openprofile.engine.fields import project_sql, project_structure
from openprofile.engine.merge import (
    FragmentSource,
    MergeRule,
    fragment_rows_sql,
    merge_slots,
    merge_sql,
    merged_structure,
    profile_structure,
)
from openprofile.engine.merge_arrow import merge_table
from openprofile.engine.profile_store import (
    PARTITION_ROWS,
    DatasetFiles,
    StoreFiles,
    group_key,
    indexed_rows,
    partition_of,
    split_batches,
    write_split,
)
from openprofile.engine.profiles import Partition
from openprofile.engine.structure import Structure, TypeNode, quote_identifier, to_duckdb_type

BATCH_ROWS = 65_536
EVENT_BATCH_ROWS = 16_384
"""Profile rows per batch when each row carries its events."""
ROW_GROUP_ROWS = 16_384
DICTIONARY_PAGE_BYTES = 16_384
"""Dictionary page limit of export files: columns of few values keep their dictionary, those of mostly distinct
values (names, emails, ids) give it up early, where building it costs time and bytes (-15% write CPU, -14% bytes
for all fields)."""
WRITER_LANES = 2
"""Parquet files written at the same time (each batch goes to one of them)."""
LOADERS = 2
"""Slices loaded and merged at the same time, ahead of the one being written."""


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class SegmentCondition:
    segment_id: str
    namespace: str
    statuses: tuple[str, ...]


@dataclass(frozen=True)
class EventFiles:
    """The files behind an export's event relations, for the split by partition (`_split_events`): every event
    dataset's lake files (each with the name its index rows give it, their `_file`) and index files, and when
    identities are stitched the identities index, with the largest cluster kept."""

    lake: tuple[tuple[str, Path], ...]
    index: tuple[Path, ...]
    identities: Path | None = None
    max_cluster_size: int | None = None


@dataclass(frozen=True)
class EventPlan:
    """Event relations carrying `_group` (as fragments do), the event fields, and the ingestion window; `files`,
    the files the relations read (the store's events have them)."""

    relations: list[str]
    structure: Structure
    paths: list[str] | None
    from_ingest_ms: int | None = None
    to_ingest_ms: int | None = None
    files: EventFiles | None = None


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
    slices: int = 1  # the profiles are merged in this many slices of their groups (`partition_count`)
    memberships: Path | None = None  # the merge policy's current segment memberships (segment jobs' output)
    partitions: list[Partition] | None = None  # `sources` as the store keeps them by cluster (stitched merges)


SEGMENT_MEMBERSHIP: TypeNode = {"map": {"map": {"struct": {"status": "VARCHAR",
                                                           "lastQualificationTime": "TIMESTAMPTZ"}}}}
"""`segmentMembership` as segment jobs write it: namespace → segment id → (status, lastQualificationTime)."""


def _selects_memberships(plan: ExportPlan) -> bool:
    return plan.paths is None or any(p.split(".")[0] == "segmentMembership" for p in plan.paths)


def output_structure(plan: ExportPlan) -> Structure:
    """The record columns a profile row can have: the merged union structure plus `identities`, and
    `segmentMembership` when segment jobs have produced memberships or `fields` names it."""
    structure = profile_structure(plan.sources)
    if "segmentMembership" not in structure and (plan.memberships is not None or (
            plan.paths is not None and _selects_memberships(plan))):
        structure["segmentMembership"] = SEGMENT_MEMBERSHIP
    return structure


def memberships_relation(memberships: Path) -> str:
    """A membership file as (_group, __sm): each profile's computed `ups` memberships as a map."""
    return (f"(SELECT _group, map_from_entries(list({{'key': segment_id, 'value': {{'status': status, "
            f"'lastQualificationTime': CAST(last_qualification AS TIMESTAMPTZ)}}}})) AS __sm "
            f"FROM read_parquet({_quote(str(memberships))}) GROUP BY _group)")


def with_memberships(merged: str, merged_structure: Structure, memberships: str | None) -> str:
    """Merged rows whose `segmentMembership.ups` carries the memberships segment jobs computed (`memberships`,
    a relation of (_group, __sm)): a computed (segment, status) replaces an ingested one for the same segment;
    ingested memberships of other segments and namespaces stay. Without computed memberships the column is
    added empty when the rows lack it."""
    value_type = to_duckdb_type(merged_structure.get("segmentMembership", SEGMENT_MEMBERSHIP))
    if memberships is None:
        return f"SELECT *, CAST(NULL AS {value_type}) AS \"segmentMembership\" FROM ({merged})"
    if "segmentMembership" not in merged_structure:
        overlaid = f"CASE WHEN s.__sm IS NULL THEN NULL ELSE CAST(MAP {{'ups': s.__sm}} AS {value_type}) END"
        return (f"SELECT m.*, {overlaid} AS \"segmentMembership\" FROM ({merged}) m "
                f"LEFT JOIN {memberships} s USING (_group)")
    ingested = 'm."segmentMembership"'
    overlaid = (f"CASE WHEN s.__sm IS NULL THEN {ingested} ELSE CAST(map_concat(coalesce({ingested}, MAP {{}}), "
                f"MAP {{'ups': map_concat(coalesce({ingested}['ups'], MAP {{}}), s.__sm)}}) AS {value_type}) END")
    return (f"SELECT m.* REPLACE ({overlaid} AS \"segmentMembership\") FROM ({merged}) m "
            f"LEFT JOIN {memberships} s USING (_group)")


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


def _ingest_window(events: EventPlan, source: str) -> str:
    """SQL: the events of `source` (with `_ingest_ms`) inside the event list's ingestion window."""
    window = ["TRUE"]
    if events.from_ingest_ms is not None:
        window.append(f"{source}._ingest_ms > {int(events.from_ingest_ms)}")
    if events.to_ingest_ms is not None:
        window.append(f"{source}._ingest_ms < {int(events.to_ingest_ms)}")
    return " AND ".join(window)


def _event_struct(events: EventPlan, source: str) -> str:
    """SQL: the event of `source` as its `timeSeriesEvents` item, projected by the event list's fields."""
    names = list(project_structure(events.paths, events.structure))
    items = project_sql(events.paths, events.structure, source=source)
    fields = ", ".join(f"{quote_identifier(n)} := {item[: -len(' AS ' + quote_identifier(n))]}"
                       for n, item in zip(names, items, strict=True))
    return f"struct_pack({fields})"


def _event_time(events: EventPlan, source: str) -> str:
    """SQL: what a profile's events are ordered by — the event's `timestamp`, else its ingestion time."""
    return f'{source}."timestamp"' if "timestamp" in events.structure else f"{source}._ingest_ms"


def _events_projected(events: EventPlan) -> str:
    """The events inside the ingestion window, projected: `_group`, `__event` and the sort keys `__t`, `_xid`."""
    return (f"(SELECT e._group, {_event_struct(events, 'e')} AS __event, {_event_time(events, 'e')} AS __t, e._xid "
            f"FROM ({_event_union(events)}) e WHERE {_ingest_window(events, 'e')})")


def _events_select(projected: str, rows: str) -> str:
    """The exported rows' events, one row each, in no order: `__pos`, the position of its profile in `rows` by
    `__group`, the sort keys `__t` (event time) and `_xid`, and `__event`. `_EventLists` orders them."""
    return (f"WITH __g AS (SELECT __group, row_number() OVER (ORDER BY __group) AS __pos FROM {rows}) "
            f"SELECT g.__pos, e.__t, e._xid, e.__event FROM {projected} e JOIN __g g ON g.__group = e._group")


def members_relation(members: Path) -> str:
    """The members index as (_group, ns, id): every identity with the key of its cluster's profile."""
    return f"(SELECT {group_key('cluster')} AS _group, ns, id FROM read_parquet('{members}'))"


def with_cluster_identities(merged: str, members: str | Path) -> str:
    """A stitched profile's `identities` are every identity of its cluster (aep-semantics §2.5), not only those
    its record fragments name: members the fragments do not name are added, not primary. The list is ordered
    by (id, namespace): the items keyed (id, namespace, not primary) and sorted, the first of each run kept.
    `members` is a relation of (_group, ns, id), or the members index itself (`members_relation`)."""
    if isinstance(members, Path):
        members = members_relation(members)
    keyed = ("list_sort(list_concat(list_transform(m.\"identities\", lambda x: {'i': x.id, 'n': x.namespace.code, "
             "'q': NOT x.\"primary\"}), coalesce(c.ids, [])))")
    return f"""
        SELECT m.* REPLACE (list_transform(list_filter(__s, lambda x, k: k = 1 OR __s[k - 1].i IS DISTINCT FROM x.i
                                                              OR __s[k - 1].n IS DISTINCT FROM x.n),
                                           lambda x: {{'id': x.i, 'namespace': {{'code': x.n}}, 'primary': NOT x.q}})
                            AS "identities")
        FROM (SELECT m.*, {keyed} AS __s
              FROM ({merged}) m LEFT JOIN (
                  SELECT _group, list({{'i': id, 'n': ns, 'q': true}}) AS ids FROM {members} GROUP BY _group
              ) c USING (_group)) m"""


@dataclass(frozen=True)
class ArrowMerge:
    """A merge run by `merge_table` before a part's statements: the fragment rows (`fragment_rows_sql`'s), from
    the slice table `fragments` of the part's slice or, unsliced, from the query `fragments`, merged under
    `rule` and registered on the connection as the table `name`. With `members` (a slice table, or a relation
    of (_group, ns, id)), its rows list their clusters' whole identities, as `with_cluster_identities` does."""

    fragments: str
    structure: Structure = field(hash=False)
    rule: MergeRule
    name: str
    members: str | Path | None = None
    """A relation of (_group, ns, id), or a store partition's members file (`Partition.members`), read as it is:
    sorted, and covering the fragments' identities (`merge_table`'s `members_cover`)."""


@dataclass(frozen=True)
class ExportPart:
    """Rows of an export batch: run `merge` (if any) then `setup`, stream `profiles` (rows with `__ns`, the
    namespace counted for the metrics; no rows when None); with an event list, `events` streams each row's
    events (`__pos`, the row's 1-based position in `profiles`, then `__event`), ordered by position, and they
    are attached as `timeSeriesEvents`; `cleanup` runs last, whatever happened. While it runs, slice `slice`
    of each of the query's splits is a table (`ExportQuery`)."""

    profiles: str | None
    events: str | None = None
    setup: tuple[str, ...] = ()
    cleanup: tuple[str, ...] = ()
    slice: int | None = None
    merge: ArrowMerge | None = None
    columns: tuple[str, ...] | None = None
    """Instead of `profiles`: the rows are the merge's table's `columns` as they are, with `__ns` (no SQL pass)."""
    event_slice: str | None = None
    """A split of the events (`__g`, `__event` and the sort keys `__t`, `__x`: `_split_events`): its slice `slice`
    holds the events of this part's profiles, attached as `timeSeriesEvents` by the rows' `__row`, their position
    in the merge's table, which has that column too (`_PartEvents`)."""


@dataclass(frozen=True)
class ExportQuery:
    """One export batch's rows as DuckDB statements, run by `write_parquet`: first each of `splits`
    (relation, name) is split by slice, the store's partition of its `_group` (`partition_of`), into Arrow IPC
    files under `scratch`; then the `parts` run one after the other, their rows going into the same files — a
    part with a `slice` k sees slice k of each split as the table ``{name}_{k}``; `scratch` is removed at the
    end."""

    parts: tuple[ExportPart, ...]
    splits: tuple[tuple[str, str], ...] = ()
    slices: int = 1
    scratch: Path | None = None
    events: tuple[EventPlan, str] | None = None
    """The store's events and the name of their split (`_split_events`), split as the splits are."""


def _slice_table(name: str, number: int) -> str:
    return f"{name}_{number}"


def export_query(plan: ExportPlan, *, only_segment: SegmentCondition | None = None,
                 table: str = "__export_rows", scratch: Path | None = None) -> ExportQuery:
    """The rows of one export batch (all profiles, or one segment's with `segmentPerBatch`). With an event
    list, the profile rows are first kept in `table` (a table of the connection's database). With
    `plan.partitions` (and a `scratch`), the store's partitions are merged one at a time; else with `plan.slices`
    > 1, the fragment rows (and members) are first split into slices under `scratch`, and merged one slice at a
    time. The merge is `merge_table`'s (`ArrowMerge`), except when profiles with only
    events join in, where `merge_sql` merges every fragment in one statement."""
    structure = output_structure(plan)
    segments = (only_segment,) if only_segment else plan.segments
    joins_events = plan.events is not None and plan.empty_profiles and not segments
    sliced = scratch is not None and not joins_events
    stored = plan.partitions if sliced and (plan.events is None or plan.events.files is not None) else None
    slices = (len(stored) if stored is not None else plan.slices) if sliced else 1
    members = members_relation(plan.members) if plan.members is not None else None
    merged_columns = profile_structure(plan.sources)
    computed = (memberships_relation(plan.memberships) if plan.memberships is not None and (
        segments or _selects_memberships(plan)) else None)
    overlay = computed is not None or ("segmentMembership" in structure and "segmentMembership" not in merged_columns)
    splits: list[tuple[str, str]] = []
    fragments = fragment_rows_sql(plan.sources, plan.rule)
    merged_name = f"{table}_merged"
    # (fragment rows, members, memberships) of each part
    parts: list[tuple[str, str | Path | None, str | None]] = [(fragments, members, computed)]
    if stored is not None:
        # The store keeps the fragments and members by cluster already: only computed memberships (and events)
        # are split.
        if computed is not None and slices > 1:
            splits.append((computed, f"{table}_slice_s"))
        parts = [(fragment_rows_sql(p.sources, plan.rule), p.members if members is not None else None,
                  _slice_table(f"{table}_slice_s", k) if splits else computed)
                 for k, p in enumerate(stored)]
    elif slices > 1:
        assert scratch is not None
        prefix = f"{table}_slice"
        splits.append((f"({fragments})", f"{prefix}_f"))
        if members is not None:
            splits.append((members, f"{prefix}_m"))
        if computed is not None:
            splits.append((computed, f"{prefix}_s"))
        parts = [(_slice_table(f"{prefix}_f", k),
                  _slice_table(f"{prefix}_m", k) if members is not None else None,
                  _slice_table(f"{prefix}_s", k) if computed is not None else None)
                 for k in range(slices)]
    arrow_merges = [None if joins_events else ArrowMerge(rows, merged_structure(plan.sources), plan.rule,
                                                         merged_name, part_members)
                    for rows, part_members, _ in parts]
    conditions = []
    if segments:
        condition = _segment_condition(structure)
        conditions.append("(" + " OR ".join(condition(s, plan) for s in segments) + ")")
    if plan.from_ingest_ms is not None:
        conditions.append(f"m._last_modified_ms > {int(plan.from_ingest_ms)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    projection = project_sql(plan.paths, structure, source="m")
    namespace = ("coalesce(list_filter(m.\"identities\", lambda i: i.\"primary\")[1], "
                 "m.\"identities\"[1]).namespace.code AS __ns")

    def merged(_fragments: str, members: str | Path | None, memberships: str | None) -> str:
        """The part's merged rows (its fragments are the ArrowMerge's), with members and memberships."""
        sql = f"SELECT * FROM {merged_name}"  # the ArrowMerge's, cluster identities included
        if joins_events:  # never from the store's partitions: `members` is the members relation
            assert not isinstance(members, Path)
            sql = merge_sql(plan.sources, plan.rule)
            sql = with_cluster_identities(sql, members) if members is not None else sql
        return with_memberships(sql, merged_columns, memberships) if overlay else sql

    as_they_are = plan.paths is None and not conditions and not overlay and not joins_events
    if stored is not None and plan.events is not None:
        # Each partition's events are a slice of the events' split: its rows carry `__row` to find theirs.
        event_slice = f"{table}_slice_e"
        if as_they_are:
            return ExportQuery(tuple(ExportPart(None, slice=k, merge=arrow_merges[k], columns=tuple(structure),
                                                event_slice=event_slice) for k in range(len(parts))),
                               tuple(splits), slices, scratch, (plan.events, event_slice))
        return ExportQuery(tuple(ExportPart(f"SELECT {', '.join([*projection, namespace])}, m.__row "
                                            f"FROM ({merged(*part)}) m {where}", slice=k, merge=arrow_merges[k],
                                            event_slice=event_slice)
                                 for k, part in enumerate(parts)),
                           tuple(splits), slices, scratch, (plan.events, event_slice))
    if plan.events is None and as_they_are:
        # All fields, no filter: the merged rows are the batch's rows as they are.
        return ExportQuery(tuple(ExportPart(None, slice=k if slices > 1 else None, merge=arrow_merges[k],
                                            columns=tuple(structure))
                                 for k in range(len(parts))),
                           tuple(splits), slices, scratch)
    if plan.events is None:
        return ExportQuery(tuple(ExportPart(f"SELECT {', '.join([*projection, namespace])} FROM ({merged(*part)}) m "
                                            f"{where}", slice=k if slices > 1 else None, merge=arrow_merges[k])
                                 for k, part in enumerate(parts)),
                           tuple(splits), slices, scratch)
    # Aggregating every profile's events into a list in SQL is the costliest step by far (DuckDB's list()
    # over wide nested structs); instead the profile rows are kept (merged slice by slice), and their events
    # streamed in the same order, sorted once, to be cut into lists on the Arrow side.
    if not joins_events:
        rows = [f"SELECT {', '.join([*projection, namespace])}, m._group AS __group FROM ({merged(*part)}) m {where}"
                for part in parts]
    else:
        # emptyProfiles: profiles with only events join in, carrying the identities their events name.
        identities = 'coalesce(m."identities", ev.__event_identities)'
        projection = project_sql(plan.paths, structure, source={"identities": identities})
        namespace = (f"coalesce(list_filter({identities}, lambda i: i.\"primary\")[1], {identities}[1])"
                     ".namespace.code AS __ns")
        named = (f"SELECT e._group, list(DISTINCT {{'id': e._identity_id, 'namespace': {{'code': e._identity_ns}}, "
                 f"'primary': true}}) AS __event_identities FROM ({_event_union(plan.events)}) e GROUP BY e._group")
        rows = [f"WITH ev AS ({named}), m AS (SELECT * FROM ({merged(*parts[0])}) m {where}) "
                f"SELECT {', '.join([*projection, namespace])}, _group AS __group "
                f"FROM m FULL OUTER JOIN ev USING (_group)"]
    fill = [ExportPart(None, setup=(f"CREATE OR REPLACE TABLE {table} AS {sql}" if k == 0 else
                                    f"INSERT INTO {table} {sql}",), slice=k if slices > 1 else None,
                       merge=arrow_merges[k])
            for k, sql in enumerate(rows)]
    return ExportQuery(
        (*fill, ExportPart(profiles=f"SELECT * EXCLUDE (__group) FROM {table} ORDER BY __group",
                           events=_events_select(_events_projected(plan.events), table),
                           cleanup=(f"DROP TABLE IF EXISTS {table}",))),
        tuple(splits), slices, scratch,
    )


def _split(conn: duckdb.DuckDBPyConnection, relation: str, name: str, slices: int, scratch: Path) -> None:
    """Write the relation's rows that have a `_group` into `slices` Arrow IPC files, by the store's partition of
    their group (`partition_of`), so that slice k goes with the store's partition k."""
    write_split(conn, f"SELECT *, {partition_of('_group', slices)} AS __part FROM {relation} WHERE _group IS NOT NULL",
                slices, _slice_files(scratch, name))


def _slice_files(scratch: Path, name: str) -> Callable[[int, pa.Schema], ipc.RecordBatchFileWriter]:
    """Opens slice k of the split `name`: an Arrow IPC file under `scratch`, memory-mapped back by the parts."""
    scratch.mkdir(parents=True, exist_ok=True)
    return lambda k, schema: ipc.new_file(scratch / f"{_slice_table(name, k)}.arrow", schema)


def _read_slice(scratch: Path, name: str, number: int) -> pa.Table:
    """Slice `number` of the split `name` (`_slice_files`), memory-mapped."""
    return ipc.open_file(pa.memory_map(str(scratch / f"{_slice_table(name, number)}.arrow"))).read_all()


def _as_bytes16(values: pa.ChunkedArray) -> npt.NDArray[np.void]:
    """Binary values of 16 bytes each, none NULL, as numpy items of 16 bytes (taken from at numpy's speed)."""
    parts = []
    for chunk in values.chunks:
        chunk = chunk.cast(pa.binary())
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        if chunk.null_count or len(data) != 16 * len(chunk):
            raise ValueError("expected binary values of 16 bytes each")
        parts.append(data.view("V16"))
    return np.concatenate(parts) if parts else np.empty(0, dtype="V16")


def _bytes16_array(values: npt.NDArray[np.void]) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(values), [None, pa.py_buffer(values)])


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _group_keys(groups: pa.ChunkedArray) -> pa.Array:
    """Group keys (32 hex digits) as the 16 bytes they spell, as the event split keys events (`__g`); NULL stays
    NULL. A key of another form is a bug, not data: it raises."""
    strings = (groups.chunk(0) if groups.num_chunks == 1 else groups.combine_chunks()).cast(pa.string())
    valid = strings.is_valid()
    filled = pc.fill_null(strings, "0" * 32)
    offsets = np.frombuffer(filled.buffers()[1], dtype=np.int32)[filled.offset:filled.offset + len(filled) + 1]
    digits = _HEX[np.frombuffer(filled.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]]
    if len(digits) != 32 * len(filled) or (digits == 255).any():
        raise ValueError("group keys must be 32 hex digits")
    pairs = digits.reshape(-1, 2)
    packed = np.ascontiguousarray((pairs[:, 0] << 4) | pairs[:, 1])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(filled), [
        None if strings.null_count == 0 else valid.buffers()[1], pa.py_buffer(packed)],
        null_count=strings.null_count)


def _split_events(conn: duckdb.DuckDBPyConnection, events: EventPlan, name: str, slices: int,
                  scratch: Path) -> None:
    """`_split` for the store's events (`events.files`), into slices of (`__g`, `__event`, `__t`, `__x`): the
    event's group as the 16 bytes its 32 hex digits spell (`_group_keys`), the event, and the sort keys — event
    time and the tie-breaker, the rank of the event's identity among the identities (their order is their xid's).

    The wide lake rows are never joined: the index alone is joined to the identities (narrow columns), each
    index row keyed by its lake row's place among all lake files' rows (the file's first place plus `_rn`); the
    lake files are then read once, each row finding its index row at its place in a numpy array."""
    files = events.files
    assert files is not None
    if not files.index or not files.lake:
        split_batches(pa.schema([("__part", pa.int32())]), [], slices, _slice_files(scratch, name))
        return
    counts = [pq.read_metadata(path).num_rows for _, path in files.lake]
    firsts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    index = ", ".join(_quote(str(p)) for p in files.index)
    if files.identities is not None:
        limit = f" AND c.cluster_size <= {int(files.max_cluster_size)}" if files.max_cluster_size else ""
        identities = (f"JOIN read_parquet({_quote(str(files.identities))}, file_row_number = true) c "
                      f"ON c.xid = i._xid{limit}")
        group, tie = "c.cluster", "c.file_row_number"
    else:
        identities, group, tie = "", "i._xid", "0"
    timed = "timestamp" in events.structure
    narrow = (f"SELECT __key, unhex(g) AS __g, {partition_of('g', slices)} AS __part, __x"
              f"{'' if timed else ', __t'} FROM ("
              f"SELECT f.__first + i._rn AS __key, {group_key(group)} AS g, {tie}::BIGINT AS __x, "
              f"i._ingest_ms AS __t FROM read_parquet([{index}]) i JOIN __event_files f USING (_file) {identities} "
              f"WHERE {_ingest_window(events, 'i')})")
    lake = pa.table({"_file": [n for n, _ in files.lake], "__first": pa.array(firsts[:-1], pa.int64())})
    with _registered(conn, {"__event_files": lake}):
        found = conn.sql(narrow).to_arrow_table()
    row = np.full(int(firsts[-1]), -1, dtype=np.int64)  # each lake row's index row, -1 when none
    row[found.column("__key").to_numpy()] = np.arange(found.num_rows, dtype=np.int64)
    groups = _as_bytes16(found.column("__g"))
    parts = found.column("__part").to_numpy()
    ties = found.column("__x").to_numpy()
    ingested = None if timed else found.column("__t").to_numpy()
    del found
    wide = " UNION ALL BY NAME ".join(
        f"SELECT {int(first)} + file_row_number AS __key, * EXCLUDE (file_row_number) "
        f"FROM read_parquet({_quote(str(path))}, file_row_number = true)"
        for first, (_, path) in zip(firsts[:-1], files.lake, strict=True))
    reader = conn.sql(f"SELECT e.__key, {_event_struct(events, 'e')} AS __event"
                      f"{', ' + _event_time(events, 'e') + ' AS __t' if timed else ''} "
                      f"FROM ({wide}) e").to_arrow_reader(PARTITION_ROWS)
    event_type = reader.schema.field("__event").type
    time_type = reader.schema.field("__t").type if timed else pa.int64()
    schema = pa.schema([("__g", pa.binary(16)), ("__event", event_type), ("__t", time_type), ("__x", pa.int64()),
                        ("__part", pa.int32())])

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            at = row[batch.column("__key").to_numpy()]
            kept = at >= 0
            if not kept.all():
                batch, at = batch.filter(pa.array(kept)), at[kept]
            times = batch.column("__t") if ingested is None else pa.array(ingested[at])
            yield pa.RecordBatch.from_arrays(
                [_bytes16_array(groups[at]), batch.column("__event"), times, pa.array(ties[at]),
                 pa.array(parts[at])], schema=schema)

    split_batches(schema, batches(), slices, _slice_files(scratch, name))


@dataclass
class _Loaded:
    """What a part reads, made before it runs: its tables by name, and its events (`ExportPart.event_slice`)."""

    tables: dict[str, pa.Table]
    events: _PartEvents | None = None


def _load_part(query: ExportQuery, part: ExportPart, conn: duckdb.DuckDBPyConnection) -> _Loaded:
    """`_part_tables`, and the part's events ordered for its profiles."""
    tables = _part_tables(query, part, conn)
    if part.event_slice is None:
        return _Loaded(tables)
    assert part.merge is not None and part.slice is not None and query.scratch is not None
    events = _read_slice(query.scratch, part.event_slice, part.slice)
    merged = tables[part.merge.name]
    tables[part.merge.name] = merged.append_column("__row", pa.array(np.arange(merged.num_rows, dtype=np.int64)))
    return _Loaded(tables, _PartEvents(events, _group_keys(merged.column("_group"))))


def _release_memory(conn: duckdb.DuckDBPyConnection) -> None:
    """Hand what DuckDB kept of the splits' memory back, before the parts load theirs: lowering the limit
    evicts its buffers, and the allocator returns them past its flush threshold."""
    limit = conn.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    conn.execute("SET memory_limit = '32MB'")
    conn.execute(f"SET memory_limit = '{limit}'")


def _part_tables(query: ExportQuery, part: ExportPart, conn: duckdb.DuckDBPyConnection) -> dict[str, pa.Table]:
    """The tables a part reads, by name: slice `part.slice` of each split (memory-mapped) and its merge's
    result, its fragments and members read on `conn` when they are queries (the store's partitions)."""
    tables: dict[str, pa.Table] = {}
    if part.slice is not None:
        assert query.scratch is not None
        for _, split in query.splits:
            tables[_slice_table(split, part.slice)] = _read_slice(query.scratch, split, part.slice)
    merge = part.merge
    if merge is not None:
        def read(relation: str, sql: str) -> pa.Table:
            if relation in tables:
                return tables[relation]
            return conn.sql(sql).to_arrow_table()

        fragments = read(merge.fragments, merge.fragments)
        members = None
        if isinstance(merge.members, Path):  # in the file's order, which DuckDB keeps only when asked to
            conn.execute("SET preserve_insertion_order = true")
            try:
                members = conn.sql(f"SELECT _group, ns, id FROM read_parquet({_quote(str(merge.members))})"
                                   ).to_arrow_table()
            finally:
                conn.execute("SET preserve_insertion_order = false")
        elif merge.members is not None:
            members = read(merge.members, f"SELECT _group, ns, id FROM {merge.members}")
        tables[merge.name] = merge_table(fragments, merge.structure, merge_slots(merge.structure), merge.rule,
                                         members=members, members_cover=isinstance(merge.members, Path))
    return tables


def _with_namespace(rows: pa.Table) -> pa.Table:
    """The rows with `__ns`, the namespace of each row's primary identity (else its first): as the SQL path's
    ``coalesce(list_filter(identities, primary)[1], identities[1]).namespace.code``."""
    identities = rows.column("identities").combine_chunks()
    items = identities.flatten()
    parents = np.asarray(pc.list_parent_indices(identities), dtype=np.int64)
    primary = np.flatnonzero(np.asarray(pc.fill_null(pc.struct_field(items, "primary"), False), dtype=bool))
    chosen = np.full(len(identities), -1, dtype=np.int64)
    # the first item of each row, then, where it has one, its first primary item (the later write wins)
    for positions in (np.arange(len(parents)), primary):
        owners, first = np.unique(parents[positions], return_index=True)
        chosen[owners] = positions[first]
    codes = pc.struct_field(items, ["namespace", "code"])
    return rows.append_column("__ns", _take_or_null(codes, chosen))


def _take_or_null(values: pa.Array, indices: npt.NDArray[np.int64]) -> pa.Array:
    missing = indices < 0
    return values.take(pa.array(np.where(missing, 0, indices), mask=missing)) if len(values) else pa.nulls(
        len(indices), values.type)


@contextmanager
def _registered(conn: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table]) -> Iterator[None]:
    """The tables registered on the connection, while in the block."""
    try:
        for name, table in tables.items():
            conn.register(name, table)
        yield
    finally:
        for name in tables:
            conn.unregister(name)


@dataclass
class WrittenBatch:
    files: list[tuple[str, int, int]] = field(default_factory=list)  # (name, bytes, rows)
    rows: int = 0
    by_namespace: Counter[str] = field(default_factory=Counter)
    query_ms: float = 0.0
    write_ms: float = 0.0
    schema: pa.Schema | None = None
    cursors: list[duckdb.DuckDBPyConnection] = field(default_factory=list)  # also running this batch's queries
    interrupted: threading.Event = field(default_factory=threading.Event)
    """Set (with the connections interrupted) to stop the batch: checked between parts, where no query runs."""


EVENT_BUCKET_ROWS = 32_768
"""Profile rows whose events are sorted together (`_EventLists`): memory holds one bucket's events."""


class _EventLists:
    """Cuts the event stream into each profile row's `timeSeriesEvents` (NULL when none).

    The stream comes in no order (sorting 10M wide nested events in DuckDB cost more than the rest of the
    export): it is first spread, by profile position, over buckets of `EVENT_BUCKET_ROWS` rows in Arrow IPC
    files under `scratch`; then the buckets are read back in order, each sorted on the Arrow side by every
    column but `__event` (`__pos` first, then event time and `_xid` when the stream has them)."""

    def __init__(self, reader: pa.RecordBatchReader, scratch: Path) -> None:
        self.reader = reader
        self.scratch = scratch
        self.schema = reader.schema
        event_type = reader.schema.field("__event").type
        self.type = pa.list_(pa.field("l", event_type))
        self.keys = [(name, "ascending") for name in reader.schema.names if name != "__event"]
        self.buckets: list[int] | None = None
        self.positions: list[npt.NDArray[np.int64]] = []
        self.values: list[pa.Array] = []
        self.position = 1  # of the next row asked for

    def _spread(self) -> list[int]:
        """Write the stream into bucket files; returns the bucket numbers, in order."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        writers: dict[int, ipc.RecordBatchFileWriter] = {}
        options = ipc.IpcWriteOptions(compression="lz4")
        try:
            for batch in self.reader:
                if not batch.num_rows:
                    continue
                bucket_of = (batch.column(0).to_numpy() - 1) // EVENT_BUCKET_ROWS
                order = np.argsort(bucket_of, kind="stable")
                ordered = bucket_of[order]
                rows = batch.take(pa.array(order))
                starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
                ends = np.r_[starts[1:], len(ordered)]
                for start, end in zip(starts, ends, strict=True):
                    bucket = int(ordered[start])
                    if bucket not in writers:
                        writers[bucket] = ipc.new_file(self.scratch / f"events-{bucket}.arrow", self.schema,
                                                       options=options)
                    writers[bucket].write_batch(rows.slice(int(start), int(end - start)))
        finally:
            for writer in writers.values():
                writer.close()
        return sorted(writers)

    def _load_next(self) -> bool:
        """Append the next bucket's events, sorted; False when there is none left."""
        if self.buckets is None:
            self.buckets = self._spread()
        if not self.buckets:
            return False
        path = self.scratch / f"events-{self.buckets.pop(0)}.arrow"
        with pa.memory_map(str(path)) as source:
            table = ipc.open_file(source).read_all()
        table = table.take(pc.sort_indices(table, sort_keys=self.keys)).combine_chunks()
        path.unlink()
        self.positions.append(table.column(0).to_numpy())
        self.values.append(table.column("__event").chunk(0) if table.column("__event").num_chunks
                           else pa.array([], self.type.value_type))
        return True

    def _buffered_last(self) -> int:
        return int(self.positions[-1][-1]) if self.positions and len(self.positions[-1]) else -1

    def lists(self, batch: pa.RecordBatch) -> Callable[[], pa.Array]:
        """The lists of the batch's rows, the next ones of the stream (made now: the stream is read in order)."""
        made = self._lists(batch)
        return lambda: made

    def _lists(self, batch: pa.RecordBatch) -> pa.Array:
        first, count = self.position, batch.num_rows
        self.position += count
        last = first + count - 1
        while self._buffered_last() <= last and self._load_next():
            pass
        positions = np.concatenate(self.positions) if self.positions else np.empty(0, np.int64)
        values = pa.concat_arrays(self.values) if self.values else pa.array([], self.type.value_type)
        cut = int(np.searchsorted(positions, last, side="right"))
        self.positions, self.values = [positions[cut:]], [values.slice(cut)]
        offsets = np.searchsorted(positions[:cut], np.arange(first, last + 2), side="left").astype(np.int32)
        empty = offsets[1:] == offsets[:-1]
        return pa.ListArray.from_arrays(pa.array(offsets), values.slice(0, cut), type=self.type,
                                        mask=pa.array(empty))


class _Events(Protocol):
    """Each profile row's `timeSeriesEvents`, a batch of rows at a time."""

    type: pa.ListType

    def lists(self, batch: pa.RecordBatch) -> Callable[[], pa.Array]:
        """The lists of the batch's rows, made when called (on the lane that writes them)."""


class _PartEvents:
    """One part's events cut into its profile rows' `timeSeriesEvents` (NULL when none), whatever the rows'
    order: the events (`__g`, their group's key, `__t`, `__x`, `__event`, in no order) are ordered once by
    (profile, `__t`, `__x`) — the profile being the position of its group among the part's merged `groups`
    (keys of `__g`'s type) — and each batch of rows (`__row`, that position) takes the runs of its profiles.
    Events of groups with no merged profile are left out. The take runs on the writer's lane, not on the thread
    reading the rows."""

    def __init__(self, events: pa.Table, groups: pa.Array) -> None:
        event_type = events.schema.field("__event").type
        self.type = pa.list_(pa.field("l", event_type))
        position = pc.index_in(events.column("__g"), value_set=groups)
        keys = pa.table({"p": position, "t": events.column("__t"), "x": events.column("__x")})
        order = pc.sort_indices(keys, sort_keys=[("p", "ascending"), ("t", "ascending"), ("x", "ascending")])
        kept = len(position) - position.null_count
        self.order = np.asarray(order, dtype=np.int64)[:kept]
        self.counts = np.bincount(np.asarray(position.drop_null(), dtype=np.int64), minlength=len(groups))
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        # one buffer to take from: a take across the split's many small chunks costs several times more
        self.values = (events.column("__event").combine_chunks() if events.num_rows
                       else pa.array([], event_type))

    def lists(self, batch: pa.RecordBatch) -> Callable[[], pa.Array]:
        rows = np.asarray(batch.column("__row"), dtype=np.int64)
        lengths = self.counts[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        picked = self.order[np.repeat(self.starts[rows] - offsets[:-1], lengths)
                            + np.arange(int(offsets[-1]), dtype=np.int64)]

        def lists() -> pa.Array:
            return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), self.values.take(pa.array(picked)),
                                            type=self.type, mask=pa.array(lengths == 0))
        return lists


def write_parquet(conn: duckdb.DuckDBPyConnection, query: ExportQuery | ExportPart | str, out_dir: Path, *,
                  rows_per_file: int, prefix: str = "part", result: WrittenBatch | None = None) -> WrittenBatch:
    """Run the query (`ExportQuery`) and stream its rows into Parquet files of at most `rows_per_file` rows,
    counting profiles per namespace.

    `result` (if given) is filled as the files are written, so another thread can report progress."""
    if isinstance(query, str):
        query = ExportPart(query)
    if isinstance(query, ExportPart):
        query = ExportQuery((query,))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = result if result is not None else WrittenBatch()
    whole = query
    scratch = query.scratch if query.scratch is not None else Path(tempfile.mkdtemp(prefix="openprofile-export-"))

    def streams() -> Generator[tuple[pa.RecordBatchReader, _Events | None], None, None]:
        # Sliced parts' tables (their slices, their merges) are made on `LOADERS` threads, each with its own
        # connection, the next parts' while this one's rows are written: the merge is single-threaded numpy.
        # With an event list, one: the events' sort is what bounds the export's memory then.
        loaders = 1 if any(p.events is not None or p.event_slice is not None for p in whole.parts) else LOADERS
        loader = ThreadPoolExecutor(max_workers=loaders)
        cursors = [conn.cursor() for _ in range(loaders)]  # a connection serves one thread at a time
        result.cursors.extend(cursors)
        free: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        for cursor in cursors:
            free.put(cursor)

        def load(ahead: ExportPart) -> _Loaded:
            # A free cursor, not one chosen by the part's number: the parts ahead are submitted before the current
            # one is awaited, so part k + 2 may start while part k still runs.
            cursor = free.get()
            try:
                return _load_part(whole, ahead, cursor)
            finally:
                free.put(cursor)

        upcoming: dict[int, Future[_Loaded]] = {}
        try:
            for number, part in enumerate(whole.parts):
                for ahead in range(number + 1, min(number + 1 + loaders, len(whole.parts))):
                    if ahead not in upcoming and whole.parts[ahead].slice is not None:
                        upcoming[ahead] = loader.submit(load, whole.parts[ahead])
                future = upcoming.pop(number, None)
                loaded = future.result() if future is not None else _load_part(whole, part, conn)
                if result.interrupted.is_set():
                    raise duckdb.InterruptException("INTERRUPT Error: the export was interrupted")
                yield from part_stream(part, loaded)
                del loaded, future  # the part's events and merge are not kept while the next part is written
        finally:
            for future in upcoming.values():
                future.cancel()
            loader.shutdown(wait=True)
            for cursor in cursors:
                result.cursors.remove(cursor)
                cursor.close()

    def part_stream(part: ExportPart, loaded: _Loaded) -> Generator[tuple[pa.RecordBatchReader, _Events | None]]:
        profiles_conn = conn
        readers: list[pa.RecordBatchReader] = []
        tables = loaded.tables
        size = BATCH_ROWS if part.events is None and part.event_slice is None else EVENT_BATCH_ROWS
        try:
            with _registered(conn, tables):
                for statement in part.setup:
                    conn.execute(statement)
                if part.columns is not None:
                    assert part.merge is not None
                    merged = tables[part.merge.name]
                    rows = _with_namespace(merged.select(list(part.columns)))
                    if part.event_slice is not None:
                        rows = rows.append_column("__row", merged.column("__row"))
                    yield pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches(size)), loaded.events
                    return
                if part.profiles is None:
                    return
                events: _Events | None = loaded.events
                if part.events is not None:
                    # The rows (a table) stream from a second connection, in step with their events from this
                    # one (which sees the slice's tables).
                    profiles_conn = conn.cursor()
                    result.cursors.append(profiles_conn)
                    readers.append(conn.sql(part.events).to_arrow_reader(BATCH_ROWS))
                    events = _EventLists(readers[-1], scratch / f"events-{len(readers)}")
                readers.append(profiles_conn.sql(part.profiles).to_arrow_reader(size))
                yield readers[-1], events
        finally:
            for reader in readers:
                reader.close()
            if profiles_conn is not conn:
                result.cursors.remove(profiles_conn)
                profiles_conn.close()
            for statement in part.cleanup:
                conn.execute(statement)

    try:
        started = time.perf_counter()
        for relation, name in whole.splits:
            assert whole.scratch is not None
            _split(conn, relation, name, whole.slices, whole.scratch)
        if whole.events is not None:
            assert whole.scratch is not None
            _split_events(conn, whole.events[0], whole.events[1], whole.slices, whole.scratch)
        if whole.splits or whole.events is not None:
            _release_memory(conn)
        result.query_ms += (time.perf_counter() - started) * 1000
        parts = streams()
        try:
            _write_batches(parts, out_dir, rows_per_file, prefix, result)
        finally:
            parts.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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

    def write(self, columns: list[pa.Array], lists: Callable[[], pa.Array] | None, schema: pa.Schema) -> None:
        """Write a batch of the columns, and of the event lists `lists` makes when it has them."""
        data = pa.RecordBatch.from_arrays([*columns, lists()] if lists is not None else columns, schema=schema)
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
        return index, pq.ParquetWriter(self.out_dir / name, self.schema, compression="zstd",
                                       dictionary_pagesize_limit=DICTIONARY_PAGE_BYTES)

    def wrote(self, rows: int) -> None:
        with self.lock:
            self.result.rows += rows

    def closed(self, index: int, rows: int) -> None:
        with self.lock:
            name = self.result.files[index][0]
            self.result.files[index] = (name, (self.out_dir / name).stat().st_size, rows)


def _write_batches(streams: Iterator[tuple[pa.RecordBatchReader, _Events | None]], out_dir: Path,
                   rows_per_file: int, prefix: str, result: WrittenBatch) -> None:
    """The streams' batches, one stream after the other (all of one schema): batch k goes to lane
    k mod WRITER_LANES; at most two batches per lane wait to be written."""
    started = time.perf_counter()
    reader, events = next(streams)
    result.query_ms += (time.perf_counter() - started) * 1000
    schema = reader.schema
    keep = [i for i, f in enumerate(schema) if f.name not in ("__ns", "__row")]
    fields = [schema.field(i) for i in keep]
    if events is not None:
        fields.append(pa.field("timeSeriesEvents", events.type))
    out_schema = pa.schema(fields)
    result.schema = out_schema
    files = _Files(out_dir, prefix, out_schema, rows_per_file, result)
    lanes = [_Lane(files) for _ in range(WRITER_LANES)]
    pending: deque[Future[None]] = deque()
    count = 0
    try:
        while True:
            started = time.perf_counter()
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                following = next(streams, None)
                result.query_ms += (time.perf_counter() - started) * 1000
                if following is None:
                    break
                reader, events = following
                continue
            columns = [batch.column(i) for i in keep]
            lists = events.lists(batch) if events is not None else None
            result.query_ms += (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            if "__ns" in schema.names:
                counts = pc.value_counts(batch.column(schema.get_field_index("__ns")))
                for item in counts.to_pylist():
                    result.by_namespace[str(item["values"])] += int(item["counts"])
            lane = lanes[count % len(lanes)]
            pending.append(lane.thread.submit(lane.write, columns, lists, out_schema))
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


def _event_rows(lake_root: Path, store: StoreFiles, entry: DatasetFiles) -> str:
    """An event dataset's events with their index columns, as `indexed_rows` gives them, but joined one lake
    file at a time on the row number alone: an index narrowed to one file (by its `_file`) against that file's
    rows, instead of one join of every event on (file name, row number)."""
    index = ", ".join(_quote(str(store.path(f))) for f in entry.files)
    selects = [
        f"SELECT l.* EXCLUDE (file_row_number), i._xid, i._identity_ns, i._identity_id, i._ingest_ms, i._batch "
        f"FROM read_parquet({_quote(str(lake_root / name))}, file_row_number = true) l "
        f"JOIN (SELECT _rn, _xid, _identity_ns, _identity_id, _ingest_ms, _batch FROM read_parquet([{index}]) "
        f"WHERE _file = {_quote(name)}) i ON i._rn = l.file_row_number"
        for name in entry.lake_files
    ]
    return "(" + " UNION ALL BY NAME ".join(selects) + ")" if selects else indexed_rows(lake_root, store, entry)


def event_relations(lake_root: Path, store: StoreFiles, entries: list[DatasetFiles], *, stitched: bool,
                    identities: Path | None, max_cluster_size: int | None) -> list[str]:
    """Every event with the `_group` of the profile it belongs to (as `fragment_sources` gives fragments)."""
    relations = []
    for entry in entries:
        rows = _event_rows(lake_root, store, entry)
        if stitched and identities is not None:
            limit = f"WHERE i.cluster_size <= {int(max_cluster_size)}" if max_cluster_size else ""
            relations.append(f"(SELECT e.*, {group_key('i.cluster')} AS _group FROM {rows} e "
                             f"JOIN read_parquet('{identities}') i ON i.xid = e._xid {limit})")
        else:
            relations.append(f"(SELECT *, {group_key('_xid')} AS _group FROM {rows})")
    return relations
