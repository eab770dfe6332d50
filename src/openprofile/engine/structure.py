"""A dataset's storage structure: the columns of its Parquet files, as plain JSON.

The catalog keeps one `Structure` per dataset and merges every successful batch's structure into it
(`merge_structures`), so it always describes every column any batch of the dataset has written.

A `Structure` maps top-level column names (in insertion order) to type nodes. A type node is one of:

- a scalar type name: ``"VARCHAR"``, ``"BIGINT"``, ``"DOUBLE"``, ``"BOOLEAN"``, ``"DATE"``, ``"TIMESTAMPTZ"``;
- ``{"struct": {field: node, ...}}`` (fields in order; never empty);
- ``{"list": node}``;
- ``{"map": node}`` (keys are always VARCHAR).

It is what the engine writes (`to_duckdb_type`, `to_arrow_type`), what it reads back from Parquet
(`from_arrow_schema`), what the catalog shows as a dataset's ``observableSchema`` (`to_observable_schema`)
and what ``fields`` projections are checked against (`field_paths`).

Paths in messages and in `field_paths` are dotted field names: list items and map values add no step of
their own (``productListItems.SKU``, ``identityMap.id``), as in AEP's ``fields`` parameters.

Field names are case-sensitive in a structure, but two fields of one struct (or two columns) that differ
only in letter case are a conflict: DuckDB, Spark and most Parquet readers resolve names without case.
"""

from __future__ import annotations

import copy
from typing import Any, TypeAlias

import pyarrow as pa

__all__ = [
    "SCALAR_TYPES",
    "Structure",
    "StructureConflict",
    "TypeNode",
    "check_structure",
    "describe",
    "field_paths",
    "from_arrow_schema",
    "from_arrow_type",
    "merge_nodes",
    "merge_structures",
    "quote_identifier",
    "to_arrow_schema",
    "to_arrow_type",
    "to_duckdb_type",
    "to_observable_schema",
]

TypeNode: TypeAlias = str | dict[str, Any]
"""A scalar type name, or ``{"struct": {...}}``, ``{"list": node}``, ``{"map": node}``."""

Structure: TypeAlias = dict[str, TypeNode]
"""Top-level column name → type node, in column order."""

SCALAR_TYPES: frozenset[str] = frozenset({"VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "DATE", "TIMESTAMPTZ"})

_NUMERIC = frozenset({"BIGINT", "DOUBLE"})


class StructureConflict(Exception):
    """A field has two types that cannot be reconciled (merging adds fields and widens BIGINT to DOUBLE only).

    `path` is the dotted field path, `existing` and `incoming` the two types as `describe` writes them.
    """

    def __init__(self, path: str, existing: str, incoming: str, message: str | None = None) -> None:
        self.path = path
        self.existing = existing
        self.incoming = incoming
        self.message = message or (
            f"field '{path}' is {existing} in the dataset but {incoming} in this batch"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------------
# Shape checks and small helpers


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(node: object, path: str = "") -> str:
    """``"scalar"``, ``"struct"``, ``"list"`` or ``"map"``; ValueError for anything else."""
    if isinstance(node, str):
        if node not in SCALAR_TYPES:
            raise ValueError(f"field '{path}': unknown scalar type {node!r}")
        return "scalar"
    if isinstance(node, dict) and len(node) == 1:
        (key, value), = node.items()
        if key == "struct":
            if not isinstance(value, dict) or not value:
                raise ValueError(f"field '{path}': a struct needs a non-empty object of fields")
            return "struct"
        if key in ("list", "map"):
            return str(key)
    raise ValueError(f"field '{path}': not a type node: {node!r}")


def check_structure(structure: object) -> Structure:
    """`structure` itself if it is a well-formed `Structure` (e.g. read back from the catalog); ValueError if not."""
    if not isinstance(structure, dict):
        raise ValueError("a structure is an object of column name → type node")
    _check_fields(structure, "")
    return structure


def _check_fields(fields: dict[Any, Any], path: str) -> None:
    seen: dict[str, str] = {}
    for name, node in fields.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"field names must be non-empty strings (under '{path or '<root>'}')")
        sub = _join(path, name)
        folded = name.casefold()
        if folded in seen:
            raise ValueError(f"fields '{_join(path, seen[folded])}' and '{sub}' differ only in letter case")
        seen[folded] = name
        _check_node(node, sub)


def _check_node(node: object, path: str) -> None:
    kind = _kind(node, path)
    if kind == "struct":
        assert isinstance(node, dict)
        _check_fields(node["struct"], path)
    elif kind in ("list", "map"):
        assert isinstance(node, dict)
        _check_node(node[kind], path)


def describe(node: TypeNode) -> str:
    """A short name of a node's type for messages: ``BIGINT``, ``STRUCT``, ``LIST<VARCHAR>``, ``MAP<...>``."""
    kind = _kind(node)
    if kind == "scalar":
        assert isinstance(node, str)
        return node
    assert isinstance(node, dict)
    if kind == "struct":
        return "STRUCT"
    return f"{kind.upper()}<{describe(node[kind])}>"


# --------------------------------------------------------------------------------------------------
# Merging


def merge_structures(current: Structure | None, incoming: Structure) -> Structure:
    """The structure of a dataset after a batch of structure `incoming` is added to it.

    New columns and new struct fields are added (after the existing ones, recursively); BIGINT and DOUBLE
    widen to DOUBLE; any other difference raises `StructureConflict`. Neither argument is modified.
    """
    if current is None:
        check_structure(incoming)
        return copy.deepcopy(incoming)
    return _merge_fields(current, incoming, "")


def merge_nodes(existing: TypeNode, incoming: TypeNode, path: str = "") -> TypeNode:
    """The merge of two type nodes at `path` (see `merge_structures`)."""
    kind_a, kind_b = _kind(existing, path), _kind(incoming, path)
    if kind_a == "scalar" and kind_b == "scalar":
        if existing == incoming:
            return existing
        if existing in _NUMERIC and incoming in _NUMERIC:
            return "DOUBLE"
    elif kind_a == kind_b:
        assert isinstance(existing, dict) and isinstance(incoming, dict)
        if kind_a == "struct":
            return {"struct": _merge_fields(existing["struct"], incoming["struct"], path)}
        return {kind_a: merge_nodes(existing[kind_a], incoming[kind_a], path)}
    raise StructureConflict(path, describe(existing), describe(incoming))


def _merge_fields(existing: dict[str, TypeNode], incoming: dict[str, TypeNode], path: str) -> dict[str, TypeNode]:
    merged: dict[str, TypeNode] = {}
    folded: dict[str, str] = {}
    for name, node in existing.items():
        _kind(node, _join(path, name))
        merged[name] = copy.deepcopy(node)
        folded[name.casefold()] = name
    for name, node in incoming.items():
        sub = _join(path, name)
        if name in merged:
            merged[name] = merge_nodes(merged[name], node, sub)
            continue
        other = folded.get(name.casefold())
        if other is not None:
            raise StructureConflict(
                sub, _join(path, other), sub,
                f"field '{sub}' differs only in letter case from field '{_join(path, other)}'"
                + (" in the dataset" if other in existing else " in this batch"),
            )
        _check_node(node, sub)
        merged[name] = copy.deepcopy(node)
        folded[name.casefold()] = name
    return merged


# --------------------------------------------------------------------------------------------------
# DuckDB and Arrow types


def quote_identifier(name: str) -> str:
    """`name` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def to_duckdb_type(node: TypeNode) -> str:
    """The DuckDB type of a node, e.g. ``STRUCT("id" VARCHAR, "primary" BOOLEAN)[]`` or ``MAP(VARCHAR, BIGINT)``."""
    kind = _kind(node)
    if kind == "scalar":
        assert isinstance(node, str)
        return node
    assert isinstance(node, dict)
    if kind == "struct":
        fields = ", ".join(f"{quote_identifier(k)} {to_duckdb_type(v)}" for k, v in node["struct"].items())
        return f"STRUCT({fields})"
    if kind == "list":
        return f"{to_duckdb_type(node['list'])}[]"
    return f"MAP(VARCHAR, {to_duckdb_type(node['map'])})"


_ARROW_SCALARS: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.date32(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
}


def to_arrow_type(node: TypeNode) -> pa.DataType:
    """The Arrow type the engine writes for a node (timestamps are ``timestamp[us, tz=UTC]``)."""
    kind = _kind(node)
    if kind == "scalar":
        assert isinstance(node, str)
        return _ARROW_SCALARS[node]
    assert isinstance(node, dict)
    if kind == "struct":
        return pa.struct([pa.field(k, to_arrow_type(v)) for k, v in node["struct"].items()])
    if kind == "list":
        return pa.list_(to_arrow_type(node["list"]))
    return pa.map_(pa.string(), to_arrow_type(node["map"]))


def to_arrow_schema(structure: Structure) -> pa.Schema:
    """The Arrow schema of a structure (every field nullable)."""
    return pa.schema([pa.field(k, to_arrow_type(v)) for k, v in structure.items()])


def from_arrow_type(data_type: pa.DataType, path: str = "") -> TypeNode:
    """The node of an Arrow type: integers → BIGINT, floats and decimals → DOUBLE, strings → VARCHAR, bool,
    date32/date64 → DATE, any timestamp → TIMESTAMPTZ, struct, list/large_list/fixed_size_list, map<string, X>.

    Dictionary types are read as their values and an all-null column as VARCHAR. Anything else (binary,
    time, duration, unions, maps with non-string keys, structs without fields) raises `StructureConflict`
    naming `path`.
    """
    t = data_type
    if pa.types.is_dictionary(t):
        return from_arrow_type(t.value_type, path)
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "DOUBLE"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t):
        return "VARCHAR"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            raise StructureConflict(path, "", "STRUCT", f"field '{path}' is a struct without fields")
        fields: dict[str, TypeNode] = {}
        folded: dict[str, str] = {}
        for i in range(t.num_fields):
            child = t.field(i)
            sub = _join(path, child.name)
            if not child.name or child.name.casefold() in folded:
                raise StructureConflict(sub, "", "", f"field '{sub}' is empty or repeats another field's name")
            folded[child.name.casefold()] = child.name
            fields[child.name] = from_arrow_type(child.type, sub)
        return {"struct": fields}
    if pa.types.is_map(t):
        key = t.key_type
        if pa.types.is_dictionary(key):
            key = key.value_type
        if not (pa.types.is_string(key) or pa.types.is_large_string(key) or pa.types.is_string_view(key)):
            raise StructureConflict(path, "MAP<VARCHAR, ...>", str(t),
                                    f"field '{path}' is a map with {key} keys; only string keys are supported")
        return {"map": from_arrow_type(t.item_type, path)}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t):
        return {"list": from_arrow_type(t.value_type, path)}
    raise StructureConflict(path, "", str(t), f"field '{path}' has the unsupported Arrow type {t}")


def from_arrow_schema(schema: pa.Schema) -> Structure:
    """The structure of an Arrow schema (see `from_arrow_type`)."""
    structure: Structure = {}
    folded: dict[str, str] = {}
    for field in schema:
        if not field.name or field.name.casefold() in folded:
            raise StructureConflict(field.name, "", "",
                                    f"column '{field.name}' is empty or repeats another column's name")
        folded[field.name.casefold()] = field.name
        structure[field.name] = from_arrow_type(field.type, field.name)
    return structure


# --------------------------------------------------------------------------------------------------
# AEP views


_OBSERVABLE_SCALARS: dict[str, dict[str, Any]] = {
    "VARCHAR": {"type": "string"},
    "BIGINT": {"type": "integer", "meta:xdmType": "long"},
    "DOUBLE": {"type": "number"},
    "BOOLEAN": {"type": "boolean"},
    "DATE": {"type": "string", "format": "date"},
    "TIMESTAMPTZ": {"type": "string", "format": "date-time"},
}


def _observable(node: TypeNode) -> dict[str, Any]:
    kind = _kind(node)
    if kind == "scalar":
        assert isinstance(node, str)
        return dict(_OBSERVABLE_SCALARS[node])
    assert isinstance(node, dict)
    if kind == "struct":
        return {
            "type": "object",
            "meta:xdmType": "object",
            "properties": {k: _observable(v) for k, v in node["struct"].items()},
        }
    if kind == "list":
        return {"type": "array", "items": _observable(node["list"])}
    return {"type": "object", "meta:xdmType": "map", "additionalProperties": _observable(node["map"])}


def to_observable_schema(structure: Structure) -> dict[str, Any]:
    """AEP's ``observableSchema`` JSON of a dataset with this structure."""
    return {
        "type": "object",
        "meta:xdmType": "object",
        "properties": {k: _observable(v) for k, v in structure.items()},
    }


def field_paths(structure: Structure) -> list[str]:
    """Every dotted path of the structure, parents before their children.

    Struct fields add a step; list items and map values add none (their own sub-paths follow the list's or
    the map's path directly, map keys never appear): ``identityMap``, ``identityMap.id``, ...
    """
    paths: list[str] = []
    for name, node in structure.items():
        paths.append(name)
        _sub_paths(node, name, paths)
    return paths


def _sub_paths(node: TypeNode, path: str, out: list[str]) -> None:
    kind = _kind(node, path)
    if kind == "scalar":
        return
    assert isinstance(node, dict)
    if kind == "struct":
        for name, child in node["struct"].items():
            sub = _join(path, name)
            out.append(sub)
            _sub_paths(child, sub, out)
    else:
        _sub_paths(node[kind], path, out)
