"""PQL (Profile Query Language): parse, check, compile to DuckDB SQL, and a reference interpreter.

Segment definitions are PQL text (``expression.format = "pql/text"``). A segment is evaluated over *merged
profiles*: one row per profile whose columns are the profile's XDM attributes (structs, lists, maps, as
described by a `Structure`) plus ``xEvent``, the profile's experience events (a list of event structs).

Usage::

    expr = check(parse(text), profile_structure, event_structure)   # PQLError if it is not usable
    sql = to_sql(expr, now_sql=timestamp_sql(now), in_segment_sql=lambda sid: ...)
    con.sql(f"SELECT profile_id FROM merged WHERE {sql}")
    evaluate(expr, profile_dict, event_dicts, now=now, in_segment=...)   # the same answer, in plain Python

`parse` checks syntax only; `check` resolves every name against the structures, types every operand and
returns the *checked* expression that `to_sql` and `evaluate` take. `expr.segment_refs` names the segments
that ``inSegment`` refers to (known after `parse`), so callers can order segment-of-segment evaluation.

Errors (`PQLError` and its subclasses) carry `message`, `line` and `column` (1-based):
`PQLSyntaxError` (with `expected`), `PQLUnsupported` (with `construct`), `PQLUnknownField` (with `path`),
`PQLTypeError`.

Supported PQL
-------------
- Literals: strings ``"x"`` (escapes ``\\" \\\\ \\n \\t \\uXXXX``; an unknown escape keeps its backslash),
  integers, doubles, ``true``/``false``, ``date(2020, 3, 14)``, ``now``, ``today``, ``yesterday``,
  ``tomorrow``, arrays ``[1, 2]``.
- Paths: ``person.name.firstName``, ``$1.person...``, ``(Profile) => Profile.person...``; ``xEvent``.
- Comparisons ``= != < <= > >=`` on strings, numbers (integers and doubles mix), booleans (``=``/``!=``),
  dates and timestamps (mix; a date is midnight UTC). A string *literal* compared with a date/timestamp must
  be ``YYYY-MM-DD`` or ISO 8601; a string *field* compared with a date/timestamp (e.g. an XDM date stored as
  ``"1990-05-01"``) is read as a date when it is exactly ``YYYY-MM-DD``, else it is null.
- ``and``, ``or``, ``not (...)``, ``!(...)``; ``if(test, a, b)``.
- ``x in [...]``, ``x notIn [...]`` (also against a list value); ``like "%es%"`` (``%`` any run, ``_`` one
  character, no escape character; case-sensitive).
- Strings: ``.startsWith(s[, caseSensitive])``, ``.endsWith``, ``.contains``, ``.equals``, ``.notEqualTo``,
  ``.doesNotStartWith``, ``.doesNotEndWith``, ``.doesNotContain`` (all with the optional flag, default
  true), ``.matches(regex)`` (found anywhere; anchor with ``^``/``$``).
- ``.exists()``, ``exists X``, ``.isNull()``, ``.isNotNull()``.
- Arithmetic ``+ - * / %`` and unary ``-`` on numbers.
- Dates: ``currentYear()``, ``currentMonth()``, ``currentDayOfMonth()``, ``x.getYear()``,
  ``x.getMonth()``, ``x.getDayOfMonth()``, and ``occurs``:
  ``T occurs <cmp> N <unit> before|after|from <time>``, ``T occurs before|after <time>``,
  ``T occurs [on] <time>``, ``T occurs between <time> and <time>``, where ``<time>`` is ``now``, ``today``,
  ``yesterday``, ``tomorrow``, ``this|last|next <unit>``, a date or a timestamp.
- Arrays: ``.count()``, ``.includes(x)``, ``.intersects([...])``, ``.sum()``/``.average()``/``.min()``/
  ``.max()`` (of the items, or of a field of the items: ``xEvent.sum(commerce.order.priceTotal)``),
  filters ``list[condition]`` (the condition's names are fields of the item:
  ``xEvent[eventType = "commerce.purchases"]``), a filtered list used as a condition (non-empty).
- Maps: ``.get("key")``, ``.keys()``, ``.values()``.
- Quantifiers: ``exists E from xEvent where <cond>`` (``:`` for ``where``; several bindings
  ``exists E from xEvent where C1, I from E.productListItems where C2`` nest: some E with C1 and some I of
  E with C2), ``select E from xEvent where <cond>`` (true when an event matches).
- Aggregates: ``sum|average|min|max|count V over X from L [where C]``, e.g.
  ``sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD" > 100``
  (the ``where`` condition extends as far right as it can, but comparisons do not chain, so the trailing
  ``> 100`` compares the sum; parenthesise the aggregate to be explicit).
- ``inSegment("segment-id")`` (the caller says what membership means).

Not supported (`PQLUnsupported`, with the construct's position): ``CHAIN``/``WHAT``/``WHEN`` (sequential
events), ``let``, ``forall``, ``^`` (enclosing-level references), ``$2`` and later parameters, and the array
and string methods ``intersection``, ``subsetOf``, ``supersetOf``, ``distinct``, ``groupBy``, ``filter``,
``map``, ``topN``, ``bottomN``, ``head``, ``regexGroup``; regular expressions with lookaround,
backreferences, possessive quantifiers or atomic groups.

Names
-----
Bare names are fields of the *context*: the profile at the top level (plus ``xEvent``), the item inside a
filter ``L[...]`` or an aggregate method's argument. Named variables (``exists E from ...``) are visible in
their conditions and in later bindings and shadow fields; inside them the context stays what it was.
Field names are case-sensitive. ``true``, ``false``, ``now``, ``today``, ``yesterday`` and ``tomorrow``
are reserved; so are the keywords (``and``, ``or``, ``not``, ``in``, ``notIn``, ``like``, ``occurs``,
``exists``, ``select``, ``sum``, ...) where an expression starts.

Null semantics (the same in SQL and in the interpreter)
-------------------------------------------------------
A condition is always true or false, never null:

- a comparison, ``in``, ``like``, string test or ``occurs`` with a null (missing) operand is **false** —
  including the negative forms ``!=``, ``notIn`` (as Adobe documents), ``notEqualTo``, ``doesNot...``;
- ``not (C)`` is the plain negation of the two-valued C, so ``not (x = "a")`` is true when x is missing,
  while ``x != "a"`` is false; ``isNull()``/``isNotNull()``/``exists`` test presence;
- a boolean field used as a condition is true only when it is true;
- a list used as a condition (a filter, ``select``) is true when it has at least one item.

Values propagate null: arithmetic with null is null, ``/`` and ``%`` by zero are null, ``get`` of a missing
key is null, a field of a missing object is null. Aggregates skip null values: ``count`` of a missing list
is 0, ``sum`` of no values is 0, ``average``/``min``/``max`` of no values are null. ``exists`` is
false for null, and for empty lists and maps.

Time
----
All times are UTC. ``now`` is the evaluation instant the caller passes; ``today`` is midnight (UTC) of its
day, ``yesterday``/``tomorrow`` the midnights before and after. Stored ``TIMESTAMPTZ`` values are read as
UTC instants; a date used with a timestamp is its midnight UTC. Months (and years, decades, centuries,
millennia) are calendar arithmetic that keep the day of the month, clamped (Mar 31 - 1 month = Feb 28/29);
weeks start on Monday; a decade/century/millennium starts at a year divisible by 10/100/1000.

``occurs`` references are *periods* or *instants*. ``today``, ``yesterday``, ``tomorrow`` and any date are
the period of that day, ``this|last|next <unit>`` the period of that unit (``last week`` = the Monday-to-Monday
week before this one); ``now`` and any timestamp are instants. With P = [s, e):

- ``T occurs [on] P``: s ≤ T < e (for an instant: T = it);
- ``T occurs before P``: T < s; ``after P``: T ≥ e (instant: T > it);
- ``T occurs between P1 and P2``: s1 ≤ T and T < e2 (instant P2: T ≤ it);
- ``T occurs <op> N <unit> before P``, with r = s (a period's start, or the instant) and b = r - N units:
  ``<``: b < T ≤ r; ``<=``: b ≤ T ≤ r; ``>``: T < b; ``>=``: T ≤ b; ``=``: T falls in the same unit as b
  (``person.birthDate occurs = 3 days before today``: born on that day), ``!=``: it does not.
  ``after``/``from`` mirror it with b = r + N units: ``<``: r ≤ T < b, ``<=``: r ≤ T ≤ b, ``>``: T > b,
  ``>=``: T ≥ b.

Numbers
-------
Integers are 64-bit and stay integers under ``+ - * %`` (overflow is an error in SQL); ``/`` is always
real division; mixing integers and doubles gives doubles. ``sum`` adds left to right; ``average`` is the
sum (as a double) divided by the count. ``%`` has the sign of the dividend.

Known differences between the engines (outside the contract the tests hold them to): case-insensitive tests
lower-case with each engine's Unicode tables (they differ for a few characters, e.g. ``İ``); ``matches`` runs
on RE2 in SQL and on Python's ``re`` (ASCII ``\\d \\w \\s``) in the interpreter — simple patterns agree, but
``$`` before a final newline and case-insensitive non-ASCII letters may not; NaN and infinities in data;
times outside the years 1-9999; integers beyond ±2^53 compared with doubles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from openprofile.engine.structure import Structure, check_structure

from .ast import Call, Events, Field, Literal, Node, PType, Root, Var, from_type_node
from .check import Checker, iter_nodes
from .compile import Compiler, sql_string, timestamp_sql
from .errors import PQLError, PQLSyntaxError, PQLTypeError, PQLUnknownField, PQLUnsupported
from .interpret import Interpreter
from .syntax import parse_text

__all__ = [
    "Expression",
    "PQLError",
    "PQLSyntaxError",
    "PQLTypeError",
    "PQLUnknownField",
    "PQLUnsupported",
    "References",
    "check",
    "evaluate",
    "parse",
    "references",
    "sql_string",
    "timestamp_sql",
    "to_sql",
]


@dataclass(frozen=True)
class Expression:
    """A parsed PQL expression: `text` as given, `node` its syntax tree (see `openprofile.engine.pql.ast`),
    `checked` whether `check` typed it, and `segment_refs` the segment ids named by ``inSegment``."""

    text: str
    node: Node
    segment_refs: frozenset[str]
    checked: bool = False


def parse(text: str) -> Expression:
    """Parse PQL text (syntax only). Raises `PQLSyntaxError` or `PQLUnsupported`."""
    parsed = parse_text(text)
    refs = frozenset(
        n.args[0].value for n in iter_nodes(parsed.node)
        if isinstance(n, Call) and n.name == "inSegment" and len(n.args) == 1
        and isinstance(n.args[0], Literal) and isinstance(n.args[0].value, str)
    )
    return Expression(text, parsed.node, refs)


def _struct(structure: Structure, what: str) -> PType:
    try:
        check_structure(structure)
    except ValueError as error:
        raise ValueError(f"the {what} structure is not valid: {error}") from None
    return PType("struct", fields=tuple((k, from_type_node(v)) for k, v in structure.items()))


def check(expr: Expression, profile: Structure, events: Structure) -> Expression:
    """`expr` checked against the profile's columns and the events' fields: every name exists, every operand
    has a fitting type, and the result is a condition. Returns the typed expression that `to_sql` and
    `evaluate` take. Raises `PQLUnknownField`, `PQLTypeError` or `PQLUnsupported`.

    The profile's own ``xEvent`` column, if it has one, is ignored: ``xEvent`` is always the events.
    """
    if expr.checked:
        return expr
    profile_type = _struct({k: v for k, v in profile.items() if k != "xEvent"}, "profile")
    events_type = _struct(events, "event") if events else PType("struct")
    node = Checker(profile_type, events_type).check_root(expr.node)
    return Expression(expr.text, node, expr.segment_refs, checked=True)


def _need_checked(expr: Expression) -> None:
    if not isinstance(expr, Expression) or not expr.checked:
        raise ValueError("the expression is not checked: pass it through check() first")


def to_sql(expr: Expression, *, now_sql: str, in_segment_sql: Callable[[str], str]) -> str:
    """A DuckDB boolean expression (never null) over one merged-profile row that is true when the profile
    qualifies. `now_sql` is SQL for the evaluation instant (a ``TIMESTAMPTZ``; see `timestamp_sql`);
    `in_segment_sql(id)` is SQL for "this profile is in segment id" (null counts as false)."""
    _need_checked(expr)
    return Compiler(now_sql, in_segment_sql).sql(expr.node)


def evaluate(expr: Expression, profile: Mapping[str, Any], events: list[dict[str, Any]], *, now: dt.datetime,
             in_segment: Callable[[str], bool]) -> bool:
    """Whether one profile qualifies, computed in plain Python (the reference for `to_sql`).

    `profile` maps column names to values as Python gives them (dicts for structs, lists, dicts or lists of
    pairs for maps, `datetime.date`, aware `datetime.datetime` — naive ones are taken as UTC); a missing
    key is null. `events` are the profile's events as dicts. `now` is the evaluation instant.
    """
    _need_checked(expr)
    if now.tzinfo is not None:
        now = now.astimezone(dt.UTC).replace(tzinfo=None)
    return Interpreter(profile, events, now, in_segment).run(expr.node)



@dataclass(frozen=True)
class References:
    """What a checked expression reads, so that an evaluation can leave the rest out: the profile's top-level
    columns (None: all of them), whether it reads ``xEvent``, and the top-level fields it reads of list items
    (None: whole items) — a superset of the event fields it reads."""

    profile: frozenset[str] | None
    events: bool
    item_fields: frozenset[str] | None


def references(expr: Expression) -> References:
    """`References` of a checked expression: every ``Field`` of the profile row or of a bound list item names
    what is read; a profile row or an item used whole (not through a field) means everything."""
    _need_checked(expr)
    profile: set[str] | None = set()
    items: set[str] | None = set()
    events = False
    for node in iter_nodes(expr.node):
        if isinstance(node, Events):
            events = True
        for f in dataclasses.fields(node):
            if f.name == "var":  # a binder declares its variable; it does not read it
                continue
            children = getattr(node, f.name)
            for child in children if isinstance(children, tuple) else (children,):
                if isinstance(child, Root):
                    if isinstance(node, Field) and profile is not None:
                        profile.add(node.name)
                    elif not isinstance(node, Field):
                        profile = None
                elif isinstance(child, Var):
                    if isinstance(node, Field) and items is not None:
                        items.add(node.name)
                    elif not isinstance(node, Field):
                        items = None
    return References(None if profile is None else frozenset(profile), events,
                      None if items is None else frozenset(items))
