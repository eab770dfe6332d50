"""The profile merge: a group's record fragments → one merged profile, compiled to one SQL query (DuckDB).

The profile store keeps, for each profile-enabled record dataset, the dataset's *current fragments*: one row
per (dataset, primary identity), the newest record for that key already chosen. It hands them to `merge_sql`
as `FragmentSource`s — a SQL FROM-item per dataset with the dataset's `Structure` — each relation having the
record columns plus four system columns:

- ``_group VARCHAR``: the key of the merged profile the fragment belongs to (a cluster id under identity
  stitching, the primary identity's own key without it). Fragments with a NULL ``_group`` are ignored;
- ``_dataset VARCHAR``: the dataset id;
- ``_ingest_ms BIGINT``: when the record was ingested (epoch milliseconds);
- ``_batch VARCHAR``: the batch id.

`merge_sql` returns one SELECT that yields one row per ``_group`` having at least one merged fragment (row
order unspecified). Python only generates SQL text from the structures; the data never passes through it.
The same plan serves a lookup (``where="_group = '...'"``) and a whole export (no `where`): `where` is a SQL
boolean over a relation's columns, applied to every source's fragments *before* merging. It is pasted into
the SQL as it is (trusted text, never client input) and must be valid for every source relation.

The SQL is DuckDB's dialect (``struct_extract``, ``map_entries``, ``arg_max`` over a HUGEINT key, ``lambda``
list functions); running the plan on another engine means translating these functions.

Output columns
--------------
- ``_group``;
- every top-level column of `merged_structure(sources)` (the union of the sources' structures, without the
  reserved names below), typed exactly as that structure says (``to_duckdb_type``), nested as structs;
- ``identities``: ``STRUCT(id VARCHAR, namespace STRUCT(code VARCHAR), "primary" BOOLEAN)[]`` — every
  distinct (namespace, id) of the merged fragments' ``identityMap`` items, namespace codes lower-cased,
  ``primary`` true when any fragment marks that identity primary (else false), ordered by namespace code then
  id; ``[]`` when there is none;
- ``_sources``: the sorted distinct dataset ids of the merged fragments;
- ``_tags``: the sorted distinct batch ids of the merged fragments;
- ``_last_modified_ms``: the greatest ``_ingest_ms`` of the merged fragments.

`profile_structure` is the `Structure` of the record-shaped output columns (the merged structure plus
``identities``), e.g. for checking and projecting ``fields`` on merged rows.

Which fragments are merged
--------------------------
``timestampOrdered`` merges the fragments of every source. ``dataSetPrecedence`` merges only sources whose
dataset is listed in `MergeRule.order`; any other source contributes nothing at all — no values, no
identities, no ``_sources``/``_tags`` entry, nothing to ``_last_modified_ms`` — although its columns are
still in the output (as NULL unless a listed dataset has them), since rows are in union-structure shape.

How values are chosen
---------------------
A *leaf* is a scalar or a list reached from a top-level column through struct fields only. Lists are atomic:
a list is one value (the winner's whole list). For each group and each leaf, the value comes from the
*winning* fragment among the group's fragments whose value there is not NULL (an empty list or an empty
string is a value; only NULL means "has none" — AEP refuses null and empty values at ingestion anyway).

The winner is the fragment with the greatest precedence key, compared left to right:

1. ``dataSetPrecedence`` only: the dataset's position in `order` (earlier wins);
2. the *effective time*: ``extSourceSystemAudit.lastUpdatedDate`` of that fragment when it is not NULL
   (TIMESTAMPTZ, or DATE read as midnight UTC), else its ``_ingest_ms`` (later wins);
3. ``_ingest_ms`` (later wins);
4. ``_dataset`` (the greater id, in byte order, wins);
5. ``_batch`` (the greater id wins);
6. a hash of the fragment's record columns (DuckDB's ``hash()``; the greater wins). Two fragments that tie on
   1 to 5 (two primary identities of one dataset, ingested in one batch, stitched into one group) are still
   ordered the same way on every run, whatever the row order of the relations; only fragments whose hashes
   collide *and* which tie on everything else (probability about 2^-64 per pair) are ordered arbitrarily.

Between fragments of different datasets under ``timestampOrdered`` step 2 decides unless their times are
equal; under ``dataSetPrecedence`` step 1 does, and steps 2 to 6 order two fragments of the same dataset. NULL
``_dataset``/``_batch`` compare as ``''`` and a NULL ``_ingest_ms`` as 0.

``extSourceSystemAudit.lastUpdatedDate`` is an ordinary leaf as well: it ends up as the winner's value.

Structs are rebuilt from their merged leaves; a struct all of whose fields are NULL in the result is NULL
(not a struct of NULLs), and so is a top-level column no merged fragment has.

Maps merge key by key: for each key, the value of the winning fragment (same precedence as leaves) among the
fragments whose value for that key is not NULL. When the values are maps themselves (``segmentMembership``:
namespace → segment id → ``{status, lastQualificationTime}``) the merge recurses, per key path (namespace,
segment id); any other value (a struct, a list) is atomic per key. Keys come out sorted; an empty map
contributes nothing and a merged map without entries is NULL.

``identityMap`` (a top-level map of lists of structs having an ``id`` field) is the *union* of all merged
fragments' maps instead: per namespace key (keys kept as written, case-sensitive), the distinct items
deduplicated on ``id``, ordered by ``id``. Items whose ``id`` is NULL or empty are dropped. A merged item's
``primary`` is true when any fragment's item says true (false when some say false and none true, NULL when
none says anything); every other field (``authenticatedState``) comes from the winning fragment, by the
precedence above, among the fragments whose item has that field non-NULL. ``identities`` is derived from
this union with namespaces lower-cased (``Email`` and ``email`` are one namespace there).

Reserved names: ``_group``, ``_dataset``, ``_ingest_ms``, ``_batch``, ``identities``, ``_sources``, ``_tags``
and ``_last_modified_ms`` are system columns. A record column of one of these names (e.g. XDM's deprecated
``identities`` array) is left out of `merged_structure` and out of the merge.

Types: a column or field whose type differs between sources is cast to the merged type (BIGINT widens to
DOUBLE; structs gain the other sources' fields as NULL); structures that cannot be merged raise
`StructureConflict` from `merged_structure` and `merge_sql`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from openprofile.engine.structure import (
    Structure,
    TypeNode,
    merge_structures,
    quote_identifier,
    to_duckdb_type,
)

__all__ = [
    "ATTRIBUTE_MERGE_TYPES",
    "IDENTITIES",
    "RESERVED_COLUMNS",
    "SYSTEM_OUTPUT_COLUMNS",
    "FragmentSource",
    "MergeRule",
    "Slot",
    "fragment_rows_sql",
    "merge_slots",
    "merge_sql",
    "merged_structure",
    "profile_structure",
]

ATTRIBUTE_MERGE_TYPES = ("timestampOrdered", "dataSetPrecedence")

IDENTITIES: TypeNode = {
    "list": {"struct": {"id": "VARCHAR", "namespace": {"struct": {"code": "VARCHAR"}}, "primary": "BOOLEAN"}}
}
"""The type of the ``identities`` output column."""

SYSTEM_OUTPUT_COLUMNS: dict[str, str] = {
    "_sources": "VARCHAR[]",
    "_tags": "VARCHAR[]",
    "_last_modified_ms": "BIGINT",
}
"""The system columns after the record columns and ``identities`` (``_group VARCHAR`` comes first)."""

RESERVED_COLUMNS: frozenset[str] = frozenset(
    {"_group", "_dataset", "_ingest_ms", "_batch", "identities", *SYSTEM_OUTPUT_COLUMNS}
)

_IDENTITY_MAP = "identityMap"
_AUDIT = "extSourceSystemAudit"
_LAST_UPDATED = "lastUpdatedDate"


@dataclass(frozen=True)
class FragmentSource:
    """One record dataset's current fragments: `relation` is a SQL FROM-item (a table or view name, or e.g.
    ``read_parquet(['a.parquet'])``) with the record columns of `structure` plus the four system columns."""

    dataset_id: str
    relation: str
    structure: Structure = field(hash=False)
    keyed: bool = False
    """The relation also has ``__kt`` and ``__kh`` (`precedence_keys_sql`), computed when the store wrote it."""


@dataclass(frozen=True)
class MergeRule:
    """A merge policy's ``attributeMerge``: ``timestampOrdered``, or ``dataSetPrecedence`` with `order`
    (dataset ids, highest priority first; datasets not listed are not merged)."""

    attribute_merge: str
    order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", tuple(self.order))  # a list is accepted too
        if self.attribute_merge not in ATTRIBUTE_MERGE_TYPES:
            raise ValueError(f"unknown attributeMerge type {self.attribute_merge!r}")

    def includes(self, dataset_id: str) -> bool:
        """Whether fragments of `dataset_id` are merged under this rule."""
        return self.attribute_merge == "timestampOrdered" or dataset_id in self.order


def merged_structure(sources: list[FragmentSource]) -> Structure:
    """The union of the sources' structures (`merge_structures`, in source order), without reserved columns."""
    merged: Structure | None = None
    for source in sources:
        merged = merge_structures(merged, _record_columns(source.structure))
    return merged if merged is not None else {}


def profile_structure(sources: list[FragmentSource]) -> Structure:
    """The structure of a merged row's record-shaped columns: `merged_structure` plus ``identities``."""
    structure = merged_structure(sources)
    structure["identities"] = IDENTITIES
    return structure


def _record_columns(structure: Structure) -> Structure:
    return {k: v for k, v in structure.items() if k not in RESERVED_COLUMNS}


# --------------------------------------------------------------------------------------------------
# The plan: the merged structure cut into slots, each merged on its own


@dataclass(frozen=True)
class Slot:
    """A part of the merged structure merged as a unit: a leaf, a map (with `depth` levels of nested map
    keys merged per key path) or the identity map."""

    kind: Literal["leaf", "map", "identityMap"]
    path: tuple[str, ...]
    node: TypeNode
    alias: str
    depth: int = 0


def merge_slots(structure: Structure) -> list[Slot]:
    """The merged structure's slots, in `merge_sql`'s order, with its column aliases."""
    return list(_slots(structure))


def _is_identity_map(name: str, node: TypeNode) -> bool:
    if name != _IDENTITY_MAP or not isinstance(node, dict) or "map" not in node:
        return False
    items = node["map"]
    if not isinstance(items, dict) or "list" not in items:
        return False
    item = items["list"]
    return isinstance(item, dict) and "struct" in item and item["struct"].get("id") == "VARCHAR"


def _slots(structure: Structure) -> Iterator[Slot]:
    counter = iter(range(1 << 30))
    for name, node in structure.items():
        if _is_identity_map(name, node):
            yield Slot("identityMap", (name,), node, "__idm")
        else:
            yield from _node_slots((name,), node, counter)


def _node_slots(path: tuple[str, ...], node: TypeNode, counter: Iterator[int]) -> Iterator[Slot]:
    if isinstance(node, dict) and "struct" in node:
        for name, child in node["struct"].items():
            yield from _node_slots((*path, name), child, counter)
    elif isinstance(node, dict) and "map" in node:
        depth, value = 1, node["map"]
        while isinstance(value, dict) and "map" in value:
            depth, value = depth + 1, value["map"]
        yield Slot("map", path, node, f"__m{next(counter)}", depth)
    else:
        yield Slot("leaf", path, node, f"__l{next(counter)}")


def _source_node(structure: Structure, path: tuple[str, ...]) -> TypeNode | None:
    """The source's node at a struct path, or None when the source does not have it."""
    node: TypeNode | None = structure.get(path[0])
    for name in path[1:]:
        if not (isinstance(node, dict) and "struct" in node):
            return None
        node = node["struct"].get(name)
    return node


def _extract(path: tuple[str, ...]) -> str:
    expr = quote_identifier(path[0])
    for name in path[1:]:
        expr = f"struct_extract({expr}, {_literal(name)})"
    return expr


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _typed(path: tuple[str, ...], source_node: TypeNode | None, node: TypeNode) -> str:
    """The source's value at `path`, of the merged type `node` (NULL when the source has no such field)."""
    target = to_duckdb_type(node)
    if source_node is None:
        return f"CAST(NULL AS {target})"
    if source_node == node:
        return _extract(path)
    return f"CAST({_extract(path)} AS {target})"


def _effective_us(structure: Structure) -> str:
    """SQL for a fragment's effective time in epoch microseconds."""
    ingest = "coalesce(CAST(\"_ingest_ms\" AS BIGINT), 0) * 1000"
    node = _source_node(structure, (_AUDIT, _LAST_UPDATED))
    custom = _extract((_AUDIT, _LAST_UPDATED))
    if node == "TIMESTAMPTZ":
        return f"coalesce(epoch_us({custom}), {ingest})"
    if node == "DATE":
        return f"coalesce(epoch_us(CAST({custom} AS TIMESTAMP)), {ingest})"
    return ingest


def _precedence_columns(source: FragmentSource | None, rule: MergeRule, *, packed: bool = True) -> list[str]:
    """The parts of the precedence key that are not system columns — ``__kp`` (dataSetPrecedence only), the
    effective time ``__kt``, the record hash ``__kh`` — and ``__k``, the first two parts of the key packed into
    one HUGEINT (the first part signed in the high 64 bits, the second biased in the low ones): typed
    placeholders for no source. Without `packed`, no ``__k``."""
    precedence = rule.attribute_merge == "dataSetPrecedence"
    if source is None:
        return [*(["CAST(0 AS INTEGER) AS __kp"] if precedence else []),
                "CAST(0 AS BIGINT) AS __kt", "CAST(0 AS UBIGINT) AS __kh",
                *(["CAST(0 AS HUGEINT) AS __k"] if packed else [])]
    effective = "__kt" if source.keyed else _effective_us(source.structure)
    parts: list[str] = []
    if precedence:
        rank = f"CAST({len(rule.order) - rule.order.index(source.dataset_id)} AS INTEGER)"
        parts.append(f"{rank} AS __kp")
        first, second = rank, effective
    else:
        # -2^63 would overflow the HUGEINT; as -2^63 + 1 it only ties, and a tie takes the exact way.
        first, second = f"greatest({effective}, {-(1 << 63) + 1})", "coalesce(CAST(\"_ingest_ms\" AS BIGINT), 0)"
    key = f"CAST({first} AS HUGEINT) * {1 << 64} + (CAST({second} AS HUGEINT) + {1 << 63})"
    keys = ["__kt", "__kh"] if source.keyed else precedence_keys_sql(source.structure)
    return [*parts, *keys, *([f"{key} AS __k"] if packed else [])]


def precedence_keys_sql(structure: Structure) -> list[str]:
    """The parts of a fragment's precedence key that come from its record alone: ``__kt``, its effective time,
    and ``__kh``, the hash of its record columns. The store keeps them with its partitions (`FragmentSource.keyed`)
    so that exports read them instead of computing them."""
    columns = ", ".join(quote_identifier(c) for c in structure)
    return [f"{_effective_us(structure)} AS __kt", f"{f'hash({columns})' if columns else 'CAST(0 AS UBIGINT)'} AS __kh"]


def _precedence_order(rule: MergeRule) -> str:
    """The precedence key as an ORDER BY list (ascending: the last fragment wins)."""
    keys = ["__kp"] if rule.attribute_merge == "dataSetPrecedence" else []
    keys += ["__kt", "coalesce(_ingest_ms, 0)", "coalesce(_dataset, '')", "coalesce(_batch, '')", "__kh"]
    return ", ".join(keys)


def _fragments_select(
    source: FragmentSource | None, slots: list[Slot], rule: MergeRule, where: str | None, *, packed: bool = True
) -> str:
    """One source's fragments as the common fragment columns (or a typed empty relation for None)."""
    if source is None:
        none = [
            "CAST(NULL AS VARCHAR) AS _group", "CAST(NULL AS VARCHAR) AS _dataset",
            "CAST(NULL AS BIGINT) AS _ingest_ms", "CAST(NULL AS VARCHAR) AS _batch",
            *_precedence_columns(None, rule, packed=packed),
        ]
        rest = [f"CAST(NULL AS {to_duckdb_type(s.node)}) AS {s.alias}" for s in slots]
        return f"SELECT {', '.join([*none, *rest])} WHERE false"
    structure = _record_columns(source.structure)
    items = [
        "CAST(\"_group\" AS VARCHAR) AS _group",
        "CAST(\"_dataset\" AS VARCHAR) AS _dataset",
        "CAST(\"_ingest_ms\" AS BIGINT) AS _ingest_ms",
        "CAST(\"_batch\" AS VARCHAR) AS _batch",
        *_precedence_columns(source, rule, packed=packed),
    ]
    for slot in slots:
        items.append(f"{_typed(slot.path, _source_node(structure, slot.path), slot.node)} AS {slot.alias}")
    condition = "\"_group\" IS NOT NULL"
    if where:
        condition += f" AND ({where})"
    return f"SELECT {', '.join(items)}\nFROM {source.relation} AS __r\nWHERE {condition}"


def fragment_rows_sql(sources: list[FragmentSource], rule: MergeRule, *, where: str | None = None) -> str:
    """The merged fragments of every included source as flat rows, for a merge outside SQL (`merge_arrow`):
    ``_group``, ``_dataset``, ``_ingest_ms``, ``_batch``, the precedence key's parts (``__kp`` under
    dataSetPrecedence, ``__kt``, ``__kh``), then one column per slot of `merge_slots` named by its alias, typed
    as the merged structure says."""
    slots = merge_slots(merged_structure(sources))
    included = [s for s in sources if rule.includes(s.dataset_id)]
    selects = [_fragments_select(s, slots, rule, where, packed=False) for s in included] or [
        _fragments_select(None, slots, rule, where, packed=False)
    ]
    return "\nUNION ALL\n".join(f"({s})" for s in selects)


# --------------------------------------------------------------------------------------------------
# SQL
#
# The plan:
# __f   every merged fragment: its leaves and maps as flat columns, the parts of its precedence key and __k,
#       the first two parts packed into one HUGEINT;
# __ties the groups where two fragments have the same __k;
# __r   __f ranked, __rk: in a group without ties __k itself (it orders the group's fragments as the whole key
#       does), in a group with ties the fragment's position in the group by the whole key (a window over
#       those groups only). Every winner below is then an arg_max over a HUGEINT: comparing the STRUCT key per
#       leaf and per map entry cost several times more, and so did ranking every group in one window (the
#       window sorts every column of every fragment);
# __a   one GROUP BY _group: arg_max per leaf, per map the winning map and the count, _sources, _tags,
#       _last_modified_ms;
# maps: a group with one non-NULL map needs no merge, only normalising (NULL values dropped, keys sorted:
#       list functions on the one map); groups with several unnest the entries of their fragments' maps
#       (level by level for maps of maps) → arg_max per (_group, key path) → fold back into sorted maps;
# identityMap: unnest the items → one row per (_group, namespace, id) → one list per group, from which
#       list functions build both the union map and `identities`.
# Each of these is joined back on _group.


def _winner(value: str) -> str:
    return f"arg_max({value}, __rk) FILTER (WHERE {value} IS NOT NULL)"


def _count_alias(slot: Slot) -> str:
    return f"{slot.alias}_n"


def _normalized_map(expr: str, depth: int, level: int = 1) -> str:
    """One map as the merge of it alone: entries with a NULL value dropped (recursively for maps of maps),
    keys sorted, NULL when no entry is left."""
    entry = f"__e{level}"
    if depth > 1:
        inner = _normalized_map(f"{entry}.value", depth - 1, level + 1)
        entries = f"list_transform(map_entries({expr}), lambda {entry}: {{'key': {entry}.key, 'value': {inner}}})"
    else:
        entries = f"map_entries({expr})"
    kept = f"list_filter({entries}, lambda {entry}: {entry}.value IS NOT NULL)"
    return (f"list_transform([{kept}], lambda __l{level}: "
            f"CASE WHEN len(__l{level}) > 0 THEN map_from_entries(list_sort(__l{level})) END)[1]")


def _map_ctes(slot: Slot) -> list[tuple[str, str]]:
    """CTEs merging one map slot key path by key path, for the groups where several fragments have the map;
    the last one is (slot.alias, [_group, alias])."""
    name = slot.alias
    ctes: list[tuple[str, str]] = []
    # Unnest level by level: rows (_group, __rk, __k1 .. __kN, __v).
    previous = (f"(SELECT _group, __rk, {slot.alias} FROM __r "
                f"SEMI JOIN (SELECT _group FROM __a WHERE {_count_alias(slot)} > 1) USING (_group))")
    value = slot.alias
    keys: list[str] = []
    for level in range(1, slot.depth + 1):
        carried = ", ".join(["_group", "__rk", *keys])
        ctes.append((
            f"{name}_u{level}",
            f"SELECT {carried}, struct_extract(__e, 'key') AS __k{level}, struct_extract(__e, 'value') AS __v\n"
            f"FROM (SELECT {carried}, unnest(map_entries({value})) AS __e FROM {previous} "
            f"WHERE {value} IS NOT NULL)",
        ))
        keys.append(f"__k{level}")
        previous, value = f"{name}_u{level}", "__v"
    # The winner per key path.
    key_list = ", ".join(keys)
    ctes.append((
        f"{name}_w",
        f"SELECT _group, {key_list}, arg_max(__v, __rk) AS __v FROM {previous} WHERE __v IS NOT NULL "
        f"GROUP BY _group, {key_list}",
    ))
    # Fold back up into maps, innermost level first.
    previous = f"{name}_w"
    for level in range(slot.depth, 0, -1):
        outer = ", ".join(["_group", *keys[: level - 1]])
        target = f"{name}_f{level}" if level > 1 else name
        alias = "__v" if level > 1 else name
        ctes.append((
            target,
            f"SELECT {outer}, map_from_entries(list_sort(list({{'key': __k{level}, 'value': __v}}))) "
            f"AS {alias} FROM {previous} GROUP BY {outer}",
        ))
        previous = target
    return ctes


def _identity_ctes(slot: Slot) -> list[tuple[str, str]]:
    """CTEs for the identity map union and the ``identities`` list: ``__idm`` with (_group, __idm, __ids)."""
    assert isinstance(slot.node, dict)
    item = slot.node["map"]["list"]["struct"]
    aggregates: list[str] = []
    fields = ["'n': __ns", "'i': __id"]  # one list item per (namespace, id)
    packed: list[str] = []  # an identityMap item from a list item __x
    for i, (fname, fnode) in enumerate(item.items()):
        if fname == "id":
            packed.append(f"{quote_identifier(fname)} := __x.i")
            continue
        value = f"struct_extract(__it, {_literal(fname)})"
        if fname == "primary" and fnode == "BOOLEAN":
            aggregates.append(f"bool_or({value}) AS __a{i}")
        else:
            aggregates.append(f"{_winner(value)} AS __a{i}")
        fields.append(f"'a{i}': __a{i}")
        packed.append(f"{quote_identifier(fname)} := __x.a{i}")
    primary = "primary" in item and item["primary"] == "BOOLEAN"
    primary_flag = "coalesce(bool_or(struct_extract(__it, 'primary')), false)" if primary else "false"
    fields.append("'p': __primary")
    namespaces = "list_sort(list_distinct(list_transform(__items, lambda __x: __x.n)))"
    # `identities`: the items keyed (lower-cased namespace, id, not primary) and sorted, so that the first of
    # each (namespace, id) run is the primary one if any is; the runs' first items.
    keyed = "list_sort(list_transform(__items, lambda __x: {'n': lower(__x.n), 'i': __x.i, 'q': NOT __x.p}))"
    return [
        ("__idm_u",
         "SELECT _group, __rk, __ns, unnest(__items) AS __it\n"
         "FROM (SELECT _group, __rk, struct_extract(__e, 'key') AS __ns, struct_extract(__e, 'value') AS __items\n"
         "      FROM (SELECT _group, __rk, unnest(map_entries(__idm)) AS __e FROM __r WHERE __idm IS NOT NULL))"),
        ("__idm_i",
         f"SELECT _group, __ns, struct_extract(__it, 'id') AS __id, {', '.join(aggregates)}"
         f"{', ' if aggregates else ''}{primary_flag} AS __primary\n"
         "FROM __idm_u WHERE coalesce(struct_extract(__it, 'id'), '') <> ''\n"
         "GROUP BY _group, __ns, struct_extract(__it, 'id')"),
        ("__idm_l",
         f"SELECT _group, list_sort(list({{{', '.join(fields)}}})) AS __items FROM __idm_i GROUP BY _group"),
        ("__idm",
         "SELECT _group,\n"
         f"       map_from_entries(list_transform({namespaces},\n"
         "           lambda __n: {'key': __n, 'value': list_transform(list_filter(__items, lambda __x: __x.n = __n),\n"
         f"               lambda __x: struct_pack({', '.join(packed)}))}})) AS __idm,\n"
         "       list_transform(list_filter(__s, lambda __x, __k: __k = 1 OR __s[__k - 1].n <> __x.n\n"
         "                                                       OR __s[__k - 1].i <> __x.i),\n"
         "           lambda __x: {'id': __x.i, 'namespace': {'code': __x.n}, 'primary': NOT __x.q}) AS __ids\n"
         f"FROM (SELECT _group, __items, {keyed} AS __s FROM __idm_l)"),
    ]


def _column_expr(path: tuple[str, ...], node: TypeNode, refs: dict[tuple[str, ...], str]) -> tuple[str, list[str]]:
    """The merged value at `path` from the slot results, and the slot references under it."""
    if path in refs:
        return refs[path], [refs[path]]
    assert isinstance(node, dict) and "struct" in node
    fields: list[str] = []
    under: list[str] = []
    for name, child in node["struct"].items():
        expr, child_refs = _column_expr((*path, name), child, refs)
        fields.append(f"{quote_identifier(name)} := {expr}")
        under += child_refs
    all_null = " AND ".join(f"{ref} IS NULL" for ref in under)
    return f"CASE WHEN {all_null} THEN NULL ELSE struct_pack({', '.join(fields)}) END", under


def merge_sql(sources: list[FragmentSource], rule: MergeRule, *, where: str | None = None) -> str:
    """One SELECT merging the sources' fragments into one row per ``_group`` (see the module docstring)."""
    structure = merged_structure(sources)
    slots = list(_slots(structure))
    included = [s for s in sources if rule.includes(s.dataset_id)]

    selects = [_fragments_select(s, slots, rule, where) for s in included] or [
        _fragments_select(None, slots, rule, where)
    ]
    order = _precedence_order(rule)
    excluded = "__kp, __kt, __kh, __k" if rule.attribute_merge == "dataSetPrecedence" else "__kt, __kh, __k"
    ctes: list[tuple[str, str]] = [
        ("__f", "\nUNION ALL\n".join(f"({s})" for s in selects)),
        ("__ties", "SELECT DISTINCT _group FROM __f GROUP BY _group, __k HAVING count(*) > 1"),
        ("__r", f"SELECT * EXCLUDE ({excluded}), __k AS __rk FROM __f ANTI JOIN __ties USING (_group)\n"
                f"UNION ALL\n"
                f"SELECT * EXCLUDE ({excluded}), CAST(row_number() OVER (PARTITION BY _group ORDER BY {order}) "
                f"AS HUGEINT) AS __rk\nFROM __f SEMI JOIN __ties USING (_group)"),
    ]

    aggregates = ["_group"]
    refs: dict[tuple[str, ...], str] = {}
    joins: list[str] = []
    identity_slot: Slot | None = None
    for slot in slots:
        if slot.kind == "leaf":
            aggregates.append(f"{_winner(slot.alias)} AS {slot.alias}")
            refs[slot.path] = f"__a.{slot.alias}"
        elif slot.kind == "map":
            aggregates.append(f"{_winner(slot.alias)} AS {slot.alias}")
            aggregates.append(f"count({slot.alias}) AS {_count_alias(slot)}")
            ctes += _map_ctes(slot)
            single = _normalized_map(f"__a.{slot.alias}", slot.depth)
            refs[slot.path] = (f"(CASE WHEN __a.{_count_alias(slot)} > 1 THEN {slot.alias}.{slot.alias} "
                               f"ELSE {single} END)")
            joins.append(slot.alias)
        else:
            identity_slot = slot
            ctes += _identity_ctes(slot)
            refs[slot.path] = "__idm.__idm"
            joins.append("__idm")
    aggregates += [
        "coalesce(list_sort(list_distinct(list(_dataset))), []) AS _sources",
        "coalesce(list_sort(list_distinct(list(_batch))), []) AS _tags",
        "max(_ingest_ms) AS _last_modified_ms",
    ]
    ctes.insert(3, ("__a", f"SELECT {', '.join(aggregates)}\nFROM __r GROUP BY _group"))

    columns = ["__a._group AS _group"]
    for name, node in structure.items():
        expr, _ = _column_expr((name,), node, refs)
        columns.append(f"CAST({expr} AS {to_duckdb_type(node)}) AS {quote_identifier(name)}")
    identities_type = to_duckdb_type(IDENTITIES)
    if identity_slot is not None:
        columns.append(f"CAST(coalesce(__idm.__ids, []) AS {identities_type}) AS identities")
    else:
        columns.append(f"CAST([] AS {identities_type}) AS identities")
    columns += [
        "CAST(__a._sources AS VARCHAR[]) AS _sources",
        "CAST(__a._tags AS VARCHAR[]) AS _tags",
        "__a._last_modified_ms AS _last_modified_ms",
    ]

    with_clause = ",\n".join(f"{name} AS (\n{body}\n)" for name, body in ctes)
    from_clause = "__a" + "".join(f"\nLEFT JOIN {j} ON {j}._group = __a._group" for j in joins)
    select_list = ",\n       ".join(columns)
    return f"WITH {with_clause}\nSELECT {select_list}\nFROM {from_clause}"
