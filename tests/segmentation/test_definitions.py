"""Segment definitions: PQL checked at create (syntax with line and column, unknown fields, type mismatches,
inSegment references and cycles), unique names (422), list paging as aepp reads it, bulk-get, tenancy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET, Api
from tests.helpers import EVENT_CLASS, assert_error, create_dataset, event, ingest, profile
from tests.specs import assert_matches_spec

DEFS = "/data/core/ups/segment/definitions"


def definition(name: str, pql: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "expression": {"type": "PQL", "format": "pql/text", "value": pql},
            "schema": {"name": "_xdm.context.profile"}, "ttlInDays": 60, **extra}


@pytest.fixture
def fields(api: Api) -> None:
    crm = create_dataset(api, "CRM")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    ingest(api, crm, [profile("C1", "a@x.com", "Ann", homeAddress={"countryCode": "US"}, loyalty={"points": 5})])
    ingest(api, web, [event("e1", "1" * 38, commerce={"order": {"priceTotal": 12.5}})])


def test_create_get_list_patch_delete(api: Api, fields: None) -> None:
    response = api.post(DEFS, json=definition("US people", 'homeAddress.countryCode = "US"',
                                               description="in the US"))
    assert response.status_code == 200, response.text
    created = response.json()
    assert_matches_spec("segmentation", "POST", "/segment/definitions", 200, created)
    assert response.headers["X-Location"].endswith(created["id"])
    assert created["expression"]["value"] == 'homeAddress.countryCode = "US"'
    assert created["sandbox"]["sandboxName"] == "prod" and created["imsOrgId"] == ORG
    assert api.get(f"{DEFS}/{created['id']}").json()["name"] == "US people"
    api.post(DEFS, json=definition("Big spenders", "xEvent[commerce.order.priceTotal > 10].count() > 0"))
    listed = api.get(DEFS).json()
    assert listed["page"]["totalCount"] == 2 and listed["page"]["totalPages"] == 1
    assert {s["name"] for s in listed["segments"]} == {"US people", "Big spenders"}
    paged = api.get(DEFS, params={"limit": 1, "page": 2, "sort": "name:asc"}).json()
    assert [s["name"] for s in paged["segments"]] == ["US people"] and paged["page"]["totalPages"] == 2
    patched = api.patch(f"{DEFS}/{created['id']}", json={"description": "changed", "id": "ignored"}).json()
    assert patched["description"] == "changed" and patched["id"] == created["id"]
    assert api.delete(f"{DEFS}/{created['id']}").status_code == 200
    assert_error(api.get(f"{DEFS}/{created['id']}"), 404, created["id"])


def test_names_are_unique(api: Api, fields: None) -> None:
    assert api.post(DEFS, json=definition("Same", "loyalty.points > 1")).status_code == 200
    assert_error(api.post(DEFS, json=definition("Same", "loyalty.points > 2")), 422, "already exists")


@pytest.mark.parametrize(("pql", "mentions"), [
    ("person.name.firstName = ", ["line 1", "column"]),
    ("loyalty.points >> 3", ["line 1", "column 17"]),
    ('person.shoeSize = "9"', ["person.shoeSize"]),
    ('loyalty.points = "many"', ["/expression/value"]),
    ('inSegment("no-such-segment")', ["no-such-segment"]),
    ('CHAIN(xEvent, timestamp, [C0: WHAT(eventType = "x") WHEN(today)])', ["CHAIN"]),
])
def test_bad_pql_is_refused_with_where_and_what(api: Api, fields: None, pql: str, mentions: list[str]) -> None:
    assert_error(api.post(DEFS, json=definition("Bad", pql)), 400, *mentions)
    assert api.get(DEFS).json()["page"]["totalCount"] == 0


def test_in_segment_cycles_are_refused(api: Api, fields: None) -> None:
    first = api.post(DEFS, json=definition("A", "loyalty.points > 1")).json()
    second = api.post(DEFS, json=definition("B", f'inSegment("{first["id"]}")')).json()
    response = api.patch(f"{DEFS}/{first['id']}", json={"expression": {
        "type": "PQL", "format": "pql/text", "value": f'inSegment("{second["id"]}")'}})
    assert_error(response, 400, "cycle")
    assert_error(api.delete(f"{DEFS}/{first['id']}"), 400, second["id"])


@pytest.mark.parametrize(("change", "mention"), [
    ({"schema": {"name": "_xdm.context.experienceevent"}}, "/schema/name"),
    ({"expression": {"type": "PQL", "format": "pql/json", "value": "{}"}}, "/expression/format"),
    ({"mergePolicyId": "nope"}, "nope"),
    ({"name": ""}, "/name"),
])
def test_bad_definitions(api: Api, fields: None, change: dict[str, Any], mention: str) -> None:
    body = {**definition("X", "loyalty.points > 1"), **change}
    response = api.post(DEFS, json=body)
    assert response.status_code in (400, 404), response.text
    assert mention in response.text


def test_bulk_get_and_tenancy(api: Api, fields: None) -> None:
    created = api.post(DEFS, json=definition("One", "loyalty.points > 1")).json()
    response = api.post(f"{DEFS}/bulk-get", json={"ids": [{"id": created["id"]}, {"id": "missing"}]})
    assert response.status_code == 207
    results = response.json()["results"]
    assert results[created["id"]]["name"] == "One" and "404" in results["missing"]["errors"]
    for outsider in (api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET),
                     api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)):
        assert outsider.get(f"{DEFS}/{created['id']}").status_code == 404
        assert outsider.delete(f"{DEFS}/{created['id']}").status_code == 404
        assert outsider.get(DEFS).json()["segments"] == []
