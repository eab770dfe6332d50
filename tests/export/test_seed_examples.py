"""Every export-job request example of the five seed documents (../shared/seeds), placeholders filled with real
ids, is accepted, runs to SUCCEEDED, and the exported Parquet holds exactly the expected profiles and fields.
The Profile doc's create example misses a comma: that exact body gets a 400 pointing at it first."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api
from tests.export.test_export_jobs import JOBS, exported_rows, wait_job
from tests.helpers import EVENT_CLASS, PROFILE_UNION, create_dataset, event, ingest, profile

SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"
if not SEEDS.is_dir():
    SEEDS = Path("/work/shared/seeds")
SEGMENT = "52c26d0d-45f2-47a2-ab30-ed06abc981ff"
ECID = "7" * 38


def seed_bodies() -> list[tuple[str, int, str]]:
    """(seed file, index, raw text) of every export-job request body in the seeds."""
    found = []
    for path in sorted(SEEDS.glob("*.txt")):
        text = path.read_text()
        blocks = re.findall(r"-d '\s*(\{.*?\})\s*'", text, re.S) + re.findall(r"```json\s*(\{.*?\})\s*```", text, re.S)
        requests = [b for b in blocks if '"destination"' in b and '"schema"' in b and '"jobType"' not in b
                    and '"profileInstanceId"' not in b]
        for n, block in enumerate(requests):
            found.append((path.name, n, block))
    return found


def test_the_seeds_hold_the_documented_examples() -> None:
    bodies = seed_bodies()
    assert len({name for name, _, _ in bodies}) == 5
    assert len(bodies) >= 13  # create + profile-only + events-only in four Profile docs, one Segmentation example


@pytest.fixture
def world(api: Api) -> dict[str, str]:
    crm = create_dataset(api, "CRM")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    member = {"ups": {SEGMENT: {"status": "realized", "lastQualificationTime": "2018-01-15T00:00:00Z"}}}
    assert ingest(api, crm, [
        profile("C1", "ann@x.com", "Ann", segmentMembership=member),
        profile("C2", "bob@x.com", "Bob"),
    ])["status"] == "success"
    assert ingest(api, web, [event("e1", ECID, identityMap={"ECID": [{"id": ECID}],  # keyed by the CRMID
                                                           "CRMID": [{"id": "C1", "primary": True}]},
                                   environment={"browserDetails": {"name": "Firefox", "version": "125"}}),
                             event("e2", "8" * 38, environment={"browserDetails": {"name": "Edge", "version": "1"}})
                             ])["status"] == "success"
    policy = api.post("/data/core/ups/config/mergePolicies", json={
        "name": "seed policy", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "none"},
        "attributeMerge": {"type": "timestampOrdered"}}).json()
    target = create_dataset(api, "Export", schema_id=PROFILE_UNION, profile=False)
    return {"target": target, "policy": policy["id"]}


def fill(raw: str, world: dict[str, str]) -> str:
    text = re.sub(r'"(datasetId|dataSetId)":\s*"[^"]*"', f'"datasetId": "{world["target"]}"', raw)
    text = re.sub(r'"id":\s*"e5bc94de-[^"]*"', f'"id": "{world["policy"]}"', text)
    return text.replace('"fields": "string"', '"fields": "_id,environment.browserDetails.name"')


def top_level(fields: str | None) -> set[str]:
    return {p.strip().split(".")[0] for p in (fields or "").split(",") if p.strip()}


@pytest.mark.parametrize(("name", "index", "raw"), seed_bodies(), ids=lambda v: str(v)[:24])
def test_seed_example_runs(api: Api, world: dict[str, str], name: str, index: int, raw: str) -> None:
    text = fill(raw, world)
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        refused = api.post(JOBS, content=text.encode(), headers={"Content-Type": "application/json"})
        assert refused.status_code == 400 and f"line {exc.lineno}" in refused.json()["detail"], refused.text
        text = re.sub(r'\}\s*\n(\s*)"destination"', r'},\n\1"destination"', text)
    body: dict[str, Any] = json.loads(text)
    response = api.post(JOBS, json=body)
    assert response.status_code == 200, (name, index, response.text)
    done = wait_job(api, response.json()["id"])
    assert done["status"] == "SUCCEEDED", (name, done)
    rows = exported_rows(api, done["destination"]["batchId"])
    segments = (body.get("filter") or {}).get("segments")
    expected_people = {"C1"} if segments else {"C1", "C2"}
    empty = bool((body.get("filter") or {}).get("emptyProfiles")) and not segments
    if empty:
        expected_people |= {"8" * 38}
    columns = top_level(body.get("fields")) | ({"timeSeriesEvents"} if "additionalFields" in body else set())
    for row in rows:
        assert set(row) == columns, (name, row)
    if "identities" in columns:
        people = {next(i["id"] for i in r["identities"] if i["id"] in ("C1", "C2", "8" * 38)) for r in rows}
        assert people == expected_people
    assert len(rows) == len(expected_people)
    if "additionalFields" in body:
        events = [e for r in rows for e in (r["timeSeriesEvents"] or [])]
        wanted = top_level(body["additionalFields"]["eventList"].get("fields"))
        assert events and all(set(e) == wanted for e in events)
