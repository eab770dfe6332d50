"""Segment job routes (`/data/core/ups/segment/jobs`): create, list, bulk-get, get, cancel.

The list answers `_links: {"next": {}}` and never a top-level `_links.href`: aepp's `getJobs` keeps asking
while that is non-empty (aepp-client.md §3.3); clients page with `start`/`limit`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from openprofile.core.http import bulk_get, check_json_content_type, parse_json_bytes, request_id_of
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.segmentation import jobs

router = APIRouter(prefix="/data/core/ups/segment", tags=["segment jobs"])


@router.post("/jobs", summary="Create a segment evaluation job")
async def create_job(request: Request, tenant: Tenant = Depends(current_tenant),
                     platform: Platform = Depends(get_platform)) -> JSONResponse:
    check_json_content_type(request)
    body = parse_json_bytes(await request.body())
    with platform.engine.begin() as conn:
        job = jobs.create(conn, tenant, body, request_id_of(request))
        rendered = jobs.render(conn, job)
    platform.queue.wakeup.set()
    return JSONResponse(rendered, headers={"X-Location": f"/data/core/ups/segment/jobs/{job.id}"})


@router.get("/jobs", summary="List segment jobs (newest first; limit, start, status, sort)")
def list_jobs(limit: str | None = Query(None), start: str | None = Query(None), status: str | None = Query(None),
              sort: str | None = Query(None), tenant: Tenant = Depends(current_tenant),
              platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        found, total = jobs.list_page(conn, tenant, limit=limit, start=start, status=status, sort=sort)
        children = [jobs.render(conn, j) for j in found]
    return {"_page": {"totalCount": total, "pageSize": len(children)}, "children": children,
            "_links": {"next": {}}}


@router.post("/jobs/bulk-get", status_code=207, summary="Get several segment jobs")
async def bulk_get_jobs(request: Request, tenant: Tenant = Depends(current_tenant),
                        platform: Platform = Depends(get_platform)) -> JSONResponse:
    """`{"ids": [{"id": ...}]}` → 207 `{"results": {id: job}}`; an unknown id gets an error entry, as AEP's do."""
    with platform.engine.connect() as conn:
        return await bulk_get(request, lambda i: jobs.render(conn, jobs.get(conn, tenant, i)))


@router.get("/jobs/{job_id}", summary="Get a segment job with its status and metrics")
def get_job(job_id: str, tenant: Tenant = Depends(current_tenant),
            platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        return jobs.render(conn, jobs.get(conn, tenant, job_id))


@router.delete("/jobs/{job_id}", status_code=204, summary="Cancel a segment job")
def cancel_job(job_id: str, tenant: Tenant = Depends(current_tenant),
               platform: Platform = Depends(get_platform)) -> Response:
    with platform.engine.begin() as conn:
        jobs.cancel(conn, tenant, job_id)
    return Response(status_code=204)
