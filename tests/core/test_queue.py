"""The durable job queue: each job runs once among concurrent workers; a dead worker's job is re-run."""

from __future__ import annotations

import threading
import time

from openprofile.core.platform import Platform
from openprofile.core.queue import DONE, FAILED, ClaimedJob, Handler, JobQueue, WorkerPool, enqueue
from openprofile.core.tables import queue_jobs
from openprofile.core.tenancy import Tenant

TENANT = Tenant(org_id="Q@AdobeOrg", sandbox_id="s1", sandbox_name="prod")


def _statuses(platform: Platform) -> list[str]:
    with platform.engine.connect() as conn:
        return [r.status for r in conn.execute(queue_jobs.select().order_by(queue_jobs.c.id))]


def test_every_job_runs_exactly_once_across_workers(platform: Platform) -> None:
    ran: list[str] = []
    lock = threading.Lock()

    def run(job: ClaimedJob) -> None:
        time.sleep(0.01)
        with lock:
            ran.append(job.ref)

    with platform.engine.begin() as conn:
        for n in range(40):
            enqueue(conn, "test.job", TENANT, f"job-{n}", {"n": n})
    pool = WorkerPool(platform.queue, {"test.job": Handler(run=run, give_up=lambda j, r: None)}, size=4,
                      poll_seconds=0.01)
    pool.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and platform.queue.pending():
        time.sleep(0.05)
    pool.stop()
    assert sorted(ran) == sorted(f"job-{n}" for n in range(40))
    assert set(_statuses(platform)) == {DONE}


def test_a_job_whose_lease_expired_is_claimed_again(platform: Platform) -> None:
    queue = JobQueue(platform.engine, lease_seconds=0.2)
    with platform.engine.begin() as conn:
        enqueue(conn, "test.job", TENANT, "crashy", {})
    first = queue.claim("dead-worker", ["test.job"])
    assert first is not None and first.attempts == 1
    assert queue.claim("other", ["test.job"]) is None  # leased
    time.sleep(0.3)
    second = queue.claim("other", ["test.job"])
    assert second is not None and second.id == first.id and second.attempts == 2
    assert second.tenant == TENANT and second.payload == {}
    assert not queue.finish(first.id, "dead-worker", DONE)  # the dead worker lost its lease
    assert queue.finish(second.id, "other", DONE)


def test_failure_and_giving_up_are_recorded(platform: Platform) -> None:
    given_up: list[str] = []

    def run(job: ClaimedJob) -> None:
        raise RuntimeError("boom")

    with platform.engine.begin() as conn:
        enqueue(conn, "test.job", TENANT, "bad", {})
    pool = WorkerPool(platform.queue, {"test.job": Handler(run=run, give_up=lambda j, r: given_up.append(r))})
    assert pool.run_once()
    assert _statuses(platform) == [FAILED]
    assert given_up and "boom" in given_up[0]
