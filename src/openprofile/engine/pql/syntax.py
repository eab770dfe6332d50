"""PQL text → surface syntax tree (`parse`).

The grammar is LALR(1) (lark). Its few shift/reduce conflicts are all resolved as shifts on purpose: the
condition after ``where`` (in ``exists``/``select``/``sum ... over``) extends as far to the right as it can,
like a lambda body, so ``exists E from xEvent where A and B`` means ``exists E ... where (A and B)``. One
consequence is the documented aggregate form: in ``sum X.p over X from xEvent where X.c = "USD" > 100`` the
condition ``X.c = "USD"`` cannot absorb ``> 100`` (comparisons do not chain), so ``> 100`` compares the sum.

Known PQL that openprofile does not evaluate is reported as `PQLUnsupported` — by name here where the grammar
cannot read it (``CHAIN``, ``let``, ``forall``, ``^``, ``$2``), or where it is an unsupported function or
method name (``topN``, ``groupBy``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.tree import Meta

from .ast import (
    AggregateOver,
    ArrayLit,
    Binary,
    Binding,
    Call,
    ExistsValue,
    Filter,
    GetField,
    Literal,
    Method,
    Name,
    Node,
    Not,
    Occurs,
    Param,
    Quantifier,
    RelPeriod,
    TimeWord,
    Unary,
)
from .errors import PQLError, PQLSyntaxError, PQLUnsupported

__all__ = [
    "FUNCTIONS",
    "METHODS",
    "TIME_UNITS",
    "UNSUPPORTED_FUNCTIONS",
    "UNSUPPORTED_METHODS",
    "ParsedText",
    "parse_text",
]

GRAMMAR = r"""
?start: expr

?expr: expr OR and_expr                      -> binary
     | and_expr
?and_expr: and_expr AND not_expr             -> binary
     | not_expr
?not_expr: NOT not_expr                      -> not_
     | BANG not_expr                         -> not_
     | predicate
?predicate: sum_expr
     | sum_expr cmp_op sum_expr              -> compare
     | sum_expr IN sum_expr                  -> binary
     | sum_expr NOTIN sum_expr               -> binary
     | sum_expr LIKE sum_expr                -> binary
     | sum_expr OCCURS occurs_spec           -> occurs
!cmp_op: "=" | "!=" | "<" | "<=" | ">" | ">="

occurs_spec: cmp_op INT NAME direction time_ref   -> occurs_cmp
     | direction time_ref                         -> occurs_dir
     | ON time_ref                                -> occurs_on
     | time_ref                                   -> occurs_on
     | BETWEEN time_ref AND time_ref              -> occurs_between
!direction: "before" | "after" | "from"
!rel: "this" | "last" | "next"
?time_ref: rel NAME                          -> rel_period
     | sum_expr

?sum_expr: sum_expr PLUS product             -> binary
     | sum_expr MINUS product                -> binary
     | product
?product: product STAR unary                 -> binary
     | product SLASH unary                   -> binary
     | product PERCENT unary                 -> binary
     | unary
?unary: MINUS unary                          -> neg
     | postfix
?postfix: primary
     | postfix "." NAME                      -> get_field
     | postfix "." NAME "(" [args] ")"       -> method
     | postfix "[" expr "]"                  -> filter_
args: expr ("," expr)*
?primary: STRING                             -> lit_string
     | INT                                   -> lit_int
     | DOUBLE                                -> lit_double
     | NAME                                  -> name
     | PARAM                                 -> param
     | NAME "(" [args] ")"                   -> call
     | "(" expr ")"
     | "[" [args] "]"                        -> array
     | EXISTS postfix                        -> exists_value
     | EXISTS binding ("," binding)*         -> exists_quantifier
     | SELECT binding                        -> select
     | agg_fn unary OVER NAME FROM postfix [WHERE expr]  -> aggregate
binding: NAME FROM postfix [(WHERE | COLON) expr]
!agg_fn: "sum" | "average" | "min" | "max" | "count"

OR: "or"
AND: "and"
NOT: "not"
BANG: "!"
IN: "in"
NOTIN: "notIn"
LIKE: "like"
OCCURS: "occurs"
ON: "on"
BETWEEN: "between"
EXISTS: "exists"
SELECT: "select"
OVER: "over"
FROM: "from"
WHERE: "where"
COLON: ":"
PLUS: "+"
MINUS: "-"
STAR: "*"
SLASH: "/"
PERCENT: "%"

NAME: /[A-Za-z_][A-Za-z0-9_]*/
PARAM: /\$[0-9]+/
STRING: /"(?:[^"\\\n]|\\.)*"/
DOUBLE.2: /[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+/
INT: /[0-9]+/

%ignore /[ \t\r\n]+/
"""

TIME_UNITS: dict[str, str] = {}
for _singular, _plural in [
    ("millisecond", "milliseconds"), ("second", "seconds"), ("minute", "minutes"), ("hour", "hours"),
    ("day", "days"), ("week", "weeks"), ("month", "months"), ("year", "years"), ("decade", "decades"),
    ("century", "centuries"), ("millennium", "millennia"),
]:
    TIME_UNITS[_singular] = TIME_UNITS[_plural] = _singular
"""Time unit words (singular and plural) → the unit."""

METHODS: frozenset[str] = frozenset({
    "startsWith", "endsWith", "contains", "equals", "notEqualTo", "doesNotStartWith", "doesNotEndWith",
    "doesNotContain", "matches", "exists", "isNull", "isNotNull", "getMonth", "getYear", "getDayOfMonth",
    "intersects", "includes", "count", "sum", "average", "min", "max", "get", "keys", "values",
})
"""Supported ``x.method(...)`` names."""

UNSUPPORTED_METHODS: frozenset[str] = frozenset({
    "intersection", "subsetOf", "supersetOf", "distinct", "groupBy", "filter", "map", "topN", "bottomN",
    "head", "regexGroup",
})
"""PQL methods that are recognised and refused with `PQLUnsupported`."""

FUNCTIONS: frozenset[str] = frozenset({
    "date", "inSegment", "if", "currentMonth", "currentYear", "currentDayOfMonth",
})
"""Supported ``name(...)`` functions."""

UNSUPPORTED_FUNCTIONS: dict[str, str] = {"chain": "CHAIN", "what": "CHAIN", "when": "CHAIN"}
"""PQL functions (lower-cased) refused with `PQLUnsupported`, → the construct named in the error."""

_TIME_WORDS = frozenset({"now", "today", "yesterday", "tomorrow"})

_TERMINAL_NAMES = {
    "NAME": "a name",
    "STRING": "a string",
    "INT": "an integer",
    "DOUBLE": "a decimal number",
    "PARAM": "$1",
    "$END": "end of input",
}

_PARSER = Lark(GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=True)


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        definition = _PARSER.get_terminal(name)
    except KeyError:
        return name
    pattern = definition.pattern
    if pattern.type == "str":
        return f'"{pattern.value}"'
    return name


# --------------------------------------------------------------------------------------------------
# Unsupported constructs the grammar cannot read


_SCAN = re.compile(
    r'(?P<string>"(?:[^"\\\n]|\\.)*"?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<param>\$[0-9]+)|(?P<ws>\s+)|(?P<other>.)'
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    offset: int


def _tokens(text: str) -> Iterator[_Tok]:
    for match in _SCAN.finditer(text):
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            yield _Tok(kind, match.group(), match.start())


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _find_unsupported(text: str) -> list[tuple[int, str]]:
    """(offset, construct) of each unsupported construct the grammar cannot read, in text order."""
    toks = list(_tokens(text))
    found: list[tuple[int, str]] = []
    for i, tok in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        nxt2 = toks[i + 2] if i + 2 < len(toks) else None
        if tok.kind == "name":
            lowered = tok.text.lower()
            if lowered in UNSUPPORTED_FUNCTIONS and nxt is not None and nxt.text == "(":
                found.append((tok.offset, UNSUPPORTED_FUNCTIONS[lowered]))
            elif tok.text == "let" and nxt is not None and nxt.kind == "name" and nxt2 is not None and nxt2.text == "=":
                found.append((tok.offset, "let"))
            elif tok.text == "forall" and nxt is not None and nxt.kind == "name":
                found.append((tok.offset, "forall"))
        elif tok.kind == "other" and tok.text == "^":
            found.append((tok.offset, "^ (reference to an enclosing level)"))
        elif tok.kind == "param" and tok.text != "$1":
            found.append((tok.offset, f"parameter {tok.text}"))
    return found


_LAMBDA_HEAD = re.compile(r"\A\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*=>")


# --------------------------------------------------------------------------------------------------
# Tree → nodes


def _pos(item: Token | Meta) -> dict[str, Any]:
    if isinstance(item, Token):
        return {"line": item.line, "column": item.column}
    return {"line": getattr(item, "line", None), "column": getattr(item, "column", None)}


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unquote(token: Token) -> str:
    body = token[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2:i + 6]):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        else:  # unknown escapes keep their backslash: "\d" is the same as "\\d"
            out.append(ch)
            i += 1
    return "".join(out)


class _Builder(Transformer[Token, Node]):
    """Lark tree → surface nodes. Raises `PQLError` (wrapped by lark in `VisitError`)."""

    def __init__(self, alias: str | None) -> None:
        super().__init__()
        self.alias = alias

    # literals and names

    @v_args(inline=True)
    def lit_string(self, tok: Token) -> Node:
        return Literal(_unquote(tok), **_pos(tok))

    @v_args(inline=True)
    def lit_int(self, tok: Token) -> Node:
        return Literal(int(tok), **_pos(tok))

    @v_args(inline=True)
    def lit_double(self, tok: Token) -> Node:
        return Literal(float(tok), **_pos(tok))

    @v_args(inline=True)
    def name(self, tok: Token) -> Node:
        text = str(tok)
        if text in ("true", "false"):
            return Literal(text == "true", **_pos(tok))
        if text in _TIME_WORDS:
            return TimeWord(text, **_pos(tok))
        if self.alias is not None and text == self.alias:
            return Param(1, **_pos(tok))
        return Name(text, **_pos(tok))

    @v_args(inline=True)
    def param(self, tok: Token) -> Node:
        if tok != "$1":
            raise PQLUnsupported(f"parameter {tok}", tok.line, tok.column,
                                 f"parameter {tok} is not supported: a segment has one parameter, $1 (the profile)")
        return Param(1, **_pos(tok))

    @v_args(meta=True)
    def array(self, meta: Meta, children: list[Any]) -> Node:
        (items,) = children
        return ArrayLit(tuple(items or ()), **_pos(meta))

    def args(self, children: list[Node]) -> list[Node]:
        return list(children)

    @v_args(inline=True)
    def call(self, name: Token, args: list[Node] | None) -> Node:
        text = str(name)
        if text.lower() in UNSUPPORTED_FUNCTIONS:
            raise PQLUnsupported(UNSUPPORTED_FUNCTIONS[text.lower()], name.line, name.column)
        if text not in FUNCTIONS:
            raise PQLSyntaxError(f"unknown function '{text}'", name.line, name.column,
                                 [f"{f}(...)" for f in sorted(FUNCTIONS)])
        return Call(text, tuple(args or ()), **_pos(name))

    # postfix

    @v_args(inline=True)
    def get_field(self, obj: Node, name: Token) -> Node:
        return GetField(obj, str(name), **_pos(name))

    @v_args(inline=True)
    def method(self, obj: Node, name: Token, args: list[Node] | None) -> Node:
        text = str(name)
        if text in UNSUPPORTED_METHODS:
            raise PQLUnsupported(f"{text}()", name.line, name.column)
        if text not in METHODS:
            raise PQLSyntaxError(f"unknown method '{text}'", name.line, name.column,
                                 [f".{m}(...)" for m in sorted(METHODS)])
        return Method(obj, text, tuple(args or ()), **_pos(name))

    @v_args(meta=True)
    def filter_(self, meta: Meta, children: list[Node]) -> Node:
        obj, cond = children
        return Filter(obj, cond, **_pos(meta))

    # operators

    @v_args(inline=True)
    def binary(self, left: Node, op: Token, right: Node) -> Node:
        return Binary(str(op), left, right, **_pos(op))

    @v_args(inline=True)
    def compare(self, left: Node, op: Token, right: Node) -> Node:
        return Binary(str(op), left, right, **_pos(op))

    @v_args(inline=True)
    def cmp_op(self, op: Token) -> Token:
        return op

    @v_args(inline=True)
    def neg(self, op: Token, operand: Node) -> Node:
        if isinstance(operand, Literal) and type(operand.value) in (int, float):
            value = operand.value
            assert isinstance(value, int | float)
            return Literal(-value, **_pos(op))
        return Unary("-", operand, **_pos(op))

    @v_args(inline=True)
    def not_(self, op: Token, operand: Node) -> Node:
        return Not(operand, **_pos(op))

    # occurs

    @v_args(inline=True)
    def occurs(self, subject: Node, op: Token, spec: dict[str, Any]) -> Node:
        return Occurs(subject, **spec, **_pos(op))

    @v_args(inline=True)
    def occurs_cmp(self, op: Token, amount: Token, unit: Token, direction: str, ref: Node) -> dict[str, Any]:
        return {"form": "cmp", "op": str(op), "amount": int(amount), "unit": self._unit(unit),
                "direction": direction, "ref": ref}

    @v_args(inline=True)
    def occurs_dir(self, direction: str, ref: Node) -> dict[str, Any]:
        return {"form": "dir", "direction": direction, "ref": ref}

    def occurs_on(self, children: list[Any]) -> dict[str, Any]:
        return {"form": "on", "ref": children[-1]}

    @v_args(inline=True)
    def occurs_between(self, _between: Token, first: Node, _and: Token, second: Node) -> dict[str, Any]:
        return {"form": "between", "ref": first, "ref2": second}

    @v_args(inline=True)
    def direction(self, tok: Token) -> str:
        return "after" if str(tok) == "from" else str(tok)

    @v_args(inline=True)
    def rel(self, tok: Token) -> Token:
        return tok

    @v_args(inline=True)
    def rel_period(self, which: Token, unit: Token) -> Node:
        return RelPeriod(str(which), self._unit(unit), **_pos(which))

    @staticmethod
    def _unit(tok: Token) -> str:
        unit = TIME_UNITS.get(str(tok))
        if unit is None:
            raise PQLSyntaxError(f"'{tok}' is not a time unit", tok.line, tok.column, sorted(TIME_UNITS))
        return unit

    # quantifiers and aggregates

    @v_args(inline=True)
    def exists_value(self, kw: Token, operand: Node) -> Node:
        return ExistsValue(operand, **_pos(kw))

    def exists_quantifier(self, children: list[Any]) -> Node:
        kw, *bindings = children
        return Quantifier("exists", tuple(bindings), **_pos(kw))

    @v_args(inline=True)
    def select(self, kw: Token, binding: Binding) -> Node:
        return Quantifier("select", (binding,), **_pos(kw))

    def binding(self, children: list[Any]) -> Node:
        var, _from, source, *rest = children
        cond = rest[-1] if rest and isinstance(rest[-1], Node) else None
        return Binding(str(var), source, cond, **_pos(var))

    @v_args(inline=True)
    def agg_fn(self, tok: Token) -> Token:
        return tok

    @v_args(inline=True)
    def aggregate(self, fn: Token, value: Node, _over: Token, var: Token, _from: Token, source: Node,
                  _where: Token | None, cond: Node | None) -> Node:
        return AggregateOver(str(fn), value, str(var), source, cond, **_pos(fn))


# --------------------------------------------------------------------------------------------------
# Entry point


@dataclass(frozen=True)
class ParsedText:
    node: Node
    alias: str | None


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    return _position(text, len(stripped))


def _syntax_error(text: str, error: UnexpectedInput) -> PQLError:
    if isinstance(error, UnexpectedToken):
        expected_names = set(error.accepts or error.expected)
        if error.token.type == "$END":
            line, column = _end_position(text)
            message = "unexpected end of input"
        else:
            line, column = error.token.line, error.token.column
            message = f"unexpected {error.token.value!r}"
    elif isinstance(error, UnexpectedCharacters):
        expected_names = set(error.allowed or ())
        line, column = error.line, error.column
        message = f"unexpected character {error.char!r}"
    else:
        assert isinstance(error, UnexpectedEOF)
        expected_names = set(error.expected)
        line, column = _end_position(text)
        message = "unexpected end of input"
    if line is None or column is None or line < 0:  # pragma: no cover - lark always gives positions here
        line, column = _end_position(text)
    offset = _offset(text, line, column)
    for start, construct in _find_unsupported(text):
        if start <= offset:
            sline, scol = _position(text, start)
            return PQLUnsupported(construct, sline, scol)
    expected = sorted({_describe_terminal(name) for name in expected_names})
    if expected:
        message += "; expected " + ", ".join(expected)
    return PQLSyntaxError(message, line, column, expected)


def _offset(text: str, line: int, column: int) -> int:
    start = 0
    for _ in range(line - 1):
        start = text.index("\n", start) + 1
    return start + column - 1


def parse_text(text: str) -> ParsedText:
    """The surface tree of `text`; `PQLSyntaxError`/`PQLUnsupported` if it is not (supported) PQL."""
    if not isinstance(text, str):
        raise TypeError("a PQL expression is a string")
    alias: str | None = None
    source = text
    head = _LAMBDA_HEAD.match(text)
    if head is not None:
        alias = head.group(1)
        source = " " * head.end() + text[head.end():]
    if not source.strip():
        line, column = _end_position(text)
        raise PQLSyntaxError("empty expression", line, column, ["an expression"])
    try:
        tree = _PARSER.parse(source)
    except UnexpectedInput as error:
        raise _syntax_error(source, error) from None
    try:
        node = _Builder(alias).transform(tree)
    except VisitError as error:
        if isinstance(error.orig_exc, PQLError):
            raise error.orig_exc from None
        raise
    return ParsedText(node, alias)
