"""Profile export jobs through the API: create (validated), run to SUCCEEDED, read the Parquet back through
Data Access, list both ways, cancel, delete; every bad input a clear 4xx."""

from __future__ import annotations

import io
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openprofile.core.platform import Platform
from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET, Api
from tests.helpers import EVENT_CLASS, PROFILE_UNION, assert_error, create_dataset, event, ingest, profile
from tests.specs import assert_matches_spec

JOBS = "/data/core/ups/export/jobs"
ECID = "5" * 38


def wait_job(api: Api, job_id: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"{JOBS}/{job_id}").json()
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"export job {job_id} did not finish")


def exported_rows(api: Api, batch_id: str) -> list[dict[str, Any]]:
    tables = []
    for entry in api.get(f"/data/foundation/export/batches/{batch_id}/files").json()["data"]:
        for item in api.get(f"/data/foundation/export/files/{entry['dataSetFileId']}").json()["data"]:
            content = api.get(f"/data/foundation/export/files/{entry['dataSetFileId']}", params={"path": item["name"]})
            tables.append(pq.read_table(io.BytesIO(content.content)))
    return pa.concat_tables(tables).to_pylist() if tables else []


@pytest.fixture
def data(api: Api) -> dict[str, str]:
    crm = create_dataset(api, "CRM")
    loyalty = create_dataset(api, "Loyalty")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    assert ingest(api, crm, [profile("C1", "ann@x.com", "Ann"), profile("C2", "bob@x.com", "Bob"),
                             profile("C3", "cy@x.com", "Cy")])["status"] == "success"
    assert ingest(api, loyalty, [{"identityMap": {"CRMID": [{"id": "C1", "primary": True}]},
                                  "loyalty": {"tier": "gold"}}])["status"] == "success"
    assert ingest(api, web, [
        event("e1", ECID, "2024-05-01T10:00:00Z", identityMap={"ECID": [{"id": ECID, "primary": True}],
                                                             "CRMID": [{"id": "C1"}]},
              environment={"browserDetails": {"name": "Firefox", "version": "125"}}),
        event("e2", ECID, "2024-05-02T10:00:00Z", environment={"browserDetails": {"name": "Chrome", "version": "124"}}),
    ])["status"] == "success"
    target = create_dataset(api, "Export target", schema_id=PROFILE_UNION, profile=False)
    return {"crm": crm, "loyalty": loyalty, "web": web, "target": target}


def test_profile_export_runs_and_reads_back(api: Api, data: dict[str, str]) -> None:
    body = {"fields": "identities.id,personalEmail.address", "destination": {"datasetId": data["target"]},
            "schema": {"name": "_xdm.context.profile"}}
    response = api.post(JOBS, json=body)
    assert response.status_code == 200, response.text
    created = response.json()
    assert_matches_spec("segmentation", "POST", "/export/jobs", 200, created)
    assert created["status"] == "NEW" and created["profileInstanceId"] == "ups" and created["jobType"] == "BATCH"
    assert len(created["destination"]["batchId"]) == 32
    assert response.headers["X-Location"].endswith(f"/export/jobs/{created['id']}")
    assert created["mergePolicy"] == {"id": "timestampOrdered-none-mp", "version": 1}
    done = wait_job(api, created["id"])
    assert done["status"] == "SUCCEEDED", done
    assert_matches_spec("segmentation", "GET", "/export/jobs/{EXPORT_JOB_ID}", 200, done)
    assert done["metrics"]["totalExportedProfileCounter"] == 3
    assert done["metrics"]["exportedProfileByNamespaceCounter"] == {"crmid": 3}
    for metric in ("totalTime", "profileExportTime", "aCPDatasetWriteTime"):
        assert done["metrics"][metric]["totalTimeInMs"] >= 0
    rows = exported_rows(api, created["destination"]["batchId"])
    assert sorted(r["personalEmail"]["address"] for r in rows) == ["ann@x.com", "bob@x.com", "cy@x.com"]
    assert set(rows[0]) == {"identities", "personalEmail"}
    ann = next(r for r in rows if r["personalEmail"]["address"] == "ann@x.com")
    assert sorted(i["id"] for i in ann["identities"]) == ["C1", "ann@x.com"]
    batch = api.get(f"/data/foundation/catalog/batches/{created['destination']['batchId']}").json()
    assert next(iter(batch.values()))["status"] == "success"
    observable = api.get(f"/data/foundation/catalog/dataSets/{data['target']}").json()[data["target"]]
    assert set(observable["observableSchema"]["properties"]) == {"identities", "personalEmail"}


def test_stitched_export_with_events(api: Api, data: dict[str, str]) -> None:
    policy = api.post("/data/core/ups/config/mergePolicies", json={
        "name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"},
        "attributeMerge": {"type": "timestampOrdered"}}).json()
    body = {"fields": "identities.id,person.name.firstName,loyalty", "mergePolicy": {"id": policy["id"]},
            "additionalFields": {"eventList": {"fields": "_id, environment.browserDetails.name"}},
            "destination": {"datasetId": data["target"]}, "schema": {"name": "_xdm.context.profile"}}
    created = api.post(JOBS, json=body).json()
    done = wait_job(api, created["id"])
    assert done["status"] == "SUCCEEDED", done
    rows = exported_rows(api, created["destination"]["batchId"])
    ann = next(r for r in rows if r["person"]["name"]["firstName"] == "Ann")
    assert ann["loyalty"] == {"tier": "gold"}
    assert sorted(i["id"] for i in ann["identities"]) == sorted(["C1", "ann@x.com", ECID])
    assert [e["_id"] for e in ann["timeSeriesEvents"]] == ["e1", "e2"]
    assert ann["timeSeriesEvents"][0] == {"_id": "e1", "environment": {"browserDetails": {"name": "Firefox"}}}
    bob = next(r for r in rows if r["person"]["name"]["firstName"] == "Bob")
    assert bob["timeSeriesEvents"] is None


def test_seed_example_with_missing_comma_points_at_it(api: Api, data: dict[str, str]) -> None:
    body = ('{\n  "fields": "identities.id,personalEmail.address",\n  "additionalFields": {\n    "eventList": {\n'
            '      "fields": "environment.browserDetails.name"\n    }\n  }\n  "destination": {\n'
            f'    "datasetId": "{data["target"]}"\n  }},\n  "schema": {{"name": "_xdm.context.profile"}}\n}}')
    response = api.post(JOBS, content=body.encode(), headers={"Content-Type": "application/json"})
    assert_error(response, 400, "line 8", "column 3", "delimiter")
    assert api.get(JOBS).json()["records"] == []


@pytest.mark.parametrize(("change", "status", "mentions"), [
    ({"destination": {"datasetId": "0" * 24}}, 404, ["/destination/datasetId", "0" * 24]),
    ({"destination": {}}, 400, ["/destination/datasetId"]),
    ({"schema": {"name": "_xdm.context.experienceevent"}}, 400, ["/schema/name", "_xdm.context.experienceevent"]),
    ({"mergePolicy": {"id": "no-such-policy"}}, 404, ["/mergePolicy/id", "no-such-policy"]),
    ({"mergePolicy": {"id": "timestampOrdered-none-mp", "version": 7}}, 404, ["/mergePolicy/version", "7"]),
    ({"fields": "person.shoeSize"}, 400, ["/fields", "person.shoeSize"]),
    ({"filter": {"segments": [{"segmentId": "s1", "status": ["gone"]}]}}, 400, ["/filter/segments/0/status/0", "gone"]),
    ({"filter": {"fromIngestTimestamp": "yesterday"}}, 400, ["/filter/fromIngestTimestamp", "yesterday"]),
    ({"filter": {"segmentQualificationTime": {"startTime": "2019-01-01T00:00:00Z", "endTime": "2018-01-01T00:00:00Z"}}},
     400, ["/filter/segmentQualificationTime", "after"]),
    ({"additionalFields": {"eventList": {"fields": "web.nothing"}}}, 400, ["/additionalFields/eventList/fields"]),
])
def test_bad_requests(api: Api, data: dict[str, str], change: dict[str, Any], status: int,
                      mentions: list[str]) -> None:
    body = {"destination": {"datasetId": data["target"]}, "schema": {"name": "_xdm.context.profile"}, **change}
    assert_error(api.post(JOBS, json=body), status, *mentions)
    assert api.get(JOBS).json()["records"] == []


def test_destination_must_be_on_the_profile_union(api: Api, data: dict[str, str]) -> None:
    body = {"destination": {"datasetId": data["crm"]}, "schema": {"name": "_xdm.context.profile"}}
    assert_error(api.post(JOBS, json=body), 400, "/destination/datasetId", "profile__union")


def test_list_pages_both_ways_and_stops(api: Api, data: dict[str, str]) -> None:
    body = {"destination": {"dataSetId": data["target"]}, "schema": {"name": "_xdm.context.profile"}}
    ids = [api.post(JOBS, json=body).json()["id"] for _ in range(5)]
    first = api.get(f"{JOBS}/", params={"limit": 2}).json()
    assert_matches_spec("segmentation", "GET", "/export/jobs", 200, first)
    assert [r["id"] for r in first["records"]] == ids[::-1][:2]
    walked, link = [], f"{JOBS}/?limit=2"
    while link:
        page = api.get(link if link.startswith("/data") else f"/data/core/ups{link}").json()
        walked += [r["id"] for r in page["records"]]
        link = page["link"]["next"]
    assert walked == ids[::-1]
    by_page = api.get(JOBS, params={"limit": 2, "page": 2, "sort": "createdTime:asc"}).json()
    assert [r["id"] for r in by_page["records"]] == ids[2:4]
    for params, mention in (({"limit": -1}, "limit"), ({"limit": 100000}, "limit"), ({"offset": "yesterday"}, "offset"),
                            ({"status": "HAPPY"}, "status"), ({"sort": "color:asc"}, "sort")):
        assert_error(api.get(JOBS, params=params), 400, mention)


def test_unknown_and_foreign_jobs_are_404(api: Api, data: dict[str, str]) -> None:
    created = api.post(JOBS, json={"destination": {"datasetId": data["target"]},
                                   "schema": {"name": "_xdm.context.profile"}}).json()
    assert_error(api.get(f"{JOBS}/999999"), 404, "999999")
    assert_error(api.delete(f"{JOBS}/999999"), 404, "999999")
    assert_error(api.get(f"{JOBS}/abc"), 404, "abc")
    for outsider in (api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET),
                     api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)):
        assert outsider.get(f"{JOBS}/{created['id']}").status_code == 404
        assert outsider.delete(f"{JOBS}/{created['id']}").status_code == 404
        assert outsider.get(JOBS).json()["records"] == []


def test_delete_of_a_finished_job_removes_the_record_not_the_batch(api: Api, data: dict[str, str]) -> None:
    created = api.post(JOBS, json={"destination": {"datasetId": data["target"]},
                                   "schema": {"name": "_xdm.context.profile"}}).json()
    assert wait_job(api, created["id"])["status"] == "SUCCEEDED"
    response = api.delete(f"{JOBS}/{created['id']}")
    assert response.status_code == 200
    assert_matches_spec("segmentation", "DELETE", "/export/jobs/{EXPORT_JOB_ID}", 200, response.json())
    assert api.get(f"{JOBS}/{created['id']}").status_code == 404
    assert len(exported_rows(api, created["destination"]["batchId"])) == 3


def test_cancel_while_new(tmp_path: Any, database_url: str | None, api: Api, data: dict[str, str],
                          platform: Platform) -> None:
    del tmp_path, database_url, platform
    created = api.post(JOBS, json={"destination": {"datasetId": data["target"]},
                                   "schema": {"name": "_xdm.context.profile"}}).json()
    response = api.delete(f"{JOBS}/{created['id']}")
    assert response.json() == {"status": True, "message": "Export job has been marked for cancelling"}
    final = wait_job(api, created["id"])
    assert final["status"] in ("CANCELLED", "SUCCEEDED")  # a worker may have finished first
    if final["status"] == "CANCELLED":
        assert exported_rows(api, created["destination"]["batchId"]) == []
