"""Profile Access: merged profiles by identity under each merge policy, events paged, bulk lookup, delete,
and the worked examples of aep-semantics.md (stitching, dataset precedence, custom timestamps)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from openprofile.core.platform import Platform
from openprofile.identity.namespaces import xid
from openprofile.profile import store
from tests.conftest import Api
from tests.export.test_export_jobs import exported_rows, wait_job
from tests.helpers import EVENT_CLASS, PROFILE_UNION, assert_error, create_dataset, event, ingest, profile
from tests.profile.test_store import tenant_of

ENTITIES = "/data/core/ups/access/entities"
POLICIES = "/data/core/ups/config/mergePolicies"
ECID_A, ECID_B = "1" * 38, "2" * 38


def settle(platform: Platform) -> None:
    tenant = tenant_of(platform)
    deadline = time.monotonic() + 30
    while store.pending_count(platform, tenant) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.pending_count(platform, tenant) == 0


def policy(api: Api, graph: str, merge: str, order: list[str] | None = None) -> str:
    body: dict[str, Any] = {"name": f"{graph}-{merge}-{len(order or [])}", "schema": {"name": "_xdm.context.profile"},
                            "identityGraph": {"type": graph}, "attributeMerge": {"type": merge}}
    if order:
        body["attributeMerge"]["order"] = order
    response = api.post(POLICIES, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def lookup(api: Api, entity_id: str, ns: str, **params: str) -> Any:
    return api.get(ENTITIES, params={"schema.name": "_xdm.context.profile", "entityId": entity_id,
                                     "entityIdNS": ns, **params})


@pytest.fixture
def stitched(api: Api, platform: Platform) -> dict[str, str]:
    """Two ECIDs stitched through a CRMID: events carry ECID+CRMID, CRM and loyalty records share the CRMID."""
    crm = create_dataset(api, "CRM")
    loyalty = create_dataset(api, "Loyalty")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    assert ingest(api, crm, [profile("C1", "ann@x.com", "Ann", homeAddress={"city": "Paris"})])["status"] == "success"
    assert ingest(api, loyalty, [{
        "identityMap": {"CRMID": [{"id": "C1", "primary": True}]},
        "person": {"name": {"firstName": "Annie"}}, "loyalty": {"tier": "gold", "points": 10},
    }])["status"] == "success"
    assert ingest(api, web, [
        event("e1", ECID_A, "2024-05-01T10:00:00Z", identityMap={"ECID": [{"id": ECID_A, "primary": True}],
                                                               "CRMID": [{"id": "C1"}]}),
        event("e2", ECID_B, "2024-05-02T10:00:00Z", identityMap={"ECID": [{"id": ECID_B, "primary": True}],
                                                               "CRMID": [{"id": "C1"}]}),
        event("e3", ECID_B, "2024-05-03T10:00:00Z"),
    ])["status"] == "success"
    settle(platform)
    return {"crm": crm, "loyalty": loyalty, "web": web}


def test_default_policy_merges_one_identity_without_stitching(api: Api, stitched: dict[str, str]) -> None:
    response = lookup(api, "C1", "CRMID")
    assert response.status_code == 200, response.text
    body = response.json()
    key = xid("crmid", "C1")
    assert list(body) == [key]
    found = body[key]
    assert found["entityId"] == key
    assert found["sources"] == sorted([stitched["crm"], stitched["loyalty"]])
    entity = found["entity"]
    assert entity["person"]["name"]["firstName"] == "Annie"  # the loyalty record was ingested last
    assert entity["homeAddress"] == {"city": "Paris"} and entity["loyalty"]["tier"] == "gold"
    identities = {(i["namespace"]["code"], i["id"]) for i in entity["identities"]}
    assert identities == {("crmid", "C1"), ("email", "ann@x.com")}
    assert found["lastModifiedAt"].endswith("Z")
    assert lookup(api, ECID_A, "ECID").status_code == 404  # under `none`, an ECID has no record fragments


def test_pdg_stitches_two_ecids_through_the_crmid(api: Api, stitched: dict[str, str]) -> None:
    pdg = policy(api, "pdg", "timestampOrdered")
    from_a = lookup(api, ECID_A, "ECID", mergePolicyId=pdg).json()[xid("ecid", ECID_A)]
    from_b = lookup(api, ECID_B, "ECID", mergePolicyId=pdg).json()[xid("ecid", ECID_B)]
    assert from_a["entity"] == from_b["entity"]
    assert set(from_a["identityGraph"]) == {xid("ecid", ECID_A), xid("ecid", ECID_B), xid("crmid", "C1"),
                                            xid("email", "ann@x.com")}
    # `identities` are the whole cluster's, as an export lists them: the records' own, then the members no
    # record names (not primary), ordered by (id, namespace).
    assert from_a["entity"]["identities"] == [
        {"id": ECID_A, "namespace": {"code": "ecid"}, "primary": False},
        {"id": ECID_B, "namespace": {"code": "ecid"}, "primary": False},
        {"id": "C1", "namespace": {"code": "crmid"}, "primary": True},
        {"id": "ann@x.com", "namespace": {"code": "email"}, "primary": False},
    ]
    only = lookup(api, ECID_A, "ECID", mergePolicyId=pdg, fields="identities.id").json()[xid("ecid", ECID_A)]
    assert only["entity"] == {"identities": [{"id": ECID_A}, {"id": ECID_B}, {"id": "C1"}, {"id": "ann@x.com"}]}
    target = create_dataset(api, "Target", schema_id=PROFILE_UNION, profile=False)
    created = api.post("/data/core/ups/export/jobs", json={
        "fields": "identities", "mergePolicy": {"id": pdg}, "destination": {"datasetId": target},
        "schema": {"name": "_xdm.context.profile"}})
    assert created.status_code == 200, created.text
    done = wait_job(api, created.json()["id"])
    (row,) = exported_rows(api, done["destination"]["batchId"])
    assert row["identities"] == from_a["entity"]["identities"]


def test_dataset_precedence_excludes_unlisted_datasets(api: Api, stitched: dict[str, str]) -> None:
    crm_first = policy(api, "none", "dataSetPrecedence", [stitched["crm"]])
    found = lookup(api, "C1", "CRMID", mergePolicyId=crm_first).json()[xid("crmid", "C1")]
    assert found["entity"]["person"]["name"]["firstName"] == "Ann"
    assert "loyalty" not in found["entity"]
    assert found["sources"] == [stitched["crm"]]


def test_custom_timestamp_beats_a_later_ingestion(api: Api, platform: Platform) -> None:
    crm = create_dataset(api, "CRM")
    loyalty = create_dataset(api, "Loyalty")
    custom = {"lastUpdatedDate": "2030-01-01T00:00:00Z"}
    ingest(api, crm, [profile("C7", "g@x.com", "Newer", extSourceSystemAudit=custom)])
    ingest(api, loyalty, [{"identityMap": {"CRMID": [{"id": "C7", "primary": True}]},
                           "person": {"name": {"firstName": "Older"}},
                           "extSourceSystemAudit": {"lastUpdatedDate": "2020-01-01T00:00:00Z"}}])
    settle(platform)
    entity = lookup(api, "C7", "CRMID").json()[xid("crmid", "C7")]["entity"]
    assert entity["person"]["name"]["firstName"] == "Newer"


def test_fields_projection(api: Api, stitched: dict[str, str]) -> None:
    found = lookup(api, "C1", "CRMID", fields="person.name.firstName, identities.id").json()[xid("crmid", "C1")]
    assert found["entity"] == {"person": {"name": {"firstName": "Annie"}},
                               "identities": [{"id": "C1"}, {"id": "ann@x.com"}]}
    assert_error(lookup(api, "C1", "CRMID", fields="person.shoeSize"), 400, "person.shoeSize")


def test_events_are_paged_until_the_last_page(api: Api, stitched: dict[str, str]) -> None:
    pdg = policy(api, "pdg", "timestampOrdered")
    params = {"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile",
              "relatedEntityId": "C1", "relatedEntityIdNS": "CRMID", "mergePolicyId": pdg, "limit": "2"}
    first = api.get(ENTITIES, params=params).json()
    assert [c["entityId"] for c in first["children"]] == ["e1", "e2"]
    href = first["_links"]["next"]["href"]
    assert "offsets=2" in href
    second = api.get(ENTITIES, params={**params, "offsets": "2"}).json()
    assert [c["entityId"] for c in second["children"]] == ["e3"]
    assert second["_links"]["next"]["href"] == ""
    newest = api.get(ENTITIES, params={**params, "orderby": "-timestamp", "limit": "1"}).json()
    assert newest["children"][0]["entityId"] == "e3"
    window = api.get(ENTITIES, params={**params, "startTime": "1714644000000", "endTime": "1714730400000"}).json()
    assert [c["entityId"] for c in window["children"]] == ["e2"]


def test_bulk_lookup(api: Api, stitched: dict[str, str]) -> None:
    response = api.post(ENTITIES, json={"schema": {"name": "_xdm.context.profile"}, "fields": ["person.name"],
                                        "identities": [{"entityId": "C1", "entityIdNS": {"code": "CRMID"}},
                                                       {"entityId": "nobody", "entityIdNS": {"code": "CRMID"}}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body[xid("crmid", "C1")]["entity"] == {"person": {"name": {"firstName": "Annie", "lastName": "Doe"}}}
    assert body[xid("crmid", "nobody")]["entity"] == {}


def test_delete_removes_the_profile(api: Api, stitched: dict[str, str]) -> None:
    response = api.delete(ENTITIES, params={"schema.name": "_xdm.context.profile", "entityId": "C1",
                                            "entityIdNS": "CRMID"})
    assert response.status_code == 202, response.text
    assert_error(lookup(api, "C1", "CRMID"), 404, "C1")


def test_oversized_graph_is_422(api: Api, platform: Platform) -> None:
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    records = [event(f"e{n}", f"{n:038d}", identityMap={"ECID": [{"id": f"{n:038d}", "primary": True}],
                                                         "CRMID": [{"id": "HUB"}]}) for n in range(55)]
    ingest(api, web, records)
    settle(platform)
    pdg = policy(api, "pdg", "timestampOrdered")
    assert_error(lookup(api, "HUB", "CRMID", mergePolicyId=pdg), 422, "Too many related identities")


@pytest.mark.parametrize(("params", "status", "mention"), [
    ({"schema.name": "_xdm.context.account", "entityId": "C1", "entityIdNS": "CRMID"}, 400, "schema.name"),
    ({"entityId": "C1", "entityIdNS": "CRMID"}, 400, "schema.name"),
    ({"schema.name": "_xdm.context.profile"}, 400, "entityId"),
    ({"schema.name": "_xdm.context.profile", "entityId": "C1"}, 400, "entityIdNS"),
    ({"schema.name": "_xdm.context.profile", "entityId": "C1", "entityIdNS": "CRMID", "mergePolicyId": "nope"}, 404,
     "nope"),
    ({"schema.name": "_xdm.context.profile", "entityId": "C404", "entityIdNS": "CRMID"}, 404, "C404"),
    ({"schema.name": "_xdm.context.experienceevent", "relatedEntityId": "C1", "relatedEntityIdNS": "CRMID",
      "limit": "-1"}, 400, "limit"),
    ({"schema.name": "_xdm.context.experienceevent", "relatedEntityId": "C1", "relatedEntityIdNS": "CRMID",
      "startTime": "10", "endTime": "5"}, 400, "startTime"),
])
def test_bad_lookups(api: Api, stitched: dict[str, str], params: dict[str, str], status: int, mention: str) -> None:
    assert_error(api.get(ENTITIES, params=params), status, mention)


def test_another_tenant_sees_no_profile(api: Api, stitched: dict[str, str]) -> None:
    from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET

    for outsider in (api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET),
                     api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)):
        assert lookup(outsider, "C1", "CRMID").status_code == 404
        gone = outsider.delete(ENTITIES, params={"schema.name": "_xdm.context.profile", "entityId": "C1",
                                                 "entityIdNS": "CRMID"})
        assert gone.status_code == 404
    assert lookup(api, "C1", "CRMID").status_code == 200
