"""The real aepp client (0.6.0) manages merge policies on a real `openprofile serve` process: every
`customerprofile.Profile` merge-policy method, sending exactly what aepp sends (its `getMergePolicies`
re-sends `limit` on each page and needs `_links.next`; `deleteMergePolicy` returns the status code)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ORG, ServerProcess
from tests.specs import assert_matches_spec
from tests.test_aepp_client import configure_aepp

pytestmark = pytest.mark.server
BUILT_IN = "timestampOrdered-none-mp"
ONE = "/ups/config/mergePolicies/{mergePolicyId}"


def test_aepp_manages_merge_policies(server: ServerProcess) -> None:
    configure_aepp(server.base_url)
    from aepp import customerprofile

    profile = customerprofile.Profile()
    assert [p["id"] for p in profile.getMergePolicies()] == [BUILT_IN]

    # aepp's own docstring example: read-only imsOrgId/updateEpoch and an `order` with timestampOrdered.
    example: dict[str, Any] = {
        "name": "real-time-customer-profile-default", "imsOrgId": ORG, "schema": {"name": "_xdm.context.profile"},
        "default": False, "identityGraph": {"type": "pdg"},
        "attributeMerge": {"type": "timestampOrdered", "order": ["string"]}, "updateEpoch": 1234567890,
    }
    created = profile.createMergePolicy(example)
    assert_matches_spec("profile", "POST", "/ups/config/mergePolicies", 200, created)
    assert created["version"] == 1 and created["attributeMerge"] == {"type": "timestampOrdered"}
    policy_id = created["id"]
    others = [profile.createMergePolicy({**example, "name": f"Other {n}", "identityGraph": {"type": "none"}})["id"]
              for n in range(3)]
    edge = profile.createMergePolicy({**example, "name": "Edge", "isActiveOnEdge": True, "default": True})
    assert edge["isActiveOnEdge"] is True

    for limit in (1, 2, 100):  # every page walked once, and the walk stops
        walked = profile.getMergePolicies(limit=limit)
        assert sorted(p["id"] for p in walked) == sorted([BUILT_IN, policy_id, edge["id"], *others])
    assert profile.getMergePolicyActiveOnEdge()["id"] == edge["id"]

    got = profile.getMergePolicy(policy_id)
    assert_matches_spec("profile", "GET", ONE, 200, got)
    assert got == created

    updated = profile.updateMergePolicy(policy_id, {**got, "name": "Renamed", "default": True})
    assert_matches_spec("profile", "PUT", ONE, 200, updated)
    assert updated["version"] == 2 and updated["name"] == "Renamed" and updated["default"] is True
    assert profile.getMergePolicy(edge["id"])["default"] is False

    patched = profile.patchMergePolicy(policy_id, [{"op": "add", "path": "/identityGraph.type", "value": "none"}])
    assert_matches_spec("profile", "PATCH", ONE, 200, patched)
    assert patched["version"] == 3 and patched["identityGraph"] == {"type": "none"}

    refused = profile.deleteMergePolicy(edge["id"])
    assert isinstance(refused, dict) and refused["status"] == 403
    assert profile.deleteMergePolicy(policy_id) == 200
    missing = profile.getMergePolicy(policy_id)
    assert missing["status"] == 404 and policy_id in missing["detail"]
    assert policy_id not in {p["id"] for p in profile.getMergePolicies(limit=2)}
