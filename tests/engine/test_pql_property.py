"""Property test: for random profiles (with random events) and random PQL expressions of the supported subset,
the DuckDB SQL from `to_sql` gives, for every profile, the same answer as the reference interpreter.

Values are chosen to hit the edges the two engines could disagree on: nulls everywhere (missing structs,
fields, lists, maps, events), empty lists, timestamps exactly on and one microsecond around `occurs`
boundaries, month ends and leap days for calendar arithmetic, date strings that are and are not dates,
doubles that are multiples of 1/4 (so sums are exact and the engines cannot differ by rounding order).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openprofile.engine.pql import check, evaluate, parse, timestamp_sql, to_sql
from openprofile.engine.pql.interpret import add_units, truncate
from openprofile.engine.structure import Structure, to_arrow_schema

IDENTITY = {"struct": {"id": "VARCHAR", "primary": "BOOLEAN"}}
PROFILE: Structure = {
    "person": {"struct": {
        "name": {"struct": {"firstName": "VARCHAR", "lastName": "VARCHAR"}},
        "birthDate": "VARCHAR",
        "gender": "VARCHAR",
    }},
    "homeAddress": {"struct": {"countryCode": "VARCHAR"}},
    "loyalty": {"struct": {"tier": "VARCHAR", "points": "BIGINT", "score": "DOUBLE", "joinDate": "DATE",
                           "vip": "BOOLEAN"}},
    "lastSeen": "TIMESTAMPTZ",
    "favoriteColors": {"list": "VARCHAR"},
    "scores": {"list": "BIGINT"},
    "identityMap": {"map": {"list": IDENTITY}},
}
EVENT: Structure = {
    "_id": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "eventType": "VARCHAR",
    "commerce": {"struct": {"order": {"struct": {"priceTotal": "DOUBLE", "currencyCode": "VARCHAR"}}}},
    "productListItems": {"list": {"struct": {"SKU": "VARCHAR", "quantity": "BIGINT", "priceTotal": "DOUBLE"}}},
}
SCHEMA = to_arrow_schema({**PROFILE, "xEvent": {"list": {"struct": EVENT}}, "segs": {"list": "VARCHAR"},
                          "row_number": "BIGINT"})
CON = duckdb.connect(config={"threads": 1})
NOWS = [
    dt.datetime(2025, 3, 15, 12, 34, 56, 789000, tzinfo=dt.UTC),
    dt.datetime(2024, 2, 29, 0, 0, tzinfo=dt.UTC),
    dt.datetime(2024, 3, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(2025, 1, 1, 0, 0, tzinfo=dt.UTC),
    dt.datetime(2025, 3, 17, 0, 0, tzinfo=dt.UTC),  # a Monday
]

# --------------------------------------------------------------------------------------------------
# Random profiles and events

NAMES = ["", "Jo", "jo", "John", "JOHN", "Ann", "anna", "a_b", "a%b", "É", "é", "Zoë", "O'Neil"]
COUNTRIES = ["US", "CA", "us", "FR"]
COLORS = ["red", "blue", "green", "Red"]
EVENT_TYPES = ["commerce.purchases", "commerce.productViews", "web.webpagedetails.pageViews"]
SKUS = ["PS", "ps", "P5", "XB"]
DATE_STRINGS = ["1990-03-12", "2000-02-29", "1985-13-01", "2023-02-29", "abc", "", "1990-3-1", "0000-01-01"]


def maybe(strategy: st.SearchStrategy[Any], null: float = 0.15) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy) if null else strategy


def quarters(low: int = -40, high: int = 40) -> st.SearchStrategy[float]:
    return st.integers(low, high).map(lambda n: n / 4)


def instants(now: dt.datetime) -> st.SearchStrategy[dt.datetime]:
    """Timestamps near `now`, often exactly on unit boundaries relative to it, or one microsecond off."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    bases = [now, today, today.replace(day=1), today - dt.timedelta(days=today.weekday())]
    units = [dt.timedelta(days=1), dt.timedelta(hours=1), dt.timedelta(weeks=1), dt.timedelta(days=30),
             dt.timedelta(days=365)]
    return st.builds(
        lambda base, unit, n, us: base + n * unit + dt.timedelta(microseconds=us),
        st.sampled_from(bases), st.sampled_from(units), st.integers(-14, 3), st.sampled_from([0, 0, 1, -1]),
    )


def event(now: dt.datetime) -> st.SearchStrategy[dict[str, Any]]:
    items = maybe(st.lists(st.fixed_dictionaries({
        "SKU": maybe(st.sampled_from(SKUS)),
        "quantity": maybe(st.integers(0, 3)),
        "priceTotal": maybe(quarters(0, 40)),
    }), max_size=2))
    return st.fixed_dictionaries({
        "_id": st.sampled_from(["e1", "e2", "e3"]),
        "timestamp": maybe(instants(now), 0.1),
        "eventType": maybe(st.sampled_from(EVENT_TYPES), 0.1),
        "commerce": maybe(st.fixed_dictionaries({
            "order": maybe(st.fixed_dictionaries({
                "priceTotal": maybe(quarters(0, 400)),
                "currencyCode": maybe(st.sampled_from(["USD", "EUR"])),
            })),
        })),
        "productListItems": items,
    })


def profile(now: dt.datetime) -> st.SearchStrategy[dict[str, Any]]:
    today = now.date()
    dates = st.integers(-400, 60).map(lambda d: today + dt.timedelta(days=d))
    birth = st.one_of(st.sampled_from(DATE_STRINGS), dates.map(dt.date.isoformat))
    identity = st.fixed_dictionaries({"id": st.sampled_from(["1", "2"]), "primary": maybe(st.booleans())})
    return st.fixed_dictionaries({
        "person": maybe(st.fixed_dictionaries({
            "name": maybe(st.fixed_dictionaries({
                "firstName": maybe(st.sampled_from(NAMES)), "lastName": maybe(st.sampled_from(NAMES)),
            })),
            "birthDate": maybe(birth),
            "gender": maybe(st.sampled_from(["male", "female"])),
        })),
        "homeAddress": maybe(st.fixed_dictionaries({"countryCode": maybe(st.sampled_from(COUNTRIES))})),
        "loyalty": maybe(st.fixed_dictionaries({
            "tier": maybe(st.sampled_from(["gold", "silver"])),
            "points": maybe(st.integers(-2, 5)),
            "score": maybe(quarters()),
            "joinDate": maybe(dates),
            "vip": maybe(st.booleans()),
        })),
        "lastSeen": maybe(instants(now)),
        "favoriteColors": maybe(st.lists(maybe(st.sampled_from(COLORS), 0.1), max_size=3)),
        "scores": maybe(st.lists(maybe(st.integers(-2, 4), 0.1), max_size=3)),
        "identityMap": maybe(st.dictionaries(st.sampled_from(["ECID", "Email"]), st.lists(identity, max_size=2),
                                             max_size=2)),
        "xEvent": st.lists(event(now), max_size=3),
        "segs": st.lists(st.sampled_from(["s1", "s2"]), max_size=2, unique=True),
    })


PROFILES = {now: st.lists(profile(now), min_size=1, max_size=3) for now in NOWS}
"""Built once: building strategies is a good part of the cost of drawing from them."""


def to_arrow_value(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if isinstance(t, pa.MapType):
        return [(k, to_arrow_value(v, t.item_type)) for k, v in value.items()]
    if isinstance(t, pa.StructType):
        return {f.name: to_arrow_value(value.get(f.name), f.type) for f in t}
    if isinstance(t, pa.ListType):
        return [to_arrow_value(v, t.value_type) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Random expressions


@dataclass(frozen=True)
class Ctx:
    """Where an expression is generated: `prof` prefixes profile fields ("" at the top level or under a named
    variable, "$1." inside a filter), `ev` prefixes event fields (None outside events), `product` is True in a
    productListItems filter."""

    prof: str = ""
    ev: str | None = None
    product: bool = False
    depth: int = 3


Draw = Callable[[st.SearchStrategy[Any]], Any]


def pick(draw: Draw, options: list[Callable[[], str]], composite: list[Callable[[], str]] | None = None) -> str:
    """One of `options` (leaves) or, half the time when there are any, one of `composite`."""
    chosen: Callable[[], str] = draw(st.sampled_from(composite if composite and draw(st.booleans()) else options))
    return chosen()


def num(draw: Draw, c: Ctx) -> str:
    p = c.prof
    leaves: list[Callable[[], str]] = [
        lambda: str(draw(st.integers(-2, 3))),
        lambda: repr(draw(quarters())),
        lambda: f"{p}loyalty.points",
        lambda: f"{p}loyalty.score",
        lambda: f"{p}scores.count()",
        lambda: f"{p}person.birthDate.getMonth()",
        lambda: f"{p}lastSeen.getDayOfMonth()",
        lambda: draw(st.sampled_from(["currentMonth()", "currentDayOfMonth()", "currentYear() - 2020"])),
    ]
    if c.ev is not None:
        e = c.ev
        leaves += [
            lambda: f"{e}commerce.order.priceTotal",
            lambda: f"{e}productListItems.count()",
            lambda: f"{e}productListItems.sum(quantity)",
            lambda: f"{e}timestamp.getDayOfMonth()",
        ]
    if c.product:
        leaves += [lambda: "quantity", lambda: "priceTotal"]
    if c.depth <= 0:
        return pick(draw, leaves)
    d = replace(c, depth=c.depth - 1)
    ev = f"{p}xEvent"
    composite: list[Callable[[], str]] = [
        lambda: f"({num(draw, d)} {draw(st.sampled_from(['+', '-', '*', '/', '%']))} {num(draw, d)})",
        lambda: f"-({num(draw, d)})",
        lambda: f"{ev}[{cond(draw, Ctx(prof='$1.', ev='', depth=d.depth))}].count()",
        lambda: f"{ev}.{draw(st.sampled_from(['sum', 'average', 'min', 'max']))}(commerce.order.priceTotal)",
        lambda: f"{p}scores.{draw(st.sampled_from(['sum', 'average', 'min', 'max']))}()",
        lambda: aggregate_over(draw, c, d),
        lambda: f"if({cond(draw, d)}, {num(draw, d)}, {num(draw, d)})",
        lambda: f"{p}identityMap.get(\"{draw(st.sampled_from(['ECID', 'Email']))}\").count()",
    ]
    return pick(draw, leaves, composite)


def aggregate_over(draw: Draw, c: Ctx, d: Ctx) -> str:
    var = f"X{d.depth}"
    fn = draw(st.sampled_from(["sum", "average", "min", "max", "count"]))
    where = ""
    if draw(st.booleans()):
        where = f" where {cond(draw, Ctx(prof=c.prof, ev=var + '.', depth=d.depth))}"
    return f"({fn} {var}.commerce.order.priceTotal over {var} from {c.prof}xEvent{where})"


def text(draw: Draw, c: Ctx) -> str:
    p = c.prof
    leaves: list[Callable[[], str]] = [
        lambda: '"' + draw(st.sampled_from(NAMES + COUNTRIES)).replace('"', "") + '"',
        lambda: f"{p}person.name.firstName",
        lambda: f"{p}person.gender",
        lambda: f"{p}homeAddress.countryCode",
        lambda: f"{p}loyalty.tier",
    ]
    if c.ev is not None:
        leaves += [lambda: f"{c.ev}eventType", lambda: f"{c.ev}commerce.order.currencyCode"]
    if c.product:
        leaves += [lambda: "SKU"]
    if c.depth > 0:
        leaves.append(lambda: f"if({cond(draw, replace(c, depth=c.depth - 1))}, {text(draw, c)}, \"US\")")
    return pick(draw, leaves)


def time(draw: Draw, c: Ctx) -> str:
    p = c.prof
    leaves: list[Callable[[], str]] = [
        lambda: f"{p}lastSeen",
        lambda: f"{p}loyalty.joinDate",
        lambda: draw(st.sampled_from(["now", "today", "yesterday", "tomorrow"])),
        lambda: f"date({draw(st.sampled_from(['2024, 2, 29', '2025, 3, 1', '2025, 3, 15', '2024, 12, 31']))})",
        lambda: f"{p}xEvent.{draw(st.sampled_from(['min', 'max']))}(timestamp)",
    ]
    if c.ev is not None:
        leaves.append(lambda: f"{c.ev}timestamp")
    return pick(draw, leaves)


def time_subject(draw: Draw, c: Ctx) -> str:
    return pick(draw, [lambda: time(draw, c), lambda: f"{c.prof}person.birthDate"])


def time_ref(draw: Draw, c: Ctx) -> str:
    return pick(draw, [
        lambda: draw(st.sampled_from(["now", "today", "yesterday", "tomorrow"])),
        lambda: f"{draw(st.sampled_from(['this', 'last', 'next']))} {draw(st.sampled_from(UNITS))}",
        lambda: time(draw, c),
        lambda: '"2025-03-10"',
    ])


LIKE_PATTERNS = ["%o%", "J_hn", "%", "a\\\\_b", "a%b", "_", "É%"]
UNITS = ["millisecond", "second", "minute", "hour", "day", "days", "week", "month", "months", "year",
         "decade", "century", "millennium"]
CMP = ["=", "!=", "<", "<=", ">", ">="]
STRING_METHODS = ["startsWith", "endsWith", "contains", "equals", "notEqualTo", "doesNotStartWith",
                  "doesNotEndWith", "doesNotContain"]


def occurs(draw: Draw, c: Ctx) -> str:
    subject = time_subject(draw, c)
    form = draw(st.sampled_from(["cmp", "dir", "on", "between"]))
    if form == "cmp":
        amount = draw(st.integers(0, 14))
        unit = draw(st.sampled_from(UNITS))
        direction = draw(st.sampled_from(["before", "after", "from"]))
        return f"{subject} occurs {draw(st.sampled_from(CMP))} {amount} {unit} {direction} {time_ref(draw, c)}"
    if form == "dir":
        return f"{subject} occurs {draw(st.sampled_from(['before', 'after']))} {time_ref(draw, c)}"
    if form == "on":
        return f"{subject} occurs {draw(st.sampled_from(['on ', '']))}{time_ref(draw, c)}"
    return f"{subject} occurs between {time_ref(draw, c)} and {time_ref(draw, c)}"


def cond(draw: Draw, c: Ctx) -> str:
    p = c.prof
    leaves: list[Callable[[], str]] = [
        lambda: f"{num(draw, c)} {draw(st.sampled_from(CMP))} {num(draw, c)}",
        lambda: f"{text(draw, c)} {draw(st.sampled_from(CMP))} {text(draw, c)}",
        lambda: f"{time_subject(draw, c)} {draw(st.sampled_from(CMP))} {time(draw, c)}",
        lambda: f"{p}loyalty.vip" + draw(st.sampled_from(["", " = true", " != false"])),
        lambda: (f"{text(draw, c)}.{draw(st.sampled_from(STRING_METHODS))}"
                 f"(\"{draw(st.sampled_from(['jo', 'J', 'n', 'É', 'é', '']))}\""
                 f"{draw(st.sampled_from(['', ', false', ', true']))})"),
        lambda: f"{text(draw, c)} like \"{draw(st.sampled_from(LIKE_PATTERNS))}\"",
        lambda: (f"{text(draw, c)}.matches(\"{draw(st.sampled_from(['^J', 'o', '(?i)^jo', 'n$', '^[A-Z]', '^$']))}\")"),
        lambda: f"{num(draw, c)} {draw(st.sampled_from(['in', 'notIn']))} [1, 2.5, {draw(st.integers(-2, 5))}]",
        lambda: f"{text(draw, c)} {draw(st.sampled_from(['in', 'notIn']))} [\"US\", \"Jo\"]",
        lambda: f"{text(draw, c)} {draw(st.sampled_from(['in', 'notIn']))} {p}favoriteColors",
        lambda: f"{draw(st.sampled_from(FIELDS)).format(p=p)}.{draw(st.sampled_from(NULL_TESTS))}()",
        lambda: f"exists {draw(st.sampled_from(FIELDS)).format(p=p)}",
        lambda: occurs(draw, c),
        lambda: f"{p}favoriteColors.includes(\"{draw(st.sampled_from(COLORS))}\")",
        lambda: f"{p}favoriteColors.intersects([\"red\", \"Red\"])",
        lambda: f"{p}scores.includes({draw(st.sampled_from(['2', '2.0', '2.5', '-1']))})",
        lambda: f"{p}scores.intersects([1, 2.0])",
        lambda: f"{p}identityMap.get(\"ECID\")[primary = true].exists()",
        lambda: f"{p}identityMap.keys().includes(\"Email\")",
        lambda: f"inSegment(\"{draw(st.sampled_from(['s1', 's2']))}\")",
        lambda: f"{p}person.birthDate.getYear() {draw(st.sampled_from(CMP))} 1990",
    ]
    if c.ev is not None:
        e = c.ev
        leaves += [
            lambda: f"{e}eventType = \"{draw(st.sampled_from(EVENT_TYPES))}\"",
            lambda: f"{e}productListItems[SKU = \"PS\"]",
            lambda: f"{e}productListItems[{product_cond(draw)}].count() {draw(st.sampled_from(CMP))} 1",
            lambda: f"{e}timestamp occurs <= {draw(st.integers(0, 40))} days before now",
        ]
    if c.depth <= 0:
        return pick(draw, leaves)
    d = replace(c, depth=c.depth - 1)
    var = f"E{c.depth}"
    composite: list[Callable[[], str]] = [
        lambda: f"({cond(draw, d)} and {cond(draw, d)})",
        lambda: f"({cond(draw, d)} or {cond(draw, d)})",
        lambda: f"{draw(st.sampled_from(['not ', '!']))}({cond(draw, d)})",
        lambda: f"{p}xEvent[{cond(draw, Ctx(prof='$1.', ev='', depth=d.depth))}]",
        lambda: f"(exists {var} from {p}xEvent where {cond(draw, Ctx(prof=p, ev=var + '.', depth=d.depth))})",
        lambda: (f"(exists {var} from {p}xEvent where {cond(draw, Ctx(prof=p, ev=var + '.', depth=d.depth))}, "
                 f"I{c.depth} from {var}.productListItems where I{c.depth}.quantity >= 1)"),
        lambda: f"(select {var} from {p}xEvent where {cond(draw, Ctx(prof=p, ev=var + '.', depth=d.depth))})",
        lambda: f"{aggregate_over(draw, c, d)} {draw(st.sampled_from(CMP))} {draw(quarters(0, 200))!r}",
    ]
    return pick(draw, leaves, composite)


def product_cond(draw: Draw) -> str:
    return str(draw(st.sampled_from([
        'SKU = "PS"', 'SKU.startsWith("p", false)', "quantity > 1", "priceTotal >= 2.5", "quantity.isNull()",
        'not (SKU = "PS")', '$1.loyalty.tier = "gold"',
    ])))


NULL_TESTS = ["exists", "isNull", "isNotNull"]
FIELDS = ["{p}loyalty", "{p}loyalty.points", "{p}person.name.firstName", "{p}favoriteColors", "{p}identityMap",
          "{p}lastSeen", "{p}xEvent"]


# --------------------------------------------------------------------------------------------------
# The property


def run_sql(sql: str, rows: list[dict[str, Any]], columns: int = 0) -> list[Any]:
    """`SELECT sql FROM profiles` over `rows`: one value per row, or a tuple per row when `columns` is given."""
    numbered = [{**r, "row_number": i} for i, r in enumerate(rows)]
    table = pa.Table.from_pylist([{f.name: to_arrow_value(r.get(f.name), f.type) for f in SCHEMA} for r in numbered],
                                 schema=SCHEMA)
    CON.register("profiles", table)
    try:
        result = CON.sql(f"SELECT {sql} FROM profiles ORDER BY row_number").fetchall()
        return [tuple(row) for row in result] if columns else [row[0] for row in result]
    finally:
        CON.unregister("profiles")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_sql_equals_interpreter(data: st.DataObject) -> None:
    now = data.draw(st.sampled_from(NOWS), label="now")
    rows = data.draw(PROFILES[now], label="profiles")
    source = cond(data.draw, Ctx())
    data.draw(st.just(source), label="pql")
    expr = check(parse(source), PROFILE, EVENT)
    sql = to_sql(expr, now_sql=timestamp_sql(now),
                 in_segment_sql=lambda sid: f"list_contains(\"segs\", '{sid}')")
    got = run_sql(sql, rows)
    expected = [evaluate(expr, row, row["xEvent"], now=now, in_segment=row["segs"].__contains__) for row in rows]
    assert got == expected, sql


# --------------------------------------------------------------------------------------------------
# Time: the expression's parameters are drawn first, then the data is put exactly on (and one microsecond
# around) the boundaries they define, so every edge of every `occurs` form is exercised


TIME_UNITS = ["millisecond", "second", "minute", "hour", "day", "week", "month", "year", "decade", "century"]
WORD_REFS = {"now": (0, None), "today": (0, "day"), "yesterday": (-1, "day"), "tomorrow": (1, "day")}


def reference(now: dt.datetime, ref: str) -> tuple[dt.datetime, dt.datetime | None]:
    """(start, end) of a time reference as the semantics define it; end is None for an instant."""
    if ref in WORD_REFS:
        days, unit = WORD_REFS[ref]
        if unit is None:
            return now, None
        start = truncate(now, "day") + dt.timedelta(days=days)
        return start, start + dt.timedelta(days=1)
    if ref.startswith("date("):
        start = dt.datetime(2024, 2, 29)
        return start, start + dt.timedelta(days=1)
    which, unit = ref.split()
    start = add_units(truncate(now, unit), {"this": 0, "last": -1, "next": 1}[which], unit)
    return start, add_units(start, 1, unit)


def near(points: list[dt.datetime]) -> list[dt.datetime]:
    return [p + dt.timedelta(microseconds=us) for p in points for us in (0, 1, -1)]


@st.composite
def time_case(draw: st.DrawFn) -> tuple[dt.datetime, list[str], list[dict[str, Any]]]:
    """An instant, every variant of the time expressions for one drawn set of parameters (all operators and
    directions), and profiles whose times sit on and around the boundaries those parameters define."""
    now = draw(st.sampled_from(NOWS), label="now")
    naive = now.replace(tzinfo=None)
    refs = [*WORD_REFS, "date(2024, 2, 29)", *(f"{w} {u}" for w in ("this", "last", "next") for u in TIME_UNITS)]
    ref, ref2 = draw(st.sampled_from(refs)), draw(st.sampled_from(["now", "tomorrow", "next month", "this year"]))
    unit, amount = draw(st.sampled_from(TIME_UNITS)), draw(st.integers(0, 3))
    start, end = reference(naive, ref)
    start2, end2 = reference(naive, ref2)
    edges = [start, start2, *(e for e in (end, end2) if e is not None)]
    for sign in (-1, 1):
        boundary = add_units(start, sign * amount, unit)
        edges += [boundary, truncate(boundary, unit), add_units(truncate(boundary, unit), 1, unit)]
    points = near(edges)
    instants = st.sampled_from(points).map(lambda t: t.replace(tzinfo=dt.UTC))
    days = st.sampled_from(points).map(lambda t: t.date())
    birth = st.one_of(st.sampled_from(["0000-01-01", "2024-02-30", "1990-3-1", "x"]), days.map(dt.date.isoformat))

    subject = draw(st.sampled_from(["lastSeen", "loyalty.joinDate", "person.birthDate", "xEvent.max(timestamp)",
                                    "timestamp"]))
    in_filter = subject == "timestamp"
    ref_text = f"$1.{ref}" if in_filter and ref in ("lastSeen", "loyalty.joinDate") else ref
    sources = [f"{subject} occurs {op} {amount} {unit} {direction} {ref_text}"
               for op in CMP for direction in ("before", "after")]
    sources += [f"{subject} occurs {word} {ref_text}" for word in ("before", "after", "on", "")]
    sources += [f"{subject} occurs between {ref_text} and {ref2}"]
    sources += [f"{subject} {op} {ref_text if ' ' not in ref else 'now'}" for op in CMP]
    sources += [f"{subject}.{part}() = {current}" for part, current in
                [("getYear", "currentYear()"), ("getMonth", "currentMonth()"), ("getDayOfMonth", "29")]]
    if in_filter:
        sources = [f"xEvent[{source}].count() {draw(st.sampled_from(['>= 1', '= 0', '= 2']))}" for source in sources]
    if draw(st.booleans()):
        sources = [f"not ({source}) or lastSeen occurs <= {amount} {unit} before now" for source in sources]

    rows = draw(st.lists(st.fixed_dictionaries({
        "person": st.fixed_dictionaries({"birthDate": maybe(birth, 0.1)}),
        "loyalty": st.fixed_dictionaries({"joinDate": maybe(days, 0.1)}),
        "lastSeen": maybe(instants, 0.1),
        "xEvent": st.lists(st.fixed_dictionaries({"timestamp": maybe(instants, 0.1)}), max_size=3),
        "segs": st.just([]),
    }), min_size=1, max_size=4), label="profiles")
    return now, sources, rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=time_case())
def test_time_sql_equals_interpreter(case: tuple[dt.datetime, list[str], list[dict[str, Any]]]) -> None:
    now, sources, rows = case
    exprs = [check(parse(source), PROFILE, EVENT) for source in sources]
    sqls = [to_sql(expr, now_sql=timestamp_sql(now), in_segment_sql=lambda sid: "FALSE") for expr in exprs]
    got = run_sql(", ".join(sqls), rows, columns=len(sqls))
    expected = [tuple(evaluate(expr, row, row["xEvent"], now=now, in_segment=lambda sid: False) for expr in exprs)
                for row in rows]
    for i, source in enumerate(sources):
        assert [g[i] for g in got] == [e[i] for e in expected], source
