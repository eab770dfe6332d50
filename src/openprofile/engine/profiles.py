"""Plans over the profile store: which fragments make a profile, merged by `engine/merge.py`.

A profile's *group* is its cluster (identity stitching, `pdg`) or the primary identity's own XID
(`none`). The same fragment relations serve a lookup (the index narrowed to one group's member
XIDs, which prunes row groups because indexes are sorted by `_xid`) and an export (every group).
Clusters over the size limit are left out of both, as AEP does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from openprofile.engine.merge import FragmentSource
from openprofile.engine.profile_store import SYSTEM_COLUMNS, DatasetFiles, StoreFiles, indexed_rows


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class StoreView:
    """Where one generation's indexes and the lake they point into are."""

    lake_root: Path
    files: StoreFiles


@dataclass(frozen=True)
class IdentityHit:
    xid: str
    namespace: str
    id: str
    cluster: str
    cluster_size: int


def find_identity(conn: duckdb.DuckDBPyConnection, identities: Path, xid: str) -> IdentityHit | None:
    rows = conn.execute(
        f"SELECT replace(xid::VARCHAR, '-', ''), ns, id, replace(cluster::VARCHAR, '-', ''), cluster_size "
        f"FROM read_parquet('{identities}') WHERE xid = ?::UUID", [xid]
    ).fetchall()
    if not rows:
        return None
    found = rows[0]
    return IdentityHit(str(found[0]), str(found[1]), str(found[2]), str(found[3]), int(found[4]))


def cluster_members(conn: duckdb.DuckDBPyConnection, members: Path, cluster: str) -> list[tuple[str, str, str]]:
    """(xid, namespace, id) of every identity in the cluster, ordered by XID."""
    rows = conn.execute(
        f"SELECT replace(xid::VARCHAR, '-', ''), ns, id FROM read_parquet('{members}') WHERE cluster = ?::UUID "
        "ORDER BY xid", [cluster]
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def members_filter(members: list[str]) -> str:
    return f"_xid IN ({', '.join(_quote(m) + '::UUID' for m in members)})"


def fragment_sources(view: StoreView, datasets: dict[str, DatasetFiles], *, stitched: bool,
                     identities: Path | None = None, members: list[str] | None = None, group: str | None = None,
                     max_cluster_size: int | None = None) -> list[FragmentSource]:
    """Fragment relations with `_group` and `_dataset`: one profile's (`members`, `group`) or every profile's."""
    sources = []
    for dataset_id, entry in datasets.items():
        name = _quote(dataset_id)
        if members is not None:
            rows = indexed_rows(view.lake_root, view.files, entry, where=members_filter(members))
            relation = f"(SELECT *, {_quote(group or '')} AS _group, {name} AS _dataset FROM {rows})"
        elif stitched and identities is not None:
            rows = indexed_rows(view.lake_root, view.files, entry)
            limit = f"WHERE i.cluster_size <= {int(max_cluster_size)}" if max_cluster_size else ""
            group_key = "replace(i.cluster::VARCHAR, '-', '')"
            relation = (f"(SELECT f.*, {group_key} AS _group, {name} AS _dataset FROM {rows} f "
                        f"JOIN read_parquet('{identities}') i ON i.xid = f._xid {limit})")
        else:
            rows = indexed_rows(view.lake_root, view.files, entry)
            relation = f"(SELECT *, replace(_xid::VARCHAR, '-', '') AS _group, {name} AS _dataset FROM {rows})"
        sources.append(FragmentSource(dataset_id, relation, entry.structure))
    return sources


def events_sql(view: StoreView, datasets: list[DatasetFiles], members: list[str], *, start_ms: int | None,
               end_ms: int | None, descending: bool, limit: int, offset: int) -> str:
    """One profile's events, oldest or newest first by event time (`startTime` inclusive, `endTime` exclusive)."""
    conditions = ["TRUE"]
    if start_ms is not None:
        conditions.append(f'epoch_ms("timestamp") >= {int(start_ms)}')
    if end_ms is not None:
        conditions.append(f'epoch_ms("timestamp") < {int(end_ms)}')
    direction = "DESC" if descending else "ASC"
    union = " UNION ALL BY NAME ".join(
        f"SELECT * FROM {indexed_rows(view.lake_root, view.files, d, where=members_filter(members))}"
        for d in datasets)
    return (f"SELECT * FROM ({union}) WHERE {' AND '.join(conditions)} "
            f'ORDER BY "timestamp" {direction}, "_id" {direction} LIMIT {int(limit)} OFFSET {int(offset)}')


def profile_fragments(conn: duckdb.DuckDBPyConnection, view: StoreView, datasets: dict[str, DatasetFiles],
                      members: list[str], group: str) -> list[FragmentSource]:
    """One profile's fragments read into this connection's temp tables `__frag_N`: point lookups in the
    indexes (sorted by `_xid`), then exactly the lake rows they name (Parquet skips the other row groups).
    A lookup then merges a handful of rows instead of joining whole datasets."""
    sources = []
    for number, (dataset_id, entry) in enumerate(datasets.items()):
        index = ", ".join(_quote(str(view.files.path(f))) for f in entry.files)
        conn.execute(f"CREATE OR REPLACE TEMP TABLE __idx AS SELECT * FROM read_parquet([{index}]) "
                     f"WHERE {members_filter(members)}")
        hits = conn.execute("SELECT DISTINCT _file, _rn FROM __idx ORDER BY _file, _rn").fetchall()
        name = f"__frag_{number}"
        if not hits:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            continue
        rows = " UNION ALL BY NAME ".join(
            f"SELECT *, {_quote(str(file))} AS __file FROM read_parquet({_quote(str(view.lake_root / str(file)))}, "
            f"file_row_number = true) WHERE file_row_number = {int(rn)}"
            for file, rn in hits
        )
        system = ", ".join(f"i.{c}" for c in SYSTEM_COLUMNS)
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE {name} AS
            SELECT l.* EXCLUDE (__file, file_row_number), {system}, {_quote(group)} AS _group,
                   {_quote(dataset_id)} AS _dataset
            FROM ({rows}) l JOIN __idx i ON i._file = l.__file AND i._rn = l.file_row_number
        """)
        sources.append(FragmentSource(dataset_id, name, entry.structure))
    conn.execute("DROP TABLE IF EXISTS __idx")
    return sources
