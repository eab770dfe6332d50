"""The profile store's indexes over the lake: fragments, events and the identity graph, as Parquet generations.

The lake's batch files are the records and events; the store keeps indexes over them. Everything it keeps
is derived (and rebuilt from the lake by `openprofile rebuild`): a *generation* is a manifest
(`gen-{n}.json`) naming immutable index files under `files/`:

- `identities`: one row per identity `(xid, ns, id, cluster, cluster_size)`, sorted by `xid` (point
  lookups prune row groups); `members`: the same rows sorted by `cluster`;
- per profile-record dataset, its *fragment index*: for each primary identity, where its newest record
  is — `(_xid, _identity_ns, _identity_id, _ingest_ms, _batch, _file, _rn)`, `_file` the lake-relative
  file and `_rn` the row in it — sorted by `_xid`. A newer record for the same key replaces the older;
- per event dataset, one *event index* per applied batch, `(_xid, _identity_ns, _identity_id, _ingest_ms,
  _batch, _file, _rn, _event_key)`, sorted by `_xid`; an event whose `_id` the dataset already has is
  left out (events are deduplicated on `_id`; `_event_key` is the md5 of `_id`);
- per record file of a profile-record dataset, a *lookup copy* (`rows-*`): the lake file written again row
  for row in 2k-row groups, so that a lookup decodes a small row group instead of a 16k one (the index's
  `_rn` names the same row in both). Only lookups read copies; exports and scans read the lake. A copy is
  written once per record file, and dropped when the fragment index no longer points into its file;
- the *partitions* (`Partitions`): the current fragments of every record dataset (the lake rows the fragment
  indexes point at, with their cluster and its size) and the members index, grouped by identity cluster into
  `count` partitions of at most `FRAGMENTS_PER_PARTITION` fragments (and, counting the event datasets' events,
  `EVENTS_PER_PARTITION` events: an export splits the events the same way), one Parquet file per dataset and
  partition. A stitched export merges them one partition at a time as they are; without them it would join the
  lake to the indexes and split the result by cluster itself, which was most of its time. They are remade at
  the end of an apply: all of them when the identities (or the count) changed, else only the datasets whose
  fragment index changed. Like the identity files and the fragment indexes, that is work in proportion to the
  data, not to the batch.

XIDs are the md5 of `lower(namespace):id`, kept as UUIDs (16 bytes: fast to join and sort, and written to
Parquet losslessly); the API shows them as 32 hex digits.

`indexed_rows` joins an index with its lake files into rows with those system columns. Each dataset
also records the namespaces its index holds (`DatasetFiles.namespaces`), so that a lookup asks an index
only about the identities that can be in it. The files lookups read (identities, members, fragment indexes,
copies) are written in 2k-row groups and read with pyarrow, their footers kept in memory: a point read then
decodes one small row group. Event indexes, scanned by DuckDB, keep 16k-row groups (DuckDB's cost per row
group makes small groups slow for it).

Applying batches writes only new index files and a new manifest, then moves the `CURRENT` pointer by an
atomic rename, so readers always see one whole generation. An apply reads each new lake file's
`identityMap` once (`_stage`: batches and files are small integers there, never strings) and runs in
DuckDB under a memory limit, spilling to `tmp/` past it, so its memory does not grow with the data.

Clusters are the connected components of the graph whose links are any two identities in one record or
event; they are updated incrementally: only the components a batch touches change, computed over the
links between the current clusters (vectorised min-label propagation over integer-numbered labels), and
the identity files are not rewritten when nothing changed. A cluster's id is the smallest XID among its
members, so it does not depend on the order batches arrived in.

Deleted identities (tombstones) are applied once: a new generation's index files are written without the
deleted rows, and files written earlier are rewritten only for tombstones they have not seen yet (the
manifest lists the ones applied).

The primary identity of a row is its identityMap item marked `primary`, else its only identity,
else (several, none marked) the first by (namespace, id) — a documented, deterministic choice.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openprofile.engine.merge import precedence_keys_sql
from openprofile.engine.structure import Structure, merge_structures

ROW_GROUP = 16_384  # event indexes (read by DuckDB, whose per-row-group overhead makes small groups slow)
LOOKUP_ROW_GROUP = 2_048  # files read by point lookups (pyarrow, footer cached): identities, members, fragment
#                           indexes and the lookup copies of record files: one row costs decoding one small group
SYSTEM_COLUMNS = ("_xid", "_identity_ns", "_identity_id", "_ingest_ms", "_batch")
INDEX_COLUMNS = (*SYSTEM_COLUMNS, "_file", "_rn")

@dataclass(frozen=True)
class BatchInput:
    """A successful lake batch of a profile-enabled dataset, to be applied to the store."""

    batch_id: str
    dataset_id: str
    kind: str  # "profile" | "experienceevent"
    files: list[str]  # lake-relative paths of its Parquet files
    ingest_ms: int
    structure: Structure | None = None  # the dataset's structure (the catalog's), if known


@dataclass(frozen=True)
class Tombstone:
    """A deleted identity: its fragments and events ingested up to `deleted_ms` are dropped."""

    xid: str
    deleted_ms: int


@dataclass
class DatasetFiles:
    """A dataset in the store: its kind, record structure, index files and the lake files they point into."""

    kind: str
    structure: Structure
    files: list[str] = field(default_factory=list)
    lake_files: list[str] = field(default_factory=list)
    namespaces: list[str] | None = None  # the namespaces of its index's identities (None: not recorded)
    copies: dict[str, str] | None = None  # record datasets: lake file -> its lookup copy in the store
    segments: list[str] | None = None  # record datasets: the `segmentMembership.ups` segment ids ingested


PARTITIONS_LAYOUT = 3
"""The partitions' files: 2 adds the group key and the precedence key's record parts to the fragments, 3 sorts the
members by (cluster, id, ns)."""


@dataclass(frozen=True)
class Partitions:
    """The current fragments and the members index grouped by identity cluster, for exports (`_update_partitions`):
    `count` partitions, a cluster's rows all in partition ``hash(cluster key) % count`` (`partition_of`). Per
    record dataset, one Parquet file per partition, and the fragment index files it was made from (`built_from`:
    it is remade when they, the identities or the count change). Each fragment row is its indexed lake row with
    `_group`, `_cluster_size` and the precedence key's `__kt` and `__kh` (`precedence_keys_sql`); each members
    file is sorted by (cluster, id, ns). Partitions of an older `layout` are not read, and remade by the next
    apply."""

    count: int
    identities: str
    members: list[str]
    datasets: dict[str, list[str]]
    built_from: dict[str, list[str]]
    layout: int = PARTITIONS_LAYOUT

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "identities": self.identities, "members": self.members,
                "datasets": self.datasets, "built_from": self.built_from, "layout": self.layout}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partitions:
        return cls(int(data["count"]), str(data["identities"]), list(data["members"]),
                   {k: list(v) for k, v in data["datasets"].items()},
                   {k: list(v) for k, v in data["built_from"].items()}, int(data.get("layout", 1)))

    @property
    def current(self) -> bool:
        return self.layout == PARTITIONS_LAYOUT

    def files(self) -> list[str]:
        return [*self.members, *(f for files in self.datasets.values() for f in files)]


@dataclass
class Manifest:
    generation: int
    created_ms: int
    identities: str | None
    members: str | None
    datasets: dict[str, DatasetFiles]
    applied: list[str]
    tombstones: list[list[Any]] = field(default_factory=list)  # [xid, deleted_ms] of the tombstones applied
    partitions: Partitions | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation, "created_ms": self.created_ms, "identities": self.identities,
            "members": self.members, "applied": self.applied, "tombstones": self.tombstones,
            "partitions": self.partitions.to_json() if self.partitions else None,
            "datasets": {k: {"kind": v.kind, "structure": v.structure, "files": v.files, "lake_files": v.lake_files,
                             "namespaces": v.namespaces, "copies": v.copies, "segments": v.segments}
                         for k, v in self.datasets.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            generation=int(data["generation"]), created_ms=int(data["created_ms"]), identities=data["identities"],
            members=data["members"], applied=list(data["applied"]),
            tombstones=[list(t) for t in data.get("tombstones", [])],
            partitions=Partitions.from_json(data["partitions"]) if data.get("partitions") else None,
            datasets={k: DatasetFiles(v["kind"], v["structure"], list(v["files"]), list(v.get("lake_files", [])),
                                      v.get("namespaces"), v.get("copies"), v.get("segments"))
                      for k, v in data["datasets"].items()},
        )

    @classmethod
    def empty(cls) -> Manifest:
        return cls(0, 0, None, None, {}, [])


_manifests: OrderedDict[tuple[str, int, int, int], Manifest] = OrderedDict()
_manifests_lock = threading.Lock()


class StoreFiles:
    """The on-disk layout of one tenant's store: `files/`, `gen-{n}.json`, `CURRENT`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"

    def current(self, *, shared: bool = False) -> Manifest:
        """The current generation's manifest. With `shared`, a parsed manifest may be reused from a small cache
        (keyed by the file's identity, since a rebuild writes the same names again): the caller must not
        modify it."""
        pointer = self.root / "CURRENT"
        if not pointer.exists():
            return Manifest.empty()
        generation = int(pointer.read_text().strip())
        path = self.root / f"gen-{generation:08d}.json"
        if not shared:
            return Manifest.from_json(json.loads(path.read_text()))
        stat = path.stat()
        key = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with _manifests_lock:
            found = _manifests.get(key)
            if found is not None:
                _manifests.move_to_end(key)
                return found
        manifest = Manifest.from_json(json.loads(path.read_text()))
        with _manifests_lock:
            _manifests[key] = manifest
            while len(_manifests) > 32:
                _manifests.popitem(last=False)
        return manifest

    def path(self, name: str) -> Path:
        return self.root / name

    def new_file(self, prefix: str) -> str:
        self.files.mkdir(parents=True, exist_ok=True)
        return f"files/{prefix}-{uuid.uuid4().hex}.parquet"

    def publish(self, manifest: Manifest) -> None:
        """Write the manifest, then move CURRENT to it; both by rename, so readers never see half."""
        manifest_path = self.root / f"gen-{manifest.generation:08d}.json"
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest.to_json()))
        os.replace(tmp, manifest_path)
        pointer_tmp = self.root / "CURRENT.tmp"
        pointer_tmp.write_text(str(manifest.generation))
        os.replace(pointer_tmp, self.root / "CURRENT")

    def collect_garbage(self, keep_generations: int = 3) -> None:
        """Remove manifests and files no longer referenced by the newest few generations."""
        manifests = sorted(self.root.glob("gen-*.json"))
        keep = manifests[-keep_generations:]
        referenced: set[str] = set()
        for path in keep:
            data = Manifest.from_json(json.loads(path.read_text()))
            referenced.update(f for f in (data.identities, data.members) if f)
            referenced.update(data.partitions.files() if data.partitions else [])
            for files in data.datasets.values():
                referenced.update(files.files)
                referenced.update((files.copies or {}).values())
        for path in manifests[:-keep_generations]:
            path.unlink(missing_ok=True)
        if self.files.is_dir():
            for data_file in self.files.iterdir():
                if f"files/{data_file.name}" not in referenced:
                    data_file.unlink(missing_ok=True)


def connect(threads: int | None = None, memory_limit: str | None = None, temp_dir: Path | None = None
            ) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    if threads:
        conn.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        conn.execute(f"SET memory_limit = '{memory_limit}'")
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        conn.execute(f"SET temp_directory = '{temp_dir}'")
    conn.execute("SET preserve_insertion_order = false")
    return conn


def _files_sql(paths: list[Path] | list[str]) -> str:
    quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{quoted}], union_by_name = true)"


def _copy(conn: duckdb.DuckDBPyConnection, select: str, target: Path, row_group: int = ROW_GROUP) -> None:
    conn.execute(
        f"COPY ({select}) TO '{_escape(str(target))}' "
        f"(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE {row_group})"
    )


def _lake_sql(lake_root: Path, files: list[str], *, union: bool = True) -> str:
    """Lake files as one relation with `_file` (the lake-relative path) and `file_row_number`."""
    paths = ", ".join("'" + _escape(str(lake_root / f)) + "'" for f in files)
    options = ", union_by_name = true" if union else ""
    return (f"(SELECT * EXCLUDE (filename), replace(filename, '{_escape(str(lake_root))}/', '') AS _file "
            f"FROM read_parquet([{paths}], filename = true, file_row_number = true{options}))")


def _escape(text: str) -> str:
    return text.replace("'", "''")


def indexed_rows(lake_root: Path, store: StoreFiles, entry: DatasetFiles, *, where: str | None = None) -> str:
    """A dataset's rows in the store — a record dataset's current fragments, an event dataset's events —:
    the lake rows its index points at, with the system columns. `where` (on the index's columns, e.g.
    `_xid IN (...)`) narrows the index before the lake is read."""
    index = f"SELECT * FROM {_files_sql([store.path(f) for f in entry.files])}" + (f" WHERE {where}" if where else "")
    return (f"(SELECT l.* EXCLUDE (_file, file_row_number), i._xid, i._identity_ns, i._identity_id, "
            f"i._ingest_ms, i._batch FROM {_lake_sql(lake_root, entry.lake_files)} l "
            f"JOIN ({index}) i ON i._file = l._file AND i._rn = l.file_row_number)")


def apply_batches(
    store: StoreFiles, lake_root: Path, batches: list[BatchInput], *, tombstones: list[Tombstone], now_ms: int,
    threads: int | None = None, memory_limit: str | None = None,
) -> Manifest:
    """Apply batches (in the given order) to the current generation and publish the next one."""
    previous = store.current()
    manifest = Manifest(previous.generation + 1, now_ms, previous.identities, previous.members,
                        {k: DatasetFiles(v.kind, dict(v.structure), list(v.files), list(v.lake_files),
                                         None if v.namespaces is None else list(v.namespaces),
                                         None if v.copies is None else dict(v.copies),
                                         None if v.segments is None else list(v.segments))
                         for k, v in previous.datasets.items()}, list(previous.applied),
                        [list(t) for t in previous.tombstones], previous.partitions)
    applied = {(str(t[0]), int(t[1])) for t in previous.tombstones}
    fresh = [t for t in tombstones if (t.xid, t.deleted_ms) not in applied]
    old_files = {f for entry in manifest.datasets.values() for f in entry.files}
    conn = connect(threads, memory_limit, store.root / "tmp")
    try:
        _tombstone_table(conn, "tombstones", tombstones)
        if _stage(conn, lake_root, batches):
            _update_identities(conn, store, manifest)
            for dataset_id in sorted({b.dataset_id for b in batches if b.kind == "profile"}):
                _update_fragments(conn, store, manifest, batches, dataset_id, lake_root)
            for order, batch in enumerate(batches):
                if batch.kind == "experienceevent":
                    _append_events(conn, store, manifest, batches, order)
        else:  # nothing to index (no files, or no identities): the datasets are still known to the store
            for batch in batches:
                if batch.files:
                    _dataset_entry(manifest, batch)
        if fresh:
            _tombstone_table(conn, "fresh_tombstones", fresh)
            _apply_tombstones(conn, store, manifest, old_files)
            manifest.tombstones.extend([t.xid, t.deleted_ms] for t in fresh)
        manifest.applied.extend(b.batch_id for b in batches)
        _update_partitions(conn, store, manifest, lake_root)
    finally:
        conn.close()
    store.publish(manifest)
    store.collect_garbage()
    return manifest


def _tombstone_table(conn: duckdb.DuckDBPyConnection, name: str, tombstones: list[Tombstone]) -> None:
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} (xid UUID, deleted_ms BIGINT)")
    if tombstones:
        conn.executemany(f"INSERT INTO {name} VALUES (CAST(? AS UUID), ?)",
                         [(t.xid, t.deleted_ms) for t in tombstones])


# A row's identities as `{np, ns, id}` (np: not marked primary), empty ids left out; the common single identity
# is read directly, the list functions run only for rows with several.
_SINGLE = """cardinality("identityMap") = 1 AND len(map_values("identityMap")[1]) = 1"""
_ONE = ("""{'np': NOT coalesce(map_values("identityMap")[1][1]."primary", false), """
        """'ns': lower(map_keys("identityMap")[1]), 'id': map_values("identityMap")[1][1].id}""")
_ITEMS = ("""list_filter(flatten(list_transform(map_entries("identityMap"), lambda e: list_transform(e.value, """
          """lambda i: {'np': NOT coalesce(i."primary", false), 'ns': lower(e.key), 'id': i.id}))), """
          """lambda x: coalesce(x.id, '') <> '')""")


def _stage(conn: duckdb.DuckDBPyConnection, lake_root: Path, batches: list[BatchInput]) -> bool:
    """Read each new lake file's identityMap once, into `staged`: one row per record or event that has an
    identity — `(ord, f, rn, xid, ns, id, ek, more)`: the batch's order, the file's number (`staged_files`),
    the row, the primary identity (marked primary, else the first by namespace then id), the md5 of an event's
    `_id`, and the row's identities when it has several (`{np, ns, id}`: the links of the graph).

    Files and batches are small integers here, never strings, so that joins and sorts over millions of events
    stay cheap; their paths and ids are attached only to the index rows written out. Within a batch, files are
    numbered in path order, so (ord, f, rn) orders rows as they were committed."""
    conn.execute("CREATE OR REPLACE TEMP TABLE staged_batches (ord INTEGER, batch VARCHAR, ingest_ms BIGINT)")
    conn.execute("CREATE OR REPLACE TEMP TABLE staged_files (f INTEGER, ord INTEGER, path VARCHAR)")
    conn.execute("""CREATE OR REPLACE TEMP TABLE staged (ord INTEGER, f INTEGER, rn BIGINT, xid UUID, ns VARCHAR,
                    id VARCHAR, ek UUID, more STRUCT(np BOOLEAN, ns VARCHAR, id VARCHAR)[])""")
    number = 0
    for order, batch in enumerate(batches):
        conn.execute("INSERT INTO staged_batches VALUES (?, ?, ?)", [order, batch.batch_id, batch.ingest_ms])
        event_key = 'CAST(md5(CAST("_id" AS VARCHAR)) AS UUID)' if batch.kind == "experienceevent" else "NULL"
        for path in sorted(batch.files):
            conn.execute("INSERT INTO staged_files VALUES (?, ?, ?)", [number, order, path])
            conn.execute(f"""
                INSERT INTO staged
                SELECT {order}, {number}, rn, CAST(md5(p.ns || ':' || p.id) AS UUID), p.ns, p.id, ek,
                       CASE WHEN len(items) > 1 THEN items END
                FROM (SELECT rn, ek, items, coalesce(single, list_min(items)) AS p
                      FROM (SELECT file_row_number AS rn, {event_key} AS ek,
                                   CASE WHEN {_SINGLE} THEN {_ONE} END AS single,
                                   CASE WHEN NOT ({_SINGLE}) THEN {_ITEMS} END AS items
                            FROM read_parquet('{_escape(str(lake_root / path))}', file_row_number = true)))
                WHERE coalesce(p.id, '') <> ''
            """)
            number += 1
    return bool(conn.execute("SELECT count(*) FROM staged").fetchall()[0][0])


def _update_identities(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest) -> None:
    """Merge the new rows' identities and links into the clusters; only touched components change, and the
    files are not rewritten when nothing changed. A row links all its identities: a star from the row's
    primary identity is enough for connectivity."""
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE links AS
        SELECT a, CAST(md5(ns || ':' || id) AS UUID) AS b, ns, id
        FROM (SELECT DISTINCT xid AS a, x.ns AS ns, x.id AS id
              FROM (SELECT xid, ns AS pns, id AS pid, unnest(more) AS x FROM staged WHERE more IS NOT NULL)
              WHERE x.ns <> pns OR x.id <> pid)
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE nodes AS
        SELECT xid, any_value(ns) AS ns, any_value(id) AS id
        FROM (SELECT xid, ns, id FROM staged UNION ALL SELECT b, ns, id FROM links) GROUP BY xid
    """)
    if manifest.identities:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE old_ids AS SELECT xid, cluster "
                     f"FROM read_parquet('{_escape(str(store.path(manifest.identities)))}')")
    else:
        conn.execute("CREATE OR REPLACE TEMP TABLE old_ids (xid UUID, cluster UUID)")
    conn.execute("CREATE OR REPLACE TEMP TABLE new_nodes AS SELECT n.* FROM nodes n ANTI JOIN old_ids o USING (xid)")
    # The links between current clusters (a new identity is its own cluster until linked).
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE label_edges AS
        SELECT DISTINCT least(la, lb) AS a, greatest(la, lb) AS b FROM (
            SELECT coalesce(oa.cluster, l.a) AS la, coalesce(ob.cluster, l.b) AS lb
            FROM (SELECT DISTINCT a, b FROM links) l
            LEFT JOIN old_ids oa ON oa.xid = l.a LEFT JOIN old_ids ob ON ob.xid = l.b)
        WHERE la <> lb
    """)
    new_count = conn.execute("SELECT count(*) FROM new_nodes").fetchall()[0][0]
    edge_count = conn.execute("SELECT count(*) FROM label_edges").fetchall()[0][0]
    if new_count == 0 and edge_count == 0:
        _drop(conn, "links", "nodes", "old_ids", "new_nodes", "label_edges")
        return
    _components(conn)
    old = (f"SELECT xid, ns, id, cluster FROM read_parquet('{_escape(str(store.path(manifest.identities)))}')"
           if manifest.identities else "SELECT xid, ns, id, xid AS cluster FROM new_nodes WHERE false")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE sized AS
        WITH merged AS (
            SELECT m.xid, m.ns, m.id, coalesce(r.root, m.cluster) AS cluster
            FROM ({old} UNION ALL SELECT xid, ns, id, xid FROM new_nodes) m LEFT JOIN roots r ON r.label = m.cluster
        )
        SELECT m.*, s.cluster_size FROM merged m
        JOIN (SELECT cluster, count(*) AS cluster_size FROM merged GROUP BY cluster) s USING (cluster)
    """)
    identities, members = store.new_file("identities"), store.new_file("members")
    _copy(conn, "SELECT xid, ns, id, cluster, cluster_size FROM sized ORDER BY xid", store.path(identities),
          LOOKUP_ROW_GROUP)
    _copy(conn, "SELECT xid, ns, id, cluster, cluster_size FROM sized ORDER BY cluster", store.path(members),
          LOOKUP_ROW_GROUP)
    manifest.identities, manifest.members = identities, members
    _drop(conn, "links", "nodes", "old_ids", "new_nodes", "label_edges", "labels", "roots", "sized")


def _components(conn: duckdb.DuckDBPyConnection) -> None:
    """`roots (label, root)`: for each cluster label of `label_edges` that changes, the smallest label of its
    connected component (so a cluster's id stays its smallest XID). Labels are numbered in UUID order and the
    components found by vectorised min-label propagation with pointer jumping over the edge arrays."""
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE labels AS
        SELECT label, CAST(row_number() OVER (ORDER BY label) - 1 AS INTEGER) AS k
        FROM (SELECT a AS label FROM label_edges UNION SELECT b FROM label_edges)
    """)
    edges = conn.execute("SELECT la.k AS u, lb.k AS v FROM label_edges "
                         "JOIN labels la ON la.label = a JOIN labels lb ON lb.label = b").fetchnumpy()
    count = int(conn.execute("SELECT count(*) FROM labels").fetchall()[0][0])
    u, v = np.asarray(edges["u"], dtype=np.int64), np.asarray(edges["v"], dtype=np.int64)
    parent = np.arange(count, dtype=np.int64)
    while True:
        before = parent
        parent = parent.copy()
        low = np.minimum(parent[u], parent[v])
        np.minimum.at(parent, before[u], low)
        np.minimum.at(parent, before[v], low)
        while True:  # pointer jumping: every label points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            break
    moved = np.nonzero(parent != np.arange(count, dtype=np.int64))[0]
    conn.register("__moved", pa.table({"k": pa.array(moved, pa.int32()), "r": pa.array(parent[moved], pa.int32())}))
    try:
        conn.execute("CREATE OR REPLACE TEMP TABLE roots AS SELECT l.label, r.label AS root "
                     "FROM __moved m JOIN labels l ON l.k = m.k JOIN labels r ON r.k = m.r")
    finally:
        conn.unregister("__moved")


FRAGMENTS_PER_PARTITION = 400_000
"""Fragments per partition (`Partitions`), which an export merges at a time: DuckDB's and numpy's memory for a
merge grows with the fragments merged at once."""
EVENTS_PER_PARTITION = 800_000
"""Events per partition: an export with an event list holds one partition's events (ordered for its profiles)
while it writes them, and loads the next partition's."""
PARTITION_ROWS = 65_536


def partition_count(fragments: int, events: int = 0) -> int:
    """How many partitions `fragments` fragments (with `events` events) are kept (and merged) in."""
    return max(1, -(-fragments // FRAGMENTS_PER_PARTITION), -(-events // EVENTS_PER_PARTITION))


def group_key(uuid: str) -> str:
    """SQL: the group key of a cluster (or, unstitched, an identity) from the UUID expression `uuid`: its 32 hex
    digits, as exports key profiles (`_group`)."""
    return f"replace({uuid}::VARCHAR, '-', '')"


def partition_of(group: str, count: int) -> str:
    """SQL: the partition of the rows whose group key (a cluster's 32 hex digits, as exports key profiles) is
    the expression `group`."""
    return f"CAST(hash({group}) % {int(count)} AS INTEGER)"


class BatchWriter(Protocol):
    def write_batch(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...


def write_split(conn: duckdb.DuckDBPyConnection, select: str, count: int,
                open_writer: Callable[[int, pa.Schema], BatchWriter]) -> None:
    """Write the rows of `select`, whose column `__part` is each row's partition, as `split_batches` does."""
    reader = conn.sql(select).to_arrow_reader(PARTITION_ROWS)
    split_batches(reader.schema, reader, count, open_writer)


def split_batches(schema: pa.Schema, batches: Iterable[pa.RecordBatch], count: int,
                  open_writer: Callable[[int, pa.Schema], BatchWriter]) -> None:
    """Write the batches (of `schema`, whose column `__part` is each row's partition, dropped) with one writer per
    partition (`open_writer(k, schema)`, every partition has one, empty or not): each batch is sorted by
    partition once and cut (DuckDB's own partitioned writers cost several times more on nested columns)."""
    schema = schema.remove(schema.get_field_index("__part"))
    writers: dict[int, BatchWriter] = {}
    try:
        for batch in batches:
            part = batch.column("__part").to_numpy()
            order = np.argsort(part, kind="stable")
            ends = np.cumsum(np.bincount(part, minlength=count))
            rows = pa.RecordBatch.from_arrays([batch.column(f.name) for f in schema], schema=schema).take(
                pa.array(order))
            for k in range(count):
                start = int(ends[k - 1]) if k else 0
                if ends[k] > start:
                    if k not in writers:
                        writers[k] = open_writer(k, schema)
                    writers[k].write_batch(rows.slice(start, int(ends[k]) - start))
        for k in range(count):
            if k not in writers:
                writers[k] = open_writer(k, schema)
    finally:
        for writer in writers.values():
            writer.close()


def _write_partitioned(conn: duckdb.DuckDBPyConnection, store: StoreFiles, select: str, count: int,
                       prefix: str) -> list[str]:
    """`select`'s rows (with `__part`) into one new Parquet file per partition."""
    names = [store.new_file(prefix) for _ in range(count)]
    # LZ4: exports read these files whole, and DuckDB decodes them a fifth faster than ZSTD's
    write_split(conn, select, count,
                lambda k, schema: pq.ParquetWriter(store.path(names[k]), schema, compression="lz4"))
    return names


def _update_partitions(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest,
                       lake_root: Path) -> None:
    """Group the current fragments and members by cluster (`Partitions`), remaking only what changed: every
    partition when the identities or the count changed, else the datasets whose fragment index changed.

    This is the cost of every export's first step moved to the apply: an export then reads each partition's
    fragments as they are, instead of joining the lake to the fragment index and the identities and splitting
    the result by cluster (at 1M profiles most of an export's time)."""
    records = {d: e for d, e in manifest.datasets.items() if e.kind == "profile" and e.files}
    if manifest.identities is None or not records:
        manifest.partitions = None
        return

    def index_rows(kind: str) -> int:
        return sum(pq.read_metadata(store.path(f)).num_rows
                   for e in manifest.datasets.values() if e.kind == kind for f in e.files)

    count = partition_count(index_rows("profile"), index_rows("experienceevent"))
    old = manifest.partitions
    if old is not None and (old.count != count or old.identities != manifest.identities or not old.current):
        old = None
    identities = f"read_parquet('{_escape(str(store.path(manifest.identities)))}')"
    group = group_key("c.cluster")
    if old is not None:
        members = old.members
    else:
        assert manifest.members is not None
        members = _write_partitioned(
            conn, store, f"SELECT {group} AS _group, c.ns, c.id, {partition_of(group, count)} AS __part "
                         f"FROM read_parquet('{_escape(str(store.path(manifest.members)))}') c "
                         f"ORDER BY __part, c.cluster, c.id, c.ns", count, "members-part")
    datasets: dict[str, list[str]] = {}
    built_from: dict[str, list[str]] = {}
    for dataset_id, entry in sorted(records.items()):
        built_from[dataset_id] = list(entry.files)
        if old is not None and old.built_from.get(dataset_id) == entry.files:
            datasets[dataset_id] = old.datasets[dataset_id]
            continue
        keys = ", ".join(precedence_keys_sql(entry.structure))
        rows = f"(SELECT *, {keys} FROM {indexed_rows(lake_root, store, entry)})"
        datasets[dataset_id] = _write_partitioned(
            conn, store, f"SELECT f.*, {group} AS _group, c.cluster_size AS _cluster_size, "
                         f"{partition_of(group, count)} AS __part FROM {rows} f JOIN {identities} c ON c.xid = f._xid",
            count, f"fragments-part-{dataset_id}")
    manifest.partitions = Partitions(count, manifest.identities, members, datasets, built_from)


def _drop(conn: duckdb.DuckDBPyConnection, *tables: str) -> None:
    for table in tables:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _index_rows(where: str) -> str:
    """Staged rows as index rows (with `ord`, `f` to rank newer over older, and the event key `ek`)."""
    return f"""
        SELECT s.xid AS _xid, s.ns AS _identity_ns, s.id AS _identity_id, b.ingest_ms AS _ingest_ms,
               b.batch AS _batch, f.path AS _file, s.rn AS _rn, s.ord, s.f, s.ek
        FROM staged s JOIN staged_files f USING (f) JOIN staged_batches b ON b.ord = s.ord
        WHERE {where}
    """


_NOT_TOMBSTONED = ("ANTI JOIN {table} __t ON __t.xid = {alias}._xid AND {alias}._ingest_ms <= __t.deleted_ms")


def _add_namespaces(conn: duckdb.DuckDBPyConnection, entry: DatasetFiles, select: str, *, fresh: bool) -> None:
    """Record the namespaces the index now has (kept unknown when an older index did not record them), so that
    a lookup asks an index only about the identities that can be in it."""
    if entry.namespaces is None and not fresh:
        return
    found = {str(r[0]) for r in conn.execute(select).fetchall()}
    entry.namespaces = sorted(found.union(entry.namespaces or []))


def _dataset_entry(manifest: Manifest, batch: BatchInput) -> DatasetFiles:
    entry = manifest.datasets.get(batch.dataset_id)
    if entry is None:
        entry = DatasetFiles(batch.kind, {}, [], [])
        manifest.datasets[batch.dataset_id] = entry
    entry.lake_files.extend(f for f in batch.files if f not in entry.lake_files)
    if batch.structure:
        entry.structure = merge_structures(entry.structure, batch.structure)
    return entry


def _update_fragments(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest,
                      batches: list[BatchInput], dataset_id: str, lake_root: Path) -> None:
    """The dataset's fragment index: old entries whose key no new record has, plus the newest new record per key
    (unless its identity was deleted after it was ingested)."""
    orders = [o for o, b in enumerate(batches) if b.dataset_id == dataset_id and b.files]
    if not orders:
        return
    previous = manifest.datasets.get(dataset_id)
    old_files = list(previous.files) if previous else []
    entry = previous
    for o in orders:
        entry = _dataset_entry(manifest, batches[o])
    assert entry is not None
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE new_frags AS
        SELECT {", ".join(INDEX_COLUMNS)} FROM ({_index_rows(f"s.ord IN ({', '.join(map(str, orders))})")})
        QUALIFY row_number() OVER (PARTITION BY _xid ORDER BY ord DESC, f DESC, _rn DESC) = 1
    """)
    select = f"SELECT n.* FROM new_frags n {_NOT_TOMBSTONED.format(table='tombstones', alias='n')}"
    if old_files:
        select = (f"SELECT o.* FROM {_files_sql([store.path(f) for f in old_files])} o "
                  f"ANTI JOIN new_frags n USING (_xid) UNION ALL BY NAME {select}")
    target = store.new_file(f"fragments-{dataset_id}")
    _copy(conn, f"SELECT {', '.join(INDEX_COLUMNS)} FROM ({select}) ORDER BY _xid", store.path(target),
          LOOKUP_ROW_GROUP)
    _add_namespaces(conn, entry, "SELECT DISTINCT _identity_ns FROM new_frags", fresh=not old_files)
    conn.execute("DROP TABLE IF EXISTS new_frags")
    entry.files = [target]
    _update_copies(conn, store, entry, [f for o in orders for f in batches[o].files], lake_root)
    _add_segments(conn, entry, [batches[o] for o in orders], lake_root, fresh=not old_files)


def _add_segments(conn: duckdb.DuckDBPyConnection, entry: DatasetFiles, batches: list[BatchInput], lake_root: Path,
                  *, fresh: bool) -> None:
    """Record the `segmentMembership.ups` segment ids the new records carry (kept unknown when an older index
    did not record them), so that an export can tell an ingested audience from an unknown segment id."""
    if entry.segments is None and not fresh:
        return
    files = [str(lake_root / f) for b in batches if "segmentMembership" in (b.structure or {}) for f in b.files]
    found: set[str] = set(entry.segments or [])
    if files:
        listed = ", ".join(f"'{_escape(f)}'" for f in files)
        with contextlib.suppress(duckdb.BinderException):  # the dataset's structure has it, no file here does
            found.update(str(r[0]) for r in conn.execute(f"""
                SELECT DISTINCT unnest(flatten(list_transform(
                    list_filter(map_entries("segmentMembership"), lambda e: lower(e.key) = 'ups'),
                    lambda e: map_keys(e.value))))
                FROM read_parquet([{listed}], union_by_name = true)""").fetchall() if r[0] is not None)
    entry.segments = sorted(found)


def _update_copies(conn: duckdb.DuckDBPyConnection, store: StoreFiles, entry: DatasetFiles, new_files: list[str],
                   lake_root: Path) -> None:
    """A record dataset's lookup copies: each new lake file written again in small row groups, row for row (so
    the index's `_rn` names the same row in both), for point reads; copies of lake files the index no longer
    points into are dropped. Exports and scans read the lake, never the copies."""
    copies = dict(entry.copies or {})
    conn.execute("SET preserve_insertion_order = true")
    try:
        for name in new_files:
            target = store.new_file("rows")
            _copy(conn, f"SELECT * FROM read_parquet('{_escape(str(lake_root / name))}')", store.path(target),
                  LOOKUP_ROW_GROUP)
            copies[name] = target
    finally:
        conn.execute("SET preserve_insertion_order = false")
    used = {str(r[0]) for r in conn.execute(
        f"SELECT DISTINCT _file FROM {_files_sql([store.path(f) for f in entry.files])}").fetchall()}
    entry.copies = {k: v for k, v in copies.items() if k in used}


def _append_events(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest,
                   batches: list[BatchInput], order: int) -> None:
    """One batch's event index, minus `_id`s the dataset already has, repeats within the batch (the first
    kept) and events of identities deleted after they were ingested.

    Millions of events are sorted by `_xid` with only small columns; the batch's id, time and file paths are
    attached after the sort (in order: insertion order is preserved for this statement)."""
    batch = batches[order]
    if not batch.files:
        return
    previous = manifest.datasets.get(batch.dataset_id)
    old_files = list(previous.files) if previous else []
    entry = _dataset_entry(manifest, batch)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE repeated AS
        SELECT ek, min({{'f': f, 'rn': rn}}) AS keep FROM staged
        WHERE ord = {order} AND ek IN (SELECT ek FROM staged WHERE ord = {order} GROUP BY ek HAVING count(*) > 1)
        GROUP BY ek
    """)
    joins, keep = [], "TRUE"  # each filter only when it can remove something: they cost a pass over the batch
    if conn.execute("SELECT count(*) FROM repeated").fetchall()[0][0]:
        joins.append("LEFT JOIN repeated r ON r.ek = s.ek")
        keep = "(r.keep IS NULL OR r.keep = {'f': s.f, 'rn': s.rn})"
    if old_files:
        joins.append(f"ANTI JOIN (SELECT _event_key FROM {_files_sql([store.path(f) for f in old_files])}) o "
                     f"ON o._event_key = s.ek")
    if conn.execute("SELECT count(*) FROM tombstones").fetchall()[0][0]:
        joins.append(f"ANTI JOIN tombstones t ON t.xid = s.xid AND {int(batch.ingest_ms)} <= t.deleted_ms")
    files = conn.execute("SELECT f, path FROM staged_files WHERE ord = ? ORDER BY f", [order]).fetchall()
    paths = " ".join(f"WHEN {int(f)} THEN '{_escape(str(path))}'" for f, path in files)
    rows = f"""
        SELECT s.xid, s.ns, s.id, s.f, s.rn, s.ek FROM staged s {" ".join(joins)}
        WHERE s.ord = {order} AND {keep}
        ORDER BY s.xid
    """
    select = f"""
        SELECT xid AS _xid, ns AS _identity_ns, id AS _identity_id,
               CAST({int(batch.ingest_ms)} AS BIGINT) AS _ingest_ms, '{_escape(batch.batch_id)}' AS _batch,
               CASE f {paths} END AS _file, rn AS _rn, ek AS _event_key
        FROM ({rows})
    """
    target = store.new_file(f"events-{batch.dataset_id}")
    conn.execute("SET preserve_insertion_order = true")
    try:
        _copy(conn, select, store.path(target))
    finally:
        conn.execute("SET preserve_insertion_order = false")
    conn.execute("DROP TABLE IF EXISTS repeated")
    _add_namespaces(conn, entry, f"SELECT DISTINCT ns FROM staged WHERE ord = {order}", fresh=not old_files)
    entry.files.append(target)


def _apply_tombstones(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest,
                      old_files: set[str]) -> None:
    """Drop deleted identities' fragments and events ingested before their deletion from the index files
    written before this apply (the new ones were written without them), for the tombstones not yet applied.
    Only the files that hold such rows are rewritten.

    The identities stay in the graph (as in AEP, where Identity Service is separate from the store)."""
    for dataset_id, entry in manifest.datasets.items():
        rewritten = []
        for name in entry.files:
            if name not in old_files:
                rewritten.append(name)
                continue
            index = f"read_parquet('{_escape(str(store.path(name)))}')"
            hit = conn.execute(f"SELECT count(*) FROM {index} d JOIN fresh_tombstones t "
                               f"ON t.xid = d._xid AND d._ingest_ms <= t.deleted_ms").fetchall()
            if hit[0][0] == 0:
                rewritten.append(name)
                continue
            kind = "fragments" if entry.kind == "profile" else "events"
            target = store.new_file(f"{kind}-{dataset_id}")
            _copy(conn, f"SELECT d.* FROM {index} d {_NOT_TOMBSTONED.format(table='fresh_tombstones', alias='d')} "
                        f"ORDER BY d._xid", store.path(target))
            rewritten.append(target)
        entry.files = rewritten
