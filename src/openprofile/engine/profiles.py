"""Plans over the profile store: which fragments make a profile, merged by `engine/merge.py`.

A profile's *group* is its cluster (identity stitching, `pdg`) or the primary identity's own XID
(`none`). The same fragment relations serve a lookup (restricted to one group's members, which
prunes Parquet row groups because fragments are sorted by `_xid`) and an export (every group).
Clusters over the size limit are left out of both, as AEP does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from openprofile.engine.merge import FragmentSource, MergeRule, merge_sql
from openprofile.engine.structure import Structure


def _list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class RecordDataset:
    dataset_id: str
    paths: list[Path]
    structure: Structure


@dataclass(frozen=True)
class IdentityHit:
    xid: str
    namespace: str
    id: str
    cluster: str
    cluster_size: int


def find_identity(conn: duckdb.DuckDBPyConnection, identities: Path, xid: str) -> IdentityHit | None:
    rows = conn.execute(
        f"SELECT xid, ns, id, cluster, cluster_size FROM read_parquet('{identities}') WHERE xid = ?", [xid]
    ).fetchall()
    return IdentityHit(str(rows[0][0]), str(rows[0][1]), str(rows[0][2]), str(rows[0][3]), int(rows[0][4])) \
        if rows else None


def cluster_members(conn: duckdb.DuckDBPyConnection, members: Path, cluster: str) -> list[tuple[str, str, str]]:
    """(xid, namespace, id) of every identity in the cluster, ordered by XID."""
    rows = conn.execute(
        f"SELECT xid, ns, id FROM read_parquet('{members}') WHERE cluster = ? ORDER BY xid", [cluster]
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def fragment_sources(datasets: list[RecordDataset], *, stitched: bool, identities: Path | None,
                     members: list[str] | None = None, group: str | None = None,
                     max_cluster_size: int | None = None) -> list[FragmentSource]:
    """Fragment relations with `_group` and `_dataset`; for one profile pass `members` and its `group`."""
    sources = []
    for dataset in datasets:
        rel = f"read_parquet({_list(dataset.paths)}, union_by_name = true)"
        if members is not None:
            keys = ", ".join(_quote(m) for m in members)
            relation = (f"(SELECT *, {_quote(group or '')} AS _group, {_quote(dataset.dataset_id)} AS _dataset "
                        f"FROM {rel} WHERE _xid IN ({keys}))")
        elif stitched and identities is not None:
            limit = f"WHERE i.cluster_size <= {int(max_cluster_size)}" if max_cluster_size else ""
            relation = (f"(SELECT f.*, i.cluster AS _group, {_quote(dataset.dataset_id)} AS _dataset FROM {rel} f "
                        f"JOIN read_parquet('{identities}') i ON i.xid = f._xid {limit})")
        else:
            relation = f"(SELECT *, _xid AS _group, {_quote(dataset.dataset_id)} AS _dataset FROM {rel})"
        sources.append(FragmentSource(dataset.dataset_id, relation, dataset.structure))
    return sources


def merged_profiles_sql(sources: list[FragmentSource], rule: MergeRule) -> str:
    return merge_sql(sources, rule)


def events_sql(paths: list[Path], members: list[str], *, start_ms: int | None, end_ms: int | None,
               descending: bool, limit: int, offset: int) -> str:
    """One profile's events, newest or oldest first, by event time (`startTime` inclusive, `endTime` exclusive)."""
    keys = ", ".join(_quote(m) for m in members)
    conditions = [f"_xid IN ({keys})"]
    if start_ms is not None:
        conditions.append(f"epoch_ms(\"timestamp\") >= {int(start_ms)}")
    if end_ms is not None:
        conditions.append(f"epoch_ms(\"timestamp\") < {int(end_ms)}")
    direction = "DESC" if descending else "ASC"
    return (f"SELECT * FROM read_parquet({_list(paths)}, union_by_name = true) WHERE {' AND '.join(conditions)} "
            f"ORDER BY \"timestamp\" {direction}, \"_id\" {direction} LIMIT {int(limit)} OFFSET {int(offset)}")
