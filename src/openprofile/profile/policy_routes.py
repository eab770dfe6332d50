"""Merge Policies API routes (`/data/core/ups/config/mergePolicies`), in the shapes Adobe's docs and aepp use.

The list answers both page shapes (the spec's `_page.count/next` and the docs' `_page.totalCount/pageSize`
with `_links.next.href`, which is always present and "" on the last page, as aepp's `getMergePolicies`
needs). `x-profile-instance-id` is accepted and not required: the spec requires it on writes, but the
docs' curl examples and aepp never send it, and it selects nothing here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from openprofile.core.http import check_json_content_type, json_body, parse_json_bytes, request_id_of
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.profile import policies as service
from openprofile.profile.policy_models import BulkGetRequest, MergePolicyRequest

router = APIRouter(prefix="/data/core/ups/config/mergePolicies", tags=["merge policies"])
_BODY = {"requestBody": {"content": {"application/json": {"schema": MergePolicyRequest.model_json_schema(
    by_alias=True)}}}}
_INSTANCE = Header(None, alias="x-profile-instance-id", description="Accepted, not required (docs omit it).")


@router.get("", summary="List merge policies (the built-in included)")
@router.get("/", include_in_schema=False)
def list_merge_policies(
    limit: str | None = Query(None, description="Page size, default 20, at most 1000."),
    start: str | None = Query(None, description="Page token from _links.next."),
    orderBy: str | None = Query(None, description="name, +name, -name, updateEpoch, +updateEpoch, -updateEpoch"),
    orderby: str | None = Query(None, include_in_schema=False),
    schema_name: str | None = Query(None, alias="schema.name"),
    default: str | None = Query(None, description="true or false"),
    identity_graph: str | None = Query(None, alias="identityGraph.type"),
    attribute_merge: str | None = Query(None, alias="attributeMerge.type"),
    isActiveOnEdge: str | None = Query(None, description="true or false"),
    version: str | None = Query(None, description="List each policy as it was at this version."),
    tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform),
) -> dict[str, Any]:
    query = service.make_list_query(
        limit=limit, start=start, order_by=orderBy if orderBy is not None else orderby, schema_name=schema_name,
        default=default, identity_graph=identity_graph, attribute_merge=attribute_merge,
        is_active_on_edge=isActiveOnEdge, version=version,
    )
    with platform.engine.connect() as conn:
        page = service.list_merge_policies(conn, tenant, query)
        sandbox = service.sandbox_of(conn, tenant)
    count = len(page.policies)
    return {
        "_page": {"totalCount": page.total, "pageSize": count, "count": count, "next": page.next_start or ""},
        "children": [service.policy_json(p, tenant, sandbox) for p in page.policies],
        "_links": {"next": {"href": service.next_href(query, page.next_start)}},
    }


@router.post("", summary="Create a merge policy", openapi_extra=_BODY)
@router.post("/", include_in_schema=False)
async def create_merge_policy(request: Request, _instance: str | None = _INSTANCE,
                              tenant: Tenant = Depends(current_tenant),
                              platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    body = await json_body(request, MergePolicyRequest)
    with platform.engine.begin() as conn:
        policy = service.create_merge_policy(conn, tenant, body,
                                             max_policies=platform.settings.max_merge_policies)
        return service.policy_json(policy, tenant, service.sandbox_of(conn, tenant))


@router.post("/bulk-get", status_code=207, summary="Get several merge policies by id")
async def bulk_get(request: Request, tenant: Tenant = Depends(current_tenant),
                   platform: Platform = Depends(get_platform)) -> JSONResponse:
    body = await json_body(request, BulkGetRequest)
    with platform.engine.connect() as conn:
        found = service.bulk_get_merge_policies(conn, tenant, [item.id for item in body.ids])
        sandbox = service.sandbox_of(conn, tenant)
    request_id = request_id_of(request)
    results: dict[str, Any] = {}
    for policy_id, policy in found.items():
        if policy is not None:
            results[policy_id] = service.policy_json(policy, tenant, sandbox)
        else:  # UPS bulk-gets report a missing id in place, as `{requestId, errors: {"404": [...]}}`
            message = f"Merge policy '{policy_id}' was not found in this sandbox."
            results[policy_id] = {"requestId": request_id, "errors": {"404": [{"code": 404, "message": message}]}}
    return JSONResponse({"results": results}, status_code=207)


@router.get("/{merge_policy_id}", summary="Get a merge policy, or one of its kept versions")
def get_merge_policy(merge_policy_id: str, version: int | None = Query(None),
                     tenant: Tenant = Depends(current_tenant),
                     platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        policy = service.get_merge_policy(conn, tenant, merge_policy_id, version)
        return service.policy_json(policy, tenant, service.sandbox_of(conn, tenant))


@router.put("/{merge_policy_id}", summary="Replace a merge policy (a new version)", openapi_extra=_BODY)
async def replace_merge_policy(merge_policy_id: str, request: Request, _instance: str | None = _INSTANCE,
                               tenant: Tenant = Depends(current_tenant),
                               platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    body = await json_body(request, MergePolicyRequest)
    with platform.engine.begin() as conn:
        policy = service.replace_merge_policy(conn, tenant, merge_policy_id, body)
        return service.policy_json(policy, tenant, service.sandbox_of(conn, tenant))


@router.patch("/{merge_policy_id}", summary="Update fields of a merge policy (a new version)")
async def patch_merge_policy(merge_policy_id: str, request: Request, _instance: str | None = _INSTANCE,
                             tenant: Tenant = Depends(current_tenant),
                             platform: Platform = Depends(get_platform)) -> dict[str, Any]:
    check_json_content_type(request)
    operations = parse_json_bytes(await request.body())
    with platform.engine.begin() as conn:
        policy = service.patch_merge_policy(conn, tenant, merge_policy_id, operations)
        return service.policy_json(policy, tenant, service.sandbox_of(conn, tenant))


@router.delete("/{merge_policy_id}", summary="Delete a merge policy (200, empty body)")
def delete_merge_policy(merge_policy_id: str, tenant: Tenant = Depends(current_tenant),
                        platform: Platform = Depends(get_platform)) -> Response:
    with platform.engine.begin() as conn:
        service.delete_merge_policy(conn, tenant, merge_policy_id)
    return Response(status_code=200)
