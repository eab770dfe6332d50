"""The profile store's indexes over the lake: fragments, events and the identity graph, as Parquet generations.

The store copies no data: the lake's batch files are the records and events. What it keeps is derived
(and rebuilt from the lake by `openprofile rebuild`): a *generation* is a manifest (`gen-{n}.json`)
naming immutable index files under `files/`:

- `identities`: one row per identity `(xid, ns, id, cluster, cluster_size)`, sorted by `xid` (point
  lookups prune row groups); `members`: the same rows sorted by `cluster`;
- per profile-record dataset, its *fragment index*: for each primary identity, where its newest record
  is — `(_xid, _identity_ns, _identity_id, _ingest_ms, _batch, _file, _rn)`, `_file` the lake-relative
  file and `_rn` the row in it — sorted by `_xid`. A newer record for the same key replaces the older;
- per event dataset, one *event index* per applied batch, `(_xid, _identity_ns, _identity_id, _ingest_ms,
  _batch, _file, _rn, _event_key)`, sorted by `_xid`; an event whose `_id` the dataset already has is
  left out (events are deduplicated on `_id`; `_event_key` is the md5 of `_id`).

XIDs are the md5 of `lower(namespace):id`, kept as UUIDs (16 bytes: fast to join and sort, and written to
Parquet losslessly); the API shows them as 32 hex digits.

`fragment_relation` and `event_relation` join an index with its lake files into rows with those system
columns. Applying batches writes only new index files and a new manifest, then moves the `CURRENT`
pointer by an atomic rename, so readers always see one whole generation. Clusters are the connected
components of the graph whose links are any two identities in one record or event; they are updated
incrementally (only the components a batch touches change), set-wise in SQL. A cluster's id is the
smallest XID among its members, so it does not depend on the order batches arrived in.

The primary identity of a row is its identityMap item marked `primary`, else its only identity,
else (several, none marked) the first by (namespace, id) — a documented, deterministic choice.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from openprofile.engine.structure import Structure, merge_structures

ROW_GROUP = 16_384
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


@dataclass
class Manifest:
    generation: int
    created_ms: int
    identities: str | None
    members: str | None
    datasets: dict[str, DatasetFiles]
    applied: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation, "created_ms": self.created_ms, "identities": self.identities,
            "members": self.members, "applied": self.applied,
            "datasets": {k: {"kind": v.kind, "structure": v.structure, "files": v.files, "lake_files": v.lake_files}
                         for k, v in self.datasets.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            generation=int(data["generation"]), created_ms=int(data["created_ms"]), identities=data["identities"],
            members=data["members"], applied=list(data["applied"]),
            datasets={k: DatasetFiles(v["kind"], v["structure"], list(v["files"]), list(v.get("lake_files", [])))
                      for k, v in data["datasets"].items()},
        )

    @classmethod
    def empty(cls) -> Manifest:
        return cls(0, 0, None, None, {}, [])


class StoreFiles:
    """The on-disk layout of one tenant's store: `files/`, `gen-{n}.json`, `CURRENT`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"

    def current(self) -> Manifest:
        pointer = self.root / "CURRENT"
        if not pointer.exists():
            return Manifest.empty()
        generation = int(pointer.read_text().strip())
        return Manifest.from_json(json.loads((self.root / f"gen-{generation:08d}.json").read_text()))

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
            for files in data.datasets.values():
                referenced.update(files.files)
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


def _copy(conn: duckdb.DuckDBPyConnection, select: str, target: Path) -> None:
    conn.execute(
        f"COPY ({select}) TO '{target}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP})"
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
                        {k: DatasetFiles(v.kind, dict(v.structure), list(v.files), list(v.lake_files))
                         for k, v in previous.datasets.items()}, list(previous.applied))
    conn = connect(threads, memory_limit, store.root / "tmp")
    try:
        conn.execute("CREATE OR REPLACE TEMP TABLE tombstones (xid VARCHAR, deleted_ms BIGINT)")
        if tombstones:
            conn.executemany("INSERT INTO tombstones VALUES (?, ?)", [(t.xid, t.deleted_ms) for t in tombstones])
        _stage_rows(conn, lake_root, batches)
        if batches:
            _update_identities(conn, store, manifest)
        for dataset_id in sorted({b.dataset_id for b in batches if b.kind == "profile"}):
            _update_fragments(conn, store, manifest, batches, dataset_id)
        for order, batch in enumerate(batches):
            if batch.kind == "experienceevent":
                _append_events(conn, lake_root, store, manifest, batches, order)
        if tombstones:
            _apply_tombstones(conn, store, manifest)
        manifest.applied.extend(b.batch_id for b in batches)
    finally:
        conn.close()
    store.publish(manifest)
    store.collect_garbage()
    return manifest


def _stage_rows(conn: duckdb.DuckDBPyConnection, lake_root: Path, batches: list[BatchInput]) -> None:
    """Every identity of every new row, `(batch order, file, row, xid, ns, id, primary)`, by unnesting
    identityMap once; and each row's primary identity (marked primary, else the first by ns, id)."""
    conn.execute("""CREATE OR REPLACE TEMP TABLE batch_items (
        ord INTEGER, _file VARCHAR, _rn BIGINT, xid UUID, ns VARCHAR, id VARCHAR, is_primary BOOLEAN)""")
    for order, batch in enumerate(batches):
        if not batch.files:
            continue
        conn.execute(f"""
            INSERT INTO batch_items
            WITH entries AS (
                SELECT _file, file_row_number AS _rn, unnest(map_entries("identityMap")) AS e
                FROM {_lake_sql(lake_root, batch.files, union=False)}
            ), items AS (SELECT _file, _rn, lower(e.key) AS ns, unnest(e.value) AS i FROM entries)
            SELECT {order}, _file, _rn, md5(ns || ':' || i.id)::UUID, ns, i.id, coalesce(i."primary", false)
            FROM items WHERE i.id IS NOT NULL AND i.id <> ''
        """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE batch_rows AS
        SELECT ord, _file, _rn, arg_min({'xid': xid, 'ns': ns, 'id': id}, {'p': NOT is_primary, 'ns': ns, 'id': id})
               AS p
        FROM batch_items GROUP BY ord, _file, _rn
    """)


def _update_identities(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest) -> None:
    """Merge the new rows' links into the clusters; only touched components change."""
    old = (f"SELECT xid, ns, id, cluster FROM read_parquet('{store.path(manifest.identities)}')"
           if manifest.identities else
           "SELECT NULL::UUID AS xid, NULL::VARCHAR AS ns, NULL::VARCHAR AS id, NULL::UUID AS cluster LIMIT 0")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE old_ids AS {old}")
    conn.execute("CREATE OR REPLACE TEMP TABLE nodes AS SELECT DISTINCT xid, ns, id FROM batch_items")
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE labels AS
        SELECT n.xid, coalesce(o.cluster, n.xid) AS label FROM nodes n LEFT JOIN old_ids o USING (xid)
    """)
    # A row links all its identities: a star from the row's primary identity is enough for connectivity.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE label_edges AS
        WITH edges AS (SELECT DISTINCT r.p.xid AS a, b.xid AS b FROM batch_items b
                       JOIN batch_rows r USING (ord, _file, _rn) WHERE b.xid <> r.p.xid)
        SELECT DISTINCT la.label AS a, lb.label AS b
        FROM edges e JOIN labels la ON la.xid = e.a JOIN labels lb ON lb.xid = e.b WHERE la.label <> lb.label
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE roots AS
        SELECT label, label AS root FROM (SELECT a AS label FROM label_edges UNION SELECT b FROM label_edges)
    """)
    conn.execute("CREATE OR REPLACE TEMP TABLE sym AS SELECT a, b FROM label_edges UNION SELECT b, a FROM label_edges")
    while True:  # min-label propagation with pointer jumping; each round is one set-wise statement
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE next_roots AS
            WITH hop AS (
                SELECT r.label, least(r.root, min(rn.root)) AS root
                FROM roots r JOIN sym s ON s.a = r.label JOIN roots rn ON rn.label = s.b
                GROUP BY r.label, r.root
            )
            SELECT h.label, least(h.root, j.root) AS root FROM hop h JOIN roots j ON j.label = h.root
        """)
        changed = conn.execute(
            "SELECT count(*) FROM next_roots n JOIN roots r USING (label) WHERE n.root <> r.root").fetchall()
        conn.execute("CREATE OR REPLACE TEMP TABLE roots AS SELECT * FROM next_roots")
        if changed[0][0] == 0:
            break
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE sized AS
        WITH merged AS (
            SELECT xid, ns, id, cluster FROM old_ids
            UNION ALL SELECT n.xid, n.ns, n.id, n.xid FROM nodes n ANTI JOIN old_ids o USING (xid)
        ), relabelled AS (
            SELECT m.xid, m.ns, m.id, coalesce(r.root, m.cluster) AS cluster
            FROM merged m LEFT JOIN roots r ON r.label = m.cluster
        )
        SELECT *, count(*) OVER (PARTITION BY cluster) AS cluster_size FROM relabelled
    """)
    identities, members = store.new_file("identities"), store.new_file("members")
    _copy(conn, "SELECT * FROM sized ORDER BY xid", store.path(identities))
    _copy(conn, "SELECT * FROM sized ORDER BY cluster, xid", store.path(members))
    manifest.identities, manifest.members = identities, members
    for table in ("old_ids", "nodes", "labels", "label_edges", "roots", "next_roots", "sym", "sized"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _index_rows(batches: list[BatchInput], orders: list[int]) -> str:
    """The new rows of the batches at `orders` as index rows (plus `ord`, to rank newer over older)."""
    cases = " ".join(f"WHEN {o} THEN {batches[o].ingest_ms}" for o in orders)
    ids = " ".join(f"WHEN {o} THEN '{_escape(batches[o].batch_id)}'" for o in orders)
    return f"""
        SELECT p.xid AS _xid, p.ns AS _identity_ns, p.id AS _identity_id,
               CAST(CASE ord {cases} END AS BIGINT) AS _ingest_ms, CASE ord {ids} END AS _batch,
               _file, _rn, ord
        FROM batch_rows WHERE ord IN ({", ".join(str(o) for o in orders)})
    """


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
                      batches: list[BatchInput], dataset_id: str) -> None:
    """The dataset's fragment index: old entries whose key no new record has, plus the newest new record per key."""
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
        SELECT * EXCLUDE (ord) FROM ({_index_rows(batches, orders)})
        QUALIFY row_number() OVER (PARTITION BY _xid ORDER BY ord DESC, _file DESC, _rn DESC) = 1
    """)
    select = "SELECT * FROM new_frags"
    if old_files:
        select = (f"SELECT * FROM {_files_sql([store.path(f) for f in old_files])} "
                  f"WHERE _xid NOT IN (SELECT _xid FROM new_frags) UNION ALL BY NAME {select}")
    target = store.new_file(f"fragments-{dataset_id}")
    _copy(conn, f"SELECT * FROM ({select}) ORDER BY _xid", store.path(target))
    conn.execute("DROP TABLE IF EXISTS new_frags")
    entry.files = [target]


def _append_events(conn: duckdb.DuckDBPyConnection, lake_root: Path, store: StoreFiles, manifest: Manifest,
                   batches: list[BatchInput], order: int) -> None:
    """One batch's event index, minus `_id`s the dataset already has (and repeats within the batch)."""
    batch = batches[order]
    if not batch.files:
        return
    previous = manifest.datasets.get(batch.dataset_id)
    old_files = list(previous.files) if previous else []
    entry = _dataset_entry(manifest, batch)
    ids = (f'SELECT _file, file_row_number AS _rn, md5("_id")::UUID AS _event_key '
           f"FROM {_lake_sql(lake_root, batch.files, union=False)}")
    seen = (f"AND e._event_key NOT IN (SELECT _event_key FROM {_files_sql([store.path(f) for f in old_files])})"
            if old_files else "")
    select = f"""
        SELECT k.* EXCLUDE (ord), e._event_key
        FROM ({_index_rows(batches, [order])}) k JOIN ({ids}) e USING (_file, _rn)
        WHERE TRUE {seen}
        QUALIFY row_number() OVER (PARTITION BY e._event_key ORDER BY k._file, k._rn) = 1
    """
    target = store.new_file(f"events-{batch.dataset_id}")
    _copy(conn, f"SELECT * FROM ({select}) ORDER BY _xid", store.path(target))
    entry.files.append(target)


def _apply_tombstones(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest) -> None:
    """Drop deleted identities' fragments and events ingested before their deletion, in every dataset.

    The identities stay in the graph (as in AEP, where Identity Service is separate from the store)."""
    for dataset_id, entry in manifest.datasets.items():
        if not entry.files:
            continue
        index = _files_sql([store.path(f) for f in entry.files])
        hit = conn.execute(f"""
            SELECT count(*) FROM {index} d JOIN tombstones t ON t.xid = d._xid AND d._ingest_ms <= t.deleted_ms
        """).fetchall()
        if hit[0][0] == 0:
            continue
        target = store.new_file(f"{'fragments' if entry.kind == 'profile' else 'events'}-{dataset_id}")
        _copy(conn, f"""
            SELECT d.* FROM {index} d
            WHERE NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.xid = d._xid AND d._ingest_ms <= t.deleted_ms)
            ORDER BY d._xid
        """, store.path(target))
        entry.files = [target]
