"""Segment definitions: PQL audiences, parsed and checked when they are created or changed.

A definition's expression must parse, name only fields of the sandbox's profile-enabled datasets (the
profile union, and the ExperienceEvent union for `xEvent`), type-check, and refer with `inSegment` only
to existing definitions without a cycle; otherwise it is refused with a 400 naming the problem and, for
PQL errors, its line and column. Names are unique per sandbox (422, as AEP answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from openprofile.catalog import service as catalog
from openprofile.core import ids
from openprofile.core.clock import now_ms
from openprofile.core.errors import FieldError, NotFound, Unprocessable, ValidationFailed
from openprofile.core.http import validate
from openprofile.core.tables import segment_definitions
from openprofile.core.tenancy import Tenant, find_sandbox, tenant_scope
from openprofile.engine.merge import FragmentSource, profile_structure
from openprofile.engine.pql import Expression, PQLError, PQLSyntaxError, check, parse
from openprofile.engine.structure import Structure
from openprofile.profile.policies import resolve_merge_policy
from openprofile.schemaregistry.service import EVENT_CLASS, PROFILE_CLASS

PROFILE_SCHEMA = "_xdm.context.profile"


class ExpressionBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "PQL"
    format: str = "pql/text"
    value: str = Field(min_length=1)


class SchemaName(BaseModel):
    name: str


class DefinitionRequest(BaseModel):
    """`POST /segment/definitions` (and the full object aepp's `updateSegment` PATCHes)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(min_length=1, max_length=512)
    description: str | None = None
    expression: ExpressionBody
    schema_: SchemaName = Field(alias="schema")
    ttlInDays: int | None = Field(default=None, ge=1, le=3650)
    evaluationInfo: dict[str, Any] | None = None
    mergePolicyId: str | None = None
    profileInstanceId: str | None = None
    payloadSchema: str | None = None


@dataclass(frozen=True)
class Definition:
    id: str
    tenant: Tenant
    name: str
    body: dict[str, Any]
    created_ms: int
    updated_ms: int

    @property
    def pql(self) -> str:
        return str(self.body["expression"]["value"])

    @property
    def merge_policy_id(self) -> str | None:
        value = self.body.get("mergePolicyId")
        return str(value) if value else None


def _from_row(tenant: Tenant, row: Any) -> Definition:
    return Definition(row.id, tenant, row.name, dict(row.body), row.created_ms, row.updated_ms)


def structures(conn: Connection, tenant: Tenant) -> tuple[Structure, Structure]:
    """What PQL may name: the profile union (with `identities`) and the ExperienceEvent union."""
    profile = profile_structure([FragmentSource("union", "", catalog.union_structure(conn, tenant, PROFILE_CLASS))])
    return profile, catalog.union_structure(conn, tenant, EVENT_CLASS)


def compile_checked(conn: Connection, tenant: Tenant, text: str, *, pointer: str = "/expression/value",
                    own_id: str | None = None) -> Expression:
    """Parse and check PQL for this sandbox; `own_id` is the definition being changed (for cycle checks)."""
    try:
        expression = check(parse(text), *structures(conn, tenant))
    except PQLError as error:
        where = f" at line {error.line}, column {error.column}" if error.line is not None else ""
        expected = (f"; expected {', '.join(error.expected[:8])}"
                    if isinstance(error, PQLSyntaxError) and error.expected else "")
        raise ValidationFailed(f"PQL {pointer}{where}: {error.message}{expected}",
                               fields=[FieldError(pointer, f"{error.message}{where}")]) from None
    _check_references(conn, tenant, expression, own_id, pointer)
    return expression


def _check_references(conn: Connection, tenant: Tenant, expression: Expression, own_id: str | None,
                      pointer: str) -> None:
    """Every `inSegment` names an existing definition, and following them never comes back to `own_id`."""
    seen: set[str] = set()
    pending = sorted(expression.segment_refs)
    while pending:
        segment_id = pending.pop()
        if segment_id == own_id:
            raise ValidationFailed(f"inSegment(\"{segment_id}\") makes a cycle back to this segment",
                                   fields=[FieldError(pointer, f"inSegment cycle through '{segment_id}'")])
        if segment_id in seen:
            continue
        seen.add(segment_id)
        try:
            referenced = get(conn, tenant, segment_id)
        except NotFound:
            raise ValidationFailed(f"inSegment(\"{segment_id}\") names a segment that does not exist",
                                   fields=[FieldError(pointer, f"unknown segment '{segment_id}'")]) from None
        pending.extend(parse(referenced.pql).segment_refs)


def _check(conn: Connection, tenant: Tenant, request: DefinitionRequest, own_id: str | None) -> None:
    problems = []
    if request.schema_.name != PROFILE_SCHEMA:
        problems.append(FieldError("/schema/name", f"must be {PROFILE_SCHEMA}"))
    if request.expression.type != "PQL":
        problems.append(FieldError("/expression/type", "only PQL is supported"))
    if request.expression.format != "pql/text":
        problems.append(FieldError("/expression/format", "only pql/text is supported"))
    if problems:
        raise ValidationFailed("Invalid segment definition: " + "; ".join(f"{p.path} {p.message}" for p in problems),
                               fields=problems)
    if request.mergePolicyId:
        try:
            resolve_merge_policy(conn, tenant, request.mergePolicyId, None)
        except NotFound as exc:
            exc.fields = [FieldError("/mergePolicyId", f"unknown merge policy '{request.mergePolicyId}'")]
            raise
    compile_checked(conn, tenant, request.expression.value, own_id=own_id)


def _name_taken(conn: Connection, tenant: Tenant, name: str, own_id: str | None) -> bool:
    query = sa.select(segment_definitions.c.id).where(tenant_scope(segment_definitions, tenant),
                                                      segment_definitions.c.name == name)
    if own_id:
        query = query.where(segment_definitions.c.id != own_id)
    return conn.execute(query).first() is not None


def create(conn: Connection, tenant: Tenant, request: DefinitionRequest) -> Definition:
    if _name_taken(conn, tenant, request.name, None):
        raise Unprocessable(f"The segment definition '{request.name}' already exists. In order to update a segment "
                            "definition, use the PATCH operation instead.", fields=[FieldError("/name", "taken")])
    _check(conn, tenant, request, None)
    now = now_ms()
    definition_id = ids.new_uuid()
    body = request.model_dump(by_alias=True, exclude_none=True, mode="json")
    body.setdefault("ttlInDays", 30)
    body.setdefault("evaluationInfo", {"batch": {"enabled": True}, "continuous": {"enabled": False},
                                       "synchronous": {"enabled": False}})
    conn.execute(segment_definitions.insert().values(id=definition_id, org_id=tenant.org_id,
                                                     sandbox_id=tenant.sandbox_id, name=request.name, body=body,
                                                     created_ms=now, updated_ms=now))
    return get(conn, tenant, definition_id)


def get(conn: Connection, tenant: Tenant, definition_id: str) -> Definition:
    row = conn.execute(sa.select(segment_definitions).where(segment_definitions.c.id == definition_id,
                                                            tenant_scope(segment_definitions, tenant))).first()
    if row is None:
        raise NotFound(f"Segment definition '{definition_id}' was not found in this sandbox.")
    return _from_row(tenant, row)


def find_all(conn: Connection, tenant: Tenant) -> list[Definition]:
    rows = conn.execute(sa.select(segment_definitions).where(tenant_scope(segment_definitions, tenant))
                        .order_by(segment_definitions.c.created_ms, segment_definitions.c.id))
    return [_from_row(tenant, r) for r in rows]


def update(conn: Connection, tenant: Tenant, definition_id: str, patch: dict[str, Any]) -> Definition:
    """PATCH with the fields to change (aepp sends the whole definition); read-only fields are ignored."""
    current = get(conn, tenant, definition_id)
    merged = {**current.body, **{k: v for k, v in patch.items() if k not in _READ_ONLY}}
    request = validate(DefinitionRequest, merged)  # the same validation as a create
    if _name_taken(conn, tenant, request.name, definition_id):
        raise Unprocessable(f"Another segment definition is named '{request.name}'.",
                            fields=[FieldError("/name", "taken")])
    _check(conn, tenant, request, definition_id)
    body = request.model_dump(by_alias=True, exclude_none=True, mode="json")
    conn.execute(segment_definitions.update().where(segment_definitions.c.id == definition_id)
                 .values(name=request.name, body=body, updated_ms=now_ms()))
    return get(conn, tenant, definition_id)


def delete(conn: Connection, tenant: Tenant, definition_id: str) -> None:
    get(conn, tenant, definition_id)
    for other in find_all(conn, tenant):
        if other.id != definition_id and definition_id in parse(other.pql).segment_refs:
            raise ValidationFailed(f"Segment '{other.name}' ({other.id}) uses this segment with inSegment; "
                                   "change it first", fields=[FieldError("segmentId", f"used by {other.id}")])
    conn.execute(segment_definitions.delete().where(segment_definitions.c.id == definition_id,
                                                    tenant_scope(segment_definitions, tenant)))


_READ_ONLY = {"id", "imsOrgId", "sandbox", "creationTime", "updateTime", "updateEpoch", "dataGovernancePolicy"}


def render(conn: Connection, definition: Definition) -> dict[str, Any]:
    tenant = definition.tenant
    sandbox = find_sandbox(conn, tenant.org_id, tenant.sandbox_name)
    return {
        "id": definition.id,
        **definition.body,
        "profileInstanceId": definition.body.get("profileInstanceId", "ups"),
        "imsOrgId": tenant.org_id,
        "sandbox": {"sandboxId": tenant.sandbox_id, "sandboxName": tenant.sandbox_name,
                    "type": sandbox.type if sandbox else "development",
                    "default": bool(sandbox.is_default) if sandbox else False},
        "dataGovernancePolicy": {"excludeOptOut": True},
        "creationTime": definition.created_ms,
        "updateEpoch": definition.updated_ms // 1000,
        "updateTime": definition.updated_ms,
    }
