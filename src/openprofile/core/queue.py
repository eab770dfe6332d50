"""A durable job queue in the metadata store, in the manner of procrastinate.

A job is a row. A worker claims one with a single UPDATE (`FOR UPDATE SKIP LOCKED` on PostgreSQL;
SQLite serialises writers), holding a lease that a heartbeat extends. A worker that dies stops
heartbeating, its lease runs out, and another worker claims the job again and re-runs it from the
start, so every handler must be idempotent. Each state change is one compare-and-set statement.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from openprofile.core.clock import now_ms
from openprofile.core.tables import queue_jobs
from openprofile.core.tenancy import Tenant

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    tenant: Tenant
    ref: str
    payload: dict[str, Any]
    attempts: int


@dataclass
class Handler:
    """What a worker runs for one kind of job, and what it does when the job keeps dying."""

    run: Callable[[ClaimedJob], None]
    give_up: Callable[[ClaimedJob, str], None]
    max_attempts: int = 3


class JobCancelled(Exception):
    """The job was cancelled (or deleted) while it ran: its worker stops and publishes nothing."""


class JobFailed(Exception):
    """The job cannot finish: it fails with `code` and `message` (AEP's `errors[{code, msg}]`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def enqueue(conn: Connection, kind: str, tenant: Tenant, ref: str, payload: dict[str, Any]) -> int:
    """Queue a job inside the caller's transaction, so it exists exactly when the caller's change does."""
    now = now_ms()
    result = conn.execute(
        queue_jobs.insert()
        .values(
            kind=kind, org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, ref=ref,
            payload={**payload, "_sandbox_name": tenant.sandbox_name}, status=QUEUED, attempts=0,
            created_ms=now, updated_ms=now,
        )
        .returning(queue_jobs.c.id)
    )
    return int(result.scalar_one())


class JobQueue:
    def __init__(self, engine: Engine, *, lease_seconds: float = 30.0) -> None:
        self.engine = engine
        self.lease_ms = int(lease_seconds * 1000)
        self.wakeup = threading.Event()

    def claim(self, worker_id: str, kinds: list[str]) -> ClaimedJob | None:
        now = now_ms()
        candidate = (
            sa.select(queue_jobs.c.id)
            .where(
                queue_jobs.c.kind.in_(kinds),
                sa.or_(
                    queue_jobs.c.status == QUEUED,
                    sa.and_(queue_jobs.c.status == RUNNING, queue_jobs.c.lease_expires_ms < now),
                ),
            )
            .order_by(queue_jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            queue_jobs.update()
            .where(queue_jobs.c.id == candidate)
            .values(
                status=RUNNING, lease_owner=worker_id, lease_expires_ms=now + self.lease_ms,
                attempts=queue_jobs.c.attempts + 1, updated_ms=now,
            )
            .returning(
                queue_jobs.c.id, queue_jobs.c.kind, queue_jobs.c.org_id, queue_jobs.c.sandbox_id,
                queue_jobs.c.ref, queue_jobs.c.payload, queue_jobs.c.attempts,
            )
        )
        with self.engine.begin() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        payload = dict(row.payload)
        tenant = Tenant(org_id=row.org_id, sandbox_id=row.sandbox_id, sandbox_name=payload.pop("_sandbox_name"))
        return ClaimedJob(row.id, row.kind, tenant, row.ref, payload, row.attempts)

    def heartbeat(self, job_id: int, worker_id: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                queue_jobs.update()
                .where(queue_jobs.c.id == job_id, queue_jobs.c.lease_owner == worker_id,
                       queue_jobs.c.status == RUNNING)
                .values(lease_expires_ms=now_ms() + self.lease_ms)
            )
        return result.rowcount == 1

    def finish(self, job_id: int, worker_id: str, status: str, error: str | None = None) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                queue_jobs.update()
                .where(queue_jobs.c.id == job_id, queue_jobs.c.lease_owner == worker_id,
                       queue_jobs.c.status == RUNNING)
                .values(status=status, last_error=error, lease_expires_ms=None, updated_ms=now_ms())
            )
        return result.rowcount == 1

    def pending(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(queue_jobs).where(queue_jobs.c.status.in_([QUEUED, RUNNING]))
            ).scalar_one())


@dataclass
class WorkerPool:
    """Threads that claim and run jobs until stopped; used in the server and by `openprofile worker`."""

    queue: JobQueue
    handlers: dict[str, Handler]
    size: int = 2
    poll_seconds: float = 0.2
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.size):
            worker_id = f"{socket.gethostname()}:{os.getpid()}:{n}"
            thread = threading.Thread(target=self._loop, args=(worker_id,), name=f"worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.wakeup.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def run_once(self, worker_id: str = "inline") -> bool:
        """Claim and run one job if there is one; for tests and for draining a queue synchronously."""
        job = self.queue.claim(worker_id, list(self.handlers))
        if job is None:
            return False
        self._run(job, worker_id)
        return True

    def _loop(self, worker_id: str) -> None:
        while not self._stop.is_set():
            try:
                if self.run_once(worker_id):
                    continue
            except Exception:  # the loop must survive a lost database connection
                log.exception("worker %s: claim failed", worker_id)
            self.queue.wakeup.wait(self.poll_seconds)
            self.queue.wakeup.clear()

    def _run(self, job: ClaimedJob, worker_id: str) -> None:
        handler = self.handlers[job.kind]
        if job.attempts > handler.max_attempts:
            handler.give_up(job, f"gave up after {job.attempts - 1} attempts whose worker stopped")
            self.queue.finish(job.id, worker_id, FAILED, "too many attempts")
            return
        beating = threading.Event()

        def beat() -> None:
            while not beating.wait(self.queue.lease_ms / 3000):
                if not self.queue.heartbeat(job.id, worker_id):
                    return

        heart = threading.Thread(target=beat, daemon=True)
        heart.start()
        try:
            handler.run(job)
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.kind)
            error = "".join(traceback.format_exception_only(exc)).strip()
            handler.give_up(job, error)
            self.queue.finish(job.id, worker_id, FAILED, error)
        else:
            self.queue.finish(job.id, worker_id, DONE)
        finally:
            beating.set()
            heart.join()
