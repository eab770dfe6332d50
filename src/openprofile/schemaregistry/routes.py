"""Schema Registry routes (`/data/foundation/schemaregistry`): tenant schemas and class unions."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from openprofile.catalog import service as catalog
from openprofile.core.http import check_json_content_type, parse_json_bytes
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.engine.structure import Structure, to_observable_schema
from openprofile.schemaregistry import service
from openprofile.schemaregistry.service import PROFILE_CLASS, UNIONS, XdmClass

router = APIRouter(prefix="/data/foundation/schemaregistry", tags=["schema registry"])

# The profile union's system fields (reference/aep-api.md §11): identities, memberships, events.
_IDENTITY_ITEM: Structure = {"item": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN",
                                                 "authenticatedState": "VARCHAR"}}}
PROFILE_SYSTEM_FIELDS: Structure = {
    "identityMap": {"map": {"list": _IDENTITY_ITEM["item"]}},
    "segmentMembership": {"map": {"map": {"struct": {"status": "VARCHAR", "lastQualificationTime": "TIMESTAMPTZ"}}}},
    "timeSeriesEvents": {"list": {"struct": {"_id": "VARCHAR", "timestamp": "TIMESTAMPTZ"}}},
}


@router.post("/tenant/schemas", status_code=201, summary="Create a tenant schema extending a class")
async def create_schema(request: Request, tenant: Tenant = Depends(current_tenant),
                        platform: Platform = Depends(get_platform)) -> JSONResponse:
    check_json_content_type(request)
    body = parse_json_bytes(await request.body())
    with platform.engine.begin() as conn:
        created = service.create_schema(conn, tenant, body)
    return JSONResponse(created, status_code=201)


@router.get("/tenant/schemas", summary="List tenant schemas")
@router.get("/tenant/schemas/", include_in_schema=False)
def list_schemas(tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform)) -> Any:
    with platform.engine.connect() as conn:
        found = service.list_schemas(conn, tenant)
    results = [{"$id": s["$id"], "meta:altId": s["meta:altId"], "version": s["version"], "title": s["title"],
                "meta:class": s["meta:class"], "meta:immutableTags": s.get("meta:immutableTags", [])}
               for s in found]
    return {"results": results, "_page": {"orderby": "meta:created", "next": None, "count": len(results)},
            "_links": {}}


@router.get("/tenant/schemas/{schema_id:path}", summary="Get a tenant schema by $id or meta:altId")
def get_schema(schema_id: str, tenant: Tenant = Depends(current_tenant),
               platform: Platform = Depends(get_platform)) -> Any:
    with platform.engine.connect() as conn:
        return service.get_schema(conn, tenant, unquote(schema_id))


@router.patch("/tenant/schemas/{schema_id:path}", summary="JSON-Patch a tenant schema")
async def patch_schema(schema_id: str, request: Request, tenant: Tenant = Depends(current_tenant),
                       platform: Platform = Depends(get_platform)) -> Any:
    check_json_content_type(request)
    operations = parse_json_bytes(await request.body())
    with platform.engine.begin() as conn:
        return service.patch_schema(conn, tenant, unquote(schema_id), operations)


@router.delete("/tenant/schemas/{schema_id:path}", status_code=204, summary="Delete a tenant schema")
def delete_schema(schema_id: str, tenant: Tenant = Depends(current_tenant),
                  platform: Platform = Depends(get_platform)) -> Response:
    with platform.engine.begin() as conn:
        service.delete_schema(conn, tenant, unquote(schema_id))
    return Response(status_code=204)


def _union_structure(platform: Platform, tenant: Tenant, xdm_class: XdmClass) -> tuple[Structure, list[str]]:
    """The fields of every profile-enabled dataset of the class (plus the profile's system fields)."""
    base = PROFILE_SYSTEM_FIELDS if xdm_class.id == PROFILE_CLASS else {}
    with platform.engine.connect() as conn:
        return catalog.union_structure(conn, tenant, xdm_class.id, base), service.union_schemas(conn, tenant,
                                                                                                  xdm_class.id)


def _union_summary(union_id: str, xdm_class: XdmClass) -> dict[str, Any]:
    return {"$id": union_id, "meta:altId": xdm_class.alt_id + "__union", "version": "1.0",
            "title": f"{xdm_class.title} union", "meta:class": xdm_class.id}


@router.get("/tenant/unions", summary="List class unions")
def list_unions(tenant: Tenant = Depends(current_tenant)) -> Any:
    return {"results": [_union_summary(u, c) for u, c in UNIONS.items()], "_page": {"count": len(UNIONS)},
            "_links": {}}


@router.get("/tenant/unions/{union_id:path}", summary="Get a class union: the fields of its profile-enabled datasets")
def get_union(union_id: str, tenant: Tenant = Depends(current_tenant),
              platform: Platform = Depends(get_platform)) -> Any:
    xdm_class = service.find_union(unquote(union_id))
    structure, members = _union_structure(platform, tenant, xdm_class)
    observable = to_observable_schema(structure)
    union_id = xdm_class.id + "__union"
    return {
        **_union_summary(union_id, xdm_class),
        "type": "object",
        "meta:resourceType": "unions",
        "meta:containerId": "tenant",
        "meta:extends": [xdm_class.id, xdm_class.behavior],
        "meta:unionSchemas": members,
        "properties": observable.get("properties", {}),
    }
