"""Surface tree → checked tree: resolve names against the profile and event structures, type every node, and
make every implicit conversion explicit (see `openprofile.engine.pql.ast`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .ast import (
    BOOL,
    DATE,
    DOUBLE,
    INT,
    STRING,
    TIMESTAMP,
    AggregateOver,
    Apply,
    ArrayLit,
    Binary,
    Binding,
    Call,
    Const,
    Events,
    ExistsValue,
    Field,
    Filter,
    GetField,
    ListAggregate,
    ListFilter,
    Literal,
    Method,
    Name,
    Node,
    Not,
    Occurs,
    Param,
    Period,
    PType,
    Quantifier,
    RelPeriod,
    Root,
    TimeWord,
    Unary,
    Var,
    list_of,
)
from .errors import PQLTypeError, PQLUnknownField, PQLUnsupported

__all__ = ["PREDICATES", "Checker", "iter_nodes", "parse_date_string", "parse_temporal_literal"]

PREDICATES: frozenset[str] = frozenset({
    "and", "or", "not", "isTrue", "nonEmpty", "=", "!=", "<", "<=", ">", ">=", "isNull", "isNotNull", "exists",
    "startsWith", "endsWith", "contains", "equals", "notEqualTo", "doesNotStartWith", "doesNotEndWith",
    "doesNotContain", "like", "matches", "inSegment",
})
"""`Apply` functions whose result is a two-valued boolean (never null)."""

_STRING_PREDICATES = frozenset({
    "startsWith", "endsWith", "contains", "equals", "notEqualTo", "doesNotStartWith", "doesNotEndWith",
    "doesNotContain",
})
_COMPARISONS = frozenset({"=", "!=", "<", "<=", ">", ">="})
_ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})
_INT64 = (-(2**63), 2**63 - 1)
_DATE_STRING = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_REGEX_UNSUPPORTED = [
    (re.compile(r"\(\?<?[=!]"), "lookaround in regular expressions"),
    (re.compile(r"\\[1-9]|\(\?P=|\\k<"), "backreferences in regular expressions"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers in regular expressions"),
    (re.compile(r"\(\?>"), "atomic groups in regular expressions"),
]


def iter_nodes(node: Node) -> Iterator[Node]:
    """`node` and every node below it."""
    yield node
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, Node):
            yield from iter_nodes(value)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, Node):
                    yield from iter_nodes(item)


def parse_date_string(text: str) -> dt.date | None:
    """`text` as a date if it is exactly ``YYYY-MM-DD`` (a real date, year >= 1), else None."""
    if not _DATE_STRING.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def parse_temporal_literal(text: str) -> dt.date | dt.datetime | None:
    """A string literal read as a date (``YYYY-MM-DD``) or an ISO 8601 timestamp (naive means UTC; the result
    is a naive UTC datetime), or None."""
    day = parse_date_string(text)
    if day is not None:
        return day
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9].*", text):
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _path_text(node: Node) -> str:
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Param):
        return "$1"
    if isinstance(node, GetField):
        return f"{_path_text(node.obj)}.{node.name}"
    if isinstance(node, Method):
        return f"{_path_text(node.obj)}.{node.name}()"
    if isinstance(node, Filter):
        return f"{_path_text(node.obj)}[...]"
    return "(expression)"


def _err(node: Node, message: str) -> PQLTypeError:
    return PQLTypeError(message, node.line, node.column)


def _pos(node: Node) -> dict[str, int | None]:
    return {"line": node.line, "column": node.column}


@dataclass(frozen=True)
class _Scope:
    context: Node
    """What bare names are fields of: `Root()` or a `Var` (the item of a filter or a method aggregate)."""
    context_type: PType
    context_text: str
    variables: Mapping[str, Var]
    profile: bool
    """True when the context is the profile (``xEvent`` is visible)."""


class Checker:
    """Checks one expression; `next_var` numbers the variables it binds."""

    def __init__(self, profile: PType, events: PType) -> None:
        self.profile = profile
        self.events = events
        self.next_var = 0

    def check_root(self, node: Node) -> Node:
        scope = _Scope(Root(type=self.profile), self.profile, "the profile", {}, True)
        return self.condition(node, scope)

    # ----------------------------------------------------------------------------------------------
    # Conditions and values

    def condition(self, node: Node, scope: _Scope) -> Node:
        """A two-valued boolean: predicates as they are, boolean values via isTrue, lists via nonEmpty."""
        typed = self.value(node, scope)
        return self.as_condition(typed, node)

    def as_condition(self, typed: Node, node: Node) -> Node:
        assert typed.type is not None
        if _is_predicate(typed):
            return typed
        if typed.type == BOOL:
            return Apply("isTrue", (typed,), type=BOOL, **_pos(typed))
        if typed.type.kind == "list":
            return Apply("nonEmpty", (typed,), type=BOOL, **_pos(typed))
        raise _err(node, f"expected a condition, but {_path_text(node)} is {_a(typed.type)}")

    def value(self, node: Node, scope: _Scope) -> Node:
        result = self._value_or_root(node, scope)
        if isinstance(result, Root):
            raise _err(node, "$1 (the profile) can only be used to reach its fields, as in $1.person")
        return result

    def _value_or_root(self, node: Node, scope: _Scope) -> Node:
        method = getattr(self, f"_v_{type(node).__name__}", None)
        if method is None:  # pragma: no cover - every surface node has a method
            raise _err(node, f"unexpected {type(node).__name__}")
        result: Node = method(node, scope)
        assert result.type is not None, node
        return result

    # literals ---------------------------------------------------------------------------------

    def _v_Literal(self, node: Literal, scope: _Scope) -> Node:
        value = node.value
        if isinstance(value, bool):
            return Const(value, type=BOOL, **_pos(node))
        if isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise _err(node, f"integer {value} is out of range (64-bit)")
            return Const(value, type=INT, **_pos(node))
        if isinstance(value, float):
            return Const(value, type=DOUBLE, **_pos(node))
        return Const(value, type=STRING, **_pos(node))

    def _v_TimeWord(self, node: TimeWord, scope: _Scope) -> Node:
        now = Apply("now", (), type=TIMESTAMP, **_pos(node))
        if node.word == "now":
            return now
        today = Apply("truncate", (now,), "day", type=TIMESTAMP, **_pos(node))
        if node.word == "today":
            return today
        days = -1 if node.word == "yesterday" else 1
        return Apply("shift", (today, Const(days, type=INT)), "day", type=TIMESTAMP, **_pos(node))

    def _v_ArrayLit(self, node: ArrayLit, scope: _Scope) -> Node:
        if not node.items:
            raise _err(node, "an empty array [] is only allowed after in/notIn and in intersects([])")
        items = [self.value(item, scope) for item in node.items]
        item_type = self._unify(items, node, "array items")
        items = [self._convert(item, item_type) for item in items]
        return Apply("array", tuple(items), type=list_of(item_type), **_pos(node))

    # names ------------------------------------------------------------------------------------

    def _v_Param(self, node: Param, scope: _Scope) -> Node:
        return Root(type=self.profile, **_pos(node))

    def _v_Name(self, node: Name, scope: _Scope) -> Node:
        var = scope.variables.get(node.name)
        if var is not None:
            return dataclasses.replace(var, line=node.line, column=node.column)
        if scope.profile and node.name == "xEvent":
            return Events(type=list_of(self.events), **_pos(node))
        ctx = scope.context_type
        if ctx.kind != "struct":
            raise _err(node, f"'{node.name}' is not defined: the items of {scope.context_text} are "
                             f"{_a(ctx)}, not objects with fields")
        field_type = ctx.field(node.name)
        if field_type is None:
            raise self._unknown(node.name, node.name, ctx, scope.context_text, node)
        return Field(scope.context, node.name, type=field_type, **_pos(node))

    def _unknown(self, path: str, name: str, struct: PType, where: str, node: Node) -> PQLUnknownField:
        names = [k for k, _ in struct.fields]
        close = [k for k in names if k.casefold() == name.casefold()] or difflib.get_close_matches(name, names, 3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return PQLUnknownField(path, node.line, node.column, f"unknown field '{path}' in {where}{hint}")

    def _v_GetField(self, node: GetField, scope: _Scope) -> Node:
        obj = self._value_or_root(node.obj, scope)
        assert obj.type is not None
        written = _path_text(node.obj)
        if isinstance(obj, Root) and node.name == "xEvent":
            return Events(type=list_of(self.events), **_pos(node))
        if obj.type.kind == "struct":
            field_type = obj.type.field(node.name)
            if field_type is None:
                where = "the profile" if isinstance(obj, Root) else f"'{written}'"
                raise self._unknown(f"{written}.{node.name}", node.name, obj.type, where, node)
            return Field(obj, node.name, type=field_type, **_pos(node))
        if obj.type.kind == "list":
            raise _err(node, f"{written} is an array: reach its items' fields with a filter "
                             f"({written}[{node.name} ...]), exists, select or an aggregate, not '.{node.name}'")
        if obj.type.kind == "map":
            raise _err(node, f"{written} is a map: use {written}.get(\"{node.name}\")")
        raise _err(node, f"{written} is {_a(obj.type)}; it has no field '{node.name}'")

    # functions --------------------------------------------------------------------------------

    def _v_Call(self, node: Call, scope: _Scope) -> Node:
        name, args = node.name, node.args
        if name == "date":
            return self._date_literal(node)
        if name == "inSegment":
            self._arity(node, args, 1, 1)
            (arg,) = args
            if not isinstance(arg, Literal) or not isinstance(arg.value, str):
                raise _err(node, 'inSegment takes a segment id as a string literal, e.g. inSegment("...")')
            return Apply("inSegment", (), arg.value, type=BOOL, **_pos(node))
        if name == "if":
            self._arity(node, args, 3, 3)
            test = self.condition(args[0], scope)
            branches = [self.value(args[1], scope), self.value(args[2], scope)]
            result_type = self._unify(branches, node, "the branches of if")
            a, b = (self._convert(x, result_type) for x in branches)
            return Apply("if", (test, a, b), type=result_type, **_pos(node))
        self._arity(node, args, 0, 0)
        now = Apply("now", (), type=TIMESTAMP, **_pos(node))
        part = {"currentMonth": "getMonth", "currentYear": "getYear", "currentDayOfMonth": "getDayOfMonth"}[name]
        return Apply(part, (now,), type=INT, **_pos(node))

    def _date_literal(self, node: Call) -> Node:
        self._arity(node, node.args, 3, 3)
        parts: list[int] = []
        for arg in node.args:
            if not isinstance(arg, Literal) or type(arg.value) is not int:
                raise _err(arg, "date(year, month, day) takes three integer literals")
            parts.append(arg.value)
        try:
            value = dt.date(*parts)
        except ValueError as error:
            raise _err(node, f"date({', '.join(map(str, parts))}) is not a valid date: {error}") from None
        return Const(value, type=DATE, **_pos(node))

    @staticmethod
    def _arity(node: Node, args: tuple[Node, ...], low: int, high: int) -> None:
        if not low <= len(args) <= high:
            name = node.name if isinstance(node, Call | Method) else "function"
            want = str(low) if low == high else f"{low} to {high}"
            raise _err(node, f"{name} takes {want} argument{'s' if high != 1 else ''}, not {len(args)}")

    # methods ----------------------------------------------------------------------------------

    def _v_Method(self, node: Method, scope: _Scope) -> Node:
        name, args = node.name, node.args
        recv = self.value(node.obj, scope)
        rt = recv.type
        assert rt is not None
        written = _path_text(node.obj)
        pos = _pos(node)

        if name in ("exists", "isNull", "isNotNull"):
            self._arity(node, args, 0, 0)
            return Apply(name, (recv,), type=BOOL, **pos)

        if name in _STRING_PREDICATES or name == "matches":
            self._need(recv, STRING, node, f"{name}() applies to strings", node.obj)
            if name == "matches":
                self._arity(node, args, 1, 1)
                return Apply("matches", (recv, self._regex(args[0])), type=BOOL, **pos)
            self._arity(node, args, 1, 2)
            arg = self.value(args[0], scope)
            self._need(arg, STRING, args[0], f"the argument of {name}() must be a string")
            case_sensitive = True
            if len(args) == 2:
                flag = args[1]
                if not isinstance(flag, Literal) or not isinstance(flag.value, bool):
                    raise _err(flag, f"the second argument of {name}() (case sensitive) must be true or false")
                case_sensitive = flag.value
            return Apply(name, (recv, arg), case_sensitive, type=BOOL, **pos)

        if name in ("getYear", "getMonth", "getDayOfMonth"):
            self._arity(node, args, 0, 0)
            return Apply(name, (self._temporal(recv, node.obj),), type=INT, **pos)

        if name == "get":
            self._arity(node, args, 1, 1)
            if rt.kind != "map":
                raise _err(node, f"get() applies to maps, but {written} is {_a(rt)}")
            key = self.value(args[0], scope)
            self._need(key, STRING, args[0], "map keys are strings")
            assert rt.item is not None
            return Apply("get", (recv, key), type=rt.item, **pos)
        if name in ("keys", "values"):
            self._arity(node, args, 0, 0)
            if rt.kind != "map":
                raise _err(node, f"{name}() applies to maps, but {written} is {_a(rt)}")
            assert rt.item is not None
            return Apply(name, (recv,), type=list_of(STRING if name == "keys" else rt.item), **pos)

        # list methods
        if rt.kind != "list":
            raise _err(node, f"{name}() applies to arrays, but {written} is {_a(rt)}")
        item = rt.item
        assert item is not None
        if name == "count":
            self._arity(node, args, 0, 0)
            return Apply("count", (recv,), type=INT, **pos)
        if name == "includes":
            self._arity(node, args, 1, 1)
            return self._includes(recv, self.value(args[0], scope), node)
        if name == "intersects":
            self._arity(node, args, 1, 1)
            return self._intersects(recv, args[0], scope, node)
        # sum, average, min, max
        self._arity(node, args, 0, 1)
        var = self._new_var("item", item, node)
        if args:
            if item.kind != "struct":
                raise _err(node, f"{name}(...) with an argument needs an array of objects; {written} is {_a(rt)} "
                                 f"(use {name}())")
            inner = _Scope(var, item, f"the items of {written}", scope.variables, False)
            value = self.value(args[0], inner)
        else:
            value = var
        return self._aggregate(name, recv, var, value, node)

    def _aggregate(self, fn: str, source: Node, var: Var, value: Node, node: Node) -> Node:
        vt = value.type
        assert vt is not None
        if fn == "count":
            return ListAggregate("count", source, var, value, type=INT, **_pos(node))
        if fn in ("sum", "average"):
            if not vt.is_numeric:
                raise _err(node, f"{fn} needs numbers, not {vt.describe()} values")
            return ListAggregate(fn, source, var, value, type=DOUBLE if fn == "average" else vt, **_pos(node))
        if not (vt.is_numeric or vt.is_temporal or vt == STRING):
            raise _err(node, f"{fn} needs numbers, strings, dates or timestamps, not {vt.describe()} values")
        return ListAggregate(fn, source, var, value, type=vt, **_pos(node))

    def _regex(self, arg: Node) -> Node:
        if not isinstance(arg, Literal) or not isinstance(arg.value, str):
            raise _err(arg, "matches() takes a regular expression as a string literal")
        pattern = arg.value
        for probe, construct in _REGEX_UNSUPPORTED:
            if probe.search(pattern):
                raise PQLUnsupported(construct, arg.line, arg.column)
        try:
            re.compile(pattern)
        except re.error as error:
            raise _err(arg, f"invalid regular expression {pattern!r}: {error}") from None
        return Const(pattern, type=STRING, **_pos(arg))

    # filters, quantifiers, aggregates ---------------------------------------------------------

    def _new_var(self, name: str, item: PType, node: Node) -> Var:
        self.next_var += 1
        return Var(self.next_var, name, type=item, **_pos(node))

    def _list(self, node: Node, scope: _Scope, what: str) -> Node:
        typed = self.value(node, scope)
        assert typed.type is not None
        if typed.type.kind != "list":
            raise _err(node, f"{what} must be an array, but {_path_text(node)} is {_a(typed.type)}")
        return typed

    def _v_Filter(self, node: Filter, scope: _Scope) -> Node:
        source = self._list(node.obj, scope, "what [...] filters")
        assert source.type is not None and source.type.item is not None
        var = self._new_var("item", source.type.item, node)
        inner = _Scope(var, source.type.item, f"the items of {_path_text(node.obj)}", scope.variables, False)
        cond = self.condition(node.cond, inner)
        return ListFilter(source, var, cond, type=source.type, **_pos(node))

    def _bind(self, var_name: str, source_node: Node, cond: Node | None, scope: _Scope,
              node: Node) -> tuple[Node, Var, _Scope, Node | None]:
        source = self._list(source_node, scope, f"what {var_name} ranges over")
        assert source.type is not None and source.type.item is not None
        var = self._new_var(var_name, source.type.item, node)
        inner = dataclasses.replace(scope, variables={**scope.variables, var_name: var})
        typed_cond = self.condition(cond, inner) if cond is not None else None
        return source, var, inner, typed_cond

    def _v_Quantifier(self, node: Quantifier, scope: _Scope) -> Node:
        if node.kind == "select":
            (b,) = node.bindings
            source, var, _, cond = self._bind(b.var, b.source, b.cond, scope, b)
            if cond is None:
                return source
            return ListFilter(source, var, cond, type=source.type, **_pos(node))
        return self._exists(list(node.bindings), scope, node)

    def _exists(self, bindings: list[Binding], scope: _Scope, node: Node) -> Node:
        b = bindings[0]
        source, var, inner, cond = self._bind(b.var, b.source, b.cond, scope, b)
        if len(bindings) > 1:
            rest = self._exists(bindings[1:], inner, node)
            cond = rest if cond is None else Apply("and", (cond, rest), type=BOOL, **_pos(rest))
        listed = source if cond is None else ListFilter(source, var, cond, type=source.type, **_pos(b))
        return Apply("nonEmpty", (listed,), type=BOOL, **_pos(node))

    def _v_AggregateOver(self, node: AggregateOver, scope: _Scope) -> Node:
        source, var, inner, cond = self._bind(node.var, node.source, node.cond, scope, node)
        if cond is not None:
            source = ListFilter(source, var, cond, type=source.type, **_pos(node))
        value = self.value(node.value, inner)
        return self._aggregate(node.fn, source, var, value, node)

    def _v_ExistsValue(self, node: ExistsValue, scope: _Scope) -> Node:
        return Apply("exists", (self.value(node.operand, scope),), type=BOOL, **_pos(node))

    # operators --------------------------------------------------------------------------------

    def _v_Not(self, node: Not, scope: _Scope) -> Node:
        return Apply("not", (self.condition(node.operand, scope),), type=BOOL, **_pos(node))

    def _v_Unary(self, node: Unary, scope: _Scope) -> Node:
        operand = self.value(node.operand, scope)
        assert operand.type is not None
        if not operand.type.is_numeric:
            raise _err(node, f"unary minus needs a number, not {_a(operand.type)}")
        return Apply("neg", (operand,), type=operand.type, **_pos(node))

    def _v_Binary(self, node: Binary, scope: _Scope) -> Node:
        op = node.op
        if op in ("and", "or"):
            left, right = self.condition(node.left, scope), self.condition(node.right, scope)
            return Apply(op, (left, right), type=BOOL, **_pos(node))
        if op in ("in", "notIn"):
            return self._in(node, scope)
        left, right = self.value(node.left, scope), self.value(node.right, scope)
        if op in _COMPARISONS:
            return self.compare(op, left, right, node)
        if op == "like":
            self._need(left, STRING, node.left, "like applies to strings")
            self._need(right, STRING, node.right, "a like pattern is a string")
            return Apply("like", (left, right), type=BOOL, **_pos(node))
        assert op in _ARITHMETIC
        lt, rt = left.type, right.type
        assert lt is not None and rt is not None
        if not (lt.is_numeric and rt.is_numeric):
            raise _err(node, f"'{op}' needs numbers, not {_a(lt)} and {_a(rt)}")
        if op == "/" or lt != rt:
            left, right = self._convert(left, DOUBLE), self._convert(right, DOUBLE)
            result = DOUBLE
        else:
            result = lt
        return Apply(op, (left, right), type=result, **_pos(node))

    def compare(self, op: str, left: Node, right: Node, node: Node) -> Node:
        """``left op right`` with both sides converted to one comparable type."""
        common = self._comparable(left, right, node, op)
        left, right = self._convert(left, common), self._convert(right, common)
        return Apply(op, (left, right), type=BOOL, **_pos(node))

    def _comparable(self, left: Node, right: Node, node: Node, op: str) -> PType:
        lt, rt = left.type, right.type
        assert lt is not None and rt is not None
        if lt.is_scalar and lt == rt:
            if lt == BOOL and op not in ("=", "!="):
                raise _err(node, f"booleans are compared with = and != only, not '{op}'")
            return lt
        if lt.is_numeric and rt.is_numeric:
            return DOUBLE
        if lt.is_temporal or rt.is_temporal:
            lk, rk = self._temporal_kind(left), self._temporal_kind(right)
            if lk is not None and rk is not None:
                return TIMESTAMP if TIMESTAMP in (lk, rk) else DATE
            bad, other = (right, left) if lk is not None else (left, right)
            if isinstance(bad, Const) and isinstance(bad.value, str):
                raise _err(node, f"cannot compare {_a(other.type or STRING)} with {bad.value!r}: "
                                 f"it is not a date (YYYY-MM-DD) or an ISO 8601 timestamp")
        raise _err(node, f"cannot compare {_a(lt)} with {_a(rt)}")

    @staticmethod
    def _temporal_kind(node: Node) -> PType | None:
        """The temporal type `node` can be read as: its own, or that of a string (constant: parsed now; other
        strings: as a date at run time)."""
        t = node.type
        assert t is not None
        if t.is_temporal:
            return t
        if t == STRING:
            if isinstance(node, Const):
                value = parse_temporal_literal(node.value)
                if value is None:
                    return None
                return TIMESTAMP if isinstance(value, dt.datetime) else DATE
            return DATE
        return None

    def _convert(self, node: Node, target: PType) -> Node:
        """`node` converted to `target` (int → double, string → date/timestamp, date → timestamp)."""
        t = node.type
        assert t is not None
        if t == target or not target.is_scalar:
            return node
        if target == DOUBLE and t == INT:
            if isinstance(node, Const):
                return dataclasses.replace(node, value=float(node.value), type=DOUBLE)
            return Apply("toDouble", (node,), type=DOUBLE, **_pos(node))
        if target.is_temporal and t == STRING:
            if isinstance(node, Const):
                parsed = parse_temporal_literal(node.value)
                assert parsed is not None
                node = Const(parsed, type=TIMESTAMP if isinstance(parsed, dt.datetime) else DATE, **_pos(node))
            else:
                node = Apply("toDate", (node,), type=DATE, **_pos(node))
            return self._convert(node, target)
        if target == TIMESTAMP and t == DATE:
            if isinstance(node, Const):
                return Const(dt.datetime.combine(node.value, dt.time()), type=TIMESTAMP, **_pos(node))
            return Apply("toTimestamp", (node,), type=TIMESTAMP, **_pos(node))
        raise _err(node, f"cannot use {_a(t)} as {_a(target)}")  # pragma: no cover - callers unify first

    def _unify(self, items: list[Node], node: Node, what: str) -> PType:
        """One type all `items` convert to (numbers → double, dates with timestamps → timestamp)."""
        types = {item.type for item in items}
        if len(types) == 1:
            (only,) = types
            assert only is not None
            return only
        if all(t is not None and t.is_numeric for t in types):
            return DOUBLE
        if all(t is not None and t.is_temporal for t in types):
            return TIMESTAMP
        names = ", ".join(sorted({t.describe() for t in types if t is not None}))
        raise _err(node, f"{what} have different types: {names}")

    def _need(self, typed: Node, want: PType, node: Node, message: str, written: Node | None = None) -> None:
        """A type error at `node` unless `typed` (what `written`, default `node`, checked to) is `want`."""
        if typed.type != want:
            assert typed.type is not None
            raise _err(node, f"{message}; {_path_text(written or node)} is {_a(typed.type)}")

    def _temporal(self, typed: Node, node: Node) -> Node:
        """A date or timestamp (strings are read as dates)."""
        kind = self._temporal_kind(typed)
        if kind is None:
            assert typed.type is not None
            raise _err(node, f"expected a date or a timestamp, but {_path_text(node)} is {_a(typed.type)}")
        return self._convert(typed, kind)

    # membership -------------------------------------------------------------------------------

    def _in(self, node: Binary, scope: _Scope) -> Node:
        value = self.value(node.left, scope)
        pos = _pos(node)
        if isinstance(node.right, ArrayLit):
            items = [self.value(item, scope) for item in node.right.items]
            tests = [self.compare("=", value, item, item) for item in items]
            test: Node = Const(False, type=BOOL, **pos)
            for one in tests:
                test = one if isinstance(test, Const) else Apply("or", (test, one), type=BOOL, **pos)
        else:
            listed = self._list(node.right, scope, f"the right side of {node.op}")
            test = self._includes(listed, value, node)
        if node.op == "in":
            return test
        present = Apply("isNotNull", (value,), type=BOOL, **pos)
        return Apply("and", (present, Apply("not", (test,), type=BOOL, **pos)), type=BOOL, **pos)

    def _includes(self, listed: Node, value: Node, node: Node) -> Node:
        assert listed.type is not None and listed.type.item is not None
        var = self._new_var("item", listed.type.item, node)
        eq = self.compare("=", var, value, node)
        return Apply("nonEmpty", (ListFilter(listed, var, eq, type=listed.type, **_pos(node)),),
                     type=BOOL, **_pos(node))

    def _intersects(self, recv: Node, arg: Node, scope: _Scope, node: Node) -> Node:
        if isinstance(arg, ArrayLit):
            test: Node = Const(False, type=BOOL, **_pos(node))
            for item in arg.items:
                one = self._includes(recv, self.value(item, scope), item)
                test = one if isinstance(test, Const) else Apply("or", (test, one), type=BOOL, **_pos(node))
            return test
        other = self._list(arg, scope, "the argument of intersects()")
        assert other.type is not None and other.type.item is not None
        var = self._new_var("item", other.type.item, node)
        return Apply("nonEmpty", (ListFilter(other, var, self._includes(recv, var, node), type=other.type,
                                             **_pos(node)),), type=BOOL, **_pos(node))

    # time -------------------------------------------------------------------------------------

    def _v_Occurs(self, node: Occurs, scope: _Scope) -> Node:
        subject = self.value(node.subject, scope)
        subject = self._convert(self._temporal(subject, node.subject), TIMESTAMP)
        ref = self._time_ref(node.ref, scope)
        ref2 = self._time_ref(node.ref2, scope) if node.ref2 is not None else None
        return dataclasses.replace(node, subject=subject, ref=ref, ref2=ref2, type=BOOL)

    def _time_ref(self, node: Node, scope: _Scope) -> Node:
        """A `Period` (a day, or this/last/next unit) or a timestamp (an instant)."""
        pos = _pos(node)
        if isinstance(node, RelPeriod):
            now = Apply("now", (), type=TIMESTAMP, **pos)
            start: Node = Apply("truncate", (now,), node.unit, type=TIMESTAMP, **pos)
            offset = {"this": 0, "last": -1, "next": 1}[node.which]
            if offset:
                start = Apply("shift", (start, Const(offset, type=INT)), node.unit, type=TIMESTAMP, **pos)
            return Period(start, node.unit, type=TIMESTAMP, **pos)
        if isinstance(node, TimeWord) and node.word != "now":
            return Period(self.value(node, scope), "day", type=TIMESTAMP, **pos)
        typed = self.value(node, scope)
        typed = self._temporal(typed, node)
        if typed.type == DATE:
            return Period(self._convert(typed, TIMESTAMP), "day", type=TIMESTAMP, **pos)
        return typed


def _is_predicate(node: Node) -> bool:
    if isinstance(node, Apply):
        return node.fn in PREDICATES
    if isinstance(node, Occurs):
        return True
    return isinstance(node, Const) and isinstance(node.value, bool)


def _a(t: PType) -> str:
    text = t.describe()
    article = "an" if text[0] in "aeiou" else "a"
    return f"{article} {text}"
