"""Profile export job routes (`/data/core/ups/export/jobs`, with and without the trailing slash)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from openprofile.core.http import json_body, request_id_of
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.export import jobs, service
from openprofile.export.models import CreateExportJobRequest

router = APIRouter(prefix="/data/core/ups/export", tags=["export jobs"])
CANCEL_MESSAGE = {"status": True, "message": "Export job has been marked for cancelling"}


@router.post("/jobs", summary="Create a profile export job", openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": CreateExportJobRequest.model_json_schema()}}}})
@router.post("/jobs/", include_in_schema=False)
async def create_job(request: Request, tenant: Tenant = Depends(current_tenant),
                     platform: Platform = Depends(get_platform)) -> JSONResponse:
    body = await json_body(request, CreateExportJobRequest)
    with platform.engine.begin() as conn:
        job = service.create(platform, conn, tenant, body, request_id_of(request))
    platform.queue.wakeup.set()
    return JSONResponse(jobs.render(job), headers={"X-Location": f"/data/core/ups/export/jobs/{job.id}"})


@router.get("/jobs", summary="List export jobs (limit/offset/status, or start/page/sort)")
@router.get("/jobs/", include_in_schema=False)
def list_jobs(
    limit: str | None = Query(None), offset: str | None = Query(None), status: str | None = Query(None),
    start: str | None = Query(None), page: str | None = Query(None), sort: str | None = Query(None),
    tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform),
) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        result = service.list_page(conn, tenant, limit=limit, offset=offset, status=status, start=start, page=page,
                                   sort=sort)
    return service.page_json(result)


@router.get("/jobs/{job_id}", summary="Get an export job with its live status and metrics")
def get_job(job_id: str, tenant: Tenant = Depends(current_tenant),
            platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        return jobs.render(jobs.get(conn, tenant, service.job_id_of(job_id)))


@router.delete("/jobs/{job_id}", summary="Cancel an unfinished export job, or delete a finished one")
def delete_job(job_id: str, tenant: Tenant = Depends(current_tenant),
               platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.begin() as conn:
        service.cancel_or_delete(platform, conn, tenant, service.job_id_of(job_id))
    return CANCEL_MESSAGE
