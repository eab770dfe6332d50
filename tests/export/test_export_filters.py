"""Export filters and batch layout: segments (status, namespace, qualification time), segmentPerBatch,
fromIngestTimestamp, emptyProfiles, event ingestion windows; and failures that leave no visible batch."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from openprofile.core.platform import Platform
from tests.conftest import Api
from tests.export.test_export_jobs import JOBS, exported_rows, wait_job
from tests.helpers import EVENT_CLASS, PROFILE_UNION, create_dataset, event, ingest, profile

S1, S2 = "seg-one", "seg-two"


def member(status: str, when: str, ns: str = "ups", segment: str = S1) -> dict[str, Any]:
    return {ns: {segment: {"status": status, "lastQualificationTime": when}}}


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    crm = create_dataset(api, "CRM")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    first = ingest(api, crm, [
        profile("C1", "a@x.com", "Realized", segmentMembership=member("realized", "2024-01-10T00:00:00Z")),
        profile("C2", "b@x.com", "Existing", segmentMembership=member("existing", "2024-02-10T00:00:00Z")),
        profile("C3", "c@x.com", "Exited", segmentMembership=member("exited", "2024-03-10T00:00:00Z")),
        profile("C4", "d@x.com", "Other", segmentMembership=member("realized", "2024-01-10T00:00:00Z", segment=S2)),
        profile("C5", "e@x.com", "Upper", segmentMembership=member("realized", "2024-01-10T00:00:00Z", ns="UPS")),
        profile("C6", "f@x.com", "Nobody"),
    ])
    assert first["status"] == "success"
    ingest(api, web, [event("e1", "1" * 38, identityMap={"CRMID": [{"id": "C1", "primary": True}]}),
                      event("e9", "9" * 38)])
    cut = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    ingest(api, web, [event("e2", "1" * 38, identityMap={"CRMID": [{"id": "C1", "primary": True}]})])
    target = create_dataset(api, "Target", schema_id=PROFILE_UNION, profile=False)
    return {"target": target, "cut": cut}


def names(api: Api, world: dict[str, Any], **extra: Any) -> list[str]:
    body = {"fields": "person.name.firstName", "destination": {"datasetId": world["target"]},
            "schema": {"name": "_xdm.context.profile"}, **extra}
    created = api.post(JOBS, json=body)
    assert created.status_code == 200, created.text
    done = wait_job(api, created.json()["id"])
    assert done["status"] == "SUCCEEDED", done
    return sorted(r["person"]["name"]["firstName"] for r in exported_rows(api, done["destination"]["batchId"]))


def test_segment_status_default_and_namespace(api: Api, world: dict[str, Any]) -> None:
    assert names(api, world, filter={"segments": [{"segmentId": S1}]}) == ["Existing", "Realized", "Upper"]
    assert names(api, world, filter={"segments": [{"segmentId": S1, "status": ["exited"]}]}) == ["Exited"]
    assert names(api, world, filter={"segments": [{"segmentId": S1, "segmentNs": "AAM"}]}) == []
    both = names(api, world, filter={"segments": [{"segmentId": S1, "status": ["realized"]}, {"segmentId": S2}]})
    assert both == ["Other", "Realized", "Upper"]


def test_qualification_window_is_inclusive(api: Api, world: dict[str, Any]) -> None:
    window = {"startTime": "2024-01-10T00:00:00Z", "endTime": "2024-02-10T00:00:00Z"}
    assert names(api, world, filter={"segments": [{"segmentId": S1}], "segmentQualificationTime": window}) == [
        "Existing", "Realized", "Upper"]
    late = {"startTime": "2024-02-01T00:00:00Z"}
    assert names(api, world, filter={"segments": [{"segmentId": S1}], "segmentQualificationTime": late}) == [
        "Existing"]


def test_segment_per_batch_writes_one_batch_each(api: Api, world: dict[str, Any]) -> None:
    body = {"fields": "person.name.firstName", "destination": {"datasetId": world["target"], "segmentPerBatch": True},
            "schema": {"name": "_xdm.context.profile"},
            "filter": {"segments": [{"segmentId": S1, "status": ["realized"]}, {"segmentId": S2}]}}
    created = api.post(JOBS, json=body).json()
    batches = created["destination"]["batches"]
    assert [b["segmentId"] for b in batches] == [S1, S2] and len({b["batchId"] for b in batches}) == 2
    assert wait_job(api, created["id"])["status"] == "SUCCEEDED"
    got = {b["segmentId"]: sorted(r["person"]["name"]["firstName"] for r in exported_rows(api, b["batchId"]))
           for b in batches}
    assert got == {S1: ["Realized", "Upper"], S2: ["Other"]}


def test_from_ingest_timestamp_is_strictly_after(api: Api, world: dict[str, Any]) -> None:
    assert names(api, world, filter={"fromIngestTimestamp": "2000-01-01T00:00:00Z"}) == [
        "Existing", "Exited", "Nobody", "Other", "Realized", "Upper"]
    assert names(api, world, filter={"fromIngestTimestamp": world["cut"]}) == []


def test_empty_profiles_and_event_windows(api: Api, world: dict[str, Any]) -> None:
    body = {"fields": "identities.id", "destination": {"datasetId": world["target"]},
            "schema": {"name": "_xdm.context.profile"}, "filter": {"emptyProfiles": True},
            "additionalFields": {"eventList": {"fields": "_id", "filter": {"fromIngestTimestamp": world["cut"]}}}}
    done = wait_job(api, api.post(JOBS, json=body).json()["id"])
    rows = exported_rows(api, done["destination"]["batchId"])
    by_id = {next(i["id"] for i in r["identities"]): r for r in rows}
    assert "9" * 38 in by_id  # an events-only profile joins in with emptyProfiles
    assert by_id["9" * 38]["timeSeriesEvents"] is None  # its only event was ingested before the window
    assert [e["_id"] for e in by_id["C1"]["timeSeriesEvents"]] == ["e2"]
    without = {**body, "filter": {}}
    done = wait_job(api, api.post(JOBS, json=without).json()["id"])
    ids = {next(i["id"] for i in r["identities"]) for r in exported_rows(api, done["destination"]["batchId"])}
    assert "9" * 38 not in ids and len(ids) == 6


def test_a_failing_write_fails_the_job_cleanly(api: Api, world: dict[str, Any], platform: Platform,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from openprofile.export import runner

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "write_parquet", disk_full)
    created = api.post(JOBS, json={"destination": {"datasetId": world["target"]},
                                   "schema": {"name": "_xdm.context.profile"}}).json()
    done = wait_job(api, created["id"])
    assert done["status"] == "FAILED"
    (error,) = done["errors"]
    assert error["code"] == "EXPORT_WRITE_FAILED" and "No space left" in error["msg"] and "callStack" in error
    batch = api.get(f"/data/foundation/catalog/batches/{created['destination']['batchId']}").json()
    assert next(iter(batch.values()))["status"] == "failed"
    assert exported_rows(api, created["destination"]["batchId"]) == []
    assert not any(platform.lake.staging.iterdir())


def test_destination_deleted_mid_run_fails_cleanly(api: Api, world: dict[str, Any], platform: Platform,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from openprofile.export import runner

    real = runner.write_parquet

    def delete_then_write(*args: Any, **kwargs: Any) -> Any:
        api.delete(f"/data/foundation/catalog/dataSets/{world['target']}")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "write_parquet", delete_then_write)
    created = api.post(JOBS, json={"destination": {"datasetId": world["target"]},
                                   "schema": {"name": "_xdm.context.profile"}}).json()
    done = wait_job(api, created["id"])
    assert done["status"] == "FAILED" and done["errors"][0]["code"] == "EXPORT_DESTINATION_DELETED"
    assert not list(platform.lake.root.rglob(f"*{created['destination']['batchId']}*"))
