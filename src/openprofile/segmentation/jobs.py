"""Segment evaluation jobs as stored, their lifecycle, creation, and their AEP JSON shape (aep-api.md §7.2).

Lifecycle: `NEW → PROCESSING → SUCCEEDED | FAILED` (`QUEUED` is accepted between NEW and PROCESSING);
DELETE on an unfinished job: `NEW|QUEUED → CANCELLED` (nothing ran yet) or `PROCESSING → CANCELLING →
CANCELLED` (the worker stops between segments and publishes nothing). Every change goes through
`transition`, one compare-and-set UPDATE, and only along `ALLOWED`; a finished job never moves again.

A job keeps a snapshot of what it evaluates: each segment's expression and the merge policy (id and
version) resolved when the job was created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openprofile.core import ids
from openprofile.core.clock import now_ms
from openprofile.core.errors import BadRequest, FieldError, NotFound, ValidationFailed
from openprofile.core.http import int_param
from openprofile.core.queue import enqueue
from openprofile.core.tables import segment_jobs
from openprofile.core.tenancy import Tenant, find_sandbox, tenant_scope
from openprofile.profile.policies import resolve_merge_policy
from openprofile.segmentation import definitions

JOB_KIND = "segment.run"
NEW, QUEUED, PROCESSING, SUCCEEDED, FAILED = "NEW", "QUEUED", "PROCESSING", "SUCCEEDED", "FAILED"
CANCELLING, CANCELLED = "CANCELLING", "CANCELLED"
STATUSES = (NEW, QUEUED, PROCESSING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
ALLOWED: dict[str, tuple[str, ...]] = {
    NEW: (QUEUED, PROCESSING, CANCELLED, FAILED),
    QUEUED: (PROCESSING, CANCELLED, FAILED),
    PROCESSING: (SUCCEEDED, FAILED, CANCELLING, PROCESSING),  # PROCESSING → PROCESSING: a re-run after a crash
    CANCELLING: (CANCELLED,),
}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class SegmentJob:
    id: str
    tenant: Tenant
    status: str
    segments: list[dict[str, Any]]
    metrics: dict[str, Any]
    errors: list[dict[str, Any]]
    request_id: str
    created_ms: int
    updated_ms: int


def _from_row(tenant: Tenant, row: Any) -> SegmentJob:
    return SegmentJob(id=row.id, tenant=tenant, status=row.status, segments=list(row.segments),
                      metrics=dict(row.metrics), errors=list(row.errors), request_id=row.request_id,
                      created_ms=row.created_ms, updated_ms=row.updated_ms)


def get(conn: Connection, tenant: Tenant, job_id: str) -> SegmentJob:
    row = conn.execute(sa.select(segment_jobs).where(segment_jobs.c.id == job_id,
                                                     tenant_scope(segment_jobs, tenant))).first()
    if row is None:
        raise NotFound(f"Segment job '{job_id}' was not found in this sandbox.")
    return _from_row(tenant, row)


def transition(conn: Connection, job: SegmentJob, to: str, **values: Any) -> bool:
    """Move the job from the status it was read in to `to`, if that is allowed and nobody moved it first."""
    if to not in ALLOWED.get(job.status, ()):
        return False
    result = conn.execute(
        segment_jobs.update()
        .where(segment_jobs.c.id == job.id, tenant_scope(segment_jobs, job.tenant),
               segment_jobs.c.status == job.status)
        .values(status=to, updated_ms=now_ms(), **values)
    )
    return result.rowcount == 1


def _segment_entry(conn: Connection, tenant: Tenant, definition: definitions.Definition,
                   policies: dict[str | None, dict[str, Any]]) -> dict[str, Any]:
    key = definition.merge_policy_id
    if key not in policies:
        policy = resolve_merge_policy(conn, tenant, key, None)
        policies[key] = {"id": policy.id, "version": policy.version}
    policy_ref = policies[key]
    return {"segmentId": definition.id, "segment": {
        "id": definition.id, "expression": dict(definition.body["expression"]),
        "mergePolicyId": policy_ref["id"], "mergePolicy": dict(policy_ref)}}


def create(conn: Connection, tenant: Tenant, body: Any, request_id: str, *, queued: bool = True) -> SegmentJob:
    """`POST /segment/jobs`: an array of `{segmentId}` (`"*"`: every definition of the sandbox). With
    `queued=False` the job is not put on the queue: its creator runs it (`runner.run_inline`)."""
    if not isinstance(body, list) or not body:
        raise ValidationFailed("A segment job takes a non-empty array of {\"segmentId\": ...}",
                               fields=[FieldError("/", "a non-empty array")])
    wanted: list[str] = []
    for n, item in enumerate(body):
        if not isinstance(item, dict) or not isinstance(item.get("segmentId"), str) or not item["segmentId"]:
            raise ValidationFailed(f"/{n}/segmentId is required (a segment definition id or \"*\")",
                                   fields=[FieldError(f"/{n}/segmentId", "required")])
        if item["segmentId"] not in wanted:
            wanted.append(item["segmentId"])
    if "*" in wanted:
        chosen = definitions.find_all(conn, tenant)
        if not chosen:
            raise ValidationFailed("There is no segment definition in this sandbox to evaluate.",
                                   fields=[FieldError("/0/segmentId", "no segment definitions")])
    else:
        chosen = []
        for n, segment_id in enumerate(wanted):
            try:
                chosen.append(definitions.get(conn, tenant, segment_id))
            except NotFound as exc:
                exc.fields = [FieldError(f"/{n}/segmentId", f"unknown segment '{segment_id}'")]
                raise
    policies: dict[str | None, dict[str, Any]] = {}
    segments = [_segment_entry(conn, tenant, d, policies) for d in chosen]
    now = now_ms()
    job_id = ids.new_uuid()
    conn.execute(segment_jobs.insert().values(
        id=job_id, org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, status=NEW, segments=segments,
        metrics={"totalTime": {"startTimeInMs": now}, "profileSegmentationTime": {}}, errors=[],
        request_id=request_id, created_ms=now, updated_ms=now))
    if queued:
        enqueue(conn, JOB_KIND, tenant, job_id, {"jobId": job_id})
    return get(conn, tenant, job_id)


def unfinished(conn: Connection, tenant: Tenant, request_id: str) -> list[SegmentJob]:
    """The jobs of a request that have not finished."""
    rows = conn.execute(sa.select(segment_jobs).where(
        tenant_scope(segment_jobs, tenant), segment_jobs.c.request_id == request_id,
        segment_jobs.c.status.not_in(FINISHED))).all()
    return [_from_row(tenant, row) for row in rows]


def fail_unfinished(conn: Connection, tenant: Tenant, request_id: str, code: str, message: str) -> None:
    """Fail the unfinished jobs of a request (left behind by a run that died)."""
    for job in unfinished(conn, tenant, request_id):
        to = CANCELLED if job.status == CANCELLING else FAILED
        transition(conn, job, to, **({"errors": [{"code": code, "msg": message, "callStack": ""}]}
                                     if to == FAILED else {}))


def cancel(conn: Connection, tenant: Tenant, job_id: str) -> None:
    """NEW/QUEUED → CANCELLED at once; PROCESSING → CANCELLING (the worker settles it); finished: no change."""
    for _ in range(10):
        job = get(conn, tenant, job_id)
        if job.status in (NEW, QUEUED) and transition(conn, job, CANCELLED):
            return
        if job.status == PROCESSING and transition(conn, job, CANCELLING):
            return
        if job.status in (CANCELLING, *FINISHED):
            return
    raise BadRequest(f"Segment job {job_id} keeps changing state; try again.")




SORT_FIELDS = {"creationTime": segment_jobs.c.created_ms, "updateTime": segment_jobs.c.updated_ms}


def _order(sort: str | None) -> list[Any]:
    """AEP's `sort=attribute:asc|desc` (`creationTime:desc` when absent); ties broken by id the same way."""
    name, _, direction = (sort or "creationTime:desc").strip().partition(":")
    direction = direction.strip().lower() or "asc"
    if name.strip() not in SORT_FIELDS or direction not in ("asc", "desc"):
        raise ValidationFailed(f"sort '{sort}' is not supported: use creationTime or updateTime, with :asc or :desc",
                               fields=[FieldError("sort", "creationTime or updateTime, with :asc or :desc")])
    column = SORT_FIELDS[name.strip()]
    if direction == "desc":
        return [column.desc(), segment_jobs.c.id.desc()]
    return [column.asc(), segment_jobs.c.id.asc()]


def list_page(conn: Connection, tenant: Tenant, *, limit: str | None, start: str | None,
              status: str | None, sort: str | None = None) -> tuple[list[SegmentJob], int]:
    """Newest first unless `sort` says otherwise; `start` is how many to skip. Returns the page and the total."""
    size = int_param("limit", limit, DEFAULT_LIMIT, 1, MAX_LIMIT)
    skip = int_param("start", start, 0, 0, 10**9)
    order = _order(sort)
    where = [tenant_scope(segment_jobs, tenant)]
    if status:
        wanted = [s.strip().upper() for s in status.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in STATUSES]
        if unknown:
            raise ValidationFailed(f"status '{unknown[0]}' is not one of {', '.join(STATUSES)}",
                                   fields=[FieldError("status", "unknown status")])
        where.append(segment_jobs.c.status.in_(wanted))
    total = int(conn.execute(sa.select(sa.func.count()).select_from(segment_jobs).where(*where)).scalar_one())
    rows = conn.execute(sa.select(segment_jobs).where(*where).order_by(*order).offset(skip).limit(size))
    return [_from_row(tenant, r) for r in rows], total


def render(conn: Connection, job: SegmentJob) -> dict[str, Any]:
    tenant = job.tenant
    sandbox = find_sandbox(conn, tenant.org_id, tenant.sandbox_name)
    href = f"/segment/jobs/{job.id}"
    body: dict[str, Any] = {
        "id": job.id,
        "imsOrgId": tenant.org_id,
        "sandbox": {"sandboxId": tenant.sandbox_id, "sandboxName": tenant.sandbox_name,
                    "type": sandbox.type if sandbox else "development",
                    "default": bool(sandbox.is_default) if sandbox else False},
        "profileInstanceId": "ups",
        "source": "api",
        "status": job.status,
        "segments": job.segments,
        "metrics": job.metrics,
        "requestId": job.request_id,
        "schema": {"name": "_xdm.context.profile"},
        "creationTime": job.created_ms,
        "updateTime": job.updated_ms,
        "updateEpoch": job.updated_ms // 1000,
        "_links": {"cancel": {"href": href, "method": "DELETE"}, "checkStatus": {"href": href, "method": "GET"}},
    }
    if job.errors:
        body["errors"] = job.errors
    return body
