"""Segment previews and estimates: counts equal what a segment job qualifies (and hand-computed sets), samples
are merged profiles that Profile Access returns too, merge policies (body, sandbox default, unknown), bad input
named with positions, tenancy, delete, the NEW → RUNNING → RESULT_READY | FAILED lifecycle, and the real aepp
client against a real server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from openprofile.core.platform import Platform
from openprofile.core.queue import ClaimedJob, WorkerPool
from openprofile.core.tenancy import Tenant, find_sandbox
from openprofile.identity.namespaces import xid
from openprofile.profile import policies
from openprofile.profile.policy_models import MergePolicyRequest
from openprofile.segmentation import preview
from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET, Api, ServerProcess
from tests.helpers import PROFILE_CLASS, assert_error, create_dataset, event, ingest, profile
from tests.segmentation.test_jobs import create_segment, definition, run_job
from tests.specs import assert_matches_spec

PREVIEW = "/data/core/ups/preview"
ESTIMATE = "/data/core/ups/estimate"
MP = "/data/core/ups/config/mergePolicies"
BUYERS = 'xEvent[eventType = "commerce.purchases"].count() > 0'
FINAL = ("RESULT_READY", "FAILED")


def crm(*ids: str) -> set[str]:
    return {xid("crmid", i) for i in ids}


def create_preview(api: Api, pql: str, **more: Any) -> dict[str, Any]:
    response = api.post(PREVIEW, json={"predicateExpression": pql, "predicateType": "pql/text",
                                       "predicateModel": "_xdm.context.profile", **more})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert_matches_spec("segmentation", "POST", "/preview", 201, created)
    assert response.headers["X-Location"] == f"{PREVIEW}/{created['previewId']}"
    return created


def wait_preview(api: Api, preview_id: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(f"{PREVIEW}/{preview_id}", params=params)
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        if found["state"] in FINAL:
            assert_matches_spec("segmentation", "GET", "/preview/{PREVIEW_ID}", 200, found)
            return found
        time.sleep(0.05)
    raise AssertionError(f"preview {preview_id} did not finish")


def estimate(api: Api, preview_id: str) -> dict[str, Any]:
    response = api.get(f"{ESTIMATE}/{preview_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    assert_matches_spec("segmentation", "GET", "/estimate/{ESTIMATE_ID}", 200, found)
    return found


def run_preview(api: Api, pql: str, **more: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create a preview, wait for RESULT_READY; returns (preview, estimate)."""
    created = create_preview(api, pql, **more)
    assert created["state"] == "NEW" and created["previewQueryStatus"] == "NEW"
    done = wait_preview(api, created["previewId"])
    assert done["state"] == "RESULT_READY", done
    return done, estimate(api, created["previewId"])


def test_counts_equal_segment_job_and_hand_computed_sets(api: Api, data: dict[str, str]) -> None:
    expected = {
        "loyalty.points > 5": {"C1", "C3"},
        BUYERS: {"C1"},
        'person.name.firstName = "Bob" or loyalty.points >= 20': {"C2", "C3"},
        'person.name.firstName.startsWith("Nobody")': set(),
    }
    segment_ids = {pql: create_segment(api, f"S{n}", pql) for n, pql in enumerate(expected)}
    job = run_job(api, "*")
    assert job["status"] == "SUCCEEDED", job
    counted = job["metrics"]["segmentedProfileCounter"]
    for pql, members in expected.items():
        found, counts = run_preview(api, pql)
        assert counts["estimatedSize"] == counted[segment_ids[pql]] == len(members), pql
        assert counts["profilesMatchedSoFar"] == len(members)
        assert counts["totalRows"] == counts["profilesReadSoFar"] == counts["numRowsToRead"] == 3
        assert counts["state"] == "RESULT_READY" and counts["standardError"] == 0
        assert counts["error"] == {"description": "", "traceback": ""}
        assert counts["_links"]["preview"] == f"{PREVIEW}/{found['previewId']}"
        assert {r["objectId"] for r in found["results"]} == crm(*members), pql
    _, points = run_preview(api, "loyalty.points > 5")
    assert points["estimatedNamespaceDistribution"] == [{"namespaceId": "crmid", "profilesMatchedSoFar": 2},
                                                        {"namespaceId": "email", "profilesMatchedSoFar": 2}]
    # inSegment reads the segment's current membership (the job above put Ann and Cy in it).
    points_id = segment_ids["loyalty.points > 5"]
    found, counts = run_preview(api, f'inSegment("{points_id}") and person.name.firstName != "Cy"')
    assert counts["estimatedSize"] == 1 and {r["objectId"] for r in found["results"]} == crm("C1")


def test_sample_is_merged_profiles_that_profile_access_returns(api: Api, data: dict[str, str]) -> None:
    loyalty = create_dataset(api, "Loyalty")  # Bob's points come from a second dataset: the sample is merged
    assert ingest(api, loyalty, [{"identityMap": {"CRMID": [{"id": "C2", "primary": True}]},
                                  "loyalty": {"points": 40}}])["status"] == "success"
    found, counts = run_preview(api, "loyalty.points > 5")
    assert counts["estimatedSize"] == 3
    by_id = {r["objectId"]: r for r in found["results"]}
    assert set(by_id) == crm("C1", "C2", "C3")
    bob = by_id[xid("crmid", "C2")]
    assert bob["entity"]["person"]["name"]["firstName"] == "Bob" and bob["entity"]["loyalty"]["points"] == 40
    assert "xEvent" not in bob["entity"] and "_group" not in bob["entity"]
    assert [o["objectId"] for o in bob["relatedObjects"]] == [xid("email", "bob@x.com")]
    for result in found["results"]:  # each _href is the Profile Access lookup of the same merged profile
        looked_up = api.get(result["_href"])
        assert looked_up.status_code == 200, looked_up.text
        entity = looked_up.json()[result["objectId"]]["entity"]
        assert entity["person"] == result["entity"]["person"]
        assert entity["loyalty"] == result["entity"]["loyalty"]
    assert found["page"] == {"offset": 0, "size": 3} and found["links"]["next"] == ""

    first = api.get(f"{PREVIEW}/{found['previewId']}", params={"limit": 2}).json()
    assert [r["objectId"] for r in first["results"]] == [r["objectId"] for r in found["results"][:2]]
    assert first["page"] == {"offset": 0, "size": 2} and first["links"]["prev"] == ""
    second = api.get(first["links"]["next"]).json()
    assert [r["objectId"] for r in second["results"]] == [found["results"][2]["objectId"]]
    assert second["links"]["next"] == "" and second["links"]["prev"]


def test_merge_policy_from_body_or_sandbox_default(api: Api, data: dict[str, str]) -> None:
    ecid = "3" * 38  # Cy's purchase is keyed by an ECID that the event links to Cy's CRMID
    assert ingest(api, data["web"], [event("e3", ecid, eventType="commerce.purchases", identityMap={
        "ECID": [{"id": ecid, "primary": True}], "CRMID": [{"id": "C3"}]})])["status"] == "success"
    response = api.post(MP, json={"name": "Stitched", "schema": {"name": "_xdm.context.profile"},
                                  "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}})
    assert response.status_code == 200, response.text
    pdg = response.json()["id"]
    pql = f"{BUYERS} and loyalty.points > 5"

    body = definition("Stitched buyers", pql) | {"mergePolicyId": pdg}
    created = api.post("/data/core/ups/segment/definitions", json=body)
    assert created.status_code == 200, created.text
    job = run_job(api, created.json()["id"])
    assert job["status"] == "SUCCEEDED", job
    assert job["metrics"]["segmentedProfileCounter"] == {created.json()["id"]: 2}

    found, counts = run_preview(api, pql, mergePolicyId=pdg, graphType="none")  # the policy decides stitching
    assert counts["estimatedSize"] == 2 and {r["objectId"] for r in found["results"]} == crm("C1", "C3")
    cy = next(r for r in found["results"] if r["objectId"] == xid("crmid", "C3"))
    assert xid("ecid", ecid) in {o["objectId"] for o in cy["relatedObjects"]}
    assert f"mergePolicyId={pdg}" in cy["_href"]
    _, unstitched = run_preview(api, pql)  # the built-in default policy does not stitch: only Ann
    assert unstitched["estimatedSize"] == 1

    assert api.patch(f"{MP}/{pdg}", json=[{"op": "add", "path": "/default", "value": True}]).status_code == 200
    _, by_default = run_preview(api, pql)
    assert by_default["estimatedSize"] == 2

    assert_error(api.post(PREVIEW, json={"predicateExpression": pql, "mergePolicyId": "no-such-policy"}), 404,
                 "no-such-policy", "/mergePolicyId")


@pytest.mark.parametrize(("body", "status", "mentions"), [
    ({"predicateType": "pql/text"}, 400, ["/predicateExpression", "Field required"]),
    ({"predicateExpression": 42}, 400, ["/predicateExpression"]),
    ({"predicateExpression": ""}, 400, ["/predicateExpression"]),
    ({"predicateExpression": "loyalty.points >"}, 400, ["/predicateExpression", "line 1, column", "expected"]),
    ({"predicateExpression": 'person.name.firstName = "Ann"\nand and'}, 400,
     ["/predicateExpression", "line 2, column"]),
    ({"predicateExpression": "loyalty.nope > 1"}, 400, ["/predicateExpression", "loyalty.nope"]),
    ({"predicateExpression": 'person.name.firstName > 3'}, 400, ["/predicateExpression", "line 1"]),
    ({"predicateExpression": 'inSegment("no-such-segment")'}, 400, ["no-such-segment"]),
    ({"predicateExpression": "loyalty.points > 1", "predicateType": "sql"}, 400, ["/predicateType", "sql"]),
    ({"predicateExpression": "loyalty.points > 1", "predicateModel": "_xdm.context.experienceevent"}, 400,
     ["/predicateModel", "_xdm.context.experienceevent"]),
    ({"predicateExpression": "loyalty.points > 1", "graphType": "everything"}, 400, ["/graphType", "everything"]),
    ({"predicateExpression": "loyalty.points > 1", "mergePolicyId": 7}, 400, ["/mergePolicyId"]),
    (["loyalty.points > 1"], 400, []),
])
def test_bad_requests_are_named(api: Api, data: dict[str, str], body: Any, status: int, mentions: list[str]) -> None:
    assert_error(api.post(PREVIEW, json=body), status, *mentions)


def test_bad_ids_bodies_and_paging(api: Api, data: dict[str, str]) -> None:
    assert_error(api.post(PREVIEW, content=b'{"predicateExpression": "x" "y"}',
                          headers={"Content-Type": "application/json"}), 400, "line 1")
    assert_error(api.post(PREVIEW, content=b"predicateExpression=x", headers={"Content-Type": "text/plain"}), 415)
    for path in (f"{PREVIEW}/nope", f"{ESTIMATE}/nope"):
        assert_error(api.get(path), 404, "nope")
    assert_error(api.delete(f"{PREVIEW}/nope"), 404, "nope")
    found, _ = run_preview(api, "loyalty.points > 5")
    for params, named in (({"limit": 0}, "limit"), ({"limit": "ten"}, "limit"), ({"offset": -1}, "offset")):
        assert_error(api.get(f"{PREVIEW}/{found['previewId']}", params=params), 400, named)


def test_delete(api: Api, data: dict[str, str]) -> None:
    found, _ = run_preview(api, "loyalty.points > 5")
    response = api.delete(f"{PREVIEW}/{found['previewId']}")
    assert response.status_code == 200, response.text
    assert_matches_spec("segmentation", "DELETE", "/preview/{PREVIEW_ID}", 200, response.json())
    assert response.json()["status"] is True
    assert_error(api.get(f"{PREVIEW}/{found['previewId']}"), 404)
    assert_error(api.get(f"{ESTIMATE}/{found['previewId']}"), 404)
    assert_error(api.delete(f"{PREVIEW}/{found['previewId']}"), 404)


def test_tenancy(api: Api, data: dict[str, str]) -> None:
    found, _ = run_preview(api, "loyalty.points > 5")
    preview_id = found["previewId"]
    dev = api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET)
    other = api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)
    for outsider in (dev, other):
        assert_error(outsider.get(f"{PREVIEW}/{preview_id}"), 404)
        assert_error(outsider.get(f"{ESTIMATE}/{preview_id}"), 404)
        assert_error(outsider.delete(f"{PREVIEW}/{preview_id}"), 404)
    assert api.get(f"{PREVIEW}/{preview_id}").json()["state"] == "RESULT_READY"  # untouched
    # A sandbox sees only its own profiles: the same expression in dev reads none of prod's.
    assert ingest(dev, create_dataset(dev, "Dev CRM 2"),
                  [profile("D1", "dee@x.com", "Dee", loyalty={"points": 7})])["status"] == "success"
    in_dev, counts = run_preview(dev, "loyalty.points > 5")
    assert counts["totalRows"] == 1 and counts["estimatedSize"] == 1
    assert {r["objectId"] for r in in_dev["results"]} == crm("D1")
    assert_error(api.get(f"{PREVIEW}/{in_dev['previewId']}"), 404)


def _tenant(platform: Platform) -> Tenant:
    with platform.engine.connect() as conn:
        sandbox = find_sandbox(conn, ORG, "prod")
    assert sandbox is not None
    return Tenant(ORG, sandbox.id, "prod")


def test_lifecycle_and_failure(platform: Platform) -> None:
    """Without a server's workers: NEW until a worker runs it; a re-run of a RUNNING preview (its worker died)
    finishes it; a preview whose merge policy was deleted before it ran ends FAILED with the reason."""
    tenant = _tenant(platform)
    worker = WorkerPool(platform.queue, {preview.JOB_KIND: preview.handler(platform)})
    request = preview.PreviewRequest(predicateExpression="identities.count() > 0")
    with platform.engine.begin() as conn:
        created = preview.create(conn, tenant, request, "req-1")
    assert preview.render_preview(created)["state"] == "NEW" and preview.render_preview(created)["results"] == []
    assert preview.render_estimate(created)["state"] == "NEW"
    with platform.engine.begin() as conn:  # a worker claimed it and died: still RUNNING when the job is re-run
        assert preview._move(conn, created, (preview.NEW,), preview.RUNNING)
    assert worker.run_once()
    with platform.engine.connect() as conn:
        done = preview.get(conn, tenant, created.id)
    assert done.state == preview.RESULT_READY
    assert preview.render_estimate(done)["totalRows"] == 0 and preview.render_preview(done)["results"] == []
    assert not worker.run_once()  # its queue job is done; nothing runs it again

    with platform.engine.begin() as conn:
        policy = policies.create_merge_policy(conn, tenant, MergePolicyRequest.model_validate({
            "name": "Gone", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"},
            "attributeMerge": {"type": "timestampOrdered"}}), max_policies=100)
        doomed = preview.create(conn, tenant, request.model_copy(update={"mergePolicyId": policy.id}), "req-2")
    with platform.engine.begin() as conn:
        policies.delete_merge_policy(conn, tenant, policy.id)
    assert worker.run_once()
    with platform.engine.connect() as conn:
        failed = preview.get(conn, tenant, doomed.id)
    assert failed.state == preview.FAILED
    assert policy.id in preview.render_estimate(failed)["error"]["description"]
    assert policy.id in preview.render_preview(failed)["error"]["description"]

    with platform.engine.begin() as conn:  # deleted before it ran: the worker finds nothing to do
        gone = preview.create(conn, tenant, request, "req-3")
        preview.delete(conn, tenant, gone.id)
    assert worker.run_once()

    with platform.engine.begin() as conn:  # its workers kept dying before they moved it on: FAILED, not NEW
        stuck = preview.create(conn, tenant, request, "req-4")
    claimed = ClaimedJob(0, preview.JOB_KIND, tenant, stuck.id, {"previewId": stuck.id}, 4)
    preview.give_up(platform, claimed, "gave up after 3 attempts")
    assert worker.run_once()  # its queued run finds it finished and leaves it so
    with platform.engine.connect() as conn:
        given_up = preview.get(conn, tenant, stuck.id)
    assert given_up.state == preview.FAILED and "gave up after 3 attempts" in given_up.error["description"]


@pytest.mark.server
def test_aepp_preview_and_estimate(server: ServerProcess) -> None:
    from tests.profile.test_access_aepp import _ingest
    from tests.test_aepp_client import configure_aepp

    configure_aepp(server.base_url)
    from aepp import catalog, ingestion, segmentation

    cat, ingest_api = catalog.Catalog(), ingestion.DataIngestion()
    dataset = cat.createDataSet(name="CRM", schemaId=PROFILE_CLASS, profileEnabled=True)[0].split("/")[-1]
    _ingest(ingest_api, cat, dataset, [profile(f"C{n}", f"p{n}@x.com", f"P{n}", loyalty={"points": n})
                                       for n in range(6)])
    seg = segmentation.Segmentation()
    created = seg.createPreview("loyalty.points >= 3")  # aepp sends graphType pdg; the default policy decides
    assert_matches_spec("segmentation", "POST", "/preview", 201, created)
    deadline = time.monotonic() + 60
    found = seg.getPreview(created["previewId"])
    while found["state"] not in FINAL:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        found = seg.getPreview(created["previewId"])
    assert found["state"] == "RESULT_READY", found
    assert_matches_spec("segmentation", "GET", "/preview/{PREVIEW_ID}", 200, found)
    assert {r["objectId"] for r in found["results"]} == crm("C3", "C4", "C5")
    counts = seg.getEstimate(created["previewId"])
    assert_matches_spec("segmentation", "GET", "/estimate/{ESTIMATE_ID}", 200, counts)
    assert counts["state"] == "RESULT_READY" and counts["estimatedSize"] == 3 and counts["totalRows"] == 6
    seg.deletePreview(created["previewId"])
    assert seg.getPreview(created["previewId"])["status"] == 404  # aepp returns the error body as it is
    bad = seg.createPreview("loyalty.points >")
    assert bad["status"] == 400 and "line 1, column" in bad["detail"]
