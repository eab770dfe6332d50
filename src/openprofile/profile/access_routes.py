"""Profile Access routes (`/data/core/ups/access/entities`): look up, bulk look up, list events, delete."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from openprofile.core.errors import FieldError, NotFound, PlatformError, ValidationFailed
from openprofile.core.http import json_body
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.tenancy import Tenant
from openprofile.identity.namespaces import xid
from openprofile.profile import access, store
from openprofile.profile.policies import MergePolicy, resolve_merge_policy

router = APIRouter(prefix="/data/core/ups/access", tags=["profile access"])
MAX_EVENTS = 1000


def _policy(platform: Platform, tenant: Tenant, policy_id: str | None) -> MergePolicy:
    with platform.engine.connect() as conn:
        try:
            return resolve_merge_policy(conn, tenant, policy_id or None, None)
        except NotFound as exc:
            exc.fields = [FieldError("mergePolicyId", f"unknown merge policy '{policy_id}'")]
            raise access.access_error(exc) from None


def _check_schema(name: str | None, field: str = "schema.name") -> str:
    if name not in (access.PROFILE_SCHEMA, access.EVENT_SCHEMA):
        raise access.access_error(ValidationFailed(
            f"{field} '{name}' is not supported; use {access.PROFILE_SCHEMA} or {access.EVENT_SCHEMA}",
            fields=[FieldError(field, "must be _xdm.context.profile or _xdm.context.experienceevent")]))
    return str(name)


def _int_param(name: str, raw: str | None, default: int | None, low: int, high: int) -> int | None:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise access.access_error(ValidationFailed(f"{name} '{raw}' is not a whole number",
                                                   fields=[FieldError(name, "a whole number")])) from None
    if not low <= value <= high:
        raise access.access_error(ValidationFailed(f"{name} {value} is out of range [{low}, {high}]",
                                                   fields=[FieldError(name, f"between {low} and {high}")]))
    return value


@router.get("/entities", summary="Look up a merged profile, or a profile's experience events")
def get_entities(
    request: Request,
    schema_name: str | None = Query(None, alias="schema.name"),
    entityId: str | None = Query(None),
    entityIdNS: str | None = Query(None),
    fields: str | None = Query(None),
    mergePolicyId: str | None = Query(None),
    related_schema: str | None = Query(None, alias="relatedSchema.name"),
    relatedEntityId: str | None = Query(None),
    relatedEntityIdNS: str | None = Query(None),
    startTime: str | None = Query(None),
    endTime: str | None = Query(None),
    limit: str | None = Query(None),
    orderby: str | None = Query(None),
    offsets: str | None = Query(None),
    tenant: Tenant = Depends(current_tenant),
    platform: Platform = Depends(get_platform),
) -> Any:
    schema = _check_schema(schema_name)
    policy = _policy(platform, tenant, mergePolicyId)
    if schema == access.PROFILE_SCHEMA:
        return access.lookup(platform, tenant, policy, entityId or "", entityIdNS or None, fields)
    if related_schema not in (None, access.PROFILE_SCHEMA):
        _check_schema(related_schema, "relatedSchema.name")
    order = (orderby or "+timestamp").strip()
    if order.lstrip("+-") != "timestamp":
        raise access.access_error(ValidationFailed(f"orderby '{orderby}' is not supported",
                                                   fields=[FieldError("orderby", "use timestamp, +timestamp or "
                                                                                 "-timestamp")]))
    page_size = _int_param("limit", limit, MAX_EVENTS, 1, MAX_EVENTS) or MAX_EVENTS
    offset = _int_param("offsets", offsets, 0, 0, 2**31) or 0
    start_ms = _int_param("startTime", startTime, None, 0, 2**62)
    end_ms = _int_param("endTime", endTime, None, 0, 2**62)
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise access.access_error(ValidationFailed("startTime is after endTime",
                                                   fields=[FieldError("startTime", "must not be after endTime")]))
    children, more = access.events(
        platform, tenant, policy, relatedEntityId or entityId or "", relatedEntityIdNS or entityIdNS or None,
        fields=fields, start_ms=start_ms, end_ms=end_ms, descending=order.startswith("-"), limit=page_size,
        offset=offset)
    next_href = ""
    if more:
        query = {k: v for k, v in request.query_params.items() if k != "offsets"}
        query["offsets"] = str(offset + page_size)
        next_href = f"/entities?{urlencode(query)}"
    return {
        "_page": {"orderby": order, "start": str(offset), "count": len(children),
                  "next": str(offset + page_size) if more else ""},
        "children": children,
        "_links": {"next": {"href": next_href}},
    }


class IdentityNamespace(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(min_length=1)


class RequestedIdentity(BaseModel):
    model_config = ConfigDict(extra="allow")
    entityId: str = Field(min_length=1)
    entityIdNS: IdentityNamespace | None = None


class SchemaName(BaseModel):
    name: str


class BulkLookupRequest(BaseModel):
    """`POST /access/entities`: several profiles at once (the 2024 spec and docs spell `orderby` too)."""

    model_config = ConfigDict(extra="allow")
    schema_: SchemaName = Field(alias="schema")
    identities: list[RequestedIdentity] = Field(min_length=1, max_length=100)
    fields: list[str] | None = None
    mergePolicyId: str | None = None


@router.post("/entities", summary="Look up several merged profiles")
async def post_entities(request: Request, tenant: Tenant = Depends(current_tenant),
                        platform: Platform = Depends(get_platform)) -> Any:
    body = await json_body(request, BulkLookupRequest)
    if body.schema_.name != access.PROFILE_SCHEMA:
        raise access.access_error(ValidationFailed(
            f"schema.name '{body.schema_.name}': only {access.PROFILE_SCHEMA} can be looked up in bulk",
            fields=[FieldError("/schema/name", "must be _xdm.context.profile")]))
    policy = _policy(platform, tenant, body.mergePolicyId)
    snapshot = store.snapshot(platform, tenant)
    paths = access.parse_and_check_fields(body.fields, access.profile_fields(snapshot), "/fields")
    results: dict[str, Any] = {}
    for requested in body.identities:
        namespace = requested.entityIdNS.code if requested.entityIdNS else None
        try:
            profile = access.find_profile(platform, snapshot, policy, requested.entityId, namespace)
            entity = access.merged_entity(platform, tenant, snapshot, policy, profile, paths)
        except PlatformError as error:
            if error.status == 400:
                raise
            key = xid(namespace, requested.entityId) if namespace else requested.entityId
            results[key] = {"entityId": key, "sources": [""], "entity": {}, "lastModifiedAt": "1970-01-01T00:00:00Z",
                            "error": {"message": error.detail, "statusCode": str(error.status)}}
            continue
        if entity is None:
            results[profile.requested_xid] = {"entityId": profile.requested_xid, "sources": [""], "entity": {},
                                              "lastModifiedAt": "1970-01-01T00:00:00Z"}
        else:
            results[profile.requested_xid] = entity
    return results


@router.delete("/entities", status_code=202, summary="Delete a profile from the profile store")
def delete_entities(
    schema_name: str | None = Query(None, alias="schema.name"),
    entityId: str | None = Query(None),
    entityIdNS: str | None = Query(None),
    mergePolicyId: str | None = Query(None),
    tenant: Tenant = Depends(current_tenant),
    platform: Platform = Depends(get_platform),
) -> JSONResponse:
    if _check_schema(schema_name) != access.PROFILE_SCHEMA:
        raise access.access_error(ValidationFailed("only profiles can be deleted here",
                                                   fields=[FieldError("schema.name", "must be _xdm.context.profile")]))
    policy = _policy(platform, tenant, mergePolicyId)
    snapshot = store.snapshot(platform, tenant)
    profile = access.find_profile(platform, snapshot, policy, entityId or "", entityIdNS or None)
    with platform.engine.begin() as conn:
        store.record_deletion(conn, tenant, [(ns, ident) for _, ns, ident in profile.members])
    store.apply_now(platform, tenant)
    return JSONResponse({"status": "deleted", "entityId": profile.requested_xid,
                         "identities": len(profile.members)}, status_code=202)
