"""Preview and estimate routes (`/data/core/ups/preview`, `/data/core/ups/estimate`); see `preview.py`.

POST answers 201 with the preview in `NEW` and `X-Location`; the evaluation runs on a worker, so clients
poll GET until `state` is `RESULT_READY` (or `FAILED`). DELETE answers 200 with `{status, message}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from openprofile.core.http import json_body, request_id_of
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.segmentation import preview
from openprofile.segmentation.preview import PreviewRequest

router = APIRouter(prefix="/data/core/ups", tags=["segment previews and estimates"])


@router.post("/preview", status_code=201, summary="Create a preview (and its estimate) of a PQL expression",
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": PreviewRequest.model_json_schema()}}}})
async def create_preview(request: Request, tenant: Tenant = Depends(current_tenant),
                         platform: Platform = Depends(get_platform)) -> JSONResponse:
    body = await json_body(request, PreviewRequest)
    with platform.engine.begin() as conn:
        created = preview.create(conn, tenant, body, request_id_of(request))
    platform.queue.wakeup.set()
    return JSONResponse(preview.render_created(created), status_code=201,
                        headers={"X-Location": f"{preview.BASE}/preview/{created.id}"})


@router.get("/preview/{preview_id}", summary="Get a preview's state and a page of its qualifying profiles")
def get_preview(preview_id: str, offset: str | None = Query(None), limit: str | None = Query(None),
                tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        found = preview.get(conn, tenant, preview_id)
    return preview.render_preview(found, offset=offset, limit=limit)


@router.delete("/preview/{preview_id}", summary="Delete a preview (and its estimate)")
def delete_preview(preview_id: str, tenant: Tenant = Depends(current_tenant),
                   platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.begin() as conn:
        preview.delete(conn, tenant, preview_id)
    return {"status": True, "message": f"Preview '{preview_id}' has been deleted"}


@router.get("/estimate/{preview_id}", summary="Get the estimate of a preview: qualifying profile counts")
def get_estimate(preview_id: str, tenant: Tenant = Depends(current_tenant),
                 platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        return preview.render_estimate(preview.get(conn, tenant, preview_id))
