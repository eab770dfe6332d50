"""The real aepp client reads profiles from a real server: `Profile.getEntity`, `getEntityEvents` (paging until
`_links.next.href` is empty), `getEntities`, and `deleteEntity`; responses validate against the Profile specs."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.helpers import EVENT_CLASS, PROFILE_CLASS, event, profile
from tests.specs import assert_matches_spec
from tests.test_aepp_client import configure_aepp

pytestmark = pytest.mark.server
ENTITIES = "/ups/access/entities"


def _ingest(ingest: Any, cat: Any, dataset_id: str, records: list[dict[str, Any]]) -> None:
    batch_id = ingest.createBatch(datasetId=dataset_id)["id"]
    ingest.uploadSmallFile(batch_id, dataset_id, "data.json", data=records)
    ingest.uploadSmallFileFinish(batch_id)
    deadline = time.monotonic() + 60
    while cat.getBatch(batch_id)[batch_id]["status"] != "success":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_aepp_reads_profiles_and_events(server: ServerProcess) -> None:
    configure_aepp(server.base_url)
    from aepp import catalog, customerprofile, ingestion

    cat, ingest = catalog.Catalog(), ingestion.DataIngestion()
    crm = cat.createDataSet(name="CRM", schemaId=PROFILE_CLASS, profileEnabled=True)[0].split("/")[-1]
    web = cat.createDataSet(name="Web", schemaId=EVENT_CLASS, profileEnabled=True)[0].split("/")[-1]
    _ingest(ingest, cat, crm, [profile(f"C{n}", f"p{n}@x.com", f"P{n}") for n in range(3)])
    ecid = "9" * 38
    _ingest(ingest, cat, web, [event(f"e{n}", ecid, f"2024-05-{n + 1:02d}T10:00:00Z", identityMap={
        "ECID": [{"id": ecid, "primary": True}], "CRMID": [{"id": "C0"}]}) for n in range(25)])

    prof = customerprofile.Profile()
    deadline = time.monotonic() + 30
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:  # the profile store applies batches asynchronously
        found = prof.getEntity(entityId="C0", entityIdNS="CRMID")
        if "statusCode" not in found:
            break
        time.sleep(0.1)
    assert_matches_spec("profile", "GET", ENTITIES, 200, found)
    (entity,) = found.values()
    assert entity["entity"]["person"]["name"]["firstName"] == "P0"
    assert entity["sources"] == [crm]

    pdg = prof.createMergePolicy({"name": "stitched", "schema": {"name": "_xdm.context.profile"},
                                  "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}})
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # the two batches may be applied one after the other
        events = prof.getEntityEvents(entityId="C0", entityIdNS="CRMID", mergePolicyId=pdg["id"], limit=10)
        if events:
            break
        time.sleep(0.1)
    assert [e["entityId"] for e in events] == [f"e{n}" for n in range(25)]  # three pages, then it stops
    assert all(e["timestamp"] > 0 for e in events)

    raw_events = httpx.get(f"{server.base_url}/data/core/ups/access/entities", params={
        "schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile",
        "relatedEntityId": "C0", "relatedEntityIdNS": "CRMID", "mergePolicyId": pdg["id"], "limit": 5,
    }, headers=prof.header).json()
    assert_matches_spec("profile.2024-12-14.75b8122", "GET", ENTITIES, 200, raw_events)
    assert raw_events["_links"]["next"]["href"]

    several = prof.getEntities({"schema": {"name": "_xdm.context.profile"}, "identities": [
        {"entityId": "C1", "entityIdNS": {"code": "CRMID"}}, {"entityId": "C2", "entityIdNS": {"code": "CRMID"}}]})
    assert_matches_spec("profile", "POST", ENTITIES, 200, several)
    assert sorted(e["entity"]["person"]["name"]["firstName"] for e in several.values()) == ["P1", "P2"]

    missing = prof.getEntity(entityId="C404", entityIdNS="CRMID")
    assert_matches_spec("profile", "GET", ENTITIES, 404, missing)
    assert missing["statusCode"] == "404"

    assert prof.deleteEntity(schema_name="_xdm.context.profile", entityId="C1", entityIdNS="CRMID") == 202
    assert prof.getEntity(entityId="C1", entityIdNS="CRMID")["statusCode"] == "404"
