"""The ``fields`` projection: one parser and one SQL projection for lookups, exports and event lists.

AEP's ``fields`` (Profile Access ``fields=``, export jobs' ``fields`` and ``additionalFields.eventList.fields``)
is a comma-separated list of dotted paths: ``identities.id,personalEmail.address``.

Parsing (`parse_fields`)
------------------------
The value is split on commas; each item is trimmed of whitespace (one of Adobe's examples has a space after
the comma); empty items are ignored and repeated paths removed, first occurrence kept. ``None``, ``""`` or a
value with no item at all means *all fields*, returned as ``None``. A list of strings is accepted too (each
string is split the same way). The parenthesised form (``person(name,gender)``) is not AEP syntax; such an
item is just an unknown path.

Paths (`check_fields`)
----------------------
Paths are those of `openprofile.engine.structure.field_paths`: a struct field adds a step; list items and map
values add none (``identities.id`` is the ``id`` of each ``identities`` item; ``identityMap.id`` the ``id`` of
each item of each namespace; ``segmentMembership.status`` the ``status`` of every segment); map keys are never
steps. Names are case-sensitive. A path that is not one of the structure's paths raises `UnknownField`
naming it.

Projection (`project_sql`, `project_structure`)
------------------------------------------------
The result keeps only the selected subtrees, with the original nesting and field order:

- a path selects its whole subtree (``person`` is all of ``person``), and a path under an already selected
  one adds nothing;
- ``person.name.firstName,person.gender`` gives ``person`` as a struct of only ``name`` (itself only
  ``firstName``) and ``gender``;
- through a list, each element is projected (``identities.id`` → ``identities`` as a list of
  ``STRUCT(id)``, via ``list_transform``); through a map, each value is projected, every key kept
  (``identityMap.id`` → ``MAP(VARCHAR, STRUCT(id)[])``); a map's own path selects the whole map;
- columns that are not selected are absent (not NULL);
- a projected struct whose *selected* leaves are all NULL is NULL, not a struct of NULLs (as in merged
  profiles, where empty objects do not exist); a NULL list or map stays NULL, an element of a list is
  projected on its own (it may become NULL by the previous rule, it is never removed).

`project_sql` only produces the record columns' SELECT items; callers add their system columns
(``_group``, ``_sources``, ...) themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

from openprofile.engine.structure import Structure, TypeNode, field_paths, quote_identifier

__all__ = [
    "UnknownField",
    "check_fields",
    "parse_fields",
    "project_sql",
    "project_structure",
]

_Selection: TypeAlias = "dict[str, _Selection] | None"
"""Selected children by field name; None selects the whole subtree."""


class UnknownField(Exception):
    """A ``fields`` path that the data does not have; `path` is the path as the client wrote it."""

    def __init__(self, path: str, message: str | None = None) -> None:
        self.path = path
        self.message = message or f"unknown field '{path}' in fields"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def parse_fields(fields: str | Sequence[str] | None) -> list[str] | None:
    """The paths of a ``fields`` value, in order, trimmed and deduplicated; None (all fields) when it has none."""
    if fields is None:
        return None
    items = [fields] if isinstance(fields, str) else list(fields)
    paths: list[str] = []
    seen: set[str] = set()
    for item in items:
        for part in item.split(","):
            path = part.strip()
            if path and path not in seen:
                seen.add(path)
                paths.append(path)
    return paths or None


def check_fields(paths: Iterable[str], structure: Structure) -> None:
    """Raise `UnknownField` for the first path that is not a path of `structure` (see `field_paths`)."""
    known = set(field_paths(structure))
    for path in paths:
        if path not in known:
            raise UnknownField(path)


def _selection(paths: Iterable[str]) -> dict[str, _Selection]:
    """The selection tree of checked paths."""
    root: dict[str, _Selection] = {}
    for path in paths:
        steps = path.split(".")
        node: dict[str, _Selection] = root
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            if last:
                node[step] = None
                break
            child = node.setdefault(step, {})
            if child is None:  # an ancestor is selected whole
                break
            node = child
    return root


def project_structure(paths: Sequence[str] | None, structure: Structure) -> Structure:
    """The structure of the projection of `structure` on `paths` (all of it for None); `UnknownField` if a
    path is unknown."""
    if paths is None:
        return dict(structure)
    check_fields(paths, structure)
    selection = _selection(paths)
    return {name: _project_node(node, selection[name]) for name, node in structure.items() if name in selection}


def _project_node(node: TypeNode, selection: _Selection) -> TypeNode:
    if selection is None:
        return node
    assert isinstance(node, dict)
    if "list" in node:
        return {"list": _project_node(node["list"], selection)}
    if "map" in node:
        return {"map": _project_node(node["map"], selection)}
    fields = node["struct"]
    return {"struct": {k: _project_node(v, selection[k]) for k, v in fields.items() if k in selection}}


def project_sql(
    paths: Sequence[str] | None,
    structure: Structure,
    *,
    source: str | Mapping[str, str] | None = None,
) -> list[str]:
    """SELECT-list items (``<expr> AS "column"``) projecting a relation of `structure` on `paths`.

    One item per selected top-level column, in the structure's column order; None selects every column as
    it is. `source` says where a top-level column's value comes from: None → the bare quoted column name; a
    string → that relation alias (``alias."column"``); a mapping → an SQL expression per column name (columns
    it does not name are bare column names). The items' types are those of `project_structure`. Raises
    `UnknownField` for an unknown path.
    """
    def column(name: str) -> str:
        if isinstance(source, Mapping):
            return source.get(name, quote_identifier(name))
        if source is not None:
            return f"{source}.{quote_identifier(name)}"
        return quote_identifier(name)

    if paths is None:
        return [f"{column(name)} AS {quote_identifier(name)}" for name in structure]
    check_fields(paths, structure)
    selection = _selection(paths)
    return [
        f"{_project_expr(column(name), node, selection[name], 0)} AS {quote_identifier(name)}"
        for name, node in structure.items()
        if name in selection
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _project_expr(expr: str, node: TypeNode, selection: _Selection, depth: int) -> str:
    if selection is None:
        return expr
    assert isinstance(node, dict)
    var = f"__x{depth}"
    if "list" in node:
        inner = _project_expr(var, node["list"], selection, depth + 1)
        return f"list_transform({expr}, lambda {var}: {inner})"
    if "map" in node:
        inner = _project_expr(f"struct_extract({var}, 'value')", node["map"], selection, depth + 1)
        return (
            f"map_from_entries(list_transform(map_entries({expr}), "
            f"lambda {var}: struct_pack(\"key\" := struct_extract({var}, 'key'), \"value\" := {inner})))"
        )
    fields: list[str] = []
    for name, child in node["struct"].items():
        if name in selection:
            sub = f"struct_extract({expr}, {_literal(name)})"
            fields.append(f"{quote_identifier(name)} := {_project_expr(sub, child, selection[name], depth)}")
    all_null = " AND ".join(_null_checks(expr, node, selection))
    return f"CASE WHEN {all_null} THEN NULL ELSE struct_pack({', '.join(fields)}) END"


def _null_checks(expr: str, node: TypeNode, selection: _Selection) -> list[str]:
    """Conditions that together say the projection of `expr` has no selected value."""
    if selection is None or not (isinstance(node, dict) and "struct" in node):
        return [f"{expr} IS NULL"]
    checks: list[str] = []
    for name, child in node["struct"].items():
        if name in selection:
            checks += _null_checks(f"struct_extract({expr}, {_literal(name)})", child, selection[name])
    return checks
