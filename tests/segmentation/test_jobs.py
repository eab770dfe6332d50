"""Segment jobs: create (validated), run to SUCCEEDED with hand-computed counts, memberships moving
realized → existing / exited across runs, inSegment composition (in the job and from current membership),
list/get shapes, list sort and status filters, bulk-get, cancel, tenancy; and the membership statement on its
own (retention)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import duckdb
import pyarrow.parquet as pq

from openprofile.core import ids
from openprofile.core.platform import Platform
from openprofile.core.tables import segment_jobs
from openprofile.core.tenancy import Tenant
from openprofile.engine import segments as sql
from openprofile.engine.pql import timestamp_sql
from openprofile.profile.memberships import current_memberships
from openprofile.segmentation import jobs
from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, OTHER_CLIENT_ID, OTHER_ORG, OTHER_SECRET, Api
from tests.helpers import assert_error, ingest, profile
from tests.specs import assert_matches_spec

DEFS = "/data/core/ups/segment/definitions"
JOBS = "/data/core/ups/segment/jobs"
DEFAULT_POLICY = "timestampOrdered-none-mp"


def definition(name: str, pql: str) -> dict[str, Any]:
    return {"name": name, "expression": {"type": "PQL", "format": "pql/text", "value": pql},
            "schema": {"name": "_xdm.context.profile"}, "ttlInDays": 30}


def create_segment(api: Api, name: str, pql: str) -> str:
    response = api.post(DEFS, json=definition(name, pql))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def run_job(api: Api, *segment_ids: str, timeout: float = 60) -> dict[str, Any]:
    response = api.post(JOBS, json=[{"segmentId": s} for s in segment_ids])
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    assert created["status"] == "NEW"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"{JOBS}/{created['id']}").json()
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"segment job {created['id']} did not finish")


def memberships(platform: Platform, job: dict[str, Any]) -> dict[tuple[str, str], tuple[str, Any]]:
    """(segment id, CRMID of the group) → (status, last qualification), read from the current Parquet file."""
    tenant = Tenant(job["imsOrgId"], job["sandbox"]["sandboxId"], job["sandbox"]["sandboxName"])
    path = current_memberships(platform, tenant, DEFAULT_POLICY)
    assert path is not None
    rows = pq.read_table(path).to_pylist()
    return {(r["segment_id"], r["_group"]): (r["status"], r["last_qualification"]) for r in rows}


def test_job_runs_with_counts_and_memberships_move(api: Api, data: dict[str, str], platform: Platform) -> None:
    points = create_segment(api, "Points", "loyalty.points > 5")
    buyers = create_segment(api, "Buyers", 'xEvent[eventType = "commerce.purchases"].count() > 0')
    ann = create_segment(api, "Points Ann", f'inSegment("{points}") and person.name.firstName = "Ann"')
    response = api.post(JOBS, json=[{"segmentId": ann}, {"segmentId": points}, {"segmentId": buyers}])
    assert response.status_code == 200, response.text
    created = response.json()
    assert_matches_spec("segmentation", "POST", "/segment/jobs", 200, created)
    assert created["profileInstanceId"] == "ups" and created["imsOrgId"] == ORG
    assert created["_links"]["cancel"] == {"href": f"/segment/jobs/{created['id']}", "method": "DELETE"}
    assert created["_links"]["checkStatus"]["method"] == "GET"
    first_segment = created["segments"][0]
    assert first_segment["segmentId"] == ann
    assert first_segment["segment"]["mergePolicy"] == {"id": DEFAULT_POLICY, "version": 1}
    assert first_segment["segment"]["expression"]["value"].startswith("inSegment(")

    done = run_job_wait(api, created["id"])
    assert done["status"] == "SUCCEEDED", done
    assert_matches_spec("segmentation", "GET", "/segment/jobs/{SEGMENT_JOB_ID}", 200, done)
    metrics = done["metrics"]
    assert metrics["totalProfiles"] == 3
    assert metrics["totalProfilesByMergePolicy"] == {DEFAULT_POLICY: 3}
    assert metrics["segmentedProfileCounter"] == {points: 2, buyers: 1, ann: 1}
    assert metrics["segmentedProfileByNamespaceCounter"][points] == {"crmid": 2}
    assert metrics["segmentedProfileByStatusCounter"][points] == {"realized": 2, "existing": 0, "exited": 0}
    for timing in ("totalTime", "profileSegmentationTime"):
        assert metrics[timing]["totalTimeInMs"] >= 0
    first = memberships(platform, done)
    assert sorted(s for (seg, _), (s, _) in first.items() if seg == points) == ["realized", "realized"]

    # New data: Bob now qualifies, Cy drops out, Ann stays.
    assert ingest(api, data["crm"], [profile("C2", "bob@x.com", "Bob", loyalty={"points": 50}),
                                     profile("C3", "cy@x.com", "Cy", loyalty={"points": 1})])["status"] == "success"
    again = run_job(api, points)
    assert again["status"] == "SUCCEEDED", again
    assert again["metrics"]["segmentedProfileCounter"] == {points: 2}
    assert again["metrics"]["segmentedProfileByStatusCounter"][points] == {"realized": 1, "existing": 1, "exited": 1}
    second = memberships(platform, again)
    statuses = sorted(s for (seg, _), (s, _) in second.items() if seg == points)
    assert statuses == ["existing", "exited", "realized"]
    for (seg, group), (status, qualified) in second.items():
        if seg == points and status == "existing":  # Ann kept the time she entered
            assert qualified == first[(seg, group)][1]
        if seg == points and status == "exited":  # Cy left at this run's instant, after entering
            assert qualified > first[(seg, group)][1]
    # Segments not evaluated keep their membership.
    assert sorted(s for (seg, _), (s, _) in second.items() if seg == buyers) == ["realized"]

    # inSegment of a segment not in the job reads its current membership (Ann and Bob now).
    composed = create_segment(api, "In points", f'inSegment("{points}")')
    third = run_job(api, composed)
    assert third["status"] == "SUCCEEDED", third
    assert third["metrics"]["segmentedProfileCounter"] == {composed: 2}


def run_job_wait(api: Api, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"{JOBS}/{job_id}").json()
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"segment job {job_id} did not finish")


def test_star_evaluates_every_segment(api: Api, data: dict[str, str]) -> None:
    points = create_segment(api, "Points", "loyalty.points > 5")
    bob = create_segment(api, "Bob", 'person.name.firstName = "Bob"')
    done = run_job(api, "*")
    assert done["status"] == "SUCCEEDED", done
    assert {s["segmentId"] for s in done["segments"]} == {points, bob}
    assert done["metrics"]["segmentedProfileCounter"] == {points: 2, bob: 1}


def test_bad_requests(api: Api, data: dict[str, str]) -> None:
    points = create_segment(api, "Points", "loyalty.points > 5")
    assert_error(api.post(JOBS, json=[{"segmentId": points}, {"segmentId": "no-such-segment"}]), 404,
                 "no-such-segment", "/1/segmentId")
    assert_error(api.post(JOBS, json=[]), 400)
    assert_error(api.post(JOBS, json={"segmentId": points}), 400)
    assert_error(api.post(JOBS, json=[{"id": points}]), 400, "segmentId")
    assert_error(api.get(JOBS, params={"status": "HAPPY"}), 400, "status")
    assert_error(api.get(JOBS, params={"limit": 0}), 400, "limit")
    assert api.get(JOBS).json()["children"] == []


def test_list_get_and_tenancy(api: Api, data: dict[str, str]) -> None:
    points = create_segment(api, "Points", "loyalty.points > 5")
    first = run_job(api, points)
    second = run_job(api, points)
    listed = api.get(JOBS).json()
    assert_matches_spec("segmentation", "GET", "/segment/jobs", 200, listed)
    assert [j["id"] for j in listed["children"]] == [second["id"], first["id"]]
    assert listed["_page"] == {"totalCount": 2, "pageSize": 2}
    assert listed["_links"] == {"next": {}}  # aepp's getJobs stops: no top-level href
    paged = api.get(JOBS, params={"limit": 1, "start": 1}).json()
    assert [j["id"] for j in paged["children"]] == [first["id"]] and paged["_page"]["totalCount"] == 2
    assert api.get(JOBS, params={"status": "SUCCEEDED"}).json()["_page"]["totalCount"] == 2
    assert api.get(JOBS, params={"status": "NEW"}).json()["children"] == []
    assert_error(api.get(f"{JOBS}/{ids.new_uuid()}"), 404)
    assert_error(api.delete(f"{JOBS}/{ids.new_uuid()}"), 404)
    for outsider in (api.as_tenant(ORG, "dev", CLIENT_ID, CLIENT_SECRET),
                     api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)):
        assert outsider.get(f"{JOBS}/{first['id']}").status_code == 404
        assert outsider.delete(f"{JOBS}/{first['id']}").status_code == 404
        assert outsider.get(JOBS).json()["children"] == []
        assert outsider.post(JOBS, json=[{"segmentId": points}]).status_code == 404


def test_list_sort_and_status(api: Api, data: dict[str, str], platform: Platform) -> None:
    points = create_segment(api, "Points", "loyalty.points > 5")
    done = run_job(api, points)
    assert done["status"] == "SUCCEEDED", done
    tenant = Tenant(ORG, done["sandbox"]["sandboxId"], "prod")
    with platform.engine.begin() as conn:  # cancelled before any worker can see it NEW
        cancelled = jobs.create(conn, tenant, [{"segmentId": points}], "req-1").id
        jobs.cancel(conn, tenant, cancelled)
        # Created: done, then cancelled; last updated: cancelled, then done.
        for job_id, created, updated in ((done["id"], 1_000, 5_000), (cancelled, 2_000, 3_000)):
            conn.execute(segment_jobs.update().where(segment_jobs.c.id == job_id)
                         .values(created_ms=created, updated_ms=updated))

    def listed(**params: Any) -> list[str]:
        response = api.get(JOBS, params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["children"]]

    assert listed() == listed(sort="creationTime:desc") == [cancelled, done["id"]]
    assert listed(sort="creationTime:asc") == listed(sort="creationTime") == [done["id"], cancelled]
    assert listed(sort="updateTime:desc") == [done["id"], cancelled]
    assert listed(sort="updateTime:ASC") == [cancelled, done["id"]]
    assert listed(sort="creationTime:asc", limit=1, start=1) == [cancelled]
    assert listed(status="CANCELLED") == [cancelled]
    assert listed(status="succeeded,cancelled", sort="creationTime:asc") == [done["id"], cancelled]
    assert listed(status="PROCESSING") == []
    for bad in ("name:desc", "creationTime:sideways", "status", ":desc"):
        assert_error(api.get(JOBS, params={"sort": bad}), 400, "sort")


def test_bulk_get(api: Api, data: dict[str, str]) -> None:
    points = create_segment(api, "Points", "loyalty.points > 5")
    first = run_job(api, points)
    response = api.post(f"{JOBS}/bulk-get", json={"ids": [{"id": first["id"]}, {"id": "no-such-job"}]})
    assert response.status_code == 207, response.text
    body = response.json()
    assert_matches_spec("segmentation", "POST", "/segment/jobs/bulk-get", 207, body)
    assert body["results"][first["id"]] == api.get(f"{JOBS}/{first['id']}").json()
    assert body["results"]["no-such-job"]["errors"]["404"][0]["code"] == 404
    outsider = api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)
    hidden = outsider.post(f"{JOBS}/bulk-get", json={"ids": [{"id": first["id"]}]}).json()
    assert list(hidden["results"][first["id"]]) == ["errors"]
    for bad in ([{"id": first["id"]}], {"ids": [{"jobId": first["id"]}]}, {"ids": "x"}):
        assert_error(api.post(f"{JOBS}/bulk-get", json=bad), 400, "/ids")


def test_cancel(api: Api, data: dict[str, str], platform: Platform) -> None:
    points = create_segment(api, "Points", "loyalty.points > 5")
    tenant_job = run_job(api, points)
    tenant = Tenant(ORG, tenant_job["sandbox"]["sandboxId"], "prod")
    with platform.engine.begin() as conn:  # cancelled before any worker can see it NEW
        job = jobs.create(conn, tenant, [{"segmentId": points}], "req-1")
        jobs.cancel(conn, tenant, job.id)
        assert jobs.get(conn, tenant, job.id).status == jobs.CANCELLED
        assert not jobs.transition(conn, jobs.get(conn, tenant, job.id), jobs.PROCESSING)
    time.sleep(0.3)  # its queued run finds it cancelled and leaves it so
    assert api.get(f"{JOBS}/{job.id}").json()["status"] == "CANCELLED"
    response = api.post(JOBS, json=[{"segmentId": points}])
    deleted = api.delete(f"{JOBS}/{response.json()['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    final = run_job_wait(api, response.json()["id"])
    assert final["status"] in ("CANCELLED", "SUCCEEDED")  # a worker may have finished first
    with platform.engine.begin() as conn:  # PROCESSING → CANCELLING, and a late success cannot land
        job = jobs.create(conn, tenant, [{"segmentId": points}], "req-2")
        assert jobs.transition(conn, job, jobs.PROCESSING)
        jobs.cancel(conn, tenant, job.id)
        cancelling = jobs.get(conn, tenant, job.id)
        assert cancelling.status == jobs.CANCELLING
        assert not jobs.transition(conn, cancelling, jobs.SUCCEEDED)
        assert jobs.transition(conn, cancelling, jobs.CANCELLED)


def test_membership_statement_moves_and_purges() -> None:
    now = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    conn = duckdb.connect()
    conn.execute(f"CREATE TABLE prev ({sql.MEMBERSHIP_COLUMNS})")
    conn.execute("""INSERT INTO prev VALUES
        ('stay', 's', 'realized', TIMESTAMPTZ '2024-05-01 00:00:00+00'),
        ('leave', 's', 'existing', TIMESTAMPTZ '2024-04-01 00:00:00+00'),
        ('back', 's', 'exited', TIMESTAMPTZ '2024-05-30 00:00:00+00'),
        ('old', 's', 'exited', TIMESTAMPTZ '2024-04-01 00:00:00+00'),
        ('recent', 's', 'exited', TIMESTAMPTZ '2024-05-20 00:00:00+00'),
        ('other', 't', 'realized', TIMESTAMPTZ '2024-01-01 00:00:00+00')""")
    conn.execute("CREATE TABLE q AS SELECT * FROM (VALUES ('stay', 's'), ('back', 's'), ('new', 's')) "
                 "v(_group, segment_id)")
    rows = conn.execute(f"SELECT _group, status, epoch(last_qualification)::BIGINT FROM "
                        f"({sql.next_membership_sql('prev', 'q', ['s'], timestamp_sql(now))})").fetchall()
    got = {g: (s, t) for g, s, t in rows}
    stamp = int(now.timestamp())
    assert got == {
        "stay": ("existing", int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp())),
        "leave": ("exited", stamp), "back": ("realized", stamp), "new": ("realized", stamp),
        "recent": ("exited", int(dt.datetime(2024, 5, 20, tzinfo=dt.UTC).timestamp())),
        "other": ("realized", int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp())),
    }
