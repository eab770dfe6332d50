"""A checked PQL tree → one DuckDB boolean expression over a merged-profile row.

Conventions of the generated SQL:

- profile columns are their quoted names (``"person"``), struct fields ``("person")."name"``, the events
  ``"xEvent"``; list items are lambda parameters ``__pql_v<N>`` (``lambda __pql_v1: ...``);
- every PQL timestamp is a naive UTC ``TIMESTAMP``: stored ``TIMESTAMPTZ`` values are converted where they are
  read (``timezone('UTC', ...)``), so results never depend on the session's ``TimeZone``;
- every condition is two-valued (``COALESCE(..., FALSE)``), so ``NOT`` is plain negation, as in the
  interpreter;
- constants carry explicit types (``CAST(1.5 AS DOUBLE)``, never DuckDB's DECIMAL literals).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from .ast import (
    Apply,
    Const,
    Events,
    Field,
    ListAggregate,
    ListFilter,
    Node,
    Occurs,
    Period,
    PType,
    Root,
    Var,
)

__all__ = ["Compiler", "sql_string", "timestamp_sql"]

_UNIT_FUNCTIONS = {
    "millisecond": "to_milliseconds", "second": "to_seconds", "minute": "to_minutes", "hour": "to_hours",
    "day": "to_days", "week": "to_weeks", "month": "to_months", "year": "to_years", "decade": "to_decades",
    "century": "to_centuries", "millennium": "to_millennia",
}
_SQL_COMPARE = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_NEGATED_STRING_TESTS = {
    "notEqualTo": "equals", "doesNotStartWith": "startsWith", "doesNotEndWith": "endsWith",
    "doesNotContain": "contains",
}
_STRING_FUNCTIONS = {"startsWith": "starts_with", "endsWith": "ends_with", "contains": "contains"}


def sql_string(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def timestamp_sql(instant: dt.datetime) -> str:
    """A ``TIMESTAMPTZ`` literal for an aware datetime (naive ones are taken as UTC), e.g. for `to_sql`'s
    `now_sql`."""
    if instant.tzinfo is not None:
        instant = instant.astimezone(dt.UTC).replace(tzinfo=None)
    return f"TIMESTAMPTZ '{instant.isoformat(sep=' ')}+00:00'"


def _var(node: Var) -> str:
    return f"__pql_v{node.id}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _const(value: object, t: PType | None) -> str:
    kind = t.kind if t is not None else ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if kind == "int":
        return f"CAST({value} AS BIGINT)"
    if kind == "double":
        return f"CAST('{value!r}' AS DOUBLE)"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    assert isinstance(value, str), value
    return sql_string(value)


def _stored(sql: str, t: PType | None) -> str:
    """SQL for a value read from storage, with stored TIMESTAMPTZ converted to naive UTC (also inside lists)."""
    if t is None:
        return sql
    if t.kind == "timestamp":
        return f"timezone('UTC', CAST({sql} AS TIMESTAMPTZ))"
    if t.kind == "list" and t.item is not None and _has_scalar_timestamp(t.item):
        return f"list_transform({sql}, lambda __pql_ts: {_stored('__pql_ts', t.item)})"
    return sql


def _has_scalar_timestamp(t: PType) -> bool:
    return t.kind == "timestamp" or (t.kind == "list" and t.item is not None and _has_scalar_timestamp(t.item))


def _false_if_null(sql: str) -> str:
    return f"COALESCE({sql}, FALSE)"


@dataclass
class Compiler:
    now_sql: str
    in_segment_sql: Callable[[str], str]

    def sql(self, node: Node) -> str:
        if isinstance(node, Const):
            return _const(node.value, node.type)
        if isinstance(node, Events):
            return '"xEvent"'
        if isinstance(node, Var):
            return _var(node)
        if isinstance(node, Field):
            base = _quote(node.name) if isinstance(node.obj, Root) else f"({self.sql(node.obj)}).{_quote(node.name)}"
            return _stored(base, node.type)
        if isinstance(node, Apply):
            return self.apply(node)
        if isinstance(node, ListFilter):
            return f"list_filter({self.sql(node.source)}, lambda {_var(node.var)}: {self.sql(node.cond)})"
        if isinstance(node, ListAggregate):
            return self.aggregate(node)
        if isinstance(node, Occurs):
            return self.occurs(node)
        raise TypeError(f"cannot compile {type(node).__name__}")  # pragma: no cover

    def aggregate(self, node: ListAggregate) -> str:
        values = f"list_transform({self.sql(node.source)}, lambda {_var(node.var)}: {self.sql(node.value)})"
        if node.fn == "count":
            return f"COALESCE(list_count({values}), 0)"
        if node.fn == "sum":
            zero = "CAST(0 AS DOUBLE)" if node.type is not None and node.type.kind == "double" else "CAST(0 AS BIGINT)"
            return f"COALESCE(list_sum({values}), {zero})"
        if node.fn == "average":
            return f"(CAST(list_sum({values}) AS DOUBLE) / NULLIF(list_count({values}), 0))"
        return f"list_{node.fn}({values})"

    def apply(self, node: Apply) -> str:
        fn, args = node.fn, node.args
        a = [self.sql(arg) for arg in args]
        if fn in ("and", "or"):
            return f"({a[0]} {fn.upper()} {a[1]})"
        if fn == "not":
            return f"(NOT {a[0]})"
        if fn == "isTrue":
            return f"({a[0]} IS TRUE)"
        if fn == "nonEmpty":
            return _false_if_null(f"len({a[0]}) > 0")
        if fn in _SQL_COMPARE:
            return _false_if_null(f"{a[0]} {_SQL_COMPARE[fn]} {a[1]}")
        if fn in ("+", "-", "*"):
            return f"({a[0]} {fn} {a[1]})"
        if fn in ("/", "%"):
            return f"({a[0]} {fn} NULLIF({a[1]}, 0))"
        if fn == "neg":
            return f"(-{a[0]})"
        if fn == "toDouble":
            return f"CAST({a[0]} AS DOUBLE)"
        if fn == "toDate":
            text = a[0]
            return (f"CASE WHEN regexp_full_match({text}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') AND {text} >= '0001' "
                    f"THEN TRY_CAST({text} AS DATE) END")
        if fn == "toTimestamp":
            return f"CAST({a[0]} AS TIMESTAMP)"
        if fn == "isNull":
            return f"({a[0]} IS NULL)"
        if fn == "isNotNull":
            return f"({a[0]} IS NOT NULL)"
        if fn == "exists":
            kind = args[0].type.kind if args[0].type is not None else ""
            if kind == "list":
                return _false_if_null(f"len({a[0]}) > 0")
            if kind == "map":
                return _false_if_null(f"cardinality({a[0]}) > 0")
            return f"({a[0]} IS NOT NULL)"
        if isinstance(node.param, bool):  # string predicates; param = case sensitive
            return self.string_predicate(fn, a[0], a[1], node.param)
        if fn == "like":
            return _false_if_null(f"{a[0]} LIKE {a[1]}")
        if fn == "matches":
            return _false_if_null(f"regexp_matches({a[0]}, {a[1]})")
        if fn == "count":
            return f"COALESCE(len({a[0]}), 0)"
        if fn == "array":
            return f"[{', '.join(a)}]"
        if fn == "get":
            return _stored(f"({a[0]})[{a[1]}]", node.type)
        if fn == "keys":
            return f"map_keys({a[0]})"
        if fn == "values":
            return _stored(f"map_values({a[0]})", node.type)
        if fn == "now":
            return f"timezone('UTC', CAST(({self.now_sql}) AS TIMESTAMPTZ))"
        if fn == "truncate":
            return f"date_trunc('{node.param}', {a[0]})"
        if fn == "shift":
            return self.shift(a[0], a[1], node.param)
        if fn in ("getYear", "getMonth", "getDayOfMonth"):
            part = {"getYear": "year", "getMonth": "month", "getDayOfMonth": "day"}[fn]
            return f"CAST({part}({a[0]}) AS BIGINT)"
        if fn == "if":
            return f"CASE WHEN {a[0]} THEN {a[1]} ELSE {a[2]} END"
        if fn == "inSegment":
            return _false_if_null(f"({self.in_segment_sql(node.param)})")
        raise TypeError(f"unknown function {fn}")  # pragma: no cover

    @staticmethod
    def shift(timestamp: str, amount: str, unit: str) -> str:
        return f"({timestamp} + {_UNIT_FUNCTIONS[unit]}({amount}))"

    @staticmethod
    def string_predicate(fn: str, text: str, arg: str, case_sensitive: bool) -> str:
        if not case_sensitive:
            text, arg = f"lower({text})", f"lower({arg})"
        positive = _NEGATED_STRING_TESTS.get(fn, fn)
        negated = positive != fn
        test = f"{text} = {arg}" if positive == "equals" else f"{_STRING_FUNCTIONS[positive]}({text}, {arg})"
        return _false_if_null(f"NOT ({test})" if negated else test)

    def bounds(self, ref: Node) -> tuple[str, str | None]:
        """(start, end) of a period reference; (instant, None) for an instant."""
        if isinstance(ref, Period):
            start = self.sql(ref.start)
            return start, self.shift(start, "CAST(1 AS BIGINT)", ref.unit)
        return self.sql(ref), None

    def occurs(self, node: Occurs) -> str:
        t = self.sql(node.subject)
        start, end = self.bounds(node.ref)
        if node.form == "on":
            test = f"{t} >= {start} AND {t} < {end}" if end is not None else f"{t} = {start}"
        elif node.form == "dir":
            if node.direction == "before":
                test = f"{t} < {start}"
            else:
                test = f"{t} >= {end}" if end is not None else f"{t} > {start}"
        elif node.form == "between":
            assert node.ref2 is not None
            start2, end2 = self.bounds(node.ref2)
            test = f"{t} >= {start} AND " + (f"{t} < {end2}" if end2 is not None else f"{t} <= {start2}")
        else:
            assert node.amount is not None and node.unit is not None and node.op is not None
            unit, ref = node.unit, start
            sign = -1 if node.direction == "before" else 1
            boundary = self.shift(ref, f"CAST({sign * node.amount} AS BIGINT)", unit)
            if node.op in ("=", "!="):
                test = f"date_trunc('{unit}', {t}) {_SQL_COMPARE[node.op]} date_trunc('{unit}', {boundary})"
            elif node.direction == "before":
                test = {
                    "<": f"{boundary} < {t} AND {t} <= {ref}",
                    "<=": f"{boundary} <= {t} AND {t} <= {ref}",
                    ">": f"{t} < {boundary}",
                    ">=": f"{t} <= {boundary}",
                }[node.op]
            else:
                test = {
                    "<": f"{ref} <= {t} AND {t} < {boundary}",
                    "<=": f"{ref} <= {t} AND {t} <= {boundary}",
                    ">": f"{t} > {boundary}",
                    ">=": f"{t} >= {boundary}",
                }[node.op]
        return _false_if_null(f"({test})")
