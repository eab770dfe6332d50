"""The profile store's data: fragments, events and the identity graph, as Parquet generations.

The store is derived from lake batches and can be rebuilt from them. Its state is a *generation*:
a manifest (`gen-{n}.json`) naming immutable Parquet files under `files/`:

- `identities`: one row per identity `(xid, ns, id, cluster, cluster_size)`, sorted by `xid`
  (point lookups prune row groups); `members`: the same rows sorted by `cluster`.
- per profile-record dataset, its *fragments*: the newest record of each primary identity (a newer
  record for the same key replaces the older one), with `_xid` (the primary identity's XID),
  `_identity_ns`, `_identity_id` (its namespace and id), `_ingest_ms`, `_batch`; sorted by `_xid`.
- per event dataset, its events (deduplicated on `_id` within the dataset), one file per applied
  batch, with the same system columns, sorted by `_xid`.

Applying batches writes only new files and a new manifest, then moves the `CURRENT` pointer by an
atomic rename, so readers always see one whole generation. Clusters are the connected components of
the graph whose links are any two identities in one record or event; they are updated
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
import pyarrow.parquet as pq

from openprofile.engine.structure import Structure, from_arrow_schema, merge_structures

ROW_GROUP = 16_384
SYSTEM_COLUMNS = ("_xid", "_identity_ns", "_identity_id", "_ingest_ms", "_batch")

# identityMap → a deduplicated list of {ns, id, primary, xid}, ordered by (ns, id).
_ITEMS = """list_sort(list_distinct(list_filter(flatten(list_transform(map_entries("identityMap"),
    lambda e: list_transform(e.value, lambda i: {'ns': lower(e.key), 'id': i.id,
                                                 'primary': coalesce(i."primary", false)}))),
    lambda x: x.id IS NOT NULL AND x.id <> '')))"""


def _primary_sql(items: str) -> str:
    return f"coalesce(list_filter({items}, lambda x: x.primary)[1], {items}[1])"


@dataclass(frozen=True)
class BatchInput:
    """A successful lake batch of a profile-enabled dataset, to be applied to the store."""

    batch_id: str
    dataset_id: str
    kind: str  # "profile" | "experienceevent"
    files: list[Path]
    ingest_ms: int


@dataclass(frozen=True)
class Tombstone:
    """A deleted identity: its fragments and events ingested up to `deleted_ms` are dropped."""

    xid: str
    deleted_ms: int


@dataclass
class DatasetFiles:
    kind: str
    structure: Structure
    files: list[str] = field(default_factory=list)


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
            "datasets": {k: {"kind": v.kind, "structure": v.structure, "files": v.files}
                         for k, v in self.datasets.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            generation=int(data["generation"]), created_ms=int(data["created_ms"]), identities=data["identities"],
            members=data["members"], applied=list(data["applied"]),
            datasets={k: DatasetFiles(v["kind"], v["structure"], list(v["files"]))
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


def _structure_of(path: Path) -> Structure:
    return from_arrow_schema(pq.read_schema(path))


def _without_system(structure: Structure) -> Structure:
    return {k: v for k, v in structure.items() if k not in SYSTEM_COLUMNS}


def apply_batches(
    store: StoreFiles, batches: list[BatchInput], *, tombstones: list[Tombstone], now_ms: int,
    threads: int | None = None, memory_limit: str | None = None,
) -> Manifest:
    """Apply batches (in the given order) to the current generation and publish the next one."""
    previous = store.current()
    manifest = Manifest(previous.generation + 1, now_ms, previous.identities, previous.members,
                        {k: DatasetFiles(v.kind, dict(v.structure), list(v.files))
                         for k, v in previous.datasets.items()}, list(previous.applied))
    conn = connect(threads, memory_limit, store.root / "tmp")
    try:
        _stage_tombstones(conn, tombstones)
        _stage_rows(conn, batches)
        _update_identities(conn, store, manifest)
        for dataset_id in sorted({b.dataset_id for b in batches if b.kind == "profile"}):
            _update_fragments(conn, store, manifest, dataset_id, [b for b in batches if b.dataset_id == dataset_id])
        for batch in batches:
            if batch.kind == "experienceevent":
                _append_events(conn, store, manifest, batch)
        if tombstones:
            _apply_tombstones(conn, store, manifest)
        manifest.applied.extend(b.batch_id for b in batches)
    finally:
        conn.close()
    store.publish(manifest)
    store.collect_garbage()
    return manifest


def _stage_tombstones(conn: duckdb.DuckDBPyConnection, tombstones: list[Tombstone]) -> None:
    conn.execute("CREATE OR REPLACE TEMP TABLE tombstones (xid VARCHAR, deleted_ms BIGINT)")
    if tombstones:
        conn.executemany("INSERT INTO tombstones VALUES (?, ?)", [(t.xid, t.deleted_ms) for t in tombstones])


def _stage_rows(conn: duckdb.DuckDBPyConnection, batches: list[BatchInput]) -> None:
    """The identities of every new row: `items` (xid, ns, id) per row, for the graph and primary keys."""
    conn.execute("CREATE OR REPLACE TEMP TABLE batch_items (row_key VARCHAR, xid VARCHAR, ns VARCHAR, id VARCHAR)")
    for seq, batch in enumerate(batches):
        if not batch.files:
            continue
        conn.execute(f"""
            INSERT INTO batch_items
            SELECT '{seq}:' || CAST(rn AS VARCHAR), md5(item.ns || ':' || item.id), item.ns, item.id
            FROM (SELECT rn, unnest(items) AS item
                  FROM (SELECT row_number() OVER () AS rn, {_ITEMS} AS items
                        FROM (SELECT "identityMap" FROM {_files_sql(batch.files)})))
        """)


def _update_identities(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest) -> None:
    """Merge the new rows' links into the clusters; only touched components change."""
    old = (f"SELECT xid, ns, id, cluster FROM read_parquet('{store.path(manifest.identities)}')"
           if manifest.identities else
           "SELECT NULL::VARCHAR AS xid, NULL::VARCHAR AS ns, NULL::VARCHAR AS id, NULL::VARCHAR AS cluster LIMIT 0")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE old_ids AS {old}")
    conn.execute("CREATE OR REPLACE TEMP TABLE nodes AS SELECT DISTINCT xid, ns, id FROM batch_items")
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE labels AS
        SELECT n.xid, coalesce(o.cluster, n.xid) AS label FROM nodes n LEFT JOIN old_ids o USING (xid)
    """)
    # A row links all its identities: a star from its smallest XID is enough for connectivity.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE label_edges AS
        WITH firsts AS (SELECT row_key, min(xid) AS hub FROM batch_items GROUP BY row_key),
             edges AS (SELECT DISTINCT f.hub AS a, b.xid AS b FROM batch_items b JOIN firsts f USING (row_key)
                       WHERE b.xid <> f.hub)
        SELECT DISTINCT la.label AS a, lb.label AS b
        FROM edges e JOIN labels la ON la.xid = e.a JOIN labels lb ON lb.xid = e.b WHERE la.label <> lb.label
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE roots AS
        SELECT label, label AS root FROM (SELECT a AS label FROM label_edges UNION SELECT b FROM label_edges)
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE sym AS SELECT a, b FROM label_edges UNION SELECT b, a FROM label_edges
    """)
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
        changed = conn.execute("""
            SELECT count(*) FROM next_roots n JOIN roots r USING (label) WHERE n.root <> r.root
        """).fetchone()
        conn.execute("CREATE OR REPLACE TEMP TABLE roots AS SELECT * FROM next_roots")
        if not changed or changed[0] == 0:
            break
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE all_ids AS
        WITH merged AS (
            SELECT xid, ns, id, cluster FROM old_ids
            UNION ALL SELECT n.xid, n.ns, n.id, n.xid FROM nodes n ANTI JOIN old_ids o USING (xid)
        )
        SELECT m.xid, m.ns, m.id, coalesce(r.root, m.cluster) AS cluster
        FROM merged m LEFT JOIN roots r ON r.label = m.cluster
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE sized AS
        SELECT *, count(*) OVER (PARTITION BY cluster) AS cluster_size FROM all_ids
    """)
    identities, members = store.new_file("identities"), store.new_file("members")
    _copy(conn, "SELECT * FROM sized ORDER BY xid", store.path(identities))
    _copy(conn, "SELECT * FROM sized ORDER BY cluster, xid", store.path(members))
    manifest.identities, manifest.members = identities, members
    for table in ("old_ids", "nodes", "labels", "label_edges", "roots", "next_roots", "sym", "all_ids", "sized"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _with_keys(batch: BatchInput, seq_column: bool = False) -> str:
    """A batch's rows with the system columns (primary identity, ingestion time, batch)."""
    primary = _primary_sql(_ITEMS)
    extra = ", row_number() OVER () AS _row" if seq_column else ""
    return f"""
        SELECT * EXCLUDE (_p), md5(_p.ns || ':' || _p.id) AS _xid, _p.ns AS _identity_ns, _p.id AS _identity_id,
               CAST({batch.ingest_ms} AS BIGINT) AS _ingest_ms, '{batch.batch_id}' AS _batch
        FROM (SELECT *, {primary} AS _p{extra} FROM {_files_sql(batch.files)})
        WHERE _p IS NOT NULL
    """


def _update_fragments(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest, dataset_id: str,
                      batches: list[BatchInput]) -> None:
    """The dataset's fragments: the old ones whose key no new record has, plus the newest new record per key."""
    parts = [
        f"SELECT *, {order} AS _order FROM ({_with_keys(b, seq_column=True)})"
        for order, b in enumerate(batches) if b.files
    ]
    if not parts:
        return
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE new_frags AS
        SELECT * EXCLUDE (_row, _order, _rank) FROM (
            SELECT *, row_number() OVER (PARTITION BY _xid ORDER BY _order DESC, _row DESC) AS _rank
            FROM ({" UNION ALL BY NAME ".join(parts)})
        ) WHERE _rank = 1
    """)
    current = manifest.datasets.get(dataset_id)
    if current and current.files:
        select = f"""
            SELECT * FROM {_files_sql([store.path(f) for f in current.files])}
            WHERE _xid NOT IN (SELECT _xid FROM new_frags)
            UNION ALL BY NAME SELECT * FROM new_frags
        """
    else:
        select = "SELECT * FROM new_frags"
    target = store.new_file(f"records-{dataset_id}")
    _copy(conn, f"SELECT * FROM ({select}) ORDER BY _xid", store.path(target))
    conn.execute("DROP TABLE IF EXISTS new_frags")
    manifest.datasets[dataset_id] = DatasetFiles("profile", _without_system(_structure_of(store.path(target))),
                                                 [target])


def _append_events(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest,
                   batch: BatchInput) -> None:
    """New events of one batch, minus `_id`s the dataset already has (and duplicates within the batch)."""
    if not batch.files:
        return
    current = manifest.datasets.get(batch.dataset_id)
    seen = (f"AND \"_id\" NOT IN (SELECT \"_id\" FROM {_files_sql([store.path(f) for f in current.files])})"
            if current and current.files else "")
    select = f"""
        SELECT * EXCLUDE (_row, _dup) FROM (
            SELECT *, row_number() OVER (PARTITION BY "_id" ORDER BY _row) AS _dup FROM ({_with_keys(batch, True)})
        ) WHERE _dup = 1 {seen}
    """
    target = store.new_file(f"events-{batch.dataset_id}")
    _copy(conn, f"SELECT * FROM ({select}) ORDER BY _xid", store.path(target))
    structure = _without_system(_structure_of(store.path(target)))
    if current is None:
        manifest.datasets[batch.dataset_id] = DatasetFiles("experienceevent", structure, [target])
    else:
        current.structure = merge_structures(current.structure, structure)
        current.files.append(target)


def _apply_tombstones(conn: duckdb.DuckDBPyConnection, store: StoreFiles, manifest: Manifest) -> None:
    """Drop deleted identities' fragments and events ingested before their deletion, in every dataset.

    The identities stay in the graph (as in AEP, where Identity Service is separate from the store)."""
    for dataset_id, files in manifest.datasets.items():
        if not files.files:
            continue
        hit = conn.execute(f"""
            SELECT count(*) FROM {_files_sql([store.path(f) for f in files.files])} d
            JOIN tombstones t ON t.xid = d._xid AND d._ingest_ms <= t.deleted_ms
        """).fetchone()
        if not hit or hit[0] == 0:
            continue
        target = store.new_file(f"{files.kind}-{dataset_id}")
        _copy(conn, f"""
            SELECT d.* FROM {_files_sql([store.path(f) for f in files.files])} d
            WHERE NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.xid = d._xid AND d._ingest_ms <= t.deleted_ms)
            ORDER BY d._xid
        """, store.path(target))
        files.files = [target]
