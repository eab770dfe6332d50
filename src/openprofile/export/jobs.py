"""Export jobs as stored, their lifecycle, and their AEP JSON shape.

Lifecycle: `NEW → PROCESSING → SUCCEEDED | FAILED`; DELETE on an unfinished job: `NEW → CANCELLED`
(nothing runs yet) or `PROCESSING → CANCELLING → CANCELLED` (the worker stops its query). Every change
goes through `transition`, one compare-and-set UPDATE, and only along `ALLOWED`; so a late
"succeeded" from a worker can never overwrite a cancellation, and a finished job never moves again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openprofile.core.clock import now_ms
from openprofile.core.errors import NotFound
from openprofile.core.tables import export_jobs
from openprofile.core.tenancy import Tenant, tenant_scope

NEW, PROCESSING, SUCCEEDED, FAILED = "NEW", "PROCESSING", "SUCCEEDED", "FAILED"
CANCELLING, CANCELLED = "CANCELLING", "CANCELLED"
STATUSES = (NEW, PROCESSING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
ALLOWED: dict[str, tuple[str, ...]] = {
    NEW: (PROCESSING, CANCELLED, FAILED),
    PROCESSING: (SUCCEEDED, FAILED, CANCELLING, PROCESSING),  # PROCESSING → PROCESSING: a re-run after a crash
    CANCELLING: (CANCELLED,),
}


@dataclass(frozen=True)
class ExportJob:
    id: int
    tenant: Tenant
    status: str
    request: dict[str, Any]
    destination: dict[str, Any]
    merge_policy: dict[str, Any]
    metrics: dict[str, Any]
    errors: list[dict[str, Any]]
    request_id: str
    compute_job_id: str
    created_ms: int
    updated_ms: int

    @property
    def batch_ids(self) -> list[str]:
        """Every batch the job writes: one, or one per segment with `segmentPerBatch`."""
        if self.destination.get("batches"):
            return [str(b["batchId"]) for b in self.destination["batches"]]
        return [str(self.destination["batchId"])] if self.destination.get("batchId") else []


def _from_row(tenant: Tenant, row: Any) -> ExportJob:
    return ExportJob(
        id=int(row.id), tenant=tenant, status=row.status, request=dict(row.request),
        destination=dict(row.destination), merge_policy=dict(row.merge_policy), metrics=dict(row.metrics),
        errors=list(row.errors), request_id=row.request_id, compute_job_id=row.compute_job_id,
        created_ms=row.created_ms, updated_ms=row.updated_ms,
    )


def insert(conn: Connection, tenant: Tenant, *, request: dict[str, Any], destination: dict[str, Any],
           merge_policy: dict[str, Any], request_id: str, compute_job_id: str) -> ExportJob:
    now = now_ms()
    job_id = conn.execute(export_jobs.insert().values(
        org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, status=NEW, request=request, destination=destination,
        merge_policy=merge_policy, metrics={"totalTime": {"startTimeInMs": now}}, errors=[], request_id=request_id,
        compute_job_id=compute_job_id, created_ms=now, updated_ms=now,
    ).returning(export_jobs.c.id)).scalar_one()
    return get(conn, tenant, int(job_id))


def get(conn: Connection, tenant: Tenant, job_id: int) -> ExportJob:
    query = sa.select(export_jobs).where(export_jobs.c.id == job_id, tenant_scope(export_jobs, tenant))
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"Export job '{job_id}' was not found in this sandbox.")
    return _from_row(tenant, row)


def transition(conn: Connection, job: ExportJob, to: str, **values: Any) -> bool:
    """Move the job from the status it was read in to `to`, if that is allowed and nobody moved it first."""
    if to not in ALLOWED.get(job.status, ()):
        return False
    result = conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job.id, tenant_scope(export_jobs, job.tenant), export_jobs.c.status == job.status)
        .values(status=to, updated_ms=now_ms(), **values)
    )
    return result.rowcount == 1


def record_progress(conn: Connection, job: ExportJob, progress: dict[str, int]) -> None:
    """While PROCESSING, how far the job got (`metrics.progress`: profiles and files written so far)."""
    conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == job.id, tenant_scope(export_jobs, job.tenant), export_jobs.c.status == PROCESSING)
        .values(metrics={**job.metrics, "progress": progress}, updated_ms=now_ms())
    )


def delete(conn: Connection, job: ExportJob) -> bool:
    result = conn.execute(export_jobs.delete().where(
        export_jobs.c.id == job.id, tenant_scope(export_jobs, job.tenant), export_jobs.c.status.in_(FINISHED)))
    return result.rowcount == 1


@dataclass(frozen=True)
class PageQuery:
    limit: int
    after: tuple[int, int] | None  # keyset: (creation ms, id) of the last job of the previous page
    status: str | None
    descending: bool
    sort_field: str  # "createdTime" | "updateTime"
    skip: int = 0


def page(conn: Connection, tenant: Tenant, query: PageQuery) -> list[ExportJob]:
    """One page, newest first by default; the keyset makes walking pages stable under concurrent inserts."""
    created, ident = export_jobs.c.created_ms, export_jobs.c.id
    stmt = sa.select(export_jobs).where(tenant_scope(export_jobs, tenant))
    if query.status:
        stmt = stmt.where(export_jobs.c.status == query.status)
    if query.sort_field == "updateTime":
        order = [export_jobs.c.updated_ms, ident]
    else:
        order = [created, ident]
        if query.after is not None:
            key = sa.tuple_(created, ident)
            bound = sa.tuple_(sa.literal(query.after[0]), sa.literal(query.after[1]))
            stmt = stmt.where(key < bound if query.descending else key > bound)
    stmt = stmt.order_by(*[c.desc() if query.descending else c.asc() for c in order])
    rows = conn.execute(stmt.offset(query.skip).limit(query.limit))
    return [_from_row(tenant, r) for r in rows]


def render(job: ExportJob) -> dict[str, Any]:
    """The job as AEP shows it (aep-api.md §2.3)."""
    request = job.request
    body: dict[str, Any] = {
        "id": job.id,
        "jobType": "BATCH",
        "destination": dict(job.destination),
        "schema": request.get("schema", {"name": "_xdm.context.profile"}),
        "imsOrgId": job.tenant.org_id,
        "status": job.status,
        "mergePolicy": job.merge_policy,
        "profileInstanceId": "ups",
        "metrics": {k: v for k, v in job.metrics.items() if v is not None},
        "computeGatewayJobId": {"exportJob": job.compute_job_id if job.status != NEW else ""},
        "creationTime": job.created_ms,
        "updateTime": job.updated_ms,
        "requestId": job.request_id,
    }
    for key in ("fields", "filter", "additionalFields", "evaluationInfo"):
        if request.get(key) is not None:
            body[key] = request[key]
    if job.errors:
        body["errors"] = job.errors
    return body
