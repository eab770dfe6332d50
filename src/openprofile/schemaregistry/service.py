"""A minimal Schema Registry: the two standard classes, tenant schemas that extend them, and unions.

What the profile service needs from XDM is which class a dataset's records belong to (a profile
record or an experience event) and which schemas take part in a class's union; field-level
definitions come from the data itself (each dataset's observed structure).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openprofile.core.clock import now_ms
from openprofile.core.errors import FieldError, NotFound, ValidationFailed
from openprofile.core.jsonpatch import apply_patch
from openprofile.core.tables import schemas
from openprofile.core.tenancy import Tenant

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_UNION = PROFILE_CLASS + "__union"
EVENT_UNION = EVENT_CLASS + "__union"
RECORD_BEHAVIOR = "https://ns.adobe.com/xdm/data/record"
TIME_SERIES_BEHAVIOR = "https://ns.adobe.com/xdm/data/time-series"


@dataclass(frozen=True)
class XdmClass:
    id: str
    alt_id: str
    title: str
    behavior: str
    kind: str  # "profile" | "experienceevent": what the ingestion and profile services key on


CLASSES = {
    PROFILE_CLASS: XdmClass(PROFILE_CLASS, "_xdm.context.profile", "XDM Individual Profile", RECORD_BEHAVIOR,
                            "profile"),
    EVENT_CLASS: XdmClass(EVENT_CLASS, "_xdm.context.experienceevent", "XDM ExperienceEvent",
                          TIME_SERIES_BEHAVIOR, "experienceevent"),
}
UNIONS = {PROFILE_UNION: CLASSES[PROFILE_CLASS], EVENT_UNION: CLASSES[EVENT_CLASS]}
_NAME_TO_CLASS = {c.alt_id: c for c in CLASSES.values()}


def tenant_namespace(tenant: Tenant) -> str:
    """The `{TENANT_ID}` of schema ids, derived from the org id."""
    return re.sub(r"[^a-z0-9]", "", tenant.org_id.split("@")[0].lower()) or "tenant"


def class_by_name(schema_name: str) -> XdmClass | None:
    """`_xdm.context.profile` (the Profile APIs' `schema.name`) → the class."""
    return _NAME_TO_CLASS.get(schema_name)


def class_of(conn: Connection, tenant: Tenant, schema_id: str) -> XdmClass | None:
    """The class a schema reference resolves to: a class, a union, or a tenant schema; else None."""
    if schema_id in CLASSES:
        return CLASSES[schema_id]
    if schema_id in UNIONS:
        return UNIONS[schema_id]
    row = _find(conn, tenant, schema_id)
    return CLASSES.get(row.class_id) if row is not None else None


def is_union(schema_id: str) -> bool:
    return schema_id in UNIONS


def _find(conn: Connection, tenant: Tenant, schema_id: str) -> Any:
    return conn.execute(
        sa.select(schemas).where(
            schemas.c.org_id == tenant.org_id,
            schemas.c.sandbox_id == tenant.sandbox_id,
            sa.or_(schemas.c.schema_id == schema_id, schemas.c.alt_id == schema_id),
        )
    ).first()


def _render(row: Any) -> dict[str, Any]:
    body = dict(row.body)
    body.update({
        "$id": row.schema_id,
        "meta:altId": row.alt_id,
        "meta:resourceType": "schemas",
        "meta:containerId": "tenant",
        "meta:class": row.class_id,
        "version": row.version,
        "imsOrg": row.org_id,
        "meta:registryMetadata": {"repo:createdDate": row.created_ms, "repo:lastModifiedDate": row.updated_ms,
                                  "eTag": row.version},
    })
    return body


def _class_refs(body: dict[str, Any]) -> tuple[list[str], list[FieldError]]:
    all_of = body.get("allOf")
    if not isinstance(all_of, list) or not all_of:
        return [], [FieldError("/allOf", "a list of {\"$ref\": ...} naming exactly one class is required")]
    refs = [item["$ref"] for item in all_of if isinstance(item, dict) and isinstance(item.get("$ref"), str)]
    if len(refs) != len(all_of):
        return [], [FieldError("/allOf", "every item must be {\"$ref\": \"<id>\"}")]
    classes = [r for r in refs if r in CLASSES]
    if len(classes) != 1:
        known = ", ".join(CLASSES)
        return [], [FieldError("/allOf", f"exactly one class must be referenced (one of {known}); got {len(classes)}")]
    return refs, []


def create_schema(conn: Connection, tenant: Tenant, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("A schema is a JSON object.", fields=[FieldError("/", "must be an object")])
    problems: list[FieldError] = []
    title = body.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append(FieldError("/title", "a non-empty string is required"))
    refs, ref_problems = _class_refs(body)
    problems += ref_problems
    if problems:
        raise ValidationFailed("Invalid schema: " + "; ".join(f"{p.path} {p.message}" for p in problems),
                               fields=problems)
    class_id = next(r for r in refs if r in CLASSES)
    namespace = tenant_namespace(tenant)
    digest = secrets.token_hex(16)
    schema_id = f"https://ns.adobe.com/{namespace}/schemas/{digest}"
    alt_id = f"_{namespace}.schemas.{digest}"
    stored = {k: v for k, v in body.items() if not k.startswith("$") and k not in ("meta:altId", "version")}
    stored.setdefault("type", "object")
    stored.setdefault("description", "")
    stored["meta:extends"] = [class_id, CLASSES[class_id].behavior, *[r for r in refs if r != class_id]]
    now = now_ms()
    conn.execute(schemas.insert().values(
        org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, schema_id=schema_id, alt_id=alt_id, class_id=class_id,
        title=str(title), body=stored, version="1.0", created_ms=now, updated_ms=now,
    ))
    return _render(_find(conn, tenant, schema_id))


def get_schema(conn: Connection, tenant: Tenant, schema_id: str) -> dict[str, Any]:
    row = _find(conn, tenant, schema_id)
    if row is None:
        raise NotFound(f"Schema '{schema_id}' was not found in this sandbox.")
    return _render(row)


def list_schemas(conn: Connection, tenant: Tenant) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(schemas)
        .where(schemas.c.org_id == tenant.org_id, schemas.c.sandbox_id == tenant.sandbox_id)
        .order_by(schemas.c.created_ms, schemas.c.pk)
    )
    return [_render(r) for r in rows]


def _bump(version: str) -> str:
    major, _, minor = version.partition(".")
    return f"{major}.{int(minor or 0) + 1}"


def patch_schema(conn: Connection, tenant: Tenant, schema_id: str, operations: Any) -> dict[str, Any]:
    """JSON-Patch a schema; `meta:immutableTags` may gain `union` but never lose it, the class never changes."""
    row = _find(conn, tenant, schema_id)
    if row is None:
        raise NotFound(f"Schema '{schema_id}' was not found in this sandbox.")
    if not isinstance(operations, list):
        raise ValidationFailed("A schema PATCH body is a JSON-Patch array.",
                               fields=[FieldError("/", "must be an array")])
    patched = apply_patch(dict(row.body), operations)
    was_union = "union" in (row.body.get("meta:immutableTags") or [])
    if was_union and "union" not in (patched.get("meta:immutableTags") or []):
        raise ValidationFailed("The 'union' tag is immutable once set.",
                               fields=[FieldError("/meta:immutableTags", "cannot remove 'union'")])
    refs, problems = _class_refs(patched)
    if problems or next(r for r in refs if r in CLASSES) != row.class_id:
        raise ValidationFailed("A schema's class cannot change.",
                               fields=problems or [FieldError("/allOf", "class changed")])
    conn.execute(schemas.update().where(schemas.c.pk == row.pk).values(
        body=patched, version=_bump(row.version), updated_ms=now_ms(), title=str(patched.get("title", row.title)),
    ))
    return _render(_find(conn, tenant, schema_id))


def delete_schema(conn: Connection, tenant: Tenant, schema_id: str) -> None:
    row = _find(conn, tenant, schema_id)
    if row is None:
        raise NotFound(f"Schema '{schema_id}' was not found in this sandbox.")
    conn.execute(schemas.delete().where(schemas.c.pk == row.pk))


def union_schemas(conn: Connection, tenant: Tenant, class_id: str) -> list[str]:
    """Tenant schemas of a class that are enabled for Profile (`meta:immutableTags` has `union`)."""
    rows = conn.execute(sa.select(schemas).where(
        schemas.c.org_id == tenant.org_id, schemas.c.sandbox_id == tenant.sandbox_id, schemas.c.class_id == class_id,
    ))
    return [r.schema_id for r in rows if "union" in (r.body.get("meta:immutableTags") or [])]


def find_union(union_id: str) -> XdmClass:
    xdm_class = UNIONS.get(union_id) or next(
        (c for u, c in UNIONS.items() if union_id == c.alt_id + "__union"), None
    )
    if xdm_class is None:
        raise NotFound(f"Union '{union_id}' was not found; unions exist for {', '.join(UNIONS)}.")
    return xdm_class
