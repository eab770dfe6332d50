"""Segmentation routes (`/data/core/ups/segment/definitions`)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from openprofile.core.errors import BadRequest, FieldError, ValidationFailed
from openprofile.core.http import bulk_get, check_json_content_type, int_param, json_body, parse_json_bytes
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.segmentation import definitions
from openprofile.segmentation.definitions import DefinitionRequest

router = APIRouter(prefix="/data/core/ups/segment", tags=["segmentation"])
MAX_LIMIT = 1000


@router.post("/definitions", summary="Create a segment definition (PQL)", openapi_extra={
    "requestBody": {"content": {"application/json": {"schema": DefinitionRequest.model_json_schema()}}}})
async def create_definition(request: Request, tenant: Tenant = Depends(current_tenant),
                            platform: Platform = Depends(get_platform)) -> JSONResponse:
    body = await json_body(request, DefinitionRequest)
    with platform.engine.begin() as conn:
        created = definitions.create(conn, tenant, body)
        rendered = definitions.render(conn, created)
    return JSONResponse(rendered, headers={"X-Location": f"/data/core/ups/segment/definitions/{created.id}"})




@router.get("/definitions", summary="List segment definitions")
def list_definitions(
    limit: str | None = Query(None), start: str | None = Query(None), page: str | None = Query(None),
    sort: str | None = Query(None), tenant: Tenant = Depends(current_tenant),
    platform: Platform = Depends(get_platform),
) -> dict[str, Any]:
    size = int_param("limit", limit, 100, 1, MAX_LIMIT)
    field_name, direction = "creationTime", "desc"
    if sort:
        field_name, _, direction = sort.partition(":")
        if field_name not in ("name", "creationTime", "updateTime") or direction.lower() not in ("", "asc", "desc"):
            raise ValidationFailed(f"sort '{sort}' is not supported",
                                   fields=[FieldError("sort", "name, creationTime or updateTime with :asc or :desc")])
        direction = direction.lower() or "asc"
    with platform.engine.connect() as conn:
        found = definitions.find_all(conn, tenant)
        key = {"name": lambda d: d.name, "updateTime": lambda d: d.updated_ms}.get(field_name, lambda d: d.created_ms)
        found.sort(key=key, reverse=direction == "desc")
        skip = int_param("start", start, 0, 0, 10**9)
        if page is not None:
            skip = int_param("page", page, 1, 1, 10**6) * size - size
        shown = [definitions.render(conn, d) for d in found[skip:skip + size]]
    total = len(found)
    return {
        "segments": shown,
        "page": {"totalCount": total, "totalPages": max(1, math.ceil(total / size)), "sortField": field_name,
                 "sort": direction, "pageSize": len(shown), "limit": size},
        "link": {},
    }


@router.get("/definitions/{definition_id}", summary="Get a segment definition")
def get_definition(definition_id: str, tenant: Tenant = Depends(current_tenant),
                   platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        return definitions.render(conn, definitions.get(conn, tenant, definition_id))


@router.patch("/definitions/{definition_id}", summary="Change a segment definition")
async def patch_definition(definition_id: str, request: Request, tenant: Tenant = Depends(current_tenant),
                           platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    check_json_content_type(request)
    patch = parse_json_bytes(await request.body())
    if not isinstance(patch, dict):
        raise BadRequest("A segment definition PATCH body is a JSON object with the fields to change.")
    with platform.engine.begin() as conn:
        return definitions.render(conn, definitions.update(conn, tenant, definition_id, patch))


@router.delete("/definitions/{definition_id}", summary="Delete a segment definition")
def delete_definition(definition_id: str, tenant: Tenant = Depends(current_tenant),
                      platform: Platform = Depends(get_platform)) -> Response:
    with platform.engine.begin() as conn:
        definitions.delete(conn, tenant, definition_id)
    return Response(status_code=200)


@router.post("/definitions/bulk-get", status_code=207, summary="Get several segment definitions")
async def bulk_get_definitions(request: Request, tenant: Tenant = Depends(current_tenant),
                               platform: Platform = Depends(get_platform)) -> JSONResponse:
    with platform.engine.connect() as conn:
        return await bulk_get(request, lambda i: definitions.render(conn, definitions.get(conn, tenant, i)),
                              bare_list=True)
