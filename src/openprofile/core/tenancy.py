"""Orgs, sandboxes, credentials and tokens: who is calling, and which (org, sandbox) they act in.

Every platform route depends on `current_tenant`, which enforces the IMS gateway's rules
(`Authorization`, `x-api-key`, `x-gw-ims-org-id`, `x-sandbox-name`) and answers with the gateway's
own error codes. Nothing downstream reads or writes outside the `Tenant` it returns.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from openprofile.core import ids
from openprofile.core.clock import now_ms
from openprofile.core.errors import FieldError, GatewayError, NotFound, ValidationFailed
from openprofile.core.tables import credentials, orgs, sandboxes, server_config

ORG_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._-]{0,127}$")
SANDBOX_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TOKEN_ISSUER = "openprofile-ims"


@dataclass(frozen=True)
class Tenant:
    """The (org, sandbox) scope of one request."""

    org_id: str
    sandbox_id: str
    sandbox_name: str
    client_id: str | None = None


@dataclass(frozen=True)
class Sandbox:
    id: str
    org_id: str
    name: str
    title: str
    type: str
    is_default: bool
    created_ms: int

    def as_json(self) -> dict[str, Any]:
        """The sandbox-management API's shape."""
        return {
            "id": self.id,
            "name": self.name,
            "title": self.title,
            "state": "active",
            "type": self.type,
            "region": "VA7",
            "isDefault": self.is_default,
            "eTag": 1,
            "createdDate": self.created_ms,
            "lastModifiedDate": self.created_ms,
        }


def tenant_scope(table: sa.Table, tenant: Tenant) -> sa.ColumnElement[bool]:
    """The WHERE clause every query on a tenant-owned table carries: this org and this sandbox only."""
    return sa.and_(table.c.org_id == tenant.org_id, table.c.sandbox_id == tenant.sandbox_id)


def check_org_id(org_id: str) -> None:
    if not ORG_ID_PATTERN.match(org_id):
        raise ValidationFailed(
            f"org id '{org_id}' is not valid",
            fields=[FieldError("x-gw-ims-org-id", "letters, digits and @._- only, at most 128")],
        )


def check_sandbox_name(name: str) -> None:
    if not SANDBOX_NAME_PATTERN.match(name):
        raise ValidationFailed(
            f"sandbox name '{name}' is not valid",
            fields=[FieldError("name", "lowercase letters, digits and '-', at most 63 characters")],
        )


def _sandbox_from_row(row: Any) -> Sandbox:
    return Sandbox(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        title=row.title,
        type=row.type,
        is_default=bool(row.is_default),
        created_ms=row.created_ms,
    )


def ensure_org(conn: Connection, org_id: str) -> None:
    """Create the org and its `prod` sandbox if they do not exist yet."""
    check_org_id(org_id)
    if conn.execute(sa.select(orgs.c.id).where(orgs.c.id == org_id)).first() is None:
        conn.execute(orgs.insert().values(id=org_id, created_ms=now_ms()))
    if find_sandbox(conn, org_id, "prod") is None:
        create_sandbox(conn, org_id, "prod", title="Production", type_="production", is_default=True)


def find_sandbox(conn: Connection, org_id: str, name: str) -> Sandbox | None:
    row = conn.execute(
        sa.select(sandboxes).where(sandboxes.c.org_id == org_id, sandboxes.c.name == name)
    ).first()
    return _sandbox_from_row(row) if row is not None else None


def list_sandboxes(conn: Connection, org_id: str | None = None) -> list[Sandbox]:
    query = sa.select(sandboxes).order_by(sandboxes.c.org_id, sandboxes.c.created_ms)
    if org_id is not None:
        query = query.where(sandboxes.c.org_id == org_id)
    return [_sandbox_from_row(r) for r in conn.execute(query)]


def create_sandbox(
    conn: Connection, org_id: str, name: str, *, title: str | None = None, type_: str = "development",
    is_default: bool = False,
) -> Sandbox:
    check_sandbox_name(name)
    if conn.execute(sa.select(orgs.c.id).where(orgs.c.id == org_id)).first() is None:
        conn.execute(orgs.insert().values(id=org_id, created_ms=now_ms()))
    existing = find_sandbox(conn, org_id, name)
    if existing is not None:
        return existing
    sandbox = Sandbox(
        id=ids.new_uuid(), org_id=org_id, name=name, title=title or name, type=type_,
        is_default=is_default, created_ms=now_ms(),
    )
    conn.execute(
        sandboxes.insert().values(
            id=sandbox.id, org_id=org_id, name=name, title=sandbox.title, type=type_,
            is_default=int(is_default), created_ms=sandbox.created_ms,
        )
    )
    return sandbox


# --- credentials and tokens ------------------------------------------------------------------

def _hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, 100_000)
    return f"pbkdf2_sha256${salt.hex()}${digest.hex()}"


def _secret_matches(secret: str, stored: str) -> bool:
    _, salt_hex, _ = stored.split("$", 2)
    return hmac.compare_digest(_hash_secret(secret, bytes.fromhex(salt_hex)), stored)


def add_credentials(conn: Connection, org_id: str, client_id: str, client_secret: str) -> None:
    """Register (or rotate) an API client of an org; the org and its `prod` sandbox appear with it."""
    ensure_org(conn, org_id)
    conn.execute(credentials.delete().where(credentials.c.client_id == client_id))
    conn.execute(
        credentials.insert().values(
            client_id=client_id, org_id=org_id, secret_hash=_hash_secret(client_secret), created_ms=now_ms()
        )
    )


def list_credentials(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(credentials).order_by(credentials.c.created_ms))
    return [{"client_id": r.client_id, "org_id": r.org_id, "created_ms": r.created_ms} for r in rows]


def verify_client(conn: Connection, client_id: str, client_secret: str) -> str | None:
    """The client's org when the secret matches, else None."""
    row = conn.execute(sa.select(credentials).where(credentials.c.client_id == client_id)).first()
    if row is None or not _secret_matches(client_secret, row.secret_hash):
        return None
    return str(row.org_id)


def signing_key(engine: Engine) -> str:
    """The token-signing key, made once and shared through the metadata store by every process."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(server_config.c.value).where(server_config.c.key == "signing_key")).first()
        if row is not None:
            return str(row.value)
        key = secrets.token_hex(32)
        conn.execute(server_config.insert().values(key="signing_key", value=key))
    with engine.connect() as conn:
        return str(conn.execute(
            sa.select(server_config.c.value).where(server_config.c.key == "signing_key")
        ).scalar_one())


def issue_token(key: str, org_id: str, client_id: str, ttl_seconds: int, now_s: int) -> str:
    claims = {"iss": TOKEN_ISSUER, "sub": client_id, "org": org_id, "iat": now_s, "exp": now_s + ttl_seconds}
    return jwt.encode(claims, key, algorithm="HS256")


def decode_token(key: str, token: str) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=["HS256"], issuer=TOKEN_ISSUER)
    except jwt.PyJWTError:
        return None
    return claims


def resolve_tenant(
    conn: Connection, headers: dict[str, str], *, key: str, permissive: bool
) -> Tenant:
    """Apply the gateway's checks, in its order, and find the sandbox the request acts in."""
    authorization = headers.get("authorization", "").strip()
    if not authorization:
        raise GatewayError(403, "403010", "Oauth token is missing.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise GatewayError(401, "401013", "Oauth token is not valid")
    api_key = headers.get("x-api-key", "").strip()
    org_id = headers.get("x-gw-ims-org-id", "").strip()
    sandbox_name = headers.get("x-sandbox-name", "").strip()
    if permissive:
        if not org_id:
            raise GatewayError(400, "400003", "Missing header x-gw-ims-org-id")
        ensure_org(conn, org_id)
    else:
        claims = decode_token(key, token.strip())
        if claims is None:
            raise GatewayError(401, "401013", "Oauth token is not valid")
        if not api_key:
            raise GatewayError(403, "403000", "Api Key is required")
        if api_key != claims.get("sub"):
            raise GatewayError(403, "403003", "Api Key is invalid")
        if not org_id:
            raise GatewayError(400, "400003", "Missing header x-gw-ims-org-id")
        if org_id != claims.get("org"):
            raise GatewayError(403, "403025", "Profile is not valid")
    if not sandbox_name:
        raise GatewayError(400, "400003", "Missing header x-sandbox-name")
    sandbox = find_sandbox(conn, org_id, sandbox_name)
    if sandbox is None and permissive and SANDBOX_NAME_PATTERN.match(sandbox_name):
        sandbox = create_sandbox(conn, org_id, sandbox_name)
    if sandbox is None:
        raise NotFound(f"Sandbox '{sandbox_name}' does not exist in org '{org_id}'.")
    return Tenant(org_id=org_id, sandbox_id=sandbox.id, sandbox_name=sandbox.name, client_id=api_key or None)
