"""The reference interpreter: a checked PQL tree evaluated over one profile, in plain Python.

It is written from the semantics in the package docstring, one small function per construct, and is the
oracle the SQL compiler is tested against. It is not on any data path.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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
from .check import parse_date_string

__all__ = ["Interpreter", "add_units", "truncate"]

_FIXED_UNITS = {
    "millisecond": dt.timedelta(milliseconds=1),
    "second": dt.timedelta(seconds=1),
    "minute": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
    "week": dt.timedelta(weeks=1),
}
_MONTHS_PER_UNIT = {"month": 1, "year": 12, "decade": 120, "century": 1200, "millennium": 12000}


def add_units(value: dt.datetime, amount: int, unit: str) -> dt.datetime:
    """`value` plus `amount` units. Months and longer units move the calendar month and keep the day,
    clamped to the length of the month (Jan 31 + 1 month = Feb 28/29)."""
    if unit in _FIXED_UNITS:
        return value + amount * _FIXED_UNITS[unit]
    months = value.year * 12 + (value.month - 1) + amount * _MONTHS_PER_UNIT[unit]
    year, month0 = divmod(months, 12)
    day = min(value.day, calendar.monthrange(year, month0 + 1)[1])
    return value.replace(year=year, month=month0 + 1, day=day)


def truncate(value: dt.datetime, unit: str) -> dt.datetime:
    """The start of the `unit` that contains `value` (weeks start on Monday; decades, centuries and millennia
    start at years divisible by 10, 100, 1000)."""
    if unit == "millisecond":
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if unit == "second":
        return value.replace(microsecond=0)
    if unit == "minute":
        return value.replace(second=0, microsecond=0)
    if unit == "hour":
        return value.replace(minute=0, second=0, microsecond=0)
    midnight = value.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return midnight
    if unit == "week":
        return midnight - dt.timedelta(days=midnight.weekday())
    if unit == "month":
        return midnight.replace(day=1)
    first = midnight.replace(month=1, day=1)
    if unit == "year":
        return first
    step = {"decade": 10, "century": 100, "millennium": 1000}[unit]
    return first.replace(year=first.year // step * step)


def _utc(value: dt.datetime) -> dt.datetime:
    """A naive UTC datetime (aware values are converted; naive ones are taken as UTC)."""
    if value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _as_map(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    return {k: v for k, v in value}  # a list of (key, value) pairs, as Arrow gives maps


def _stored(value: Any, t: PType | None) -> Any:
    """A value read from the profile or an event, in the interpreter's representation of type `t`."""
    if value is None or t is None:
        return value
    if t.kind == "timestamp":
        return _utc(value)
    if t.kind == "date" and isinstance(value, dt.datetime):
        return value.date()
    if t.kind == "double" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t.kind == "list":
        return [_stored(item, t.item) for item in value]
    if t.kind == "map":
        mapping = _as_map(value)
        assert mapping is not None
        return {k: _stored(v, t.item) for k, v in mapping.items()}
    return value


def _like(text: str, pattern: str) -> bool:
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def _string_predicate(fn: str, text: str, arg: str, case_sensitive: bool) -> bool:
    if not case_sensitive:
        text, arg = text.lower(), arg.lower()
    tests = {
        "startsWith": text.startswith(arg),
        "endsWith": text.endswith(arg),
        "contains": arg in text,
        "equals": text == arg,
    }
    tests.update({
        "doesNotStartWith": not tests["startsWith"],
        "doesNotEndWith": not tests["endsWith"],
        "doesNotContain": not tests["contains"],
        "notEqualTo": not tests["equals"],
    })
    return tests[fn]


def _remainder(a: Any, b: Any) -> Any:
    if isinstance(a, float) or isinstance(b, float):
        return math.fmod(a, b)
    magnitude = abs(a) % abs(b)
    return -magnitude if a < 0 else magnitude


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}


@dataclass
class Interpreter:
    profile: Mapping[str, Any]
    events: list[Any]
    now: dt.datetime
    in_segment: Callable[[str], bool]

    def run(self, node: Node) -> bool:
        return bool(self.eval(node, {}))

    def eval(self, node: Node, env: dict[int, Any]) -> Any:
        if isinstance(node, Const):
            return node.value
        if isinstance(node, Events):
            return list(self.events)
        if isinstance(node, Var):
            return env[node.id]
        if isinstance(node, Field):
            return self.field(node, env)
        if isinstance(node, Apply):
            return self.apply(node, env)
        if isinstance(node, ListFilter):
            return self.filter(node, env)
        if isinstance(node, ListAggregate):
            return self.aggregate(node, env)
        if isinstance(node, Occurs):
            return self.occurs(node, env)
        raise TypeError(f"cannot evaluate {type(node).__name__}")  # pragma: no cover

    def field(self, node: Field, env: dict[int, Any]) -> Any:
        obj = self.profile if isinstance(node.obj, Root) else self.eval(node.obj, env)
        if obj is None:
            return None
        return _stored(obj.get(node.name), node.type)

    def items(self, source: Node, env: dict[int, Any]) -> list[Any] | None:
        return self.eval(source, env)  # type: ignore[no-any-return]

    def filter(self, node: ListFilter, env: dict[int, Any]) -> list[Any] | None:
        items = self.items(node.source, env)
        if items is None:
            return None
        return [item for item in items if self.eval(node.cond, {**env, node.var.id: item})]

    def aggregate(self, node: ListAggregate, env: dict[int, Any]) -> Any:
        items = self.items(node.source, env) or []
        values = [self.eval(node.value, {**env, node.var.id: item}) for item in items]
        present = [v for v in values if v is not None]
        if node.fn == "count":
            return len(present)
        if node.fn in ("sum", "average"):
            total: Any = 0.0 if node.value.type is not None and node.value.type.kind == "double" else 0
            for v in present:  # left to right, as written
                total = total + v
            if node.fn == "sum":
                return total
            return float(total) / len(present) if present else None
        if not present:
            return None
        return min(present) if node.fn == "min" else max(present)

    # ----------------------------------------------------------------------------------------------

    def apply(self, node: Apply, env: dict[int, Any]) -> Any:
        fn = node.fn
        if fn == "and":
            return self.eval(node.args[0], env) and self.eval(node.args[1], env)
        if fn == "or":
            return self.eval(node.args[0], env) or self.eval(node.args[1], env)
        if fn == "if":
            test, a, b = node.args
            return self.eval(a, env) if self.eval(test, env) else self.eval(b, env)
        if fn == "now":
            return self.now
        if fn == "inSegment":
            return bool(self.in_segment(node.param))
        args = [self.eval(arg, env) for arg in node.args]
        return self.function(fn, args, node)

    def function(self, fn: str, args: list[Any], node: Apply) -> Any:
        # functions of possibly-null values
        if fn == "not":
            return not args[0]
        if fn == "isTrue":
            return args[0] is True
        if fn == "nonEmpty":
            return args[0] is not None and len(args[0]) > 0
        if fn == "isNull":
            return args[0] is None
        if fn == "isNotNull":
            return args[0] is not None
        if fn == "exists":
            value = args[0]
            if value is None:
                return False
            kind = node.args[0].type.kind if node.args[0].type is not None else ""
            return len(value) > 0 if kind in ("list", "map") else True
        if fn == "count":
            return 0 if args[0] is None else len(args[0])
        if fn == "array":
            return list(args)
        if fn in _COMPARE:
            a, b = args
            return a is not None and b is not None and _COMPARE[fn](a, b)

        # everything else is false (predicates) or null (values) when an argument is null
        if any(a is None for a in args):
            return False if fn in ("like", "matches") or isinstance(node.param, bool) else None
        if isinstance(node.param, bool):  # string predicates; param = case sensitive
            return _string_predicate(fn, args[0], args[1], node.param)
        if fn == "like":
            return _like(args[0], args[1])
        if fn == "matches":
            return re.search(args[1], args[0], re.ASCII) is not None
        if fn in ("+", "-", "*"):
            a, b = args
            return a + b if fn == "+" else a - b if fn == "-" else a * b
        if fn == "/":
            return None if args[1] == 0 else args[0] / args[1]
        if fn == "%":
            return None if args[1] == 0 else _remainder(args[0], args[1])
        if fn == "neg":
            return -args[0]
        if fn == "toDouble":
            return float(args[0])
        if fn == "toDate":
            return parse_date_string(args[0])
        if fn == "toTimestamp":
            return dt.datetime.combine(args[0], dt.time())
        if fn == "getYear":
            return args[0].year
        if fn == "getMonth":
            return args[0].month
        if fn == "getDayOfMonth":
            return args[0].day
        if fn == "truncate":
            return truncate(args[0], node.param)
        if fn == "shift":
            return add_units(args[0], args[1], node.param)
        if fn == "get":
            mapping = _as_map(args[0])
            assert mapping is not None
            return _stored(mapping.get(args[1]), node.type)
        if fn in ("keys", "values"):
            mapping = _as_map(args[0])
            assert mapping is not None
            return list(mapping) if fn == "keys" else _stored(list(mapping.values()), node.type)
        raise TypeError(f"unknown function {fn}")  # pragma: no cover

    # ----------------------------------------------------------------------------------------------

    def bounds(self, ref: Node, env: dict[int, Any]) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(start, end) of a period reference; (instant, None) for an instant."""
        if isinstance(ref, Period):
            start = self.eval(ref.start, env)
            return (None, None) if start is None else (start, add_units(start, 1, ref.unit))
        return self.eval(ref, env), None

    def occurs(self, node: Occurs, env: dict[int, Any]) -> bool:
        t: dt.datetime | None = self.eval(node.subject, env)
        start, end = self.bounds(node.ref, env)
        if t is None or start is None:
            return False
        if node.form == "on":
            return start <= t < end if end is not None else t == start
        if node.form == "dir":
            if node.direction == "before":
                return bool(t < start)
            return t >= end if end is not None else t > start
        if node.form == "between":
            assert node.ref2 is not None
            start2, end2 = self.bounds(node.ref2, env)
            if start2 is None:
                return False
            return start <= t and (t < end2 if end2 is not None else t <= start2)
        # "cmp": <op> N <unit> before/after the reference (a period's start)
        assert node.amount is not None and node.unit is not None
        unit, ref = node.unit, start
        if node.direction == "before":
            boundary = add_units(ref, -node.amount, unit)
            return {
                "<": boundary < t <= ref,
                "<=": boundary <= t <= ref,
                ">": t < boundary,
                ">=": t <= boundary,
                "=": truncate(t, unit) == truncate(boundary, unit),
                "!=": truncate(t, unit) != truncate(boundary, unit),
            }[node.op or "="]
        boundary = add_units(ref, node.amount, unit)
        return {
            "<": ref <= t < boundary,
            "<=": ref <= t <= boundary,
            ">": t > boundary,
            ">=": t >= boundary,
            "=": truncate(t, unit) == truncate(boundary, unit),
            "!=": truncate(t, unit) != truncate(boundary, unit),
        }[node.op or "="]
