"""Catalog Service routes (`/data/foundation/catalog`): datasets and batches, keyed by id."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from openprofile.catalog import service
from openprofile.catalog.models import DataSetRequest
from openprofile.core.errors import FieldError, ValidationFailed
from openprofile.core.http import check_json_content_type, json_body, parse_json_bytes
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant

router = APIRouter(prefix="/data/foundation/catalog", tags=["catalog"])


def _properties(properties: str | None) -> list[str] | None:
    return [p.strip() for p in properties.split(",") if p.strip()] if properties else None


@router.post("/dataSets", status_code=201, summary="Create a dataset", openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": DataSetRequest.model_json_schema()}}}})
@router.post("/dataSets/", include_in_schema=False, status_code=201)
async def create_dataset(request: Request, tenant: Tenant = Depends(current_tenant),
                         platform: Platform = Depends(get_platform)) -> JSONResponse:
    body = await json_body(request, DataSetRequest)
    with platform.engine.begin() as conn:
        dataset = service.create_dataset(conn, tenant, body)
    ref = f"@/dataSets/{dataset.id}"
    return JSONResponse([ref], status_code=201,
                        headers={"Location": f"/data/foundation/catalog/dataSets/{dataset.id}"})


@router.get("/dataSets", summary="List datasets, keyed by id")
def list_datasets(
    limit: int | None = Query(None), start: int | None = Query(None), orderBy: str | None = Query(None),
    properties: str | None = Query(None), name: str | None = Query(None),
    tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform),
) -> dict[str, Any]:
    page_limit, page_start = service.check_paging(limit, start)
    with platform.engine.connect() as conn:
        found = service.list_datasets(conn, tenant, limit=page_limit, start=page_start, order_by=orderBy, name=name)
        return {d.id: service.dataset_json(conn, d, _properties(properties)) for d in found}


@router.get("/dataSets/{dataset_id}", summary="Get a dataset, keyed by id")
def get_dataset(dataset_id: str, properties: str | None = Query(None), tenant: Tenant = Depends(current_tenant),
                platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        dataset = service.get_dataset(conn, tenant, dataset_id)
        return {dataset.id: service.dataset_json(conn, dataset, _properties(properties))}


@router.patch("/dataSets/{dataset_id}", summary="Update a dataset with JSON-Patch or a JSON object")
async def patch_dataset(dataset_id: str, request: Request, tenant: Tenant = Depends(current_tenant),
                        platform: Platform = Depends(get_platform)) -> list[str]:
    check_json_content_type(request)
    patch = parse_json_bytes(await request.body())
    with platform.engine.begin() as conn:
        dataset = service.patch_dataset(conn, tenant, dataset_id, patch)
    return [f"@/dataSets/{dataset.id}"]


@router.delete("/dataSets/{dataset_id}", summary="Delete a dataset and its batches")
def delete_dataset(dataset_id: str, tenant: Tenant = Depends(current_tenant),
                   platform: Platform = Depends(get_platform)) -> list[str]:
    with platform.engine.begin() as conn:
        service.delete_dataset(conn, tenant, dataset_id)
    platform.lake.remove_dataset(tenant, dataset_id)
    return [f"@/dataSets/{dataset_id}"]


@router.get("/batches", summary="List batches, keyed by id")
def list_batches(
    limit: int | None = Query(None), start: int | None = Query(None), orderBy: str | None = Query(None),
    dataSet: str | None = Query(None), status: str | None = Query(None),
    createdAfter: int | None = Query(None), createdBefore: int | None = Query(None),
    properties: str | None = Query(None),
    tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform),
) -> dict[str, Any]:
    page_limit, page_start = service.check_paging(limit, start)
    if status is not None and status not in service.BATCH_STATUSES:
        raise ValidationFailed(f"status '{status}' is not one of {', '.join(service.BATCH_STATUSES)}",
                               fields=[FieldError("status", "unknown status")])
    wanted = _properties(properties)
    with platform.engine.connect() as conn:
        found = service.list_batches(conn, tenant, limit=page_limit, start=page_start, order_by=orderBy,
                                     dataset_id=dataSet, status=status, created_after=createdAfter,
                                     created_before=createdBefore)
    rendered = {b.id: service.batch_json(b) for b in found}
    if wanted:
        rendered = {k: {p: v for p, v in body.items() if p in wanted} for k, body in rendered.items()}
    return rendered


@router.get("/batches/{batch_id}", summary="Get a batch, keyed by id")
def get_batch(batch_id: str, tenant: Tenant = Depends(current_tenant),
              platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        batch = service.get_batch(conn, tenant, batch_id)
    return {batch.id: service.batch_json(batch)}
