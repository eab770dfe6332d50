"""Audience exports over memberships that segment jobs computed: the segment filter and `segmentMembership`
read them (a computed segment replaces an ingested one of the same id), lookups show them, an export with
`evaluationInfo.segmentation` evaluates its segments first (a segment job of its own), the merge policy
defaults to the segment's, and a filter naming an unknown or deleted segment is refused."""

from __future__ import annotations

from typing import Any

import pytest

from openprofile.core.platform import Platform
from openprofile.core.tenancy import Tenant
from openprofile.export import service as export_service
from openprofile.profile import store as profile_store
from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET, Api
from tests.export.test_export_jobs import JOBS, exported_rows, wait_job
from tests.helpers import PROFILE_UNION, assert_error, create_dataset, ingest, profile
from tests.segmentation.test_jobs import DEFS, create_segment, definition, run_job

ENTITIES = "/data/core/ups/access/entities"
POLICIES = "/data/core/ups/config/mergePolicies"


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    crm = create_dataset(api, "CRM")
    ingested = {"ups": {"gold": {"status": "existing", "lastQualificationTime": "2020-01-01T00:00:00Z"}},
                "aam": {"x": {"status": "realized", "lastQualificationTime": "2020-01-01T00:00:00Z"}}}
    assert ingest(api, crm, [profile("C1", "ann@x.com", "Ann", loyalty={"points": 10}, segmentMembership=ingested),
                             profile("C2", "bob@x.com", "Bob", loyalty={"points": 3}),
                             profile("C3", "cy@x.com", "Cy", loyalty={"points": 20})])["status"] == "success"
    target = create_dataset(api, "Target", schema_id=PROFILE_UNION, profile=False)
    return {"crm": crm, "target": target}


def export(api: Api, world: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {"fields": "person.name.firstName,segmentMembership", "destination": {"datasetId": world["target"]},
            "schema": {"name": "_xdm.context.profile"}, **extra}
    created = api.post(JOBS, json=body)
    assert created.status_code == 200, created.text
    done = wait_job(api, created.json()["id"])
    assert done["status"] == "SUCCEEDED", done
    return done


def rows_by_name(api: Api, done: dict[str, Any]) -> dict[str, Any]:
    return {r["person"]["name"]["firstName"]: r for r in exported_rows(api, done["destination"]["batchId"])}


def ups(row: dict[str, Any]) -> dict[str, str]:
    """segment id → status of a row's `segmentMembership.ups` (a map: a list of (key, value) pairs)."""
    namespaces = dict(row.get("segmentMembership") or [])
    return {segment: value["status"] for segment, value in namespaces.get("ups") or []}


def test_export_filter_and_columns_read_computed_memberships(api: Api, world: dict[str, Any]) -> None:
    rich = create_segment(api, "Rich", "loyalty.points > 5")
    assert run_job(api, rich)["status"] == "SUCCEEDED"
    done = export(api, world, filter={"segments": [{"segmentId": rich}]})
    got = rows_by_name(api, done)
    assert sorted(got) == ["Ann", "Cy"]
    assert ups(got["Ann"]) == {"gold": "existing", rich: "realized"}  # the ingested audience stays
    assert dict(dict(got["Ann"]["segmentMembership"])["aam"])["x"]["status"] == "realized"
    assert ups(got["Cy"]) == {rich: "realized"}
    # Without a filter every profile is exported, its computed memberships with it.
    everyone = rows_by_name(api, export(api, world))
    assert {name: ups(row) for name, row in everyone.items()} == {
        "Ann": {"gold": "existing", rich: "realized"}, "Bob": {}, "Cy": {rich: "realized"}}
    # The ingested-only audience is still a valid filter.
    assert sorted(rows_by_name(api, export(api, world, filter={"segments": [{"segmentId": "gold"}]}))) == ["Ann"]


def test_a_second_evaluation_moves_statuses_and_exports_follow(api: Api, world: dict[str, Any]) -> None:
    rich = create_segment(api, "Rich", "loyalty.points > 5")
    assert run_job(api, rich)["status"] == "SUCCEEDED"
    assert ingest(api, world["crm"], [profile("C1", "ann@x.com", "Ann", loyalty={"points": 1}),
                                      profile("C2", "bob@x.com", "Bob", loyalty={"points": 30})])["status"] == "success"
    assert run_job(api, rich)["status"] == "SUCCEEDED"

    def names(*statuses: str) -> list[str]:
        segment = {"segmentId": rich, "status": list(statuses)}
        return sorted(rows_by_name(api, export(api, world, filter={"segments": [segment]})))

    assert names("realized") == ["Bob"]
    assert names("existing") == ["Cy"]
    assert names("exited") == ["Ann"]
    assert names("realized", "existing") == ["Bob", "Cy"]


def test_lookups_show_computed_memberships(api: Api, world: dict[str, Any]) -> None:
    rich = create_segment(api, "Rich", "loyalty.points > 5")
    assert run_job(api, rich)["status"] == "SUCCEEDED"
    params = {"schema.name": "_xdm.context.profile", "entityId": "C1", "entityIdNS": "CRMID"}
    found = api.get(ENTITIES, params=params)
    assert found.status_code == 200, found.text
    (entity,) = found.json().values()
    memberships = entity["entity"]["segmentMembership"]
    assert memberships["ups"][rich]["status"] == "realized"
    assert memberships["ups"][rich]["lastQualificationTime"].endswith("Z")
    assert memberships["ups"]["gold"]["status"] == "existing" and memberships["aam"]["x"]["status"] == "realized"
    # fields selects it (and only it); a leaf of every segment works as in exports
    only = api.get(ENTITIES, params={**params, "fields": "segmentMembership.status"}).json()
    (entity,) = only.values()
    assert entity["entity"] == {"segmentMembership": {
        "ups": {rich: {"status": "realized"}, "gold": {"status": "existing"}}, "aam": {"x": {"status": "realized"}}}}
    bob = api.get(ENTITIES, params={**params, "entityId": "C2", "fields": "person.name"}).json()
    assert "segmentMembership" not in next(iter(bob.values()))["entity"]


def test_evaluation_inside_the_export(api: Api, world: dict[str, Any]) -> None:
    rich = create_segment(api, "Rich", "loyalty.points > 5")
    done = export(api, world, filter={"segments": [{"segmentId": rich}]}, evaluationInfo={"segmentation": True})
    assert sorted(rows_by_name(api, done)) == ["Ann", "Cy"]
    # The evaluation ran as a segment job of its own, now finished.
    listed = api.get("/data/core/ups/segment/jobs").json()["children"]
    assert [(j["status"], [s["segmentId"] for s in j["segments"]]) for j in listed] == [("SUCCEEDED", [rich])]
    # A second export evaluates again: the same profiles are now `existing`.
    again = export(api, world, filter={"segments": [{"segmentId": rich, "status": ["existing"]}]},
                   evaluationInfo={"segmentation": True})
    assert sorted(rows_by_name(api, again)) == ["Ann", "Cy"]
    # Only definitions can be evaluated: an ingested audience is refused with evaluation.
    response = api.post(JOBS, json={"destination": {"datasetId": world["target"]},
                                    "schema": {"name": "_xdm.context.profile"},
                                    "filter": {"segments": [{"segmentId": "gold"}]},
                                    "evaluationInfo": {"segmentation": True}})
    assert_error(response, 404, "/filter/segments/0/segmentId", "gold")


def test_merge_policy_defaults_to_the_segments(api: Api, world: dict[str, Any]) -> None:
    policy = api.post(POLICIES, json={"name": "stitched", "schema": {"name": "_xdm.context.profile"},
                                      "identityGraph": {"type": "pdg"},
                                      "attributeMerge": {"type": "timestampOrdered"}, "default": False})
    assert policy.status_code in (200, 201), policy.text
    policy_id = policy.json()["id"]
    body = definition("Rich", "loyalty.points > 5") | {"mergePolicyId": policy_id}
    rich = api.post(DEFS, json=body).json()["id"]
    created = api.post(JOBS, json={"destination": {"datasetId": world["target"]},
                                   "schema": {"name": "_xdm.context.profile"},
                                   "filter": {"segments": [{"segmentId": rich}]}})
    assert created.status_code == 200, created.text
    assert created.json()["mergePolicy"]["id"] == policy_id
    plain = api.post(JOBS, json={"destination": {"datasetId": world["target"]},
                                 "schema": {"name": "_xdm.context.profile"}})
    assert plain.json()["mergePolicy"]["id"] != policy_id  # no segment: the sandbox default


def test_unknown_and_deleted_segments_are_refused(api: Api, world: dict[str, Any]) -> None:
    base = {"destination": {"datasetId": world["target"]}, "schema": {"name": "_xdm.context.profile"}}
    export(api, world)  # the store has applied the ingested batches: their audiences are known
    unknown = api.post(JOBS, json=base | {"filter": {"segments": [{"segmentId": "nope"}]}})
    assert_error(unknown, 404, "/filter/segments/0/segmentId", "nope")
    gone = create_segment(api, "Gone", "loyalty.points > 5")
    assert api.delete(f"{DEFS}/{gone}").status_code in (200, 204)
    deleted = api.post(JOBS, json=base | {"filter": {"segments": [{"segmentId": "gold"}, {"segmentId": gone}]}})
    assert_error(deleted, 404, "/filter/segments/1/segmentId", gone)
    # Another namespace is an external audience: not checked.
    assert api.post(JOBS, json=base | {"filter": {"segments": [{"segmentId": "nope", "segmentNs": "aam"}]}}
                    ).status_code == 200
    # Nothing was queued or created by the refused requests: only the two accepted jobs are listed.
    assert len(api.get(JOBS).json()["records"]) == 2


def test_another_sandboxes_segment_is_unknown(api: Api, world: dict[str, Any]) -> None:
    rich = create_segment(api, "Rich", "loyalty.points > 5")
    for other in (api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET),
                  api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)):
        target = create_dataset(other, "Target", schema_id=PROFILE_UNION, profile=False)
        response = other.post(JOBS, json={"destination": {"datasetId": target},
                                          "schema": {"name": "_xdm.context.profile"},
                                          "filter": {"segments": [{"segmentId": rich}]}})
        assert_error(response, 404, "/filter/segments/0/segmentId", rich)


def test_memberships_survive_a_rebuild(api: Api, world: dict[str, Any], platform: Platform) -> None:
    rich = create_segment(api, "Rich", "loyalty.points > 5")
    job = run_job(api, rich)
    tenant = Tenant(job["imsOrgId"], job["sandbox"]["sandboxId"], job["sandbox"]["sandboxName"])
    profile_store.rebuild(platform, tenant)
    assert sorted(rows_by_name(api, export(api, world, filter={"segments": [{"segmentId": rich}]}))) == ["Ann", "Cy"]


def test_the_worker_checks_segments_against_the_applied_store(api: Api, world: dict[str, Any],
                                                              platform: Platform) -> None:
    """At create time pending batches may still hide an ingested audience; the worker asks again after applying
    them (`unknown_segments`), and fails the job with EXPORT_UNKNOWN_SEGMENT for what is still unknown."""
    rich = create_segment(api, "Rich", "loyalty.points > 5")
    job = run_job(api, rich)  # applies the store
    tenant = Tenant(job["imsOrgId"], job["sandbox"]["sandboxId"], job["sandbox"]["sandboxName"])
    with platform.engine.connect() as conn:
        assert export_service.unknown_segments(platform, conn, tenant, ["nope", "gold", rich]) == ["nope"]
        other = Tenant(tenant.org_id, "other-sandbox-id", "dev")
        # another sandbox sees neither this one's definitions nor its ingested audiences
        assert export_service.unknown_segments(platform, conn, other, ["gold", rich]) == ["gold", rich]
