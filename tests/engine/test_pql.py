"""PQL: parser errors, unsupported constructs, unknown fields, type errors, and worked examples whose answers
are written down here (each is evaluated both by DuckDB SQL and by the reference interpreter, which must agree).
"""

from __future__ import annotations

import datetime as dt
import pathlib
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import openprofile.engine.pql as pql
from openprofile.engine.pql import (
    Expression,
    PQLError,
    PQLSyntaxError,
    PQLTypeError,
    PQLUnknownField,
    PQLUnsupported,
    check,
    evaluate,
    parse,
    timestamp_sql,
    to_sql,
)
from openprofile.engine.structure import Structure, from_arrow_schema, to_arrow_schema

PROFILE: Structure = {
    "person": {"struct": {
        "name": {"struct": {"firstName": "VARCHAR", "lastName": "VARCHAR"}},
        "birthDate": "VARCHAR",
        "gender": "VARCHAR",
    }},
    "homeAddress": {"struct": {"countryCode": "VARCHAR", "city": "VARCHAR"}},
    "loyalty": {"struct": {"tier": "VARCHAR", "points": "BIGINT", "joinDate": "DATE", "vip": "BOOLEAN"}},
    "lastSeen": "TIMESTAMPTZ",
    "favoriteColors": {"list": "VARCHAR"},
    "identityMap": {"map": {"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN"}}}},
    "segmentMembership": {"map": {"map": {"struct": {"status": "VARCHAR", "lastQualificationTime": "TIMESTAMPTZ"}}}},
}
EVENT: Structure = {
    "_id": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "eventType": "VARCHAR",
    "web": {"struct": {"webPageDetails": {"struct": {"name": "VARCHAR"}}}},
    "commerce": {"struct": {"order": {"struct": {"priceTotal": "DOUBLE", "currencyCode": "VARCHAR"}}}},
    "productListItems": {"list": {"struct": {"SKU": "VARCHAR", "quantity": "BIGINT", "priceTotal": "DOUBLE"}}},
}
SCHEMA = to_arrow_schema({**PROFILE, "xEvent": {"list": {"struct": EVENT}}, "segs": {"list": "VARCHAR"},
                          "row_number": "BIGINT"})
NOW = dt.datetime(2025, 3, 15, 12, 30, tzinfo=dt.UTC)  # a Saturday
CON = duckdb.connect(config={"threads": 1})


def arrow_value(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if isinstance(t, pa.MapType):
        return [(k, arrow_value(v, t.item_type)) for k, v in value.items()]
    if isinstance(t, pa.StructType):
        return {f.name: arrow_value(value.get(f.name), f.type) for f in t}
    if isinstance(t, pa.ListType):
        return [arrow_value(v, t.value_type) for v in value]
    return value


def run(text: str, *profiles: dict[str, Any], now: dt.datetime = NOW) -> list[bool]:
    """`text` evaluated for each profile by SQL and by the interpreter; they must agree."""
    expr = check(parse(text), PROFILE, EVENT)
    sql = to_sql(expr, now_sql=timestamp_sql(now), in_segment_sql=lambda sid: f"list_contains(\"segs\", '{sid}')")
    rows = [{"xEvent": [], "segs": [], **p, "row_number": i} for i, p in enumerate(profiles)]
    table = pa.Table.from_pylist([{f.name: arrow_value(r.get(f.name), f.type) for f in SCHEMA} for r in rows],
                                 schema=SCHEMA)
    CON.register("profiles", table)
    try:
        got = [r[0] for r in CON.sql(f"SELECT {sql} FROM profiles ORDER BY row_number").fetchall()]
    finally:
        CON.unregister("profiles")
    expected = [evaluate(expr, r, r["xEvent"], now=now, in_segment=r["segs"].__contains__) for r in rows]
    assert got == expected, f"SQL {got} != interpreter {expected} for {text}\n{sql}"
    return got


def one(text: str, profile: dict[str, Any] | None = None, **kwargs: Any) -> bool:
    return run(text, profile or {}, **kwargs)[0]


def error(text: str) -> PQLError:
    with pytest.raises(PQLError) as info:
        check(parse(text), PROFILE, EVENT)
    return info.value


# --------------------------------------------------------------------------------------------------
# Syntax errors


def test_syntax_error_at_end_of_input() -> None:
    e = error("person.name.firstName = ")
    assert isinstance(e, PQLSyntaxError)
    assert (e.line, e.column) == (1, 24)
    assert {"a string", "a name", "an integer", "a decimal number", '"("', '"["', '"-"'} <= set(e.expected)
    assert "end of input" in e.message
    assert str(e).endswith("(line 1, column 24)")


def test_syntax_error_on_a_token() -> None:
    e = error("loyalty.points >> 3")
    assert isinstance(e, PQLSyntaxError)
    assert (e.line, e.column) == (1, 17)
    assert "a name" in e.expected and "an integer" in e.expected
    assert e.message.startswith("unexpected '>'")


def test_syntax_error_positions_on_later_lines() -> None:
    e = error('homeAddress.countryCode = "US"\nand\n  loyalty.points = = 3')
    assert isinstance(e, PQLSyntaxError)
    assert (e.line, e.column) == (3, 20)


def test_syntax_error_lists_what_may_follow_a_complete_expression() -> None:
    e = error('homeAddress.countryCode = "US" person')
    assert isinstance(e, PQLSyntaxError)
    assert (e.line, e.column) == (1, 32)
    assert {'"and"', '"or"', "end of input"} <= set(e.expected)


@pytest.mark.parametrize(("text", "column"), [
    ("loyalty.points = #", 18),
    ('person.name.firstName = "unterminated', 25),
])
def test_unexpected_characters(text: str, column: int) -> None:
    e = error(text)
    assert isinstance(e, PQLSyntaxError)
    assert (e.line, e.column) == (1, column)


def test_empty_expression() -> None:
    e = error("   ")
    assert isinstance(e, PQLSyntaxError)
    assert e.expected == ["an expression"]


def test_unknown_method_and_function_and_time_unit() -> None:
    e = error('person.name.firstName.beginsWith("J")')
    assert isinstance(e, PQLSyntaxError) and (e.line, e.column) == (1, 23)
    assert ".startsWith(...)" in e.expected
    e = error("lastSeen = yesterdayish()")
    assert isinstance(e, PQLSyntaxError) and "inSegment(...)" in e.expected
    e = error("lastSeen occurs < 2 fortnights before now")
    assert isinstance(e, PQLSyntaxError) and (e.line, e.column) == (1, 21)
    assert "days" in e.expected


# --------------------------------------------------------------------------------------------------
# Unsupported PQL


@pytest.mark.parametrize(("text", "construct", "column"), [
    ('CHAIN(xEvent, timestamp, [C0: WHAT(eventType.equals("commerce.checkouts", false)) WHEN(today)])',
     "CHAIN", 1),
    ('homeAddress.countryCode = "US" and chain(xEvent, timestamp, [C0: WHAT(eventType = "x") WHEN(<= 24 hours '
     "before now)])", "CHAIN", 36),
    ('let S = (sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD") '
     "in (S > 100 and S < 1000)", "let", 1),
    ('forall E from xEvent where E.eventType = "x"', "forall", 1),
    ('xEvent[productListItems[SKU = "PS" or ^^.person.gender = "female"]]', "^ (reference to an enclosing level)",
     39),
    ('$2.homeAddress.countryCode = "US"', "parameter $2", 1),
    ("xEvent.topN(timestamp, 5).count() > 0", "topN()", 8),
    ("favoriteColors.groupBy(x).count() > 0", "groupBy()", 16),
    ("favoriteColors.distinct().count() > 1", "distinct()", 16),
    ('favoriteColors.supersetOf(["red"])', "supersetOf()", 16),
    ('person.name.firstName.regexGroup("(J)", 1) = "J"', "regexGroup()", 23),
    ('person.name.firstName.matches("J(?=o)")', "lookaround in regular expressions", 31),
    ('person.name.firstName.matches("(a)\\\\1")', "backreferences in regular expressions", 31),
])
def test_unsupported_constructs_are_named(text: str, construct: str, column: int) -> None:
    e = error(text)
    assert isinstance(e, PQLUnsupported)
    assert e.construct == construct
    assert (e.line, e.column) == (1, column)


def test_a_field_named_like_a_construct_is_not_mistaken_for_it() -> None:
    profile: Structure = {"let": "BIGINT", "chain": "VARCHAR"}
    expr = check(parse('let = 3 and chain = "x"'), profile, EVENT)
    assert expr.checked


# --------------------------------------------------------------------------------------------------
# Unknown fields


def test_unknown_profile_field_with_a_suggestion() -> None:
    e = error('person.name.fristName = "John"')
    assert isinstance(e, PQLUnknownField)
    assert e.path == "person.name.fristName"
    assert (e.line, e.column) == (1, 13)
    assert "firstName" in e.message


def test_unknown_top_level_field() -> None:
    e = error('homeAdress.countryCode = "US"')
    assert isinstance(e, PQLUnknownField) and e.path == "homeAdress" and (e.line, e.column) == (1, 1)
    assert "homeAddress" in e.message


def test_field_names_are_case_sensitive() -> None:
    e = error('homeAddress.CountryCode = "US"')
    assert isinstance(e, PQLUnknownField) and "countryCode" in e.message


def test_unknown_event_field_inside_a_filter() -> None:
    e = error('xEvent[eventTyp = "commerce.purchases"].count() > 0')
    assert isinstance(e, PQLUnknownField)
    assert e.path == "eventTyp" and (e.line, e.column) == (1, 8)
    assert "items of xEvent" in e.message


def test_profile_fields_are_not_visible_inside_an_event_filter_without_dollar_one() -> None:
    assert isinstance(error('xEvent[homeAddress.countryCode = "US"]'), PQLUnknownField)
    assert one('xEvent[$1.homeAddress.countryCode = "US"]', {
        "homeAddress": {"countryCode": "US"}, "xEvent": [{"_id": "e"}],
    })


def test_unknown_field_under_a_named_variable() -> None:
    e = error("exists E from xEvent where E.commerce.order.total > 5")
    assert isinstance(e, PQLUnknownField) and e.path == "E.commerce.order.total"


# --------------------------------------------------------------------------------------------------
# Type errors


@pytest.mark.parametrize(("text", "fragment"), [
    ('loyalty.joinDate > "abc"', "not a date"),
    ('lastSeen > "abc"', "not a date"),
    ('loyalty.points = "many"', "cannot compare an integer with a string"),
    ('"x" + 1 = 2', "'+' needs numbers"),
    ("loyalty.points", "expected a condition"),
    ("loyalty.vip < true", "booleans are compared with = and != only"),
    ('loyalty.points.startsWith("1")', "startsWith() applies to strings"),
    ("loyalty.points.getYear() = 2020", "expected a date or a timestamp"),
    ('person.name.get("x") = "y"', "get() applies to maps"),
    ("favoriteColors.sum(x) > 1", "needs an array of objects"),
    ("xEvent.sum(eventType) > 1", "sum needs numbers"),
    ("xEvent.eventType = 1", "is an array"),
    ('identityMap.ECID.count() > 0', 'identityMap.get("ECID")'),
    ("date(2023, 2, 29) < now", "not a valid date"),
    ("inSegment(person.gender)", "string literal"),
    ('person.name.firstName.startsWith("J", person.gender)', "must be true or false"),
    ("if(true, 1, \"x\") = 1", "different types"),
    ("lastSeen occurs <= 3 days before loyalty.vip", "expected a date or a timestamp"),
    ("$1 = 1", "$1 (the profile)"),
    ("[] = 1", "empty array"),
    ('person.name.firstName.matches("(")', "invalid regular expression"),
    ("loyalty.points = 99999999999999999999", "out of range"),
])
def test_type_errors(text: str, fragment: str) -> None:
    e = error(text)
    assert isinstance(e, PQLTypeError), e
    assert fragment in e.message
    assert e.line == 1 and e.column is not None


def test_type_error_position_is_the_operator() -> None:
    e = error('loyalty.joinDate >\n "abc"')
    assert (e.line, e.column) == (1, 18)


# --------------------------------------------------------------------------------------------------
# Worked examples from Adobe's documentation


def test_equality_on_a_profile_attribute() -> None:
    assert run('homeAddress.countryCode = "US"', {"homeAddress": {"countryCode": "US"}},
               {"homeAddress": {"countryCode": "CA"}}, {"homeAddress": None}, {}) == [True, False, False, False]


def test_starts_with_case_insensitive() -> None:
    profiles = [{"person": {"name": {"firstName": n}}} for n in ("John", "joanna", "Bo", None)]
    assert run('person.name.firstName.startsWith("Jo", false)', *profiles) == [True, True, False, False]
    assert run('person.name.firstName.startsWith("Jo")', *profiles) == [True, False, False, False]


def test_count_of_filtered_events() -> None:
    purchase = {"_id": "1", "eventType": "commerce.purchases"}
    view = {"_id": "2", "eventType": "commerce.productViews"}
    assert run('xEvent[eventType = "commerce.purchases"].count() > 0',
               {"xEvent": [view, purchase]}, {"xEvent": [view]}, {"xEvent": []}) == [True, False, False]


def test_exists_quantifier() -> None:
    def order(total: float | None) -> dict[str, Any]:
        return {"_id": "o", "commerce": {"order": {"priceTotal": total, "currencyCode": "USD"}}}

    text = "exists E from xEvent where E.commerce.order.priceTotal > 50"
    assert run(text, {"xEvent": [order(20), order(50.25)]}, {"xEvent": [order(50), order(None)]},
               {"xEvent": [{"_id": "x"}]}) == [True, False, False]
    assert one("exists E from xEvent : E.commerce.order.priceTotal > 50", {"xEvent": [order(60)]})


SPEND = [
    {"_id": "1", "commerce": {"order": {"priceTotal": 60.0, "currencyCode": "USD"}}},
    {"_id": "2", "commerce": {"order": {"priceTotal": 45.5, "currencyCode": "USD"}}},
    {"_id": "3", "commerce": {"order": {"priceTotal": 500.0, "currencyCode": "EUR"}}},
]


@pytest.mark.parametrize("text", [
    'sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD" > 100',
    '(sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD") > 100',
    'xEvent[commerce.order.currencyCode = "USD"].sum(commerce.order.priceTotal) > 100',
])
def test_sum_over_events(text: str) -> None:
    assert run(text, {"xEvent": SPEND}, {"xEvent": SPEND[1:]}, {"xEvent": []}) == [True, False, False]


def test_aggregate_forms() -> None:
    p = {"xEvent": SPEND}
    assert one("xEvent.sum(commerce.order.priceTotal) = 605.5", p)
    assert one("xEvent.average(commerce.order.priceTotal) > 201.8", p)
    assert one("xEvent.min(commerce.order.priceTotal) = 45.5", p)
    assert one("xEvent.max(commerce.order.priceTotal) = 500", p)
    assert one("(count X.commerce.order.priceTotal over X from xEvent where X.commerce.order.priceTotal > 50) = 2", p)
    assert one("(average X.commerce.order.priceTotal over X from xEvent) > 201", p)
    # no values: the sum is 0, the average, min and max are null (so comparisons with them are false)
    assert one("xEvent.sum(commerce.order.priceTotal) = 0")
    assert not one("xEvent.average(commerce.order.priceTotal) >= 0")
    assert not one("xEvent.max(commerce.order.priceTotal) < 1000")
    assert one("xEvent.max(commerce.order.priceTotal).isNull()")


def test_let_example_written_without_let() -> None:
    text = ('(sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD") > 100 '
            'and (sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD") '
            "< 1000")
    assert run(text, {"xEvent": SPEND}, {"xEvent": SPEND[1:]}) == [True, False]


def test_select_is_true_when_an_event_matches() -> None:
    page = {"_id": "1", "web": {"webPageDetails": {"name": "Home"}}}
    text = 'select X from xEvent where X.web.webPageDetails.name.equals("home", false)'
    assert run(text, {"xEvent": [page]}, {"xEvent": [{"_id": "2"}]}) == [True, False]


def test_nested_filter_from_the_docs() -> None:
    def with_items(*skus: str) -> dict[str, Any]:
        return {"xEvent": [{"_id": "1", "productListItems": [{"SKU": s} for s in skus]}]}

    assert run('xEvent[productListItems[SKU = "PS"]]', with_items("XB", "PS"), with_items("XB"), {}) == [
        True, False, False]


def test_exists_with_two_bindings_nests() -> None:
    text = ('exists E from xEvent where (E.commerce.order.priceTotal > 50), '
            'I from E.productListItems where I.SKU = "PS"')
    both = {"_id": "1", "commerce": {"order": {"priceTotal": 60.0}}, "productListItems": [{"SKU": "PS"}]}
    cheap = {**both, "commerce": {"order": {"priceTotal": 10.0}}}
    other = {**both, "productListItems": [{"SKU": "XB"}]}
    assert run(text, {"xEvent": [both]}, {"xEvent": [cheap, other]}) == [True, False]


def test_boolean_operators() -> None:
    p = {"homeAddress": {"countryCode": "CA"}, "loyalty": {"points": 5}}
    assert one('homeAddress.countryCode = "CA" and loyalty.points >= 5', p)
    assert one('homeAddress.countryCode = "US" or loyalty.points = 5', p)
    assert not one('not (homeAddress.countryCode = "CA")', p)
    assert not one('!(homeAddress.countryCode = "CA")', p)
    assert one('if(homeAddress.countryCode = "CA", 1, 2) = 1', p)
    assert one("if(loyalty.vip, 1, 2) = 2", p)


def test_like_and_matches() -> None:
    cities = [{"homeAddress": {"city": c}} for c in ("Los Angeles", "Paris", "es", None)]
    assert run('homeAddress.city like "%es%"', *cities) == [True, False, True, False]
    assert run('homeAddress.city like "_aris"', *cities) == [False, True, False, False]
    names = [{"person": {"name": {"firstName": n}}} for n in ("John", "johnny", "Ajohn")]
    assert run('person.name.firstName.matches("(?i)^john")', *names) == [True, True, False]
    assert run('person.name.firstName.matches("^\\\\w+n$")', *names) == [True, False, True]


def test_string_functions() -> None:
    p = {"person": {"name": {"firstName": "Joe", "lastName": "O'Neil"}}}
    assert one('person.name.firstName.equals("joe", false) and person.name.firstName.notEqualTo("joe")', p)
    assert one('person.name.lastName = "O\'Neil"', p)
    assert one('person.name.lastName.contains("nei", false) and person.name.lastName.doesNotContain("nei")', p)
    assert one('person.name.firstName.endsWith("oe") and person.name.firstName.doesNotEndWith("OE")', p)
    assert not one('person.name.firstName.doesNotStartWith("Jo")', p)
    assert one('person.name.firstName.doesNotStartWith("jo")', p)


def test_membership_and_arrays() -> None:
    p = {"favoriteColors": ["red", "blue"], "loyalty": {"points": 6}}
    assert one("loyalty.points in [3, 6, 9]", p)
    assert not one("loyalty.points notIn [3, 6, 9]", p)
    assert one("loyalty.points in [5.5, 6.0]", p)
    assert one('favoriteColors.intersects(["red", "green"])', p)
    assert not one('favoriteColors.intersects(["green"])', p)
    assert one('favoriteColors.includes("blue")', p)
    assert one('"red" in favoriteColors and "green" notIn favoriteColors', p)
    assert one("favoriteColors.count() = 2", p)
    assert one("favoriteColors.count() = 0", {"favoriteColors": None})


def test_maps() -> None:
    p = {
        "identityMap": {"ECID": [{"id": "1", "primary": True}], "Email": [{"id": "a@x.org", "primary": False}]},
        "segmentMembership": {"ups": {"seg-1": {"status": "realized", "lastQualificationTime": NOW}}},
    }
    assert one('identityMap.get("ECID").count() > 0', p)
    assert one('identityMap.get("Email")[id.endsWith("@x.org")].exists()', p)
    assert not one('identityMap.get("Phone").exists()', p)
    assert one('identityMap.keys().includes("Email") and identityMap.values().count() = 2', p)
    assert one('segmentMembership.get("ups").get("seg-1").status in ["realized", "existing"]', p)
    assert one('segmentMembership.get("ups").get("seg-1").lastQualificationTime occurs today', p)
    assert not one('segmentMembership.get("ups").get("seg-2").status = "realized"', p)


def test_in_segment_and_segment_refs() -> None:
    expr = parse('inSegment("a") and (inSegment("b") or homeAddress.countryCode = "US")')
    assert expr.segment_refs == frozenset({"a", "b"})
    assert run('inSegment("a")', {"segs": ["a"]}, {"segs": ["b"]}) == [True, False]


def test_explicit_parameter_forms() -> None:
    p = {"homeAddress": {"countryCode": "US"}}
    assert one('$1.homeAddress.countryCode = "US"', p)
    assert one('(Profile) => Profile.homeAddress.countryCode = "US"', p)


def test_dates_stored_as_strings_are_read_as_dates() -> None:
    profiles = [{"person": {"birthDate": b}} for b in ("1990-03-12", "1990-3-12", "2023-02-29", None)]
    assert run("person.birthDate.getMonth() = 3", *profiles) == [True, False, False, False]
    assert run("person.birthDate < date(2000, 1, 1)", *profiles) == [True, False, False, False]
    assert run('person.birthDate = "1990-03-12"', *profiles) == [True, False, False, False]  # a string comparison


def test_date_parts_and_current_values() -> None:
    p = {"loyalty": {"joinDate": dt.date(2025, 3, 1)}, "lastSeen": dt.datetime(2025, 3, 14, 23, 59, tzinfo=dt.UTC)}
    assert one("loyalty.joinDate.getYear() = currentYear() and loyalty.joinDate.getMonth() = currentMonth()", p)
    assert one("lastSeen.getDayOfMonth() = currentDayOfMonth() - 1", p)
    assert one('lastSeen > "2025-03-14T23:58:00Z" and lastSeen < "2025-03-15"', p)
    assert one("loyalty.joinDate < lastSeen and loyalty.joinDate = date(2025, 3, 1)", p)


# --------------------------------------------------------------------------------------------------
# Null semantics


def test_a_comparison_with_a_missing_field_is_false_and_not_negates_it() -> None:
    nobody: dict[str, Any] = {}
    assert not one('homeAddress.countryCode = "US"', nobody)
    assert not one('homeAddress.countryCode != "US"', nobody)
    assert one('not (homeAddress.countryCode = "US")', nobody)
    assert not one("loyalty.points in [1, 2]", nobody)
    assert not one("loyalty.points notIn [1, 2]", nobody)  # Adobe: notIn also requires a value
    assert one("not (loyalty.points in [1, 2])", nobody)
    assert not one('person.name.firstName.doesNotStartWith("J")', nobody)
    assert not one('person.name.firstName like "%"', nobody)
    assert not one("lastSeen occurs != 1 day before now", nobody)
    assert one("lastSeen.isNull() and not (exists lastSeen) and loyalty.isNull()", nobody)


def test_exists() -> None:
    assert run("favoriteColors.exists()", {"favoriteColors": ["red"]}, {"favoriteColors": []},
               {"favoriteColors": None}) == [True, False, False]
    assert run("favoriteColors.isNotNull()", {"favoriteColors": ["red"]}, {"favoriteColors": []},
               {"favoriteColors": None}) == [True, True, False]
    assert run("exists loyalty.points", {"loyalty": {"points": 0}}, {"loyalty": {"points": None}},
               {"loyalty": None}) == [True, False, False]


def test_arithmetic() -> None:
    p = {"loyalty": {"points": 7}}
    assert one("loyalty.points / 2 = 3.5 and loyalty.points % 4 = 3 and -loyalty.points % 4 = -3", p)
    assert one("loyalty.points * 2 - 1 = 13 and loyalty.points + 0.5 = 7.5", p)
    assert not one("loyalty.points / 0 = 0", p)  # division by zero is null
    assert one("(loyalty.points / 0).isNull() and (loyalty.points % 0).isNull()", p)
    assert not one("loyalty.points + 1 > 0", {})


# --------------------------------------------------------------------------------------------------
# Time


def at(**delta: float) -> dict[str, Any]:
    return {"lastSeen": NOW + dt.timedelta(**delta)}


US = dt.timedelta(microseconds=1)


@pytest.mark.parametrize(("text", "expected"), [
    # rolling windows: <= N units before now is [now - N, now]
    ("lastSeen occurs <= 7 days before now", [False, True, True, True, False]),
    ("lastSeen occurs < 7 days before now", [False, False, True, True, False]),
    ("lastSeen occurs > 7 days before now", [True, False, False, False, False]),
    ("lastSeen occurs >= 7 days before now", [True, True, False, False, False]),
])
def test_occurs_within_a_window(text: str, expected: list[bool]) -> None:
    boundary = NOW - dt.timedelta(days=7)
    profiles = [{"lastSeen": t} for t in (boundary - US, boundary, boundary + US, NOW, NOW + US)]
    assert run(text, *profiles) == expected


def test_occurs_after() -> None:
    boundary = NOW + dt.timedelta(hours=3)
    profiles = [{"lastSeen": t} for t in (NOW - US, NOW, boundary - US, boundary, boundary + US)]
    assert run("lastSeen occurs < 3 hours after now", *profiles) == [False, True, True, False, False]
    assert run("lastSeen occurs <= 3 hours from now", *profiles) == [False, True, True, True, False]
    assert run("lastSeen occurs > 3 hours after now", *profiles) == [False, False, False, False, True]


def test_occurs_equal_means_the_same_unit() -> None:
    # "birthday was three days ago": any time on 2025-03-12
    profiles = [{"lastSeen": dt.datetime(2025, 3, d, h, tzinfo=dt.UTC)} for d, h in ((11, 23), (12, 0), (12, 23),
                                                                                       (13, 0))]
    assert run("lastSeen occurs = 3 days before today", *profiles) == [False, True, True, False]
    assert run("lastSeen occurs != 3 days before today", *profiles) == [True, False, False, True]
    assert one("loyalty.joinDate occurs = 3 days before today", {"loyalty": {"joinDate": dt.date(2025, 3, 12)}})


def test_occurs_on_periods() -> None:
    today = dt.datetime(2025, 3, 15, tzinfo=dt.UTC)
    profiles = [{"lastSeen": t} for t in (today - US, today, today + dt.timedelta(days=1) - US,
                                          today + dt.timedelta(days=1))]
    assert run("lastSeen occurs today", *profiles) == [False, True, True, False]
    assert run("lastSeen occurs on today", *profiles) == [False, True, True, False]
    assert run("lastSeen occurs yesterday", *profiles) == [True, False, False, False]
    assert run("lastSeen occurs before today", *profiles) == [True, False, False, False]
    assert run("lastSeen occurs after today", *profiles) == [False, False, False, True]
    assert run("lastSeen occurs on date(2025, 3, 15)", *profiles) == [False, True, True, False]


def test_occurs_last_this_next() -> None:
    monday = dt.datetime(2025, 3, 10, tzinfo=dt.UTC)  # NOW is Saturday 2025-03-15
    profiles = [{"lastSeen": t} for t in (monday - dt.timedelta(weeks=1) - US, monday - dt.timedelta(weeks=1),
                                          monday - US, monday)]
    assert run("lastSeen occurs last week", *profiles) == [False, True, True, False]
    assert run("lastSeen occurs this week", *profiles) == [False, False, False, True]
    assert one("lastSeen occurs this month", at(days=-14))
    assert not one("lastSeen occurs this month", at(days=-15))
    assert one("lastSeen occurs next year", {"lastSeen": dt.datetime(2026, 12, 31, tzinfo=dt.UTC)})
    assert one("lastSeen occurs last decade", {"lastSeen": dt.datetime(2019, 12, 31, tzinfo=dt.UTC)})


def test_occurs_between_includes_the_whole_last_day() -> None:
    text = "lastSeen occurs between date(2015, 1, 8) and date(2017, 7, 1)"
    times = [dt.datetime(2015, 1, 8, tzinfo=dt.UTC) - US, dt.datetime(2015, 1, 8, tzinfo=dt.UTC),
             dt.datetime(2017, 7, 1, 23, 59, tzinfo=dt.UTC), dt.datetime(2017, 7, 2, tzinfo=dt.UTC)]
    assert run(text, *({"lastSeen": t} for t in times)) == [False, True, True, False]
    assert run("lastSeen occurs between yesterday and now", at(hours=-30), at(hours=-1), at(seconds=1)) == [
        True, True, False]


def test_calendar_months_clamp_the_day() -> None:
    now = dt.datetime(2024, 3, 31, 10, 0, tzinfo=dt.UTC)
    feb29 = dt.datetime(2024, 2, 29, 10, 0, tzinfo=dt.UTC)
    assert run("lastSeen occurs >= 1 month before now", {"lastSeen": feb29}, {"lastSeen": feb29 + US}, now=now) == [
        True, False]
    assert one("lastSeen occurs = 1 year after date(2024, 2, 29)", {"lastSeen": dt.datetime(2025, 2, 28, 5,
                                                                                             tzinfo=dt.UTC)})


def test_event_time_windows() -> None:
    events = [{"_id": str(d), "eventType": "commerce.purchases", "timestamp": NOW - dt.timedelta(days=d)}
              for d in (1, 20, 40)]
    assert one("xEvent[timestamp occurs <= 30 days before now].count() = 2", {"xEvent": events})
    assert one('xEvent[eventType = "commerce.purchases" and timestamp occurs <= 7 days before now].count() = 1',
               {"xEvent": events})
    assert one("xEvent.max(timestamp) occurs yesterday and xEvent.min(timestamp) occurs last month",
               {"xEvent": events})


def test_times_do_not_depend_on_the_session_time_zone() -> None:
    CON.execute("SET TimeZone = 'America/Los_Angeles'")
    try:
        late = {"lastSeen": dt.datetime(2025, 3, 15, 23, 30, tzinfo=dt.UTC)}  # still the 15th in UTC
        assert one("lastSeen occurs today and lastSeen.getDayOfMonth() = 15", late)
    finally:
        CON.execute("SET TimeZone = 'UTC'")


# --------------------------------------------------------------------------------------------------
# The API


def test_to_sql_and_evaluate_need_a_checked_expression() -> None:
    expr = parse('homeAddress.countryCode = "US"')
    assert not expr.checked
    with pytest.raises(ValueError, match="check"):
        to_sql(expr, now_sql="now()", in_segment_sql=lambda s: "FALSE")
    with pytest.raises(ValueError, match="check"):
        evaluate(expr, {}, [], now=NOW, in_segment=lambda s: False)
    checked = check(expr, PROFILE, EVENT)
    assert checked.checked and check(checked, PROFILE, EVENT) is checked
    assert isinstance(checked, Expression) and checked.text == expr.text


def test_the_sql_is_a_plain_boolean_expression_over_quoted_columns() -> None:
    expr = check(parse('person.name.firstName = "Jo" and xEvent.count() > 1'), PROFILE, EVENT)
    sql = to_sql(expr, now_sql=timestamp_sql(NOW), in_segment_sql=lambda s: "FALSE")
    assert '("person")."name"' in sql and '"xEvent"' in sql


def test_timestamp_sql() -> None:
    assert timestamp_sql(NOW) == "TIMESTAMPTZ '2025-03-15 12:30:00+00:00'"
    later = dt.datetime(2025, 3, 15, 14, 30, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert timestamp_sql(later) == "TIMESTAMPTZ '2025-03-15 12:30:00.000005+00:00'"


def test_public_names() -> None:
    assert set(pql.__all__) == {
        "Expression", "PQLError", "PQLSyntaxError", "PQLTypeError", "PQLUnknownField", "PQLUnsupported",
        "References", "check", "evaluate", "parse", "references", "sql_string", "timestamp_sql", "to_sql",
    }
    for name in pql.__all__:
        assert getattr(pql, name) is not None
    for cls in (PQLSyntaxError, PQLUnsupported, PQLUnknownField, PQLTypeError):
        assert issubclass(cls, PQLError)


# --------------------------------------------------------------------------------------------------
# Realistic data: `openprofile generate` output


def test_segments_on_generated_data(tmp_path: pathlib.Path) -> None:
    from openprofile.generate import EVENTS_SCHEMA, SEGMENTS, generate_dataset, reference_time

    generate_dataset(tmp_path, profiles=300, seed=7, events_per_profile=20)
    con = duckdb.connect()
    # a crm record with the events that carry its CRMID: enough to stand in for a merged profile here
    con.execute(f"""
        CREATE TABLE profiles AS
        WITH ev AS (
            SELECT identityMap['CRMID'][1].id AS crmid, list(e ORDER BY e._id) AS xEvent
            FROM read_parquet('{tmp_path}/events/*.parquet') e WHERE identityMap['CRMID'] IS NOT NULL GROUP BY 1)
        SELECT c.*, coalesce(ev.xEvent, []) AS xEvent, row_number() OVER () AS row_number
        FROM read_parquet('{tmp_path}/crm/*.parquet') c LEFT JOIN ev ON ev.crmid = c.identityMap['CRMID'][1].id""")
    table = con.sql("SELECT * FROM profiles ORDER BY row_number").to_arrow_table()
    profile = from_arrow_schema(table.schema)
    del profile["xEvent"], profile["row_number"]
    events = from_arrow_schema(EVENTS_SCHEMA)
    rows = table.to_pylist()
    now = reference_time(7)
    segment = next(iter(SEGMENTS))
    texts = [
        'homeAddress.countryCode = "US"',
        "person.birthDate.getMonth() = 5 or person.birthDate < date(1970, 1, 1)",
        'xEvent[eventType = "commerce.purchases"].count() > 0',
        'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 30 days before now].count() >= 1',
        'sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD" > 100',
        "exists E from xEvent where E.commerce.order.priceTotal > 50, I from E.productListItems where I.quantity >= 2",
        f'segmentMembership.get("ups").get("{segment}").status in ["realized", "existing"]',
        'identityMap.get("email")[id.endsWith("@example.org")].exists()',
        'xEvent[web.webPageDetails.name.equals("HOME", false)].count() >= 1',
        "xEvent.max(timestamp) occurs last month",
        'not (workAddress.exists()) and person.name.firstName.matches("^[A-M]")',
        "extSourceSystemAudit.lastUpdatedDate occurs before date(2024, 6, 1)",
    ]
    for text in texts:
        expr = check(parse(text), profile, events)
        sql = to_sql(expr, now_sql=timestamp_sql(now), in_segment_sql=lambda s: "FALSE")
        got = [r[0] for r in con.sql(f"SELECT {sql} FROM profiles ORDER BY row_number").fetchall()]
        expected = [evaluate(expr, r, r["xEvent"], now=now, in_segment=lambda s: False) for r in rows]
        assert got == expected, text
        assert 0 < sum(got) < len(got), f"{text}: {sum(got)} of {len(got)} profiles qualify"


@pytest.mark.parametrize(("text", "profile", "events", "items"), [
    ('loyalty.tier = "gold"', {"loyalty"}, False, set()),
    ('homeAddress.city = "Tokyo" and loyalty.points > 10', {"homeAddress", "loyalty"}, False, set()),
    ('xEvent[eventType = "commerce.purchases"].count() > 0', set(), True, {"eventType"}),
    ("xEvent.sum(commerce.order.priceTotal) > 500", set(), True, {"commerce"}),
    ("exists E from xEvent where E.commerce.order.priceTotal > 200", set(), True, {"commerce"}),
    ('person.name.firstName = "Ann" and xEvent.count() > 1', {"person"}, True, set()),
])
def test_references_name_what_an_expression_reads(text: str, profile: set[str], events: bool, items: set[str]) -> None:
    """What a segment evaluation may leave out: columns and event fields no expression reads."""
    structure: Structure = {"loyalty": {"struct": {"tier": "VARCHAR", "points": "BIGINT"}},
                            "homeAddress": {"struct": {"city": "VARCHAR"}},
                            "person": {"struct": {"name": {"struct": {"firstName": "VARCHAR"}}}}}
    event_structure: Structure = {"eventType": "VARCHAR", "timestamp": "TIMESTAMPTZ",
                                  "commerce": {"struct": {"order": {"struct": {"priceTotal": "DOUBLE"}}}}}
    found = pql.references(pql.check(pql.parse(text), structure, event_structure))
    assert found == pql.References(frozenset(profile), events, frozenset(items))
