"""Plans over the profile store: which fragments make a profile, merged by `engine/merge.py`.

A profile's *group* is its cluster (identity stitching, `pdg`) or the primary identity's own XID
(`none`). The same merge plan serves an export (`fragment_sources`: every group, the indexes joined
with the lake) and a lookup (one group). Clusters over the size limit are left out of both, as AEP does.

A lookup merges a handful of rows, so its cost is mostly fixed overhead per query; it is built to run
few queries and to plan the merge once:

- `find_identity`, `cluster_members`: point lookups in the identity indexes (sorted by `xid`, `cluster`);
- `fragment_hits`: one query over every record dataset's index, each asked only about the members of the
  namespaces it holds (`DatasetFiles.namespaces`; indexes are sorted by `_xid`, so an XID reads one row group);
- `parameter_sources` + `fetch_sql`: the merge is prepared once per (store generation, datasets, rule,
  projection) as a DuckDB prepared statement whose sources are its parameters, one list of row structs of
  the dataset's structure per dataset, and then only executed. The rows reach it through session variables
  set from exactly the lake rows the hits name, never through tables: in DuckDB a prepared statement that
  reads a table (or a Parquet file) is bound and optimized again on every EXECUTE, which for the merge costs
  more than running it, while one whose inputs are typed parameters is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from openprofile.engine.merge import FragmentSource
from openprofile.engine.profile_store import DatasetFiles, StoreFiles, indexed_rows
from openprofile.engine.structure import Structure, quote_identifier, to_duckdb_type


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


def find_identity(conn: duckdb.DuckDBPyConnection, identities: Path, xid: str, *, ids: bool = True
                  ) -> IdentityHit | None:
    """The identity of an XID, with its cluster. Without `ids` its `id` is not read (it is `""`): decoding the
    identity strings of a row group is a good part of a point lookup."""
    rows = conn.execute(
        f"SELECT replace(xid::VARCHAR, '-', ''), ns, {'id' if ids else chr(39) * 2}, "
        f"replace(cluster::VARCHAR, '-', ''), cluster_size FROM read_parquet('{identities}') WHERE xid = ?::UUID",
        [xid]).fetchall()
    if not rows:
        return None
    found = rows[0]
    return IdentityHit(str(found[0]), str(found[1]), str(found[2]), str(found[3]), int(found[4]))


def cluster_members(conn: duckdb.DuckDBPyConnection, members: Path, cluster: str, *, ids: bool = True
                    ) -> list[tuple[str, str, str]]:
    """(xid, namespace, id) of every identity in the cluster, ordered by XID (without `ids`, every id is `""`)."""
    rows = conn.execute(
        f"SELECT replace(xid::VARCHAR, '-', ''), ns, {'id' if ids else chr(39) * 2} FROM read_parquet('{members}') "
        "WHERE cluster = ?::UUID ORDER BY xid", [cluster]
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


def events_sql(view: StoreView, datasets: list[DatasetFiles], members: list[tuple[str, str, str]], *,
               start_ms: int | None, end_ms: int | None, descending: bool, limit: int, offset: int) -> str:
    """One profile's events, oldest or newest first by event time (`startTime` inclusive, `endTime` exclusive).
    `members` are (xid, namespace, id); each event index is asked only about the namespaces it has."""
    conditions = ["TRUE"]
    if start_ms is not None:
        conditions.append(f'epoch_ms("timestamp") >= {int(start_ms)}')
    if end_ms is not None:
        conditions.append(f'epoch_ms("timestamp") < {int(end_ms)}')
    direction = "DESC" if descending else "ASC"
    selects = []
    for entry in datasets:
        wanted = dataset_members(entry, members)
        where = members_filter(wanted) if wanted else "FALSE"
        selects.append(f"SELECT * FROM {indexed_rows(view.lake_root, view.files, entry, where=where)}")
    union = " UNION ALL BY NAME ".join(selects)
    return (f"SELECT * FROM ({union}) WHERE {' AND '.join(conditions)} "
            f'ORDER BY "timestamp" {direction}, "_id" {direction} LIMIT {int(limit)} OFFSET {int(offset)}')


# --------------------------------------------------------------------------------------------------
# Lookups

_SYSTEM_TYPES = {"_ingest_ms": "BIGINT", "_batch": "VARCHAR", "_group": "VARCHAR", "_dataset": "VARCHAR"}


@dataclass(frozen=True)
class Hit:
    """One index row of a lookup: which lake row holds a fragment of the group, with the system columns the
    merge reads."""

    file: str
    rn: int
    ingest_ms: int
    batch: str


def fragment_row_type(structure: Structure) -> str:
    """The DuckDB STRUCT type of one fragment row of a dataset: its record columns, then the system columns the
    merge reads."""
    fields = [f"{quote_identifier(k)} {to_duckdb_type(v)}" for k, v in structure.items() if k not in _SYSTEM_TYPES]
    fields += [f"{k} {t}" for k, t in _SYSTEM_TYPES.items()]
    return f"STRUCT({', '.join(fields)})"


def parameter_sources(datasets: dict[str, DatasetFiles]) -> tuple[list[FragmentSource], list[str]]:
    """Fragment sources reading the prepared statement's parameters `$1`, `$2`, … (one list of rows per
    dataset, in order), and the row type of each."""
    sources, row_types = [], []
    for number, (dataset_id, entry) in enumerate(datasets.items(), start=1):
        row_type = fragment_row_type(entry.structure)
        relation = f"(SELECT unnest(__row) FROM (SELECT unnest(CAST(${number} AS {row_type}[])) AS __row))"
        sources.append(FragmentSource(dataset_id, relation, entry.structure))
        row_types.append(row_type)
    return sources, row_types


def dataset_members(entry: DatasetFiles, members: list[tuple[str, str, str]]) -> list[str]:
    """The XIDs of the members (xid, namespace, id) that can be in the dataset's index: those of the namespaces
    it has (every member when the store did not record them)."""
    if entry.namespaces is None:
        return [m[0] for m in members]
    namespaces = set(entry.namespaces)
    return [m[0] for m in members if m[1] in namespaces]


def fragment_hits(conn: duckdb.DuckDBPyConnection, view: StoreView, datasets: dict[str, DatasetFiles],
                  members: list[tuple[str, str, str]]) -> list[list[Hit]]:
    """For each dataset (in order), the index rows of the members (xid, namespace, id): one query over every
    index, each asked only about the members of its namespaces."""
    selects = []
    for number, entry in enumerate(datasets.values()):
        wanted = dataset_members(entry, members)
        if not wanted or not entry.files:
            continue
        index = ", ".join(_quote(str(view.files.path(f))) for f in entry.files)
        selects.append(f"SELECT {number} AS k, _file, _rn, _ingest_ms, _batch FROM read_parquet([{index}]) "
                       f"WHERE {members_filter(wanted)}")
    found: list[list[Hit]] = [[] for _ in datasets]
    if not selects:
        return found
    for k, file, rn, ingest_ms, batch in conn.execute(" UNION ALL ".join(selects)).fetchall():
        found[int(k)].append(Hit(str(file), int(rn), int(ingest_ms), str(batch)))
    for hits in found:
        hits.sort(key=lambda h: (h.file, h.rn))
    return found


def fetch_sql(view: StoreView, datasets: dict[str, DatasetFiles], row_types: list[str], hits: list[list[Hit]],
              group: str, variable: str) -> list[str]:
    """`SET VARIABLE {variable}{n}` statements: dataset n's fragment rows of the group, read from exactly the
    lake rows its hits name (a constant row number prunes the file's other row groups), as a list of its
    row type (a struct cast by name: fields a file lacks are NULL)."""
    statements = []
    for number, (dataset_id, row_type, found) in enumerate(zip(datasets, row_types, hits, strict=True)):
        if not found:
            statements.append(f"SET VARIABLE {variable}{number} = CAST([] AS {row_type}[])")
            continue
        rows = " UNION ALL ".join(
            f"SELECT struct_insert(__l, _ingest_ms := {int(h.ingest_ms)}::BIGINT, _batch := {_quote(h.batch)}, "
            f"_group := {_quote(group)}, _dataset := {_quote(dataset_id)}) AS __row "
            f"FROM read_parquet({_quote(str(view.lake_root / h.file))}, file_row_number = true) __l "
            f"WHERE file_row_number = {int(h.rn)}"
            for h in found)
        statements.append(f"SET VARIABLE {variable}{number} = (SELECT CAST(list(__row) AS {row_type}[]) FROM ({rows}))")
    return statements
