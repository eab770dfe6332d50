"""Merge Policies API (`/data/core/ups/config/mergePolicies`) on SQLite and PostgreSQL: every operation in
Adobe's shapes (validated against reference/specs/profile.yaml), every bad input a 4xx that names it, the
built-in default, default switching, kept versions, the guardrails, paging, and tenancy.

Spec notes: the bulk-get 207 schema's own example gives `sandbox.default` as the string "true" although it
types it boolean; we answer the boolean. The spec's `MergePolicy` lacks `imsOrgId`, `sandbox` and
`updateEpoch`, which the docs show and we send (the schema allows extra properties).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

import pytest

from openprofile.core.errors import NotFound
from openprofile.core.platform import Platform
from openprofile.core.tenancy import Tenant, find_sandbox
from openprofile.profile import policies
from openprofile.profile.policy_models import MergePolicyRequest
from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET, Api
from tests.helpers import EVENT_CLASS, assert_error, create_dataset
from tests.specs import assert_matches_spec

MP = "/data/core/ups/config/mergePolicies"
BUILT_IN = "timestampOrdered-none-mp"
SPEC_ONE = "/ups/config/mergePolicies/{mergePolicyId}"


def body(name: str = "Policy", **over: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"name": name, "schema": {"name": "_xdm.context.profile"},
                              "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}}
    policy.update(over)
    return policy


def create(api: Api, name: str = "Policy", **over: Any) -> dict[str, Any]:
    response = api.post(MP, json=body(name, **over))
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    assert_matches_spec("profile", "POST", "/ups/config/mergePolicies", 200, created)
    return created


def get(api: Api, policy_id: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"{MP}/{policy_id}", params=params)
    assert response.status_code == 200, response.text
    got: dict[str, Any] = response.json()
    assert_matches_spec("profile", "GET", SPEC_ONE, 200, got)
    return got


def listing(api: Api, **params: Any) -> dict[str, Any]:
    response = api.get(MP, params=params)
    assert response.status_code == 200, response.text
    listed: dict[str, Any] = response.json()
    assert_matches_spec("profile", "GET", "/ups/config/mergePolicies", 200, listed)
    return listed


def defaults(api: Api, schema: str = "_xdm.context.profile") -> list[str]:
    return [p["id"] for p in listing(api, limit=100)["children"] if p["default"] and p["schema"]["name"] == schema]


def tenant_of(platform: Platform, org: str = ORG, sandbox: str = "prod") -> Tenant:
    with platform.engine.connect() as conn:
        found = find_sandbox(conn, org, sandbox)
    assert found is not None
    return Tenant(org_id=org, sandbox_id=found.id, sandbox_name=sandbox)


# --- the built-in default -----------------------------------------------------------------------------------


def test_built_in_default_exists_in_every_sandbox(api: Api) -> None:
    dev = api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET)
    other = api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)
    for who, sandbox in ((api, "prod"), (dev, "dev"), (other, "prod")):
        listed = listing(who)
        assert [p["id"] for p in listed["children"]] == [BUILT_IN]
        assert listed["_page"]["totalCount"] == 1 and listed["_links"]["next"]["href"] == ""
        policy = get(who, BUILT_IN)
        assert policy == listed["children"][0]
        assert policy["name"] == "Default Timestamp-ordered"
        assert policy["imsOrgId"] == who.org and policy["sandbox"]["sandboxName"] == sandbox
        assert policy["schema"] == {"name": "_xdm.context.profile"} and policy["version"] == 1
        assert policy["identityGraph"] == {"type": "none"}
        assert policy["attributeMerge"] == {"type": "timestampOrdered"}
        assert policy["default"] is True and policy["isActiveOnEdge"] is False
        assert isinstance(policy["updateEpoch"], int) and policy["updateEpoch"] < 10**11  # seconds
    assert get(api, BUILT_IN)["sandbox"]["type"] == "production"
    assert get(dev, BUILT_IN)["sandbox"] == {"sandboxId": get(dev, BUILT_IN)["sandbox"]["sandboxId"],
                                             "sandboxName": "dev", "type": "development", "default": False}


def test_built_in_is_read_only(api: Api) -> None:
    assert_error(api.put(f"{MP}/{BUILT_IN}", json=body()), 403, BUILT_IN, "read-only")
    assert_error(api.patch(f"{MP}/{BUILT_IN}", json=[{"op": "add", "path": "/name", "value": "x"}]), 403,
                 BUILT_IN, "read-only")
    assert_error(api.delete(f"{MP}/{BUILT_IN}"), 403, BUILT_IN, "read-only")
    assert get(api, BUILT_IN)["name"] == "Default Timestamp-ordered"
    assert_error(api.get(f"{MP}/{BUILT_IN}", params={"version": 2}), 404, BUILT_IN, "version 2")
    assert get(api, BUILT_IN, version=1)["version"] == 1


# --- create and get -----------------------------------------------------------------------------------------


def test_create_answers_200_with_the_full_object(api: Api) -> None:
    before = int(time.time())
    created = create(api, "Loyalty members", default=True, isActiveOnEdge=False)
    after = int(time.time())
    uuid.UUID(created["id"])
    assert created["name"] == "Loyalty members"
    assert created["imsOrgId"] == ORG
    sandbox = created["sandbox"]
    assert set(sandbox) == {"sandboxId", "sandboxName", "type", "default"}
    assert sandbox["sandboxName"] == "prod" and sandbox["type"] == "production" and sandbox["default"] is True
    assert created["schema"] == {"name": "_xdm.context.profile"}
    assert created["version"] == 1
    assert created["identityGraph"] == {"type": "pdg"}
    assert created["attributeMerge"] == {"type": "timestampOrdered"}
    assert created["isActiveOnEdge"] is False and created["default"] is True
    assert before - 1 <= created["updateEpoch"] <= after + 1
    assert get(api, created["id"]) == created


def test_create_with_trailing_slash_string_booleans_and_instance_header(api: Api) -> None:
    response = api.post(f"{MP}/", json=body(default="true", isActiveOnEdge="false"),
                        headers={"x-profile-instance-id": "ups"})
    assert response.status_code == 200, response.text
    assert response.json()["default"] is True and response.json()["isActiveOnEdge"] is False


def test_create_without_name_is_named_by_its_id(api: Api) -> None:
    policy = body()
    del policy["name"]
    created = api.post(MP, json=policy).json()
    assert created["name"] == created["id"]


def test_create_ignores_read_only_fields_a_client_copies(api: Api) -> None:
    created = create(api, "Copied", id="mine", version=7, imsOrgId="someone@AdobeOrg", updateEpoch=1,
                     sandbox={"sandboxName": "x"})
    assert created["id"] != "mine" and created["version"] == 1 and created["imsOrgId"] == ORG


def test_dataset_precedence_keeps_its_order(api: Api) -> None:
    crm, loyalty = create_dataset(api, "CRM"), create_dataset(api, "Loyalty")
    created = create(api, "By dataset", attributeMerge={"type": "dataSetPrecedence", "order": [loyalty, crm]})
    assert created["attributeMerge"] == {"type": "dataSetPrecedence", "order": [loyalty, crm]}
    assert get(api, created["id"])["attributeMerge"]["order"] == [loyalty, crm]


def test_order_is_ignored_for_timestamp_ordered(api: Api) -> None:
    created = create(api, "aepp's example", attributeMerge={"type": "timestampOrdered", "order": ["string"]})
    assert created["attributeMerge"] == {"type": "timestampOrdered"}


@pytest.mark.parametrize(("policy", "mentions"), [
    ({"name": "x"}, ["/schema", "/identityGraph", "/attributeMerge", "Field required"]),
    (body(schema={"name": "_xdm.context.segmentdefinition"}), ["/schema/name", "_xdm.context.profile"]),
    (body(schema={}), ["/schema/name"]),
    (body(identityGraph={"type": "cluster"}), ["/identityGraph/type", "pdg"]),
    (body(identityGraph={}), ["/identityGraph/type"]),
    (body(attributeMerge={"type": "newest"}), ["/attributeMerge/type", "dataSetPrecedence"]),
    (body(attributeMerge={"type": "dataSetPrecedence"}), ["/attributeMerge/order", "required"]),
    (body(attributeMerge={"type": "dataSetPrecedence", "order": []}), ["/attributeMerge/order"]),
    (body(default="maybe"), ["/default"]),
    (body(isActiveOnEdge=None), ["/isActiveOnEdge"]),
    (body(name=""), ["/name"]),
    (body(isActiveOnEgde=True), ["/isActiveOnEgde"]),
    ([body()], ["valid dictionary"]),
])
def test_create_rejects_bad_bodies_naming_each_field(api: Api, policy: Any, mentions: list[str]) -> None:
    assert_error(api.post(MP, json=policy), 400, *mentions)
    assert [p["id"] for p in listing(api)["children"]] == [BUILT_IN]


def test_create_rejects_malformed_json_and_wrong_content_type(api: Api) -> None:
    bad = b'{"name": "x" "schema": {"name": "_xdm.context.profile"}}'
    assert_error(api.post(MP, content=bad, headers={"Content-Type": "application/json"}), 400, "line 1")
    assert_error(api.post(MP, content=b"name=x", headers={"Content-Type": "text/plain"}), 415, "Content-Type")
    assert_error(api.post(MP, content=b"", headers={"Content-Type": "application/json"}), 400, "empty")


def test_dataset_precedence_order_must_name_profile_enabled_datasets_of_this_sandbox(api: Api) -> None:
    good = create_dataset(api, "CRM")
    plain = create_dataset(api, "Plain", profile=False)
    elsewhere = create_dataset(api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET), "Dev CRM")
    order = [good, "5b76f86b85d0e00000be5c8b", plain, elsewhere, good]
    body_ = body(attributeMerge={"type": "dataSetPrecedence", "order": order})
    error = assert_error(api.post(MP, json=body_), 400, "/attributeMerge/order/1", "5b76f86b85d0e00000be5c8b",
                         "/attributeMerge/order/2", plain, "not enabled for Profile",
                         "/attributeMerge/order/3", elsewhere, "/attributeMerge/order/4", "more than once")
    assert "/attributeMerge/order/0" not in {e["path"] for e in error["report"]["errors"]}


def test_get_unknown_is_404_naming_the_id(api: Api) -> None:
    assert_error(api.get(f"{MP}/no-such-policy"), 404, "no-such-policy")
    assert_error(api.get(f"{MP}/{BUILT_IN}", params={"version": "x"}), 400, "version")


# --- update: PUT and PATCH, versions ------------------------------------------------------------------------


def test_put_replaces_the_whole_policy_and_keeps_every_version(api: Api) -> None:
    crm = create_dataset(api, "CRM")
    created = create(api, "First", identityGraph={"type": "none"})
    policy_id = created["id"]
    replaced_body = body("Second", attributeMerge={"type": "dataSetPrecedence", "order": [crm]}, id=policy_id,
                         version=1, imsOrgId=ORG)
    response = api.put(f"{MP}/{policy_id}", json=replaced_body, headers={"x-profile-instance-id": "ups"})
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert_matches_spec("profile", "PUT", SPEC_ONE, 200, replaced)
    assert replaced["version"] == 2 and replaced["name"] == "Second" and replaced["id"] == policy_id
    assert replaced["identityGraph"] == {"type": "pdg"}
    assert replaced["attributeMerge"] == {"type": "dataSetPrecedence", "order": [crm]}
    third = api.put(f"{MP}/{policy_id}", json=body("Third")).json()
    assert third["version"] == 3 and third["attributeMerge"] == {"type": "timestampOrdered"}

    assert get(api, policy_id) == third
    first = get(api, policy_id, version=1)
    assert first["version"] == 1 and first["name"] == "First" and first["identityGraph"] == {"type": "none"}
    assert get(api, policy_id, version=2)["attributeMerge"]["order"] == [crm]
    assert get(api, policy_id, version=3) == third
    assert_error(api.get(f"{MP}/{policy_id}", params={"version": 4}), 404, policy_id, "version 4")
    assert_error(api.get(f"{MP}/{policy_id}", params={"version": 0}), 404, "version 0")


def test_put_errors(api: Api) -> None:
    policy_id = create(api, "One")["id"]
    assert_error(api.put(f"{MP}/{policy_id}", json=body(id="another")), 400, "/id", policy_id)
    assert_error(api.put(f"{MP}/{policy_id}", json={"name": "x"}), 400, "/schema", "/identityGraph",
                 "/attributeMerge")
    assert_error(api.put(f"{MP}/missing", json=body()), 404, "missing")
    assert get(api, policy_id)["version"] == 1


def test_patch_takes_an_array_or_the_docs_single_object(api: Api) -> None:
    crm, loyalty = create_dataset(api, "CRM"), create_dataset(api, "Loyalty")
    policy_id = create(api, "Start", identityGraph={"type": "none"})["id"]
    response = api.patch(f"{MP}/{policy_id}", json={"op": "add", "path": "/identityGraph.type", "value": "pdg"})
    assert response.status_code == 200, response.text
    patched = response.json()
    assert_matches_spec("profile", "PATCH", SPEC_ONE, 200, patched)
    assert patched["identityGraph"] == {"type": "pdg"} and patched["version"] == 2

    response = api.patch(f"{MP}/{policy_id}", json=[
        {"op": "add", "path": "/name", "value": "Renamed"},
        {"op": "replace", "path": "/attributeMerge.type", "value": "dataSetPrecedence"},
        {"op": "add", "path": "/attributeMerge.order", "value": [crm, loyalty]},
        {"op": "add", "path": "/schema.name", "value": "_xdm.context.profile"},
        {"op": "add", "path": "/default", "value": "true"},
        {"op": "add", "path": "/isActiveOnEdge", "value": "true"},
    ], headers={"Content-Type": "application/json-patch+json", "x-profile-instance-id": "ups"})
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["version"] == 3 and patched["name"] == "Renamed"
    assert patched["attributeMerge"] == {"type": "dataSetPrecedence", "order": [crm, loyalty]}
    assert patched["default"] is True and patched["isActiveOnEdge"] is True

    patched = api.patch(f"{MP}/{policy_id}", json=[
        {"op": "add", "path": "/idActiveOnEdge", "value": "false"},  # the spec's spelling
        {"op": "add", "path": "/attributeMerge/order", "value": f"[\"{loyalty}\"]"},  # string-typed value
        {"op": "add", "path": "/default", "value": False},
    ]).json()
    assert patched["version"] == 4 and patched["isActiveOnEdge"] is False and patched["default"] is False
    assert patched["attributeMerge"]["order"] == [loyalty]
    patched = api.patch(f"{MP}/{policy_id}", json=[
        {"op": "add", "path": "/attributeMerge.order", "value": f"{crm}, {loyalty}"}]).json()
    assert patched["attributeMerge"]["order"] == [crm, loyalty]

    patched = api.patch(f"{MP}/{policy_id}", json=[
        {"op": "add", "path": "/attributeMerge.type", "value": "timestampOrdered"}]).json()
    assert patched["attributeMerge"] == {"type": "timestampOrdered"} and patched["version"] == 6
    assert get(api, policy_id, version=5)["attributeMerge"]["order"] == [crm, loyalty]


@pytest.mark.parametrize(("operations", "status", "mentions"), [
    ([{"op": "add", "path": "/version", "value": 9}], 400, ["/0/path", "/version", "read-only"]),
    ([{"op": "add", "path": "/id", "value": "x"}], 400, ["/id", "read-only"]),
    ([{"op": "add", "path": "/imsOrgId", "value": "x"}], 400, ["/imsOrgId", "read-only"]),
    ([{"op": "add", "path": "/updateEpoch", "value": 1}], 400, ["/updateEpoch", "read-only"]),
    ({"op": "add", "path": "/sandbox/sandboxName", "value": "x"}, 400, ["/sandbox/sandboxName", "read-only"]),
    ([{"op": "add", "path": "/colour", "value": "x"}], 400, ["/colour", "cannot be patched"]),
    ([{"op": "remove", "path": "/name"}], 400, ["/0/op", "remove"]),
    ([{"op": "add", "path": "/name"}], 400, ["/0/value", "required"]),
    ([{"op": "add", "value": "x"}], 400, ["/0/path"]),
    (["add"], 400, ["/0"]),
    ([], 400, ["non-empty"]),
    ("name", 400, ["array"]),
    ([{"op": "add", "path": "/name", "value": "ok"},
      {"op": "add", "path": "/identityGraph.type", "value": "cluster"}], 400, ["/identityGraph/type", "pdg"]),
    ([{"op": "add", "path": "/schema.name", "value": "_xdm.context.x"}], 400, ["/schema/name"]),
    ([{"op": "add", "path": "/default", "value": "perhaps"}], 400, ["/default"]),
    ([{"op": "add", "path": "/attributeMerge.type", "value": "dataSetPrecedence"}], 400,
     ["/attributeMerge/order", "required"]),
    ([{"op": "add", "path": "/attributeMerge.order", "value": ["nope"]},
      {"op": "add", "path": "/attributeMerge.type", "value": "dataSetPrecedence"}], 400,
     ["/attributeMerge/order/0", "nope"]),
])
def test_patch_rejects_bad_operations_and_changes_nothing(api: Api, operations: Any, status: int,
                                                           mentions: list[str]) -> None:
    created = create(api, "Stable")
    assert_error(api.patch(f"{MP}/{created['id']}", json=operations), status, *mentions)
    assert get(api, created["id"]) == created


def test_patch_unknown_is_404(api: Api) -> None:
    assert_error(api.patch(f"{MP}/missing", json=[{"op": "add", "path": "/name", "value": "x"}]), 404, "missing")


# --- delete and bulk-get ------------------------------------------------------------------------------------


def test_delete_answers_200_with_an_empty_body_and_forgets_every_version(api: Api) -> None:
    policy_id = create(api, "Doomed")["id"]
    api.patch(f"{MP}/{policy_id}", json=[{"op": "add", "path": "/name", "value": "Doomed 2"}])
    response = api.delete(f"{MP}/{policy_id}")
    assert response.status_code == 200 and response.content == b""
    assert_error(api.get(f"{MP}/{policy_id}"), 404, policy_id)
    assert_error(api.get(f"{MP}/{policy_id}", params={"version": 1}), 404, policy_id)
    assert_error(api.delete(f"{MP}/{policy_id}"), 404, policy_id)
    assert [p["id"] for p in listing(api)["children"]] == [BUILT_IN]


def test_bulk_get_reports_each_id(api: Api) -> None:
    one, two = create(api, "One"), create(api, "Two", identityGraph={"type": "none"})
    response = api.post(f"{MP}/bulk-get", json={"ids": [{"id": one["id"]}, {"id": "missing"}, {"id": two["id"]},
                                                        {"id": BUILT_IN}]})
    assert response.status_code == 207, response.text
    results = response.json()
    assert_matches_spec("profile", "POST", "/ups/config/mergePolicies/bulk-get", 207, results)
    found = results["results"]
    assert list(found) == [one["id"], "missing", two["id"], BUILT_IN]
    assert found[one["id"]] == one and found[two["id"]] == two
    assert found[BUILT_IN]["default"] is True
    assert found["missing"]["errors"]["404"][0]["code"] == 404
    assert "missing" in found["missing"]["errors"]["404"][0]["message"]
    assert_error(api.post(f"{MP}/bulk-get", json={"ids": []}), 400, "/ids")
    assert_error(api.post(f"{MP}/bulk-get", json={"ids": [{"id": str(n)} for n in range(101)]}), 400, "/ids")
    assert_error(api.post(f"{MP}/bulk-get", json={"ids": [{"name": "x"}]}), 400, "/ids/0/id")


# --- one default per schema class ---------------------------------------------------------------------------


def test_making_a_policy_default_undefaults_the_previous_one(api: Api) -> None:
    assert defaults(api) == [BUILT_IN]
    first = create(api, "First", default=True)
    assert defaults(api) == [first["id"]]
    assert get(api, BUILT_IN)["default"] is False
    second = create(api, "Second", default=True)
    assert defaults(api) == [second["id"]]
    demoted = get(api, first["id"])
    assert demoted["default"] is False and demoted["version"] == 2  # an update, so a new version
    assert get(api, first["id"], version=1)["default"] is True
    assert [p["id"] for p in listing(api, default="true")["children"]] == [second["id"]]

    events = create(api, "Events", schema={"name": "_xdm.context.experienceevent"}, default=True)
    assert defaults(api) == [second["id"]] and defaults(api, "_xdm.context.experienceevent") == [events["id"]]

    api.patch(f"{MP}/{first['id']}", json=[{"op": "add", "path": "/default", "value": True}])
    assert defaults(api) == [first["id"]] and get(api, second["id"])["default"] is False
    api.put(f"{MP}/{second['id']}", json=body("Second", default=True))
    assert defaults(api) == [second["id"]]
    # Moving the default policy to the other class un-defaults that class's default.
    api.patch(f"{MP}/{second['id']}", json=[{"op": "add", "path": "/schema.name",
                                             "value": "_xdm.context.experienceevent"}])
    assert defaults(api, "_xdm.context.experienceevent") == [second["id"]]
    assert get(api, events["id"])["default"] is False
    assert defaults(api) == [BUILT_IN]  # no stored profile default left: the built-in again


def test_deleting_or_undefaulting_the_default_restores_the_built_in(api: Api) -> None:
    chosen = create(api, "Chosen", default=True)
    api.patch(f"{MP}/{chosen['id']}", json={"op": "add", "path": "/default", "value": "false"})
    assert defaults(api) == [BUILT_IN]
    again = create(api, "Again", default=True)
    api.delete(f"{MP}/{again['id']}")
    assert defaults(api) == [BUILT_IN]


def test_a_failed_write_changes_no_default(api: Api) -> None:
    chosen = create(api, "Chosen", default=True)
    bad = body("Bad", default=True, attributeMerge={"type": "dataSetPrecedence", "order": ["missing"]})
    assert_error(api.post(MP, json=bad), 400, "missing")
    other = create(api, "Other")
    assert_error(api.put(f"{MP}/{other['id']}", json=bad), 400, "missing")
    assert defaults(api) == [chosen["id"]]
    assert get(api, chosen["id"])["version"] == 1 and get(api, other["id"])["version"] == 1


# --- guardrails ---------------------------------------------------------------------------------------------


def test_at_most_five_policies_per_sandbox_the_built_in_not_counted(api: Api) -> None:
    made = [create(api, f"P{n}")["id"] for n in range(5)]
    error = assert_error(api.post(MP, json=body("Sixth")), 400, "max_merge_policies", "5",
                         "OPENPROFILE_MAX_MERGE_POLICIES")
    assert "Sixth" not in str(listing(api, limit=100))
    assert error["report"]["errors"][0]["path"] == "max_merge_policies"
    assert listing(api)["_page"]["totalCount"] == 6  # five and the built-in
    assert [p["id"] for p in listing(api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET))["children"]] == [BUILT_IN]
    create(api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET), "Dev is a separate sandbox")
    api.delete(f"{MP}/{made[0]}")
    create(api, "Fits again")


def test_the_limit_follows_the_setting(api: Api, platform: Platform) -> None:
    platform.settings.max_merge_policies = 1
    create(api, "Only")
    assert_error(api.post(MP, json=body("Too many")), 400, "max_merge_policies = 1")


def test_one_policy_active_on_edge_which_cannot_be_deleted(api: Api) -> None:
    edge = create(api, "Edge", isActiveOnEdge=True)
    assert_error(api.post(MP, json=body("Edge 2", isActiveOnEdge=True)), 400, "/isActiveOnEdge", edge["id"])
    other = create(api, "Other")
    assert_error(api.patch(f"{MP}/{other['id']}", json=[{"op": "add", "path": "/isActiveOnEdge", "value": True}]),
                 400, "active on edge", edge["id"])
    assert_error(api.put(f"{MP}/{other['id']}", json=body("Other", isActiveOnEdge=True)), 400, edge["id"])
    assert_error(api.delete(f"{MP}/{edge['id']}"), 403, edge["id"], "active on edge")
    assert get(api, edge["id"])["isActiveOnEdge"] is True
    assert [p["id"] for p in listing(api, isActiveOnEdge="true")["children"]] == [edge["id"]]
    # The edge policy itself may be updated while it stays on edge.
    assert api.put(f"{MP}/{edge['id']}", json=body("Edge", isActiveOnEdge=True)).status_code == 200
    api.patch(f"{MP}/{edge['id']}", json=[{"op": "add", "path": "/isActiveOnEdge", "value": "false"}])
    assert api.delete(f"{MP}/{edge['id']}").status_code == 200
    assert create(api, "New edge", isActiveOnEdge=True)["isActiveOnEdge"] is True


def test_concurrent_writers_keep_one_default_and_the_limit(api: Api, platform: Platform) -> None:
    tenant = tenant_of(platform)
    request = MergePolicyRequest.model_validate(body("Racer", default=True))
    outcomes: list[str] = []

    def racer() -> None:
        try:
            with platform.engine.begin() as conn:
                policies.create_merge_policy(conn, tenant, request, max_policies=5)
            outcomes.append("created")
        except Exception as exc:  # the limit, reported as a PlatformError; anything else fails the test
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["BadRequest"] * 3 + ["created"] * 5
    assert len(defaults(api)) == 1 and defaults(api) != [BUILT_IN]


# --- listing ------------------------------------------------------------------------------------------------


def walk(api: Api, **params: Any) -> tuple[list[str], int]:
    """Follow `_links.next.href` as aepp does; the ids seen and the number of pages."""
    ids: list[str] = []
    pages = 0
    query: dict[str, Any] = dict(params)
    while True:
        page = listing(api, **query)
        pages += 1
        assert page["_page"]["count"] == page["_page"]["pageSize"] == len(page["children"])
        ids += [p["id"] for p in page["children"]]
        href = page["_links"]["next"]["href"]
        assert page["_page"]["next"] == (dict(parse_qsl(href.split("?", 1)[1]))["start"] if href else "")
        if href == "":
            return ids, pages
        assert href.startswith("@/mergePolicies?")
        query = dict(parse_qsl(href.split("?", 1)[1]))
        assert pages < 20, "paging does not end"


def test_paging_walks_every_policy_exactly_once(api: Api) -> None:
    names = ["delta", "alpha", "Charlie", "bravo"]
    made = {create(api, name)["id"]: name for name in names}
    expected = sorted([*made, BUILT_IN], key=lambda i: (made.get(i, "Default Timestamp-ordered"), i))
    assert [p["id"] for p in listing(api)["children"]] == expected  # name ascending by default
    for limit in (1, 2, 3, 5, 6):
        ids, pages = walk(api, limit=limit)
        assert ids == expected and pages == -(-5 // limit)
    assert listing(api, limit=2)["_page"]["totalCount"] == 5
    ids, _ = walk(api, limit=2, orderBy="-name")
    assert ids == expected[::-1]
    for ascending in ("name", "+name", " name", "asc:name"):
        assert walk(api, limit=2, orderBy=ascending)[0] == expected
    assert walk(api, limit=2, orderby="-name")[0] == expected[::-1]
    assert walk(api, limit=2, orderBy="")[0] == expected
    by_time, _ = walk(api, limit=2, orderBy="updateEpoch")
    assert by_time[0] == BUILT_IN and sorted(by_time) == sorted(expected)
    assert walk(api, limit=2, orderBy="-updateEpoch")[0] == by_time[::-1]
    # trailing slash, and a limit changed between pages (aepp re-sends its own)
    first = api.get(f"{MP}/", params={"limit": 2}).json()
    rest = api.get(f"{MP}/?{first['_links']['next']['href'].split('?', 1)[1]}&limit=100").json()
    assert [p["id"] for p in first["children"] + rest["children"]] == expected


def test_filters_and_the_links_that_keep_them(api: Api) -> None:
    crm = create_dataset(api, "CRM")
    none_ts = create(api, "A none", identityGraph={"type": "none"})
    pdg_ds = create(api, "B pdg", attributeMerge={"type": "dataSetPrecedence", "order": [crm]}, default=True)
    events = create(api, "C events", schema={"name": "_xdm.context.experienceevent"}, isActiveOnEdge=True)
    pdg_ts = create(api, "D pdg")

    def ids(**params: Any) -> list[str]:
        return walk(api, limit=1, **params)[0]

    assert ids(**{"schema.name": "_xdm.context.experienceevent"}) == [events["id"]]
    assert ids(**{"schema.name": "_xdm.context.profile"}) == [none_ts["id"], pdg_ds["id"], pdg_ts["id"], BUILT_IN]
    assert ids(**{"identityGraph.type": "none"}) == [none_ts["id"], BUILT_IN]
    assert ids(**{"identityGraph.type": "pdg"}) == [pdg_ds["id"], events["id"], pdg_ts["id"]]
    assert ids(**{"attributeMerge.type": "dataSetPrecedence"}) == [pdg_ds["id"]]
    assert ids(default="true") == [pdg_ds["id"]]
    assert ids(default="false") == [none_ts["id"], events["id"], pdg_ts["id"], BUILT_IN]
    assert ids(isActiveOnEdge="true") == [events["id"]]
    assert ids(**{"identityGraph.type": "pdg", "attributeMerge.type": "timestampOrdered"}) == [events["id"],
                                                                                            pdg_ts["id"]]
    href = listing(api, limit=1, default="false", **{"identityGraph.type": "pdg"})["_links"]["next"]["href"]
    kept = dict(parse_qsl(href.split("?", 1)[1]))
    assert kept["default"] == "false" and kept["identityGraph.type"] == "pdg" and kept["limit"] == "1"


def test_listing_at_a_version(api: Api) -> None:
    changed = create(api, "Changed")
    api.patch(f"{MP}/{changed['id']}", json=[{"op": "add", "path": "/name", "value": "Changed twice"}])
    fresh = create(api, "Fresh")
    at_one = listing(api, version=1)["children"]
    assert {p["id"]: p["name"] for p in at_one} == {changed["id"]: "Changed", fresh["id"]: "Fresh",
                                                     BUILT_IN: "Default Timestamp-ordered"}
    assert [p["name"] for p in listing(api, version=2)["children"]] == ["Changed twice"]


@pytest.mark.parametrize(("params", "paths"), [
    ({"limit": 0}, {"limit"}),
    ({"limit": 1001}, {"limit"}),
    ({"limit": "ten"}, {"limit"}),
    ({"orderBy": "created"}, {"orderBy"}),
    ({"orderby": "~name"}, {"orderBy"}),
    ({"schema.name": "_xdm.context.other"}, {"schema.name"}),
    ({"default": "maybe"}, {"default"}),
    ({"identityGraph.type": "cluster"}, {"identityGraph.type"}),
    ({"attributeMerge.type": "newest"}, {"attributeMerge.type"}),
    ({"isActiveOnEdge": "yes please"}, {"isActiveOnEdge"}),
    ({"version": "0"}, {"version"}),
    ({"start": "not-a-token"}, {"start"}),
    ({"limit": 0, "default": "x", "orderBy": "y"}, {"limit", "default", "orderBy"}),
])
def test_bad_list_parameters_are_400_naming_them(api: Api, params: dict[str, Any], paths: set[str]) -> None:
    error = assert_error(api.get(MP, params=params), 400, *paths, *(str(v) for v in params.values()))
    assert {e["path"] for e in error["report"]["errors"]} == paths


def test_a_page_token_belongs_to_its_ordering(api: Api) -> None:
    create(api, "A")
    token = listing(api, limit=1)["_page"]["next"]
    assert token
    assert_error(api.get(MP, params={"start": token, "orderBy": "-updateEpoch"}), 400, "start")


# --- the public function other services use -----------------------------------------------------------------


def test_resolve_merge_policy(api: Api, platform: Platform) -> None:
    tenant = tenant_of(platform)
    with platform.engine.connect() as conn:
        built_in = policies.resolve_merge_policy(conn, tenant, None, None)
    assert built_in.id == BUILT_IN and built_in.is_default and built_in.built_in
    assert (built_in.identity_graph, built_in.attribute_merge, built_in.version) == ("none", "timestampOrdered", 1)
    assert built_in.schema_name == "_xdm.context.profile" and built_in.order == []

    crm = create_dataset(api, "CRM")
    made = create(api, "Mine", default=True, identityGraph={"type": "none"})
    api.put(f"{MP}/{made['id']}", json=body("Mine", default=True, isActiveOnEdge=True,
                                             attributeMerge={"type": "dataSetPrecedence", "order": [crm]}))
    dev = tenant_of(platform, ORG, "dev")
    with platform.engine.connect() as conn:
        latest = policies.resolve_merge_policy(conn, tenant, None, None)
        first = policies.resolve_merge_policy(conn, tenant, made["id"], 1)
        pinned_built_in = policies.resolve_merge_policy(conn, tenant, BUILT_IN, 1)
        with pytest.raises(NotFound, match="no-such"):
            policies.resolve_merge_policy(conn, tenant, "no-such", None)
        with pytest.raises(NotFound, match="version 3"):
            policies.resolve_merge_policy(conn, tenant, made["id"], 3)
        with pytest.raises(NotFound, match="version 2"):
            policies.resolve_merge_policy(conn, tenant, BUILT_IN, 2)
        with pytest.raises(NotFound, match=made["id"]):
            policies.resolve_merge_policy(conn, dev, made["id"], None)
    assert latest.id == made["id"] and latest.version == 2 and latest.is_default and latest.is_active_on_edge
    assert (latest.identity_graph, latest.attribute_merge, latest.order) == ("pdg", "dataSetPrecedence", [crm])
    assert first.version == 1 and first.identity_graph == "none" and first.attribute_merge == "timestampOrdered"
    assert pinned_built_in.id == BUILT_IN and not pinned_built_in.is_default
    with pytest.raises(AttributeError):
        latest.name = "frozen"  # type: ignore[misc]


# --- tenancy ------------------------------------------------------------------------------------------------


def test_other_orgs_and_sandboxes_cannot_see_or_touch_a_policy(api: Api) -> None:
    mine = create(api, "Mine", default=True)
    policy_id = mine["id"]
    dev = api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET)
    other = api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)
    for stranger in (dev, other):
        assert [p["id"] for p in listing(stranger)["children"]] == [BUILT_IN]
        assert get(stranger, BUILT_IN)["default"] is True
        assert_error(stranger.get(f"{MP}/{policy_id}"), 404, policy_id)
        assert_error(stranger.get(f"{MP}/{policy_id}", params={"version": 1}), 404, policy_id)
        assert_error(stranger.patch(f"{MP}/{policy_id}", json=[{"op": "add", "path": "/name", "value": "x"}]),
                     404, policy_id)
        assert_error(stranger.put(f"{MP}/{policy_id}", json=body("x")), 404, policy_id)
        assert_error(stranger.delete(f"{MP}/{policy_id}"), 404, policy_id)
        found = stranger.post(f"{MP}/bulk-get", json={"ids": [{"id": policy_id}]}).json()["results"]
        assert "errors" in found[policy_id]
        # their own default and edge policies do not collide with ours
        theirs = create(stranger, "Theirs", default=True, isActiveOnEdge=True)
        assert defaults(stranger) == [theirs["id"]]
    assert get(api, policy_id) == mine
    assert defaults(api) == [policy_id]


def test_event_dataset_in_order_is_accepted_when_profile_enabled(api: Api) -> None:
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    created = create(api, "With events", attributeMerge={"type": "dataSetPrecedence", "order": [web]})
    assert created["attributeMerge"]["order"] == [web]
