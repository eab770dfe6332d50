"""The gateway's own endpoints: IMS tokens, sandbox management and health.

IMS answers in its own shapes (`{access_token, token_type, expires_in}` and `{error,
error_description}`), which is what `aepp` and other clients parse.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from openprofile.core.errors import NotFound
from openprofile.core.platform import Platform, current_tenant, get_platform
from openprofile.core.settings import AuthMode
from openprofile.core.tenancy import Tenant, find_sandbox, issue_token, list_sandboxes, verify_client

router = APIRouter()


def _ims_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


@router.post("/ims/token/v3", tags=["ims"], summary="Exchange client credentials for an access token")
@router.post("/ims/token/v2", tags=["ims"], include_in_schema=False)
async def ims_token(request: Request, platform: Platform = Depends(get_platform)) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return _ims_error(415, "invalid_request", "send the parameters as application/x-www-form-urlencoded")
    form = await request.form()
    grant_type = str(form.get("grant_type") or "")
    client_id = str(form.get("client_id") or "")
    client_secret = str(form.get("client_secret") or "")
    if grant_type != "client_credentials":
        return _ims_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
    if not client_id:
        return _ims_error(400, "invalid_request", "missing client_id parameter")
    if not client_secret:
        return _ims_error(400, "invalid_request", "missing client_secret parameter")
    with platform.engine.connect() as conn:
        org_id = verify_client(conn, client_id, client_secret)
    if org_id is None:
        if platform.settings.auth != AuthMode.permissive:
            return _ims_error(401, "invalid_client", "invalid client_id or client_secret")
        org_id = ""
    ttl = platform.settings.token_ttl_seconds
    token = issue_token(platform.signing_key, org_id, client_id, ttl, int(time.time()))
    return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": ttl})


@router.get("/data/foundation/sandbox-management/sandboxes/{name}", tags=["sandboxes"])
def get_sandbox(
    name: str, tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform)
) -> dict[str, Any]:
    with platform.engine.connect() as conn:
        sandbox = find_sandbox(conn, tenant.org_id, name)
    if sandbox is None:
        raise NotFound(f"Sandbox '{name}' does not exist in org '{tenant.org_id}'.")
    return sandbox.as_json()


@router.get("/data/foundation/sandbox-management/sandboxes", tags=["sandboxes"])
@router.get("/data/foundation/sandbox-management/", tags=["sandboxes"], include_in_schema=False)
def get_sandboxes(tenant: Tenant = Depends(current_tenant), platform: Platform = Depends(get_platform)) -> Any:
    with platform.engine.connect() as conn:
        found = list_sandboxes(conn, tenant.org_id)
    return {"sandboxes": [s.as_json() for s in found], "_page": {"limit": len(found), "count": len(found)},
            "_links": {}}


@router.get("/health", tags=["health"])
def health(platform: Platform = Depends(get_platform)) -> dict[str, str]:
    with platform.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return {"status": "ok"}
