"""Batch ingestion: check a batch's uploaded files and write them as typed, nested Parquet.

`ingest_files` is called when a client completes an AEP batch-ingestion batch. It reads the uploaded files
with DuckDB (a fresh in-memory connection per call), infers the batch's `Structure`, checks every record
set-wise in SQL, merges the batch's structure into the dataset's, and streams the rows into
``out_dir/part-00000.parquet``, ``part-00001.parquet``, ... (zstd, at most `rows_per_file` rows each).
Python only orchestrates: rows go from DuckDB to Parquet as Arrow record batches, never as Python objects.
The batch is all or nothing: on any failure `IngestFailure` is raised and `out_dir` holds no file of ours.

Formats
-------
**json** — a file may hold a JSON array of objects (what ``aepp`` uploads), newline-delimited objects, or a
single object. The structure is inferred over *all* records: integers are BIGINT, other numbers DOUBLE
(BIGINT and DOUBLE mixed widen to DOUBLE), strings VARCHAR, objects structs, arrays lists; a field that is
never anything but null is VARCHAR, one that is never anything but ``{}`` (or null) is left out. A field
that is, say, a string in one record and a number in another fails the batch (``SCHEMA_CONFLICT``, naming
the field and the first record of each kind). Strings are never guessed to be dates: only the known XDM
fields below are timestamps. Malformed JSON fails the batch (``MALFORMED_JSON``) naming the file and the
line (newline-delimited files) or the record (arrays) where DuckDB's parser stopped.

**parquet** — read as typed. Integers of any width become BIGINT, floats and decimals DOUBLE, timestamps
(any unit, with or without zone) TIMESTAMPTZ; binary, time and other types fail the batch. Files shaped like
the ones openprofile itself writes (``identityMap`` a map of identity lists, ``segmentMembership`` a map of
maps, ``timestamp[us, tz=UTC]``) pass through with no conversion. An ``identityMap`` (or
``segmentMembership``) stored as a *struct* keyed by namespace, as ``pyarrow.Table.from_pylist`` makes
it, is converted to the map type (null namespaces are dropped).

**csv** — UTF-8, comma-separated, ``"`` quotes (doubled inside a quoted value), a header row, the same
number of cells in every row (anything else is ``MALFORMED_CSV``, naming the line). The column types are
sniffed by DuckDB over the whole file: BIGINT, DOUBLE, BOOLEAN, DATE, TIMESTAMP/TIMESTAMPTZ (as
TIMESTAMPTZ, a time without offset read as UTC); values with leading zeros or a ``+`` stay text; anything
else is VARCHAR. A dotted header ``person.name.firstName`` becomes the nested field
``person`` → ``name`` → ``firstName``; a group whose cells are all empty in a row is null in that row.
``identityMap`` and ``segmentMembership`` are each one column holding a JSON object
(``{"email": [{"id": "a@example.com", "primary": true}]}``); an empty cell is null, anything but a JSON
object is a row error. Lists and maps other than those two cannot be expressed in CSV. Row numbers count
data records (the first line after the header is row 1).

Known XDM fields
----------------
Whatever the format or inference says, these fields have fixed types (other fields inside them are kept):

- ``identityMap``: ``MAP(VARCHAR, STRUCT(id VARCHAR, primary BOOLEAN, authenticatedState VARCHAR)[])``;
- ``segmentMembership``: ``MAP(VARCHAR, MAP(VARCHAR, STRUCT(status VARCHAR, lastQualificationTime
  TIMESTAMPTZ)))``;
- ``timestamp`` (top level) and ``extSourceSystemAudit.lastUpdatedDate``: TIMESTAMPTZ, from timestamps,
  dates or ISO 8601 strings (``2024-05-01T10:00:00Z``, ``2024-05-01T12:00:00+02:00``,
  ``2019-04-15T02:41:50.000+0000``, ``2021-03-10 10:03:08`` read as UTC).

A source whose shape cannot become these types fails the batch with ``SCHEMA_CONFLICT``.

Record checks
-------------
Run set-wise in SQL over all files; each failing record is reported with its file name and 1-based record
number (the Nth object of an array or the Nth non-blank line of a newline-delimited file), and any failure
fails the batch (``ROW_VALIDATION``, the first 100 problems in ``rows``):

- every class: a timestamp field above that is present but not a parseable date-time;
- ``experienceevent``: ``_id`` missing or empty; ``timestamp`` missing; no identity;
- ``profile``: no identity;
- both: an ``identityMap`` namespace code that is not a letter followed by letters, digits, ``_ . -`` (at most 64);
- ``profile`` and ``experienceevent``: an ``identityMap`` item without a non-empty ``id``
  (``identityMap.email[0] has no id``); more than one item with ``primary: true``.

"An identity" is an ``identityMap`` item with a non-empty ``id``. Ad-hoc data (`record_class` None) gets no
XDM checks.

Error codes (`IngestFailure.code`)
---------------------------------
``UNSUPPORTED_FORMAT``  the input format is not json, parquet or csv.
``EMPTY_FILE``          the batch has no file, or a file is zero bytes or holds no record.
``MALFORMED_JSON``      a JSON file cannot be parsed; the message names the file and DuckDB's position.
``MALFORMED_CSV``       a CSV file cannot be parsed (ragged rows, bad quoting, ...).
``MALFORMED_PARQUET``   a file is not a readable Parquet file.
``SCHEMA_CONFLICT``     a field's type differs between records or files of the batch, or from the dataset,
                        or a known XDM field has an impossible shape; the message names the field.
``ROW_VALIDATION``      records failed the checks above; `rows` lists them (at most 100), the message
                        gives the totals.
``INVALID_DATA``        DuckDB could not convert a value while writing (e.g. an integer out of range).

Output
------
Each written column has its type in the *merged* structure (so a BIGINT column of a dataset that is DOUBLE
is written as DOUBLE, and a struct gets, as nulls, the fields earlier batches gave it); only the batch's own
top-level columns are written, in the order of the merged structure. Files are
``part-00000.parquet``, ``part-00001.parquet``, ... in `out_dir`, which is created if needed; stale
``part-NNNNN.parquet`` files found there before the run (an earlier attempt at the same batch) are removed
first.

Resources: Parquet is streamed straight from the uploaded files. JSON and CSV records are first copied
into a DuckDB temporary table (so that they are parsed once and numbered once), which DuckDB spills to a
private temporary directory when memory runs short; that directory is removed at the end.

Limits: JSON integers between 2^63 and 2^64 are written as null; a JSON record may be at most 64 MB.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from openprofile.engine.structure import (
    Structure,
    StructureConflict,
    TypeNode,
    check_structure,
    describe,
    from_arrow_schema,
    merge_nodes,
    merge_structures,
    quote_identifier,
    to_duckdb_type,
)

__all__ = [
    "FORMATS",
    "IDENTITY_MAP",
    "MAX_ROW_ERRORS",
    "RECORD_CLASSES",
    "SEGMENT_MEMBERSHIP",
    "IngestFailure",
    "IngestResult",
    "RowError",
    "WrittenFile",
    "ingest_files",
]

FORMATS = ("json", "parquet", "csv")
RECORD_CLASSES = ("profile", "experienceevent")
MAX_ROW_ERRORS = 100

IDENTITY_ITEM: TypeNode = {"struct": {"id": "VARCHAR", "primary": "BOOLEAN", "authenticatedState": "VARCHAR"}}
IDENTITY_MAP: TypeNode = {"map": {"list": IDENTITY_ITEM}}
SEGMENT_MEMBERSHIP: TypeNode = {
    "map": {"map": {"struct": {"status": "VARCHAR", "lastQualificationTime": "TIMESTAMPTZ"}}}
}
_FIXED: dict[str, TypeNode] = {
    "identityMap": IDENTITY_MAP,
    "segmentMembership": SEGMENT_MEMBERSHIP,
    "timestamp": "TIMESTAMPTZ",
    "extSourceSystemAudit": {"struct": {"lastUpdatedDate": "TIMESTAMPTZ"}},
}
# Where the fixed timestamp leaves are: (top-level column, struct steps below it, label in messages).
_TIMESTAMP_LEAVES = (
    ("timestamp", (), "timestamp"),
    ("extSourceSystemAudit", ("lastUpdatedDate",), "extSourceSystemAudit.lastUpdatedDate"),
    ("segmentMembership", ("lastQualificationTime",), "segmentMembership lastQualificationTime"),
)
_HINTS = {
    "identityMap": "identityMap must be an object of namespace → array of {id, primary, authenticatedState}",
    "segmentMembership": "segmentMembership must be an object of namespace → segment id → "
    "{status, lastQualificationTime}",
    "timestamp": "timestamp must be an ISO 8601 date-time string",
    "extSourceSystemAudit": "extSourceSystemAudit.lastUpdatedDate must be an ISO 8601 date-time string",
}
# The fixed fields as JSON is first read to check records (timestamps still text).
_JSON_CHECK: Structure = {
    "_id": "VARCHAR",
    "timestamp": "VARCHAR",
    "identityMap": {"map": {"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN"}}}},
    "extSourceSystemAudit": {"struct": {"lastUpdatedDate": "VARCHAR"}},
    "segmentMembership": {"map": {"map": {"struct": {"lastQualificationTime": "VARCHAR"}}}},
}
_CSV_JSON_COLUMNS: dict[str, TypeNode] = {
    "identityMap": IDENTITY_MAP,
    "segmentMembership": {"map": {"map": {"struct": {"status": "VARCHAR", "lastQualificationTime": "VARCHAR"}}}},
}
_CSV_TYPES = "['BOOLEAN', 'BIGINT', 'DOUBLE', 'DATE', 'TIMESTAMP', 'TIMESTAMPTZ', 'VARCHAR']"
_CSV_DIALECT = "delim = ',', quote = '\"', escape = '\"', header = true, skip = 0, comment = ''"

_NO_ID = "ExperienceEvent record has no '_id'"
_NO_TIMESTAMP = "ExperienceEvent record has no 'timestamp'"

# Small row groups let a lookup read one profile's rows without reading much else (Parquet skips groups).
ROW_GROUP_ROWS = 16_384
# An identity namespace code: a letter, then letters, digits, `_ . -` (at most 64).
_NAMESPACE = "[A-Za-z][A-Za-z0-9_.-]{0,63}"
_BATCH_ROWS = 131_072
_FILE_SHIFT = 1 << 40  # record keys are file index * _FILE_SHIFT + record number
_MAX_JSON_OBJECT = 64 * 1024 * 1024
_PART = re.compile(r"^part-\d{5}\.parquet$")
_INTEGER_DOC_TYPES = frozenset({"BIGINT", "UBIGINT", "HUGEINT", "UHUGEINT", "INTEGER", "SMALLINT", "TINYINT"})


_Step = tuple[str, str]  # ("key", name), ("items", ""), ("values", "") — a step into a JSON document
_EMPTY = object()  # a merged JSON structure position that only ever held {}
_DROP = object()  # ... and so has no column


@dataclass(frozen=True)
class RowError:
    """One problem with one record: the uploaded file's name, the 1-based record number, what is wrong."""

    file: str
    row: int
    reason: str


class IngestFailure(Exception):
    """The batch failed as a whole and nothing was written (see the module docstring for the codes)."""

    def __init__(self, code: str, message: str, rows: Sequence[RowError] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rows: list[RowError] = list(rows)[:MAX_ROW_ERRORS]

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"IngestFailure({self.code!r}, {self.message!r}, rows={len(self.rows)})"


@dataclass(frozen=True)
class WrittenFile:
    name: str  # relative to out_dir, e.g. "part-00000.parquet"
    size: int  # bytes
    records: int


@dataclass(frozen=True)
class IngestResult:
    records_read: int
    records_written: int
    files: list[WrittenFile]
    structure: Structure  # the dataset's structure after merging this batch


def ingest_files(
    inputs: list[tuple[str, Path]],
    input_format: str,
    record_class: str | None,
    dataset_structure: Structure | None,
    out_dir: Path,
    *,
    rows_per_file: int = 1_000_000,
    threads: int | None = None,
) -> IngestResult:
    """Check the batch's files and write them as Parquet into `out_dir` (see the module docstring).

    `inputs` are (uploaded file name, path on disk); `input_format` is ``json``, ``parquet`` or ``csv``;
    `record_class` is ``profile``, ``experienceevent`` or None (ad hoc); `dataset_structure` is the dataset's
    structure before this batch (None for a dataset without data). Raises `IngestFailure` for anything wrong
    with the data; ValueError for wrong arguments.
    """
    fmt = (input_format or "").strip().lower()
    if fmt not in FORMATS:
        raise IngestFailure(
            "UNSUPPORTED_FORMAT", f"Input format '{input_format}' is not supported; use json, parquet or csv."
        )
    cls = (record_class or "").strip().lower() or None
    if cls in ("adhoc", "ad-hoc", "ad_hoc"):
        cls = None
    if cls is not None and cls not in RECORD_CLASSES:
        raise ValueError(f"record_class must be one of {RECORD_CLASSES} or None, not {record_class!r}")
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be at least 1")
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    if dataset_structure is not None:
        check_structure(dataset_structure)
    if not inputs:
        raise IngestFailure("EMPTY_FILE", "The batch has no files.")
    for name, path in inputs:
        if Path(path).stat().st_size == 0:
            raise IngestFailure("EMPTY_FILE", f"File '{name}' is empty (0 bytes).")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if _PART.match(stale.name) and stale.is_file():
            stale.unlink()

    run = _Run([(name, Path(path)) for name, path in inputs], fmt, cls, dataset_structure, out_dir,
               rows_per_file, threads)
    try:
        return run.run()
    except duckdb.Error as exc:  # a DuckDB error no step expected: still the data's fault, not a crash
        run.discard()
        raise IngestFailure("INVALID_DATA", run.clean(str(exc))) from None
    except BaseException:
        run.discard()
        raise
    finally:
        run.close()


# --------------------------------------------------------------------------------------------------
# SQL helpers


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _q(name: str) -> str:
    return quote_identifier(name)


def _field(expr: str, name: str) -> str:
    return f"struct_extract({expr}, {_lit(name)})"


def _kind(node: TypeNode) -> str:
    if isinstance(node, str):
        return "scalar"
    (key,) = node.keys()
    return str(key)


def _castable(src: TypeNode, dst: TypeNode) -> bool:
    """Whether a plain CAST turns a value of `src` into `dst` (DuckDB casts structs by field name)."""
    ks, kd = _kind(src), _kind(dst)
    if ks != kd:
        return False
    if ks == "scalar":
        return True
    assert isinstance(src, dict) and isinstance(dst, dict)
    if ks == "struct":
        fields: dict[str, TypeNode] = dst["struct"]
        return all(f in fields and _castable(n, fields[f]) for f, n in src["struct"].items())
    return _castable(src[ks], dst[ks])


def _coerce(expr: str, src: TypeNode, dst: TypeNode, depth: int = 0) -> str:
    """SQL turning `expr` (of shape `src`) into type `dst`; `dst` has every field of `src` (see `_conform`)."""
    target = to_duckdb_type(dst)
    if _castable(src, dst):
        return f"CAST({expr} AS {target})"
    ks, kd = _kind(src), _kind(dst)
    var = f"__v{depth}"
    assert isinstance(dst, dict) and isinstance(src, dict)
    if kd == "map" and ks == "struct":
        entries = ", ".join(
            f"{{'key': {_lit(k)}, 'value': {_coerce(_field(expr, k), n, dst['map'], depth + 1)}}}"
            for k, n in src["struct"].items()
        )
        return (f"CASE WHEN {expr} IS NULL THEN NULL ELSE CAST(map_from_entries(list_filter([{entries}], "
                f"lambda {var}: {var}.value IS NOT NULL)) AS {target}) END")
    if kd == "map" and ks == "map":
        value = _coerce(f"{var}.value", src["map"], dst["map"], depth + 1)
        return (f"CAST(map_from_entries(list_transform(map_entries({expr}), "
                f"lambda {var}: {{'key': {var}.key, 'value': {value}}})) AS {target})")
    if kd == "list" and ks == "list":
        item = _coerce(var, src["list"], dst["list"], depth + 1)
        return f"CAST(list_transform({expr}, lambda {var}: {item}) AS {target})"
    if kd == "struct" and ks == "struct":
        have: dict[str, TypeNode] = src["struct"]
        fields = ", ".join(
            f"{_q(f)} := " + (_coerce(_field(expr, f), have[f], n, depth + 1) if f in have
                              else f"CAST(NULL AS {to_duckdb_type(n)})")
            for f, n in dst["struct"].items()
        )
        return f"CASE WHEN {expr} IS NULL THEN NULL ELSE struct_pack({fields}) END"
    raise AssertionError(f"cannot convert {describe(src)} to {describe(dst)}")


def _blank(expr: str) -> str:
    """SQL: `expr` (text) is null, empty or only white space."""
    return f"coalesce(regexp_full_match({expr}, '[\\s\\p{{Z}}]*'), true)"


def _leaf_values(expr: str, src: TypeNode, dst: TypeNode, steps: Sequence[str], depth: int = 0) -> str | None:
    """SQL for the list of text values that become the TIMESTAMPTZ leaf at `steps` (lists and maps are
    walked through, struct fields follow `steps`); None if no such leaf is text in `src`."""
    ks, kd = _kind(src), _kind(dst)
    var = f"__w{depth}"
    if kd == "scalar":
        if steps or src != "VARCHAR" or dst != "TIMESTAMPTZ":
            return None
        return f"[{expr}]"
    assert isinstance(dst, dict)
    if isinstance(src, str):
        return None
    if kd == "map" and ks == "map":
        inner = _leaf_values(var, src["map"], dst["map"], steps, depth + 1)
        return None if inner is None else f"flatten(list_transform(map_values({expr}), lambda {var}: {inner}))"
    if kd == "map" and ks == "struct":
        parts = [
            p for k, n in src["struct"].items()
            if (p := _leaf_values(_field(expr, k), n, dst["map"], steps, depth + 1)) is not None
        ]
        return f"flatten([{', '.join(parts)}])" if parts else None
    if kd == "list" and ks == "list":
        inner = _leaf_values(var, src["list"], dst["list"], steps, depth + 1)
        return None if inner is None else f"flatten(list_transform({expr}, lambda {var}: {inner}))"
    if kd == "struct" and ks == "struct" and steps:
        name = steps[0]
        if name in src["struct"] and name in dst["struct"]:
            return _leaf_values(_field(expr, name), src["struct"][name], dst["struct"][name], steps[1:], depth)
    return None


# --------------------------------------------------------------------------------------------------
# Structures of a batch


def _resolve(node: TypeNode | None) -> TypeNode:
    """Unknown types (None: only nulls were seen) become VARCHAR."""
    if node is None:
        return "VARCHAR"
    kind = _kind(node)
    if kind == "scalar":
        return node
    assert isinstance(node, dict)
    if kind == "struct":
        return {"struct": {k: _resolve(v) for k, v in node["struct"].items()}}
    return {kind: _resolve(node[kind])}


def _conform(src: TypeNode | None, dst: TypeNode, path: str, top: str) -> TypeNode:
    """The type a known XDM field gets from a source of shape `src`: `dst`, plus any other struct fields
    the source has. Raises IngestFailure(SCHEMA_CONFLICT) if the source cannot become `dst`."""
    if src is None:
        return copy.deepcopy(dst)
    ks, kd = _kind(src), _kind(dst)
    if kd == "scalar":
        if src == dst or (dst == "TIMESTAMPTZ" and src in ("VARCHAR", "DATE")):
            return dst
    elif isinstance(src, dict):
        assert isinstance(dst, dict)
        if kd == "map" and ks == "map":
            return {"map": _conform(src["map"], dst["map"], path, top)}
        if kd == "map" and ks == "struct":
            value: TypeNode | None = None
            for child in src["struct"].values():
                conformed = _conform(child, dst["map"], path, top)
                try:
                    value = conformed if value is None else merge_nodes(value, conformed, path)
                except StructureConflict as exc:
                    raise _conflict(f"field '{exc.path}' has different types under different keys of "
                                    f"{top} ({exc.existing} and {exc.incoming}). {_HINTS[top]}.") from None
            return {"map": value if value is not None else copy.deepcopy(dst["map"])}
        if kd == "list" and ks == "list":
            return {"list": _conform(src["list"], dst["list"], path, top)}
        if kd == "struct" and ks == "struct":
            have: dict[str, TypeNode | None] = src["struct"]
            fields: dict[str, TypeNode] = {
                name: _conform(have.get(name), node, f"{path}.{name}", top) for name, node in dst["struct"].items()
            }
            for name, node in have.items():
                if name not in fields:
                    fields[name] = _resolve(node)
            return {"struct": fields}
    raise _conflict(f"field '{path}' is {describe(_resolve(src))} in this batch but must be {describe(dst)}: "
                    f"{_HINTS[top]}.")


def _conform_structure(structure: dict[str, TypeNode | None]) -> Structure:
    """A batch's structure with the known XDM fields given their fixed types, unknown types VARCHAR."""
    result: Structure = {}
    for name, node in structure.items():
        fixed = _FIXED.get(name)
        result[name] = _conform(node, fixed, name, name) if fixed is not None else _resolve(node)
    try:
        check_structure(result)
    except ValueError as exc:
        raise _conflict(f"{exc}; column and field names must differ in more than letter case.") from None
    return result


def _conflict(message: str) -> IngestFailure:
    return IngestFailure("SCHEMA_CONFLICT", message)


def _norm_doc_scalar(name: str) -> str:
    if name in _INTEGER_DOC_TYPES:
        return "BIGINT"
    if name in ("DOUBLE", "FLOAT", "REAL") or name.startswith("DECIMAL"):
        return "DOUBLE"
    if name in ("VARCHAR", "BOOLEAN", "NULL", "JSON"):
        return name
    return "VARCHAR"


def _merge_doc(a: Any, b: Any, steps: tuple[_Step, ...] = (), suspects: set[tuple[_Step, ...]] | None = None) -> Any:
    """Merge two `json_structure` results the way DuckDB merges records (conflicts become "JSON").

    json_structure calls an empty object "JSON" too: with `suspects`, "JSON" merged with an object gives the
    object, and its path is added to `suspects`, to be checked against the records. `_EMPTY` (a position
    only ever ``{}``) merges like null."""
    if a is _EMPTY:
        a = "NULL"
    if b is _EMPTY:
        b = "NULL"
    if isinstance(a, str):
        a = _norm_doc_scalar(a)
    if isinstance(b, str):
        b = _norm_doc_scalar(b)
    if a == "NULL":
        return b
    if b == "NULL":
        return a
    if isinstance(a, str) and isinstance(b, str):
        if a == b:
            return a
        return "DOUBLE" if {a, b} == {"BIGINT", "DOUBLE"} else "JSON"
    if isinstance(a, dict) and isinstance(b, dict):
        merged = dict(a)
        for key, value in b.items():
            merged[key] = _merge_doc(merged[key], value, (*steps, ("key", key)), suspects) if key in merged else value
        return merged
    if isinstance(a, list) and isinstance(b, list) and a and b:
        return [_merge_doc(a[0], b[0], (*steps, ("items", "")), suspects)]
    if suspects is not None and "JSON" in (a, b) and (isinstance(a, dict) or isinstance(b, dict)):
        suspects.add(steps)
        return a if isinstance(a, dict) else b
    return "JSON"


def _dotted(steps: Sequence[_Step]) -> str:
    """The dotted field path of a JSON path (the keys of identityMap and segmentMembership are data)."""
    names: list[str] = []
    skip = 0
    for i, (kind, name) in enumerate(steps):
        if kind != "key":
            continue
        if skip:
            skip -= 1
            continue
        names.append(name)
        if i == 0 and name == "identityMap":
            skip = 1
    return ".".join(names)


class _KeyConflict(Exception):
    pass


def _merge_strict(a: Any, b: Any) -> Any:
    merged = _merge_doc(a, b)
    if _has_json(merged) and not (_has_json(a) or _has_json(b)):
        raise _KeyConflict
    return merged


def _has_json(doc: Any) -> bool:
    if doc == "JSON":
        return True
    if isinstance(doc, list):
        return any(_has_json(d) for d in doc)
    if isinstance(doc, dict):
        return any(_has_json(d) for d in doc.values())
    return False


def _merge_map_values(doc: dict[str, Any], levels: int, top: str) -> Any:
    """The merged structure of the values of a map-keyed field seen as an object (keys are data)."""
    merged: Any = "NULL"
    for value in doc.values():
        if levels > 1:
            if not isinstance(value, dict):
                if value in ("NULL", "JSON"):
                    continue
                raise _conflict(f"field '{top}' holds {_describe_doc(value)} where an object is expected: "
                                f"{_HINTS[top]}.")
            value = _merge_map_values(value, levels - 1, top)
        try:
            merged = _merge_strict(merged, value)
        except _KeyConflict:
            where, detail = top, ""
            before, after = _doc_to_node(merged), _doc_to_node(value)
            if isinstance(before, (str, dict)) and isinstance(after, (str, dict)):
                try:
                    merge_nodes(_resolve(before), _resolve(after), top)
                except StructureConflict as exc:
                    where, detail = exc.path, f" ({exc.existing} and {exc.incoming})"
            raise _conflict(f"field '{where}' has values of different types under different keys of {top}"
                            f"{detail}: {_HINTS[top]}.") from None
    return merged


def _describe_doc(doc: Any) -> str:
    if isinstance(doc, list):
        return "an array"
    if isinstance(doc, dict):
        return "an object"
    return {"VARCHAR": "a string", "BOOLEAN": "a boolean"}.get(_norm_doc_scalar(str(doc)), "a number")


def _doc_to_node(doc: Any) -> Any:
    """The node of a merged json_structure document: None where only nulls were seen, `_DROP` for fields
    that only ever held ``{}`` (and structs or lists of nothing else)."""
    if doc is _EMPTY:
        return _DROP
    if isinstance(doc, str):
        name = _norm_doc_scalar(doc)
        return None if name in ("NULL", "JSON") else name
    if isinstance(doc, list):
        item = _doc_to_node(doc[0]) if doc else None
        return _DROP if item is _DROP else {"list": item}
    if isinstance(doc, dict):
        fields = {k: node for k, v in doc.items() if (node := _doc_to_node(v)) is not _DROP}
        return {"struct": fields} if fields else _DROP
    return None


def _json_path(steps: Sequence[_Step]) -> str:
    """A DuckDB JSONPath: keys quoted, list items ``[*]``, object values ``.*``."""
    parts = ["$"]
    for kind, name in steps:
        if kind == "items":
            parts.append("[*]")
        elif kind == "values":
            parts.append(".*")
        else:
            parts.append('."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# One ingestion


@dataclass
class _Checks:
    """What the record checks read, as SQL over one source row (None: the batch has no such field)."""

    id_sql: str | None = None
    timestamp_sql: str | None = None
    timestamp_texts: tuple[tuple[str, str], ...] = ()  # (label, VARCHAR[] SQL of text values to parse)
    identity_sql: str | None = None  # MAP(VARCHAR, STRUCT(id VARCHAR, primary BOOLEAN, ...)[])
    extra: tuple[str, ...] = ()  # VARCHAR SQL, a reason or NULL


@dataclass
class _Source:
    """One input file as the check and write queries read it."""

    index: int
    name: str
    scan: str  # FROM clause item, aliased __t
    numbered_scan: str  # the same with the 1-based record number as __t.__openprofile_row
    columns: dict[str, tuple[str, TypeNode]]  # column → (SQL over __t, its shape)
    records: int | None = None  # when known without reading the rows


_TYPE_WORDS = {"OBJECT": "an object", "ARRAY": "an array", "VARCHAR": "a string", "BOOLEAN": "a boolean"}


class _Run:
    def __init__(self, inputs: list[tuple[str, Path]], fmt: str, cls: str | None,
                 dataset: Structure | None, out_dir: Path, rows_per_file: int, threads: int | None) -> None:
        self.inputs = inputs
        self.fmt = fmt
        self.cls = cls
        self.dataset = dataset
        self.out_dir = out_dir
        self.rows_per_file = rows_per_file
        self.written: list[Path] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="openprofile-ingest-"))
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"SET temp_directory = {_lit(str(self.tmp))}")
        self.con.execute("SET enable_progress_bar = false")
        if threads is not None:
            self.con.execute(f"SET threads = {int(threads)}")

    # ---- lifecycle

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def discard(self) -> None:
        for path in self.written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.written.clear()

    def run(self) -> IngestResult:
        if self.fmt == "json":
            records, structure, data_sql = self._json()
        else:
            sources = self._parquet_sources() if self.fmt == "parquet" else self._csv_sources()
            records, structure, data_sql = self._typed(sources)
        with self._translate("INVALID_DATA"):
            files = self._write(data_sql)
        written = sum(f.records for f in files)
        if written != records:
            raise IngestFailure("INVALID_DATA", f"Read {records} records but wrote {written}; nothing was ingested.")
        return IngestResult(records_read=records, records_written=written, files=files, structure=structure)

    # ---- errors

    def clean(self, text: str) -> str:
        """A DuckDB message fit for a client: no SQL excerpt, the uploaded file names, not the paths."""
        text = text.split("\n\nLINE ")[0].split("\nLINE ")[0]
        text = re.sub(r"^[A-Za-z ]+ Error: ", "", text.strip())
        text = text.replace("\n If this error occurred during read_json, line/object number information is "
                            "approximate", "")
        for name, path in self.inputs:
            text = text.replace(str(path), name)
        return text.strip()

    def _json_error(self, text: str) -> str:
        """DuckDB's malformed-JSON message, naming the uploaded file; DuckDB 2.0 numbers lines and records
        one too high (the first record is "record/value 2"), which is corrected here."""
        text = self.clean(text)
        found = re.match(r'Malformed JSON in file "(.*)", at byte (\d+) in (line|record/value) (\d+): (.*)$', text,
                         re.DOTALL)
        if found is None:
            return text
        name, byte, kind, number, reason = found.groups()
        what = "line" if kind == "line" else "record"
        return (f"Malformed JSON in file '{name}', {what} {max(int(number) - 1, 1)} (byte {byte} of that {what}): "
                f"{reason.strip()}")

    @contextlib.contextmanager
    def _translate(self, code: str, prefix: str = "") -> Iterator[None]:
        try:
            yield
        except duckdb.Error as exc:
            raise IngestFailure(code, prefix + self.clean(str(exc))) from None
        except pa.ArrowException as exc:
            raise IngestFailure(code, prefix + self.clean(str(exc))) from None

    def _merge(self, batch: Structure) -> Structure:
        try:
            return merge_structures(self.dataset, batch)
        except StructureConflict as exc:
            raise _conflict(str(exc)) from None

    # ---- record checks

    def _errors_sql(self, checks: _Checks, full: bool = True) -> tuple[list[str], str] | None:
        """(helper column definitions over a source row, an expression over them); None if no check applies.

        With `full`, the expression is the VARCHAR[] of the row's problems. Without, it is a cheaper BOOLEAN
        that is true for every row with a problem (and maybe a few more: ids starting with a blank or a
        non-ASCII character), used to count suspects on all threads before the failing rows are numbered and
        described (a suspect without a problem only costs that second pass)."""
        helpers: list[str] = []
        reasons: list[str] = []
        flags: list[str] = []
        for i, extra in enumerate(checks.extra):
            helpers.append(f"{extra} AS __extra{i}")
            reasons.append(f"__extra{i}")
            flags.append(f"__extra{i} IS NOT NULL")
        ee = self.cls == "experienceevent"
        if ee:
            if checks.id_sql is None:
                reasons.append(_lit(_NO_ID))
                flags.append("true")
            else:
                text = f"CAST({checks.id_sql} AS VARCHAR)"
                if full:
                    helpers.append(f"{_blank(text)} AS __no_id")
                else:
                    helpers.append(f"coalesce(ascii({text}) NOT BETWEEN 33 AND 126, true) AS __no_id")
                reasons.append(f"CASE WHEN __no_id THEN {_lit(_NO_ID)} END")
                flags.append("__no_id")
            if checks.timestamp_sql is None:
                reasons.append(_lit(_NO_TIMESTAMP))
                flags.append("true")
            else:
                helpers.append(f"{checks.timestamp_sql} IS NULL AS __no_ts")
                reasons.append(f"CASE WHEN __no_ts THEN {_lit(_NO_TIMESTAMP)} END")
                flags.append("__no_ts")
        for i, (label, texts) in enumerate(checks.timestamp_texts):
            helpers.append(
                f"list_filter({texts}, lambda __z: __z IS NOT NULL AND try_cast(__z AS TIMESTAMPTZ) IS NULL)[1]"
                f" AS __bad_ts{i}"
            )
            reasons.append(f"CASE WHEN __bad_ts{i} IS NOT NULL THEN {_lit(label + ' ')} || '''' || "
                           f"left(__bad_ts{i}, 80) || ''' is not an ISO 8601 date-time' END")
            flags.append(f"__bad_ts{i} IS NOT NULL")
        items_errors = None
        if self.cls is not None:
            who = "ExperienceEvent" if ee else "Profile"
            if checks.identity_sql is None:
                reasons.append(_lit(f"{who} record has no identity (it has no identityMap)"))
                flags.append("true")
            else:
                im = checks.identity_sql
                helpers.append(f"flatten(map_values({im})) AS __items")
                if full:
                    helpers.append(
                        f"flatten(list_transform(map_entries({im}), lambda __e: list_filter(list_transform("
                        f"__e.value, lambda __i, __n: CASE WHEN {_blank(_field('__i', 'id'))} "
                        f"THEN 'identityMap.' || __e.key || '[' || (__n - 1) || '] has no id' END), "
                        f"lambda __m: __m IS NOT NULL))) AS __item_errors"
                    )
                    items_errors = "coalesce(__item_errors, [])"
                reasons.append(
                    f"CASE WHEN coalesce(len(list_filter(__items, lambda __i: NOT {_blank(_field('__i', 'id'))})), 0)"
                    f" = 0 THEN {_lit(f'{who} record has no identity (no identityMap item with an id)')} END"
                )
                primaries = "len(list_filter(__items, lambda __i: coalesce(struct_extract(__i, 'primary'), false)))"
                reasons.append(f"CASE WHEN coalesce({primaries}, 0) > 1 THEN 'identityMap has ' || {primaries} || "
                               "' identities marked primary; at most one may be' END")
                # No item at all, or an item whose id is null or does not start with a printable ASCII character
                # (as an empty or blank one does), covers both "has no id" and "no identity".
                flags.append("coalesce(len(__items), 0) = 0 OR NOT coalesce(list_bool_and(list_transform(__items, "
                             "lambda __i: coalesce(ascii(struct_extract(__i, 'id')) BETWEEN 33 AND 126, false))), "
                             "false)")
                flags.append(f"coalesce({primaries}, 0) > 1")
                # Namespace codes follow Identity Service's format.
                helpers.append(f"list_filter(map_keys({im}), lambda __k: NOT regexp_full_match(__k, "
                               f"{_lit(_NAMESPACE)}))[1] AS __bad_ns")
                reasons.append("CASE WHEN __bad_ns IS NOT NULL THEN 'identityMap namespace ' || __bad_ns || "
                               f"{_lit(' is not a valid namespace code (a letter, then letters, digits, _ . -)')} END")
                flags.append("__bad_ns IS NOT NULL")
        if not reasons:
            return None
        if not full:
            return helpers, " OR ".join(f"({flag})" for flag in flags)
        errors = f"list_filter([{', '.join(reasons)}]::VARCHAR[], lambda __y: __y IS NOT NULL)"
        if items_errors is not None:
            errors = f"{items_errors} || {errors}"
        return helpers, errors

    def _row_errors(self, rows_sql: str, code: str) -> None:
        """Raise ROW_VALIDATION for the rows of `rows_sql` (columns __f, __r, __errs) that have problems."""
        sql = f"""
            SELECT __f, count(*), sum(len(__errs)), arg_min(struct_pack(r := __r, e := __errs), __r, {MAX_ROW_ERRORS})
            FROM ({rows_sql}) WHERE len(__errs) > 0 GROUP BY __f
        """
        with self._translate(code):
            groups = self.con.execute(sql).fetchall()
        bad = sum(g[1] for g in groups)
        if not bad:
            return
        total = sum(g[2] for g in groups)
        sample = sorted((f, int(s["r"]), list(s["e"])) for f, _, _, ss in groups for s in ss)
        found: list[RowError] = []
        for f, r, reasons in sample:
            for reason in reasons:
                if len(found) < MAX_ROW_ERRORS:
                    found.append(RowError(self.inputs[f][0], r, reason))
        first = found[0]
        raise IngestFailure(
            "ROW_VALIDATION",
            f"{bad} record{'s' if bad != 1 else ''} failed validation ({total} problem{'s' if total != 1 else ''})"
            f"; nothing was ingested. First: '{first.file}' record {first.row}: {first.reason}",
            found,
        )

    # ---- JSON

    def _load_json(self) -> None:
        """Copy every file's records, numbered, into the temporary table __raw(__f, __r, __j).

        Reading a JSON array, or numbering records, runs on one thread; the work on the records that follows
        then runs on all of them. DuckDB spills the table to its temporary directory when memory runs short."""
        parts = []
        for i, (_, path) in enumerate(self.inputs):
            call = (f"read_json_objects({_lit(str(path))}, format = '{_json_layout(path)}', "
                    f"maximum_object_size = {_MAX_JSON_OBJECT})")
            parts.append(f"SELECT {i} AS __f, __r, __j FROM {call} WITH ORDINALITY AS __t(__j, __r)")
        try:
            self.con.execute(f"CREATE TEMPORARY TABLE __raw AS {' UNION ALL '.join(parts)}")
        except duckdb.Error as exc:
            raise IngestFailure("MALFORMED_JSON", self._json_error(str(exc))) from None

    def _json(self) -> tuple[int, Structure, str]:
        check_type = json.dumps({k: to_duckdb_type(v) for k, v in _JSON_CHECK.items()})
        c = "__c"
        checks = _Checks(
            id_sql=_field(c, "_id"),
            timestamp_sql=_field(c, "timestamp"),
            timestamp_texts=tuple(
                (label, texts) for top, steps, label in _TIMESTAMP_LEAVES
                if (texts := _leaf_values(_field(c, top), _JSON_CHECK[top], _FIXED[top], steps)) is not None
            ),
            identity_sql=_field(c, "identityMap"),
        )
        built, flagged = self._errors_sql(checks), self._errors_sql(checks, full=False)
        assert built is not None and flagged is not None  # the timestamp checks always apply
        self._load_json()

        # Per record, the structure of its fields; records are grouped by it, so Python merges only the
        # distinct structures. segmentMembership's keys are segment ids (data), so it is taken out of the
        # record's structure and described by the JSON types at each key level and its values' structure.
        sm = _json_path([("key", "segmentMembership")])
        probes = [
            "json_structure(CASE WHEN __has_sm THEN json_merge_patch(__j, '{\"segmentMembership\": null}') "
            "ELSE __j END)",
            f"CASE WHEN __has_sm THEN [json_type(json_extract(__j, {_lit(sm)}))] END",
            f"CASE WHEN __has_sm THEN list_sort(list_distinct(list_transform(json_extract(__j, {_lit(sm + '.*')}), "
            "lambda __v: json_type(__v)))) END",
            f"CASE WHEN __has_sm THEN json_structure(to_json(json_extract(__j, {_lit(sm + '.*.*')}))) END",
        ]
        probe_columns = "".join(f", CASE WHEN __obj THEN {p} END AS __p{i}" for i, p in enumerate(probes))
        probe_names = ", ".join(f"__p{i}" for i in range(len(probes)))

        def rows(numbered: bool) -> str:
            """Numbered: __f, __r, __errs (the problems); else __f, __bad (maybe a problem) and the probes."""
            helpers, expr = built if numbered else flagged
            if numbered:
                out = f"__r, CASE WHEN __obj THEN {expr} ELSE ['record is not a JSON object'] END AS __errs"
            else:
                out = f"CASE WHEN __obj THEN {expr} ELSE true END AS __bad {probe_columns}"
            return f"""
                WITH __x AS (
                    SELECT __f, {"__r, " if numbered else ""}__j, json_type(__j) = 'OBJECT' AS __obj,
                           json_exists(__j, {_lit(sm)}) AS __has_sm,
                           json_transform(__j, {_lit(check_type)}) AS __c
                    FROM __raw
                ), __h AS (SELECT *{''.join(', ' + h for h in helpers)} FROM __x)
                SELECT __f, {out} FROM __h
            """

        sql = f"""
            SELECT __f, count(*), count(*) FILTER (WHERE __bad), {probe_names}
            FROM ({rows(False)}) GROUP BY __f, {probe_names}
        """
        try:
            groups = self.con.execute(sql).fetchall()
        except duckdb.Error as exc:
            raise IngestFailure("MALFORMED_JSON", self._json_error(str(exc))) from None

        counts = [0] * len(self.inputs)
        objects = 0
        doc: dict[str, Any] = {}
        sm_types: list[set[str]] = [set(), set()]
        sm_steps: tuple[_Step, ...] = (("key", "segmentMembership"), ("values", ""), ("values", ""))
        sm_values: Any = "NULL"
        suspects: set[tuple[_Step, ...]] = set()
        bad = 0
        for f, n, failed, record_doc, sm0, sm1, sm2 in groups:
            bad += failed
            counts[f] += n
            if record_doc is None:  # not an object
                continue
            objects += n
            parsed = json.loads(record_doc)
            if isinstance(parsed, dict):  # else {}, which json_structure calls "JSON"
                doc = _merge_doc(doc, parsed, (), suspects)
            if sm0 is not None:
                sm_types[0].update(t for t in sm0 if t is not None)
                sm_types[1].update(t for t in sm1 or () if t is not None)
                listed = json.loads(sm2)  # the structure of the list of all segment entries
                if isinstance(listed, list) and listed:
                    sm_values = _merge_doc(sm_values, listed[0], sm_steps, suspects)
        for (name, _), n in zip(self.inputs, counts, strict=True):
            if n == 0:
                raise IngestFailure("EMPTY_FILE", f"File '{name}' holds no records.")
        records = sum(counts)
        if not objects:
            self._row_errors(rows(True), "MALFORMED_JSON")

        # Conflicts (a field of two types in different records, or a map-keyed field that is not an
        # object), explained with the first record of each type; then the batch's structure.
        checks_needed: list[tuple[str, list[_Step]]] = [("suspect", list(path)) for path in sorted(suspects)]
        for level in range(2):
            if sm_types[level] - {"OBJECT", "NULL"}:
                checks_needed.append(("shape", list(sm_steps[:level + 1])))
        doc, sm_values = self._json_conflicts([([], doc), (list(sm_steps), sm_values)], checks_needed)
        inferred: dict[str, TypeNode | None] = {}
        for key, value in doc.items():
            if key == "identityMap" and isinstance(value, dict):
                node = {"map": _doc_to_node(_merge_map_values(value, 1, "identityMap"))}
            else:
                node = _doc_to_node(value)
            if node is not _DROP:
                inferred[key] = node
        if sm_types[0]:
            values_node = _doc_to_node(sm_values)
            inferred["segmentMembership"] = {"map": {"map": None if values_node is _DROP else values_node}}
        if not inferred:
            raise IngestFailure("EMPTY_FILE", "The batch's records have no fields.")
        batch = _conform_structure(inferred)
        merged = self._merge(batch)
        if bad:
            self._row_errors(rows(True), "MALFORMED_JSON")
        columns = [k for k in merged if k in batch]
        final_type = json.dumps({k: to_duckdb_type(merged[k]) for k in columns})
        select = ", ".join(f"{_field('__s', k)} AS {_q(k)}" for k in columns)
        data_sql = (f"SELECT {select} FROM (SELECT json_transform(__j, {_lit(final_type)}) AS __s "
                    "FROM __raw)")
        return records, merged, data_sql

    def _json_conflicts(self, roots: list[tuple[list[_Step], Any]],
                        checks: list[tuple[str, list[_Step]]]) -> list[Any]:
        """Explain, with the first record of each JSON type, the fields whose values differ in type between
        records: where json_structure says "JSON", where "JSON" was taken for ``{}`` (``suspect``), and the
        key levels of segmentMembership that are not objects (``shape``). Fields only ever ``{}`` become
        `_EMPTY`. Raises SCHEMA_CONFLICT; returns the roots' documents otherwise."""
        found = list(checks)

        def walk(node: Any, steps: list[_Step]) -> None:
            if node == "JSON":
                found.append(("json", steps))
            elif isinstance(node, list) and node:
                walk(node[0], [*steps, ("items", "")])
            elif isinstance(node, dict):
                for key, child in node.items():
                    walk(child, [*steps, ("key", key)])

        for steps, node in roots:
            walk(node, steps)
        if not found:
            return [node for _, node in roots]
        messages: list[str] = []
        benign: set[str] = set()
        for kind, steps in found[:20]:
            dotted = _dotted(steps)
            value = f"json_extract(__j, {_lit(_json_path(steps))})"
            if any(step != "key" for step, _ in steps):
                value = f"unnest({value})"
            sql = f"""
                SELECT __type, min(__f * {_FILE_SHIFT} + __r), bool_or(__nonempty) FROM (
                    SELECT __f, __r, json_type(__v) AS __type,
                           CASE WHEN json_type(__v) = 'OBJECT' THEN json_keys(__v) <> [] ELSE true END AS __nonempty
                    FROM (SELECT __f, __r, {value} AS __v FROM __raw WHERE json_type(__j) = 'OBJECT')
                    WHERE __v IS NOT NULL)
                WHERE __type <> 'NULL' GROUP BY __type
            """
            with self._translate("MALFORMED_JSON"):
                kinds = self.con.execute(sql).fetchall()
            words: dict[str, int] = {}
            nonempty = False
            for json_type, first, has in kinds:
                word = _TYPE_WORDS.get(json_type, "a number")
                words[word] = min(words.get(word, first), first)
                nonempty = nonempty or json_type != "OBJECT" or bool(has)
            if kind == "suspect" and set(words) <= {"an object"}:
                continue
            if kind == "json" and not nonempty:
                benign.add(json.dumps(steps))
                continue
            parts = [
                f"{word} (first in '{self.inputs[first // _FILE_SHIFT][0]}' record {first % _FILE_SHIFT})"
                for word, first in sorted(words.items(), key=lambda item: item[1])
            ]
            if kind == "shape":
                messages.append(f"field '{dotted}' holds {' and '.join(parts) or 'something else'} where an "
                                f"object is expected: {_HINTS[dotted]}")
            elif len(parts) > 1:
                messages.append(f"field '{dotted}' is " + " in some records and ".join(parts) + " in others")
            else:
                messages.append(f"field '{dotted}' has values of different types")
        if len(found) > 20 and messages:
            messages.append(f"and {len(found) - 20} more fields")
        if messages:
            raise _conflict("Fields have different types in different records of this batch: "
                            + "; ".join(messages) + ".")

        def clear(node: Any, steps: list[_Step]) -> Any:
            if node == "JSON" and json.dumps(steps) in benign:
                return _EMPTY
            if isinstance(node, list) and node:
                return [clear(node[0], [*steps, ("items", "")])]
            if isinstance(node, dict):
                return {k: clear(v, [*steps, ("key", k)]) for k, v in node.items()}
            return node

        return [clear(node, steps) for steps, node in roots]

    # ---- Parquet and CSV

    def _parquet_sources(self) -> list[_Source]:
        sources = []
        for i, (name, path) in enumerate(self.inputs):
            try:
                meta = pq.read_metadata(path)
                schema = meta.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as exc:
                raise IngestFailure("MALFORMED_PARQUET", f"File '{name}' is not a readable Parquet file: "
                                    f"{self.clean(str(exc))}") from None
            if meta.num_rows == 0:
                raise IngestFailure("EMPTY_FILE", f"File '{name}' holds no records.")
            try:
                shapes = from_arrow_schema(schema)
            except StructureConflict as exc:
                raise _conflict(f"File '{name}': {exc}.") from None
            scan = f"read_parquet({_lit(str(path))})"
            sources.append(_Source(
                index=i, name=name, scan=f"{scan} AS __t",
                numbered_scan=f"(SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS __openprofile_row "
                              f"FROM read_parquet({_lit(str(path))}, file_row_number = true)) AS __t",
                columns={k: (f"__t.{_q(k)}", v) for k, v in shapes.items()}, records=meta.num_rows,
            ))
        return sources

    def _csv_sources(self) -> list[_Source]:
        sources = []
        for i, (name, path) in enumerate(self.inputs):
            try:
                sniffed = self.con.execute(
                    f"SELECT Columns, Prompt FROM sniff_csv({_lit(str(path))}, {_CSV_DIALECT}, sample_size = -1, "
                    f"auto_type_candidates = {_CSV_TYPES})"
                ).fetchall()
            except duckdb.Error as exc:
                raise IngestFailure("MALFORMED_CSV", f"File '{name}' is not valid CSV: "
                                    + (self._csv_diagnosis(path) or self._csv_message(str(exc)))) from None
            columns_info, prompt = sniffed[0]
            call = prompt.strip()
            if not call.startswith("FROM read_csv(") or not call.endswith(");"):
                raise IngestFailure("MALFORMED_CSV", f"File '{name}': DuckDB could not work out its CSV dialect.")
            call = call[len("FROM "):-1]
            names = [str(c["name"]) for c in columns_info]
            types = [str(c["type"]) for c in columns_info]
            columns = self._csv_columns(name, names, types)
            aliases = ", ".join(_q(f"__c{j}") for j in range(len(names)))
            renamed = ", ".join(f"{_q(f'__c{j}')} AS {_q(n)}" for j, n in enumerate(names))
            try:
                self.con.execute(f"CREATE TEMPORARY TABLE __csv{i} AS SELECT {renamed}, __openprofile_row FROM "
                                 f"{call} WITH ORDINALITY AS __u({aliases}, __openprofile_row)")
            except duckdb.Error as exc:
                raise IngestFailure("MALFORMED_CSV",
                                    f"File '{name}' is not valid CSV: {self._csv_message(str(exc))}") from None
            sources.append(_Source(
                index=i, name=name, scan=f"__csv{i} AS __t",
                numbered_scan=f"__csv{i} AS __t",
                columns=columns,
            ))
        return sources

    def _csv_message(self, text: str) -> str:
        """DuckDB's CSV error without its advice on reader options (which a client cannot set)."""
        kept = []
        for line in self.clean(text).splitlines():
            if line.startswith(("Possible fixes", "Possible Solution", "* ", "  file = ")):
                break
            if line.strip():
                kept.append(line.strip())
        return "; ".join(kept)

    def _csv_diagnosis(self, path: Path) -> str | None:
        """Where a CSV file that DuckDB cannot sniff goes wrong: read as text with the header's column count."""
        try:
            with path.open(newline="", encoding="utf-8", errors="replace") as handle:
                header = next(csv.reader(handle), None)  # the first record only
        except (OSError, csv.Error):
            return None
        if not header:
            return "the file has no header row"
        columns = ", ".join(f"'c{j}': 'VARCHAR'" for j in range(len(header)))
        try:
            self.con.execute(f"SELECT count(*) FROM read_csv({_lit(str(path))}, {_CSV_DIALECT}, auto_detect = false, "
                             f"strict_mode = true, columns = {{{columns}}})").fetchall()
        except duckdb.Error as exc:
            return self._csv_message(str(exc))
        return None

    def _csv_columns(self, file: str, names: list[str], types: list[str]) -> dict[str, tuple[str, TypeNode]]:
        """Nest dotted headers into structs; parse the JSON columns of the known XDM maps."""
        tree: dict[str, Any] = {}
        for name, duck in zip(names, types, strict=True):
            parts = name.split(".")
            if any(not p for p in parts):
                raise _conflict(f"File '{file}': header '{name}' has an empty field name.")
            node = tree
            for depth, part in enumerate(parts):
                last = depth == len(parts) - 1
                existing = node.get(part)
                if last:
                    if existing is not None:
                        raise _conflict(f"File '{file}': header '{name}' is both a field and a group of fields.")
                    node[part] = (name, duck)
                else:
                    if existing is None:
                        existing = node[part] = {}
                    if not isinstance(existing, dict):
                        raise _conflict(f"File '{file}': header '{'.'.join(parts[:depth + 1])}' is both a field "
                                        "and a group of fields.")
                    node = existing

        def build(node: Any, top: bool) -> tuple[str, TypeNode]:
            if isinstance(node, tuple):
                column, duck = node
                ref = f"__t.{_q(column)}"
                if top and column in _CSV_JSON_COLUMNS and duck == "VARCHAR":
                    shape = _CSV_JSON_COLUMNS[column]
                    return (f"json_transform(CASE WHEN json_valid({ref}) THEN CASE WHEN json_type({ref}) = "
                            f"'OBJECT' THEN {ref} END END, {_lit(json.dumps(to_duckdb_type(shape)))})", shape)
                return ref, _scalar_from_duckdb(duck)
            built = {k: build(v, False) for k, v in node.items()}
            leaves = _csv_leaf_refs(node)
            pack = ", ".join(f"{_q(k)} := {sql}" for k, (sql, _) in built.items())
            all_null = " AND ".join(f"{ref} IS NULL" for ref in leaves)
            return (f"CASE WHEN {all_null} THEN NULL ELSE struct_pack({pack}) END",
                    {"struct": {k: shape for k, (_, shape) in built.items()}})

        return {k: build(v, True) for k, v in tree.items()}

    def _csv_extra_checks(self, source: _Source) -> tuple[str, ...]:
        extra = []
        for column in _CSV_JSON_COLUMNS:
            if column in source.columns and source.columns[column][0].startswith("json_transform("):
                ref = f"__t.{_q(column)}"
                extra.append(
                    f"CASE WHEN {ref} IS NOT NULL AND trim({ref}) <> '' AND NOT coalesce(CASE WHEN json_valid({ref}) "
                    f"THEN json_type({ref}) = 'OBJECT' END, false) THEN {_lit(column + ' is not a JSON object')} END"
                )
        return tuple(extra)

    def _typed(self, sources: list[_Source]) -> tuple[int, Structure, str]:
        """Check and plan the write of typed sources (Parquet, CSV)."""
        batch: Structure | None = None
        finals: list[Structure] = []
        for source in sources:
            final = _conform_structure({k: shape for k, (_, shape) in source.columns.items()})
            finals.append(final)
            try:
                batch = merge_structures(batch, final)
            except StructureConflict as exc:
                raise _conflict(f"field '{exc.path}' is {exc.incoming} in file '{source.name}' but {exc.existing} "
                                "in an earlier file of this batch.") from None
        assert batch is not None
        merged = self._merge(batch)
        columns = [k for k in merged if k in batch]

        # Record checks (and, for CSV, the record counts): counted first on all threads; the failing
        # records are numbered only if there are any.
        def rows(numbered: bool) -> str:
            parts: list[str] = []
            for source, final in zip(sources, finals, strict=True):
                built = self._errors_sql(self._typed_checks(source, final), full=numbered)
                if built is None and self.fmt == "parquet":
                    continue
                helpers, expr = built if built is not None else ([], "[]::VARCHAR[]" if numbered else "false")
                scan = source.numbered_scan if numbered else source.scan
                r = "__t.__openprofile_row AS __r, " if numbered else ""
                inner = f"SELECT {r}true AS __any{''.join(', ' + h for h in helpers)} FROM {scan}"
                out = f"__r, {expr} AS __errs" if numbered else f"{expr} AS __bad"
                parts.append(f"SELECT {source.index} AS __f, {out} FROM ({inner})")
            return " UNION ALL ".join(parts)

        counts: dict[int, int] = {}
        code = "MALFORMED_CSV" if self.fmt == "csv" else "INVALID_DATA"
        if rows(False):
            with self._translate(code):
                groups = self.con.execute(
                    f"SELECT __f, count(*), count(*) FILTER (WHERE __bad) FROM ({rows(False)}) GROUP BY __f"
                ).fetchall()
            counts = {int(g[0]): int(g[1]) for g in groups}
            if self.fmt == "csv":
                for source in sources:
                    if counts.get(source.index, 0) == 0:
                        raise IngestFailure("EMPTY_FILE", f"File '{source.name}' holds no records.")
            if any(g[2] for g in groups):
                self._row_errors(rows(True), code)
        records = sum(s.records or 0 for s in sources) if self.fmt == "parquet" else sum(counts.values())

        selects = []
        for source in sources:
            exprs = []
            for column in columns:
                if column in source.columns:
                    sql, shape = source.columns[column]
                    exprs.append(f"{_coerce(sql, shape, merged[column])} AS {_q(column)}")
                else:
                    exprs.append(f"CAST(NULL AS {to_duckdb_type(merged[column])}) AS {_q(column)}")
            selects.append(f"SELECT {', '.join(exprs)} FROM {source.scan}")
        return records, merged, " UNION ALL ".join(selects)

    def _typed_checks(self, source: _Source, final: Structure) -> _Checks:
        cols = source.columns
        texts = []
        for top, steps, label in _TIMESTAMP_LEAVES:
            if top in cols:
                sql, shape = cols[top]
                found = _leaf_values(sql, shape, final[top], steps)
                if found is not None:
                    texts.append((label, found))
        identity = None
        if "identityMap" in cols:
            sql, shape = cols["identityMap"]
            identity = _coerce(sql, shape, final["identityMap"])
        return _Checks(
            id_sql=cols["_id"][0] if "_id" in cols else None,
            timestamp_sql=cols["timestamp"][0] if "timestamp" in cols else None,
            timestamp_texts=tuple(texts),
            identity_sql=identity,
            extra=self._csv_extra_checks(source) if self.fmt == "csv" else (),
        )

    # ---- writing

    def _write(self, sql: str) -> list[WrittenFile]:
        files: list[WrittenFile] = []
        writer: pq.ParquetWriter | None = None
        path: Path | None = None
        in_file = 0
        reader = self.con.sql(sql).to_arrow_reader(_BATCH_ROWS)
        try:
            for batch in reader:
                offset = 0
                while offset < batch.num_rows:
                    if writer is None:
                        path = self.out_dir / f"part-{len(files):05d}.parquet"
                        self.written.append(path)
                        writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
                        in_file = 0
                    take = min(batch.num_rows - offset, self.rows_per_file - in_file)
                    writer.write_batch(batch.slice(offset, take), row_group_size=ROW_GROUP_ROWS)
                    offset += take
                    in_file += take
                    if in_file == self.rows_per_file:
                        writer.close()
                        writer = None
                        assert path is not None
                        files.append(WrittenFile(path.name, path.stat().st_size, in_file))
            if writer is not None:
                writer.close()
                writer = None
                assert path is not None
                files.append(WrittenFile(path.name, path.stat().st_size, in_file))
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            with contextlib.suppress(Exception):
                reader.close()
        return files


def _json_layout(path: Path) -> str:
    """``array`` if the file's first non-blank character is ``[`` (DuckDB reads it faster told so), else ``auto``
    (newline-delimited or concatenated objects)."""
    with path.open("rb") as handle:
        while chunk := handle.read(4096):
            text = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
            if text:
                return "array" if text.startswith(b"[") else "auto"
    return "auto"


def _csv_leaf_refs(node: dict[str, Any]) -> list[str]:
    refs: list[str] = []
    for child in node.values():
        if isinstance(child, tuple):
            refs.append(f"__t.{_q(child[0])}")
        else:
            refs.extend(_csv_leaf_refs(child))
    return refs


def _scalar_from_duckdb(duck: str) -> str:
    name = duck.upper()
    if name in _INTEGER_DOC_TYPES or name in ("UINTEGER", "USMALLINT", "UTINYINT"):
        return "BIGINT"
    if name in ("DOUBLE", "FLOAT", "REAL") or name.startswith("DECIMAL"):
        return "DOUBLE"
    if name in ("BOOLEAN", "DATE"):
        return name
    if name.startswith("TIMESTAMP"):
        return "TIMESTAMPTZ"
    return "VARCHAR"
