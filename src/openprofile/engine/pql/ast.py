"""PQL types and syntax-tree nodes.

`parse` builds a *surface* tree (names as written: `Name`, `GetField`, `Method`, `Call`, `Binary`, ...).
`check` resolves and types it into a *checked* tree, which `to_sql` and `evaluate` consume. A checked tree
uses only these nodes, each with its `type` set:

- `Const` (a literal value: str, int, float, bool, `datetime.date`, or a naive UTC `datetime.datetime`);
- `Root` (the profile), `Events` (``xEvent``), `Var` (a bound list item), `Field` (a struct field);
- `Apply` (an operator or function applied to checked arguments; `fn` names it, see `APPLY_FUNCTIONS`);
- `ListFilter`, `ListAggregate` (list comprehensions over a bound `Var`);
- `Occurs` (with `Period` references).

Every implicit conversion is explicit in a checked tree (`Apply("toDouble"|"toDate"|"toTimestamp"|"isTrue"|
"nonEmpty")`), so the back ends never guess a type.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from openprofile.engine.structure import TypeNode

__all__ = [
    "APPLY_FUNCTIONS",
    "BOOL",
    "DATE",
    "DOUBLE",
    "INT",
    "STRING",
    "TIMESTAMP",
    "AggregateOver",
    "Apply",
    "ArrayLit",
    "Binary",
    "Binding",
    "Call",
    "Const",
    "Events",
    "ExistsValue",
    "Field",
    "Filter",
    "GetField",
    "ListAggregate",
    "ListFilter",
    "Literal",
    "Method",
    "Name",
    "Node",
    "Not",
    "Occurs",
    "PType",
    "Param",
    "Period",
    "Quantifier",
    "RelPeriod",
    "Root",
    "TimeWord",
    "Unary",
    "Value",
    "Var",
    "from_type_node",
    "list_of",
    "map_of",
]

Value: TypeAlias = str | int | float | bool | dt.date | dt.datetime


# --------------------------------------------------------------------------------------------------
# Types


@dataclass(frozen=True)
class PType:
    """A PQL value type: ``string``, ``int``, ``double``, ``bool``, ``date``, ``timestamp`` (scalars), ``list``
    (of `item`), ``map`` (string keys, values of `item`) or ``struct`` (`fields`, in order)."""

    kind: str
    item: PType | None = None
    fields: tuple[tuple[str, PType], ...] = ()

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("int", "double")

    @property
    def is_temporal(self) -> bool:
        return self.kind in ("date", "timestamp")

    @property
    def is_scalar(self) -> bool:
        return self.kind not in ("list", "map", "struct")

    def field(self, name: str) -> PType | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def describe(self) -> str:
        if self.kind == "list":
            assert self.item is not None
            return f"array of {self.item.describe()}"
        if self.kind == "map":
            assert self.item is not None
            return f"map of {self.item.describe()}"
        if self.kind == "struct":
            return "object"
        return {"int": "integer", "bool": "boolean"}.get(self.kind, self.kind)


STRING = PType("string")
INT = PType("int")
DOUBLE = PType("double")
BOOL = PType("bool")
DATE = PType("date")
TIMESTAMP = PType("timestamp")

_SCALARS = {
    "VARCHAR": STRING,
    "BIGINT": INT,
    "DOUBLE": DOUBLE,
    "BOOLEAN": BOOL,
    "DATE": DATE,
    "TIMESTAMPTZ": TIMESTAMP,
}


def list_of(item: PType) -> PType:
    return PType("list", item)


def map_of(item: PType) -> PType:
    return PType("map", item)


def from_type_node(node: TypeNode) -> PType:
    """The PQL type of a `Structure` type node (TIMESTAMPTZ is ``timestamp``: an instant, read in UTC)."""
    if isinstance(node, str):
        return _SCALARS[node]
    (kind, inner), = node.items()
    if kind == "struct":
        return PType("struct", fields=tuple((k, from_type_node(v)) for k, v in inner.items()))
    return PType(kind, from_type_node(inner))


# --------------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True, kw_only=True)
class Node:
    """A node: `line`/`column` (1-based) of where it starts in the text (or of its operator), and its `type`
    once checked."""

    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)
    type: PType | None = None


# Surface nodes (what `parse` returns) ------------------------------------------------------------


@dataclass(frozen=True)
class Literal(Node):
    """A string, integer, double or boolean literal."""

    value: str | int | float | bool


@dataclass(frozen=True)
class TimeWord(Node):
    """``now``, ``today``, ``yesterday`` or ``tomorrow``."""

    word: str


@dataclass(frozen=True)
class ArrayLit(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Name(Node):
    """A bare name: a field of the implicit context, a bound variable, or ``xEvent``."""

    name: str


@dataclass(frozen=True)
class Param(Node):
    """``$1`` (the profile)."""

    index: int


@dataclass(frozen=True)
class GetField(Node):
    """``obj.name``; the position is the name's."""

    obj: Node
    name: str


@dataclass(frozen=True)
class Method(Node):
    """``obj.name(args)``; the position is the name's."""

    obj: Node
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Call(Node):
    """``name(args)``: ``date``, ``inSegment``, ``if``, ``currentMonth``, ..."""

    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Filter(Node):
    """``obj[cond]``: the items of a list for which `cond` (evaluated with the item as context) holds."""

    obj: Node
    cond: Node


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    """``left op right`` for arithmetic, comparison, ``and``, ``or``, ``in``, ``notIn``, ``like``; the position is
    the operator's."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Not(Node):
    operand: Node


@dataclass(frozen=True)
class ExistsValue(Node):
    """``exists X``."""

    operand: Node


@dataclass(frozen=True)
class RelPeriod(Node):
    """``this|last|next <unit>`` (only after ``occurs``)."""

    which: str
    unit: str


@dataclass(frozen=True)
class Period(Node):
    """(Checked) the period [start, start + 1 unit); `start` is a timestamp expression."""

    start: Node
    unit: str


@dataclass(frozen=True)
class Occurs(Node):
    """``subject occurs ...``. `form` is one of:

    - ``"cmp"``: ``occurs <op> <amount> <unit> <direction> <ref>``;
    - ``"dir"``: ``occurs <direction> <ref>``;
    - ``"on"``: ``occurs [on] <ref>``;
    - ``"between"``: ``occurs between <ref> and <ref2>``.

    `direction` is ``"before"`` or ``"after"`` (``from`` is read as ``after``). In a checked tree `subject` is a
    timestamp and each reference is a `Period` or a timestamp (an instant).
    """

    subject: Node
    form: str
    ref: Node
    ref2: Node | None = None
    op: str | None = None
    amount: int | None = None
    unit: str | None = None
    direction: str | None = None


@dataclass(frozen=True)
class Binding(Node):
    """``var from source [where cond]`` in ``exists``/``select``."""

    var: str
    source: Node
    cond: Node | None


@dataclass(frozen=True)
class Quantifier(Node):
    """``exists B1, B2, ...`` (kind ``"exists"``) or ``select B`` (kind ``"select"``)."""

    kind: str
    bindings: tuple[Binding, ...]


@dataclass(frozen=True)
class AggregateOver(Node):
    """``fn value over var from source [where cond]``."""

    fn: str
    value: Node
    var: str
    source: Node
    cond: Node | None


# Checked nodes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Const(Node):
    """A constant (strings, ints, floats, bools, dates, naive-UTC datetimes)."""

    value: Any


@dataclass(frozen=True)
class Root(Node):
    """The profile row."""


@dataclass(frozen=True)
class Events(Node):
    """``xEvent``: the profile's experience events."""


@dataclass(frozen=True)
class Var(Node):
    """A list item bound by a filter, an aggregate or a quantifier; `id` is unique in its expression."""

    id: int
    name: str


@dataclass(frozen=True)
class Field(Node):
    """A field of a struct value."""

    obj: Node
    name: str


@dataclass(frozen=True)
class Apply(Node):
    """An operator or function (`fn`, see `APPLY_FUNCTIONS`) applied to `args`; `param` is a constant
    parameter (a time unit, a case-sensitivity flag) where the function has one."""

    fn: str
    args: tuple[Node, ...]
    param: Any = None


@dataclass(frozen=True)
class ListFilter(Node):
    """The items of `source` (a list) for which `cond` holds, `var` bound to each item."""

    source: Node
    var: Var
    cond: Node


@dataclass(frozen=True)
class ListAggregate(Node):
    """``count`` (items), ``sum``, ``average``, ``min``, ``max`` of `value` (`var` bound to each item of
    `source`) over the items where it is not null."""

    fn: str
    source: Node
    var: Var
    value: Node


APPLY_FUNCTIONS: dict[str, str] = {
    # logic (operands are two-valued booleans)
    "and": "both true",
    "or": "either true",
    "not": "negation",
    "isTrue": "a boolean value that is true (null is false)",
    "nonEmpty": "a list that is not null and has at least one item",
    # comparisons (false when either side is null)
    "=": "", "!=": "", "<": "", "<=": "", ">": "", ">=": "",
    # arithmetic (null when either side is null; / and % by zero are null)
    "+": "", "-": "", "*": "", "/": "real division", "%": "remainder with the sign of the dividend",
    "neg": "unary minus",
    # conversions
    "toDouble": "integer to double",
    "toDate": "a 'YYYY-MM-DD' string to a date (null if it is not one)",
    "toTimestamp": "a date to midnight UTC",
    # null tests
    "isNull": "", "isNotNull": "",
    "exists": "not null, and for lists and maps not empty",
    # strings (param: case sensitive)
    "startsWith": "", "endsWith": "", "contains": "", "equals": "",
    "notEqualTo": "", "doesNotStartWith": "", "doesNotEndWith": "", "doesNotContain": "",
    "like": "", "matches": "regular expression found in the string",
    # lists and maps (in, notIn, includes and intersects are written with "=", "or" and nonEmpty(ListFilter))
    "count": "number of items (0 for null)", "array": "a list of the arguments",
    "get": "map value", "keys": "", "values": "",
    # time
    "now": "", "truncate": "param: unit", "shift": "args[1] units (param) after args[0]",
    "getYear": "", "getMonth": "", "getDayOfMonth": "",
    # misc
    "if": "", "inSegment": "param: segment id",
}
"""The functions an `Apply` may name (with a note where the meaning is not obvious)."""
