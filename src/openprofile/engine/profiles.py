"""Plans over the profile store: which fragments make a profile, merged by `engine/merge.py`.

A profile's *group* is its cluster (identity stitching, `pdg`) or the primary identity's own XID
(`none`). The same merge plan serves an export (`fragment_sources`: every group, the indexes joined
with the lake) and a lookup (one group). Clusters over the size limit are left out of both, as AEP does.

A lookup merges a handful of rows, so its cost is mostly fixed overhead per step; it is built to run few
steps, none of them planning SQL over big files, and to plan the merge once:

- `find_identity`, `cluster_members`, `fragment_hits`: point reads of the identity and fragment indexes
  (sorted by `xid`, `cluster`, `_xid`) with pyarrow, their footers and per-row-group key ranges kept in
  memory, so a read decodes one small row group; each fragment index is asked only about the members of
  the namespaces it holds (`DatasetFiles.namespaces`);
- `fetch_sql`: exactly the rows the hits name, from the store's lookup copies of the record files (one small
  row group each; from the lake file when a store has no copy);
- `parameter_sources`: the merge is prepared once per (store generation, datasets, rule, projection) as a
  DuckDB prepared statement whose sources are its parameters, one list of row structs of the dataset's
  structure per dataset, and then only executed. The rows reach it through session variables, never through
  tables: in DuckDB a prepared statement that reads a table (or a Parquet file) is bound and optimized again
  on every EXECUTE, which for the merge costs more than running it, while one whose inputs are typed
  parameters is not.
"""

from __future__ import annotations

import bisect
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openprofile.engine.merge import FragmentSource
from openprofile.engine.profile_store import DatasetFiles, Partitions, StoreFiles, group_key, indexed_rows
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


# --------------------------------------------------------------------------------------------------
# Point reads: Parquet footers kept in memory, one small row group read with pyarrow

MAX_FOOTERS = 64  # footers kept (files are immutable: names are never reused); ~8x their size on disk in memory


@dataclass(frozen=True)
class _Footer:
    """A Parquet file's footer, where each row group starts, and for a file sorted by `key`, each row group's
    smallest and largest key."""

    path: str
    metadata: pq.FileMetaData
    starts: list[int]
    lows: list[bytes] | None
    highs: list[bytes] | None


_footers: OrderedDict[tuple[str, str | None], _Footer] = OrderedDict()
_footers_lock = threading.Lock()


def _footer(path: Path, key: str | None = None) -> _Footer:
    cache_key = (str(path), key)
    with _footers_lock:
        found = _footers.get(cache_key)
        if found is not None:
            _footers.move_to_end(cache_key)
            return found
    metadata = pq.read_metadata(str(path))
    starts, total = [], 0
    for g in range(metadata.num_row_groups):
        starts.append(total)
        total += metadata.row_group(g).num_rows
    lows: list[bytes] | None = None
    highs: list[bytes] | None = None
    if key is not None:
        column = metadata.schema.to_arrow_schema().get_field_index(key)
        lows, highs = [], []
        for g in range(metadata.num_row_groups):
            stats = metadata.row_group(g).column(column).statistics
            if stats is None or not stats.has_min_max:
                lows, highs = None, None
                break
            lows.append(_key_bytes(stats.min))
            highs.append(_key_bytes(stats.max))
    footer = _Footer(str(path), metadata, starts, lows, highs)
    with _footers_lock:
        _footers[cache_key] = footer
        while len(_footers) > MAX_FOOTERS:
            _footers.popitem(last=False)
    return footer


def _key_bytes(value: object) -> bytes:
    """A key statistic as the bytes Parquet orders it by (a string column's: its UTF-8)."""
    return value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]


def _uuid_bytes(value: str) -> bytes:
    return uuid.UUID(value).bytes


def _storage(column: pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks()
    return array.storage if isinstance(array, pa.ExtensionArray) else array


def sorted_rows(path: Path, key: str, values: list[bytes], columns: list[str]) -> pa.Table:
    """The rows of a Parquet file sorted by the column `key` (16-byte UUIDs, or strings given as UTF-8) whose
    key is one of `values`: only the row groups whose key range holds a value are read. The key column comes
    first (a UUID as its raw bytes)."""
    footer = _footer(path, key)
    groups: set[int] = set()
    if footer.lows is None or footer.highs is None:
        groups.update(range(footer.metadata.num_row_groups))
    else:
        for value in values:
            groups.update(range(bisect.bisect_left(footer.highs, value), bisect.bisect_right(footer.lows, value)))
    wanted = [key, *[c for c in columns if c != key]]
    if not groups:
        return pa.table({name: pa.array([], pa.null()) for name in wanted})
    with pq.ParquetFile(footer.path, metadata=footer.metadata) as parquet:
        table = parquet.read_row_groups(sorted(groups), columns=wanted, use_threads=False)
    keys = _storage(table.column(key))
    table = table.set_column(0, key, keys)
    return table.filter(pc.is_in(keys, value_set=pa.array(values, keys.type)))


def _hex(value: bytes) -> str:
    return value.hex()


def find_identity(conn: duckdb.DuckDBPyConnection | None, identities: Path, xid: str, *, ids: bool = True
                  ) -> IdentityHit | None:
    """The identity of an XID, with its cluster: a point read of the identities index (sorted by `xid`).
    Without `ids` its `id` is not read (it is `""`). `conn` is not used (kept for callers)."""
    columns = ["ns", "cluster", "cluster_size"] + (["id"] if ids else [])
    table = sorted_rows(identities, "xid", [_uuid_bytes(xid)], columns)
    if table.num_rows == 0:
        return None
    row = table.slice(0, 1).to_pylist()[0]
    return IdentityHit(_hex(row["xid"]), str(row["ns"]), str(row.get("id") or ""), _cluster_hex(row["cluster"]),
                       int(row["cluster_size"]))


def _cluster_hex(value: uuid.UUID | bytes) -> str:
    """A UUID column's value (pyarrow gives `uuid.UUID` for the UUID extension type, bytes for its storage)."""
    return value.hex if isinstance(value, uuid.UUID) else value.hex()


def cluster_members(conn: duckdb.DuckDBPyConnection | None, members: Path, cluster: str, *, ids: bool = True
                    ) -> list[tuple[str, str, str]]:
    """(xid, namespace, id) of every identity in the cluster, ordered by XID: a point read of the members index
    (sorted by `cluster`). Without `ids`, every id is `""`. `conn` is not used (kept for callers)."""
    table = sorted_rows(members, "cluster", [_uuid_bytes(cluster)], ["xid", "ns"] + (["id"] if ids else []))
    rows = [(_cluster_hex(r["xid"]), str(r["ns"]), str(r.get("id") or "")) for r in table.to_pylist()]
    return sorted(rows)


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
            relation = (f"(SELECT f.*, {group_key('i.cluster')} AS _group, {name} AS _dataset FROM {rows} f "
                        f"JOIN read_parquet('{identities}') i ON i.xid = f._xid {limit})")
        else:
            rows = indexed_rows(view.lake_root, view.files, entry)
            relation = f"(SELECT *, {group_key('_xid')} AS _group, {name} AS _dataset FROM {rows})"
        sources.append(FragmentSource(dataset_id, relation, entry.structure))
    return sources


@dataclass(frozen=True)
class Partition:
    """One partition of the store's fragments grouped by cluster (`profile_store.Partitions`), as a stitched
    merge reads it: its fragment sources (`_group` the cluster key; oversized clusters left out) and its slice
    of the members index."""

    sources: list[FragmentSource]
    members: Path


def partitioned_sources(view: StoreView, partitions: Partitions, datasets: dict[str, DatasetFiles], *,
                        max_cluster_size: int | None = None) -> list[Partition]:
    """`fragment_sources(stitched=True)` of `datasets`, one list per partition of the store."""
    limit = f"WHERE _cluster_size <= {int(max_cluster_size)}" if max_cluster_size else ""

    def source(dataset_id: str, entry: DatasetFiles, k: int) -> FragmentSource:
        path = view.files.path(partitions.datasets[dataset_id][k])
        relation = (f"(SELECT * EXCLUDE (_cluster_size), {_quote(dataset_id)} AS _dataset "
                    f"FROM read_parquet({_quote(str(path))}) {limit})")
        return FragmentSource(dataset_id, relation, entry.structure, keyed=True)

    return [Partition([source(d, e, k) for d, e in datasets.items()], view.files.path(partitions.members[k]))
            for k in range(partitions.count)]


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


def fragment_hits(conn: duckdb.DuckDBPyConnection | None, view: StoreView, datasets: dict[str, DatasetFiles],
                  members: list[tuple[str, str, str]]) -> list[list[Hit]]:
    """For each dataset (in order), the index rows of the members (xid, namespace, id): point reads of each
    index (sorted by `_xid`), asked only about the members of the namespaces it holds."""
    found: list[list[Hit]] = []
    for entry in datasets.values():
        wanted = [_uuid_bytes(x) for x in dataset_members(entry, members)]
        hits: list[Hit] = []
        for name in entry.files if wanted else []:
            table = sorted_rows(view.files.path(name), "_xid", wanted, ["_file", "_rn", "_ingest_ms", "_batch"])
            hits += [Hit(str(r["_file"]), int(r["_rn"]), int(r["_ingest_ms"]), str(r["_batch"]))
                     for r in table.drop_columns(["_xid"]).to_pylist()]
        found.append(sorted(hits, key=lambda h: (h.file, h.rn)))
    return found


def _row_table(path: Path, rns: list[int]) -> pa.Table:
    """Rows of a Parquet file by number, reading only their row groups."""
    footer = _footer(path)
    parts = []
    with pq.ParquetFile(footer.path, metadata=footer.metadata) as parquet:
        for group in sorted({bisect.bisect_right(footer.starts, rn) - 1 for rn in rns}):
            table = parquet.read_row_group(group, use_threads=False)
            start = footer.starts[group]
            inside = [rn - start for rn in rns if 0 <= rn - start < table.num_rows]
            parts.append(table.take(pa.array(inside, pa.int64())))
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def fetch_sql(conn: duckdb.DuckDBPyConnection, view: StoreView, datasets: dict[str, DatasetFiles],
              row_types: list[str], hits: list[list[Hit]], group: str, variable: str) -> tuple[list[str], list[str]]:
    """`SET VARIABLE {variable}{n}` statements: dataset n's fragment rows of the group, as a list of its row type
    (a struct cast by name: fields a file lacks are NULL), and the names of the Arrow tables registered on `conn`
    for them (to unregister once run).

    A hit's row is read from the store's lookup copy of its lake file when there is one (small row groups, read
    with pyarrow: one row costs a small row group), else from the lake file itself (a constant row number prunes
    its other row groups)."""
    statements: list[str] = []
    registered: list[str] = []
    for number, (dataset_id, row_type, found) in enumerate(zip(datasets, row_types, hits, strict=True)):
        if not found:
            statements.append(f"SET VARIABLE {variable}{number} = CAST([] AS {row_type}[])")
            continue
        entry = datasets[dataset_id]
        copies = entry.copies or {}
        by_file: dict[str, list[Hit]] = {}
        for h in found:
            by_file.setdefault(h.file, []).append(h)
        selects = []
        for file, file_hits in by_file.items():
            copy = copies.get(file)
            if copy is None:
                selects += [
                    f"SELECT CAST(struct_insert(__l, _ingest_ms := {int(h.ingest_ms)}::BIGINT, "
                    f"_batch := {_quote(h.batch)}, _group := {_quote(group)}, _dataset := {_quote(dataset_id)}) "
                    f"AS {row_type}) AS __row "
                    f"FROM read_parquet({_quote(str(view.lake_root / h.file))}, file_row_number = true) __l "
                    f"WHERE file_row_number = {int(h.rn)}" for h in file_hits]
                continue
            table = _row_table(view.files.path(copy), [h.rn for h in file_hits])
            system = {"_ingest_ms": pa.array([h.ingest_ms for h in file_hits], pa.int64()),
                      "_batch": pa.array([h.batch for h in file_hits], pa.string()),
                      "_group": pa.array([group] * len(file_hits), pa.string()),
                      "_dataset": pa.array([dataset_id] * len(file_hits), pa.string())}
            table = table.drop_columns([c for c in system if c in table.column_names])
            for name, values in system.items():
                table = table.append_column(name, values)
            name = f"{variable}rows_{number}_{len(registered)}"
            conn.register(name, table)
            registered.append(name)
            selects.append(f"SELECT CAST(__t AS {row_type}) AS __row FROM {name} __t" if len(by_file) > 1
                           else f"SELECT __t AS __row FROM {name} __t")  # one source: the list is cast once
        statements.append(f"SET VARIABLE {variable}{number} = "
                          f"(SELECT CAST(list(__row) AS {row_type}[]) FROM ({' UNION ALL '.join(selects)}))")
    return statements, registered
