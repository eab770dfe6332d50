"""Batch Ingestion API routes (`/data/foundation/import`)."""

from __future__ import annotations

import os

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from openprofile.catalog import service as catalog
from openprofile.core.errors import FieldError, ValidationFailed
from openprofile.core.http import json_body
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.ingest import service
from openprofile.ingest.models import CreateBatchRequest

router = APIRouter(prefix="/data/foundation/import", tags=["ingestion"])
ACTIONS = ("COMPLETE", "ABORT", "FAIL")


@router.post("/batches", status_code=201, summary="Create a batch for a dataset", openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": CreateBatchRequest.model_json_schema()}}}})
async def create_batch(request: Request, tenant: Tenant = Depends(current_tenant),
                       platform: Platform = Depends(get_platform)) -> JSONResponse:
    body = await json_body(request, CreateBatchRequest)
    with platform.engine.begin() as conn:
        batch = service.create_batch(conn, tenant, body)
    return JSONResponse(catalog.batch_json(batch), status_code=201)


@router.put("/batches/{batch_id}/datasets/{dataset_id}/files/{file_name}",
            summary="Upload a file into a batch (streamed to disk)")
async def upload_file(batch_id: str, dataset_id: str, file_name: str, request: Request,
                      tenant: Tenant = Depends(current_tenant),
                      platform: Platform = Depends(get_platform)) -> Response:
    service.check_file_name(file_name)
    with platform.engine.connect() as conn:
        service.loading_batch(conn, tenant, batch_id, dataset_id)
    part, final = service.upload_path(platform, batch_id, file_name)
    try:
        async with await anyio.open_file(part, "wb") as out:
            async for chunk in request.stream():
                await out.write(chunk)
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    return Response(status_code=200)


@router.post("/batches/{batch_id}", summary="Act on a batch: COMPLETE, ABORT or FAIL")
def act_on_batch(batch_id: str, action: str | None = Query(None), tenant: Tenant = Depends(current_tenant),
                 platform: Platform = Depends(get_platform)) -> Response:
    if action not in ACTIONS:
        raise ValidationFailed(f"action '{action}' is not one of {', '.join(ACTIONS)}",
                               fields=[FieldError("action", f"must be one of {', '.join(ACTIONS)}")])
    with platform.engine.begin() as conn:
        if action == "COMPLETE":
            service.complete(platform, conn, tenant, batch_id)
        else:
            service.abort(platform, conn, tenant, batch_id, "aborted" if action == "ABORT" else "failed")
    if action == "COMPLETE":
        platform.queue.wakeup.set()
    else:
        platform.lake.discard_uploads(batch_id)
    return Response(status_code=200)
