"""Plans over the profile store: which fragments make a profile, merged by `engine/merge.py`.

A profile's *group* is its cluster (identity stitching, `pdg`) or the primary identity's own XID
(`none`). The same merge plan serves an export (`fragment_sources`: every group, the indexes joined
with the lake) and a lookup (one group). Clusters over the size limit are left out of both, as AEP does.

A lookup is built for speed, since it merges a handful of rows and its cost is mostly fixed overhead:

- `fragment_hits`: one query over every dataset's index, narrowed to the group's member XIDs (indexes
  are sorted by `_xid`, so each XID reads one row group);
- `LookupStatement`: the merge compiled once per (store generation, datasets, rule, projection) as a
  DuckDB prepared statement whose sources are its parameters — each a list of row structs of the
  dataset's structure (`parameter_sources`) — and then only executed. The rows come in through session
  variables (`fetch_sql`: exactly the lake rows the hits name, cast to the dataset's row type), never
  through tables: in DuckDB a prepared statement that reads a table, or a Parquet file, is bound and
  optimized again on every EXECUTE, which for the merge costs more than running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from openprofile.engine.merge import FragmentSource
from openprofile.engine.profile_store import SYSTEM_COLUMNS, DatasetFiles, StoreFiles, indexed_rows
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


# --------------------------------------------------------------------------------------------------
# Lookups

_SYSTEM_TYPES = {"_xid": "UUID", "_identity_ns": "VARCHAR", "_identity_id": "VARCHAR", "_ingest_ms": "BIGINT",
                 "_batch": "VARCHAR", "_group": "VARCHAR", "_dataset": "VARCHAR"}


@dataclass(frozen=True)
class Hit:
    """One index row of a lookup: which lake row holds a fragment of the group, with its system columns."""

    file: str
    rn: int
    xid: str
    ns: str
    id: str
    ingest_ms: int
    batch: str


def fragment_row_type(structure: Structure) -> str:
    """The DuckDB STRUCT type of one fragment row of a dataset: its record columns, then the system columns."""
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


def fragment_hits(conn: duckdb.DuckDBPyConnection, view: StoreView, datasets: dict[str, DatasetFiles],
                  members: list[str]) -> list[list[Hit]]:
    """For each dataset (in order), the index rows of the member XIDs: one query over every index."""
    if not datasets or not members:
        return [[] for _ in datasets]
    selects = []
    for number, entry in enumerate(datasets.values()):
        index = ", ".join(_quote(str(view.files.path(f))) for f in entry.files)
        selects.append(f"SELECT {number} AS k, _file, _rn, replace(_xid::VARCHAR, '-', ''), _identity_ns, "
                       f"_identity_id, _ingest_ms, _batch FROM read_parquet([{index}]) WHERE {members_filter(members)}")
    found: list[list[Hit]] = [[] for _ in datasets]
    for k, file, rn, hit_xid, ns, ident, ingest_ms, batch in conn.execute(" UNION ALL ".join(selects)).fetchall():
        found[int(k)].append(Hit(str(file), int(rn), str(hit_xid), str(ns), str(ident), int(ingest_ms), str(batch)))
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
            f"SELECT struct_insert(__l, _xid := {_quote(h.xid)}::UUID, _identity_ns := {_quote(h.ns)}, "
            f"_identity_id := {_quote(h.id)}, _ingest_ms := {int(h.ingest_ms)}::BIGINT, _batch := {_quote(h.batch)}, "
            f"_group := {_quote(group)}, _dataset := {_quote(dataset_id)}) AS __row "
            f"FROM read_parquet({_quote(str(view.lake_root / h.file))}, file_row_number = true) __l "
            f"WHERE file_row_number = {int(h.rn)}"
            for h in found)
        statements.append(f"SET VARIABLE {variable}{number} = (SELECT CAST(list(__row) AS {row_type}[]) FROM ({rows}))")
    return statements


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
