"""Merge policies: how a sandbox stitches identities and resolves conflicting attributes, every version kept.

Other services use `resolve_merge_policy` (an export job's or a lookup's `mergePolicy {id, version}`, or
the default when none is given) and read the frozen `MergePolicy` it returns; the HTTP routes use the
rest. Where Adobe's sources disagree or are silent, these are the choices (reference/aep-api.md §5, §9.11):

- **The built-in `timestampOrdered-none-mp`** (none, timestampOrdered, `_xdm.context.profile`, version 1,
  "Default Timestamp-ordered") is *virtual*: never stored, it is part of every sandbox from the moment
  the sandbox exists, so no request has to write to make it appear and a read-only connection can
  resolve it. Its `updateEpoch` is the sandbox's creation time. It is the `_xdm.context.profile` default
  whenever no stored policy of that class is default: making a stored policy default "un-defaults" the
  built-in, and un-defaulting (or deleting) that policy makes the built-in the default again. It is
  read-only (PUT, PATCH, DELETE answer 403) and does not count toward `max_merge_policies`.
- **Guardrails per sandbox**, as the settings and the UI guide say (the API docs say per org): at most
  `settings.max_merge_policies` stored policies (400 beyond), at most one `isActiveOnEdge: true` (400
  naming the one that already is), and the edge policy cannot be deleted (403; turn it off first).
- **One default per schema class**: making a policy default un-defaults the previous one in the same
  transaction. That is an update of the previous policy too, so it gets a new version like any update.
- **Versions**: `version` starts at 1 and every successful PUT or PATCH adds one; `merge_policy_versions`
  keeps every version (the current one included), so `(id, version)` stays resolvable for a job that
  pinned it. Deleting a policy forgets all its versions.
- **`attributeMerge.order`** is required (non-empty, no repeats) for `dataSetPrecedence`, and each id
  must be a profile-enabled dataset of this sandbox (400 naming `/attributeMerge/order/N`). With
  `timestampOrdered` it is ignored and dropped, since aepp's own docstring example sends it there.
- **`name`** is optional in Adobe's schema; a policy created without one is named by its id.
- **PATCH** takes the spec's array of `{op, path, value}` or the docs' single object; `op` is `add` or
  `replace`; paths are the docs' dotted ones (`/identityGraph.type`), their JSON-pointer spelling
  (`/identityGraph/type`), `/attributeMerge.order` and the spec's misspelt `/idActiveOnEdge`. Values may be
  strings as the spec types them (`"false"`, and `order` as a JSON array or comma-separated string).
  `/id`, `/version`, `/imsOrgId`, `/sandbox`, `/updateEpoch` are read-only (400 naming the path).
- **Listing** sorts in Python: the guardrail keeps a sandbox to a handful of policies, and names then
  compare by code point on every backend. `start` is an opaque keyset token (the last row's sort key and
  id, and the ordering it belongs to), so pages never repeat or skip a policy even when a client, as
  aepp does, changes `limit` between pages.
- Writes lock the sandbox's row (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already
  serialises writers) so the count, the default and the edge checks cannot race; partial unique
  indexes back the last two.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openprofile.catalog.service import get_dataset
from openprofile.core import ids
from openprofile.core.clock import now_ms
from openprofile.core.errors import BadRequest, FieldError, NotFound, PlatformError, ValidationFailed
from openprofile.core.http import validate
from openprofile.core.tables import merge_policies, merge_policy_versions, sandboxes
from openprofile.core.tenancy import Sandbox, Tenant, find_sandbox, tenant_scope
from openprofile.profile.policy_models import MergePolicyRequest

PROFILE_SCHEMA = "_xdm.context.profile"
EVENT_SCHEMA = "_xdm.context.experienceevent"
SCHEMA_NAMES = (PROFILE_SCHEMA, EVENT_SCHEMA)
IDENTITY_GRAPHS = ("none", "pdg")
ATTRIBUTE_MERGES = ("timestampOrdered", "dataSetPrecedence")
BUILT_IN_ID = "timestampOrdered-none-mp"
BUILT_IN_NAME = "Default Timestamp-ordered"
ORDERINGS = ("name", "-name", "updateEpoch", "-updateEpoch")
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000

IdentityGraph = Literal["none", "pdg"]
AttributeMerge = Literal["timestampOrdered", "dataSetPrecedence"]


class Forbidden(PlatformError):
    """403: the policy exists but refuses this change (the read-only built-in; deleting the edge policy)."""

    status = 403
    title = "Forbidden"
    code = "1403"


@dataclass(frozen=True)
class MergePolicy:
    """One version of a merge policy: what a merge needs, plus what the API renders."""

    id: str
    version: int
    name: str
    schema_name: str
    identity_graph: IdentityGraph
    attribute_merge: AttributeMerge
    order: list[str] = field(default_factory=list)
    is_default: bool = False
    is_active_on_edge: bool = False
    updated_ms: int = 0
    built_in: bool = False

    @property
    def update_epoch(self) -> int:
        """AEP's `updateEpoch`: seconds."""
        return self.updated_ms // 1000


@dataclass(frozen=True)
class ListQuery:
    """A checked `GET /config/mergePolicies` query; `order_by` is one of `ORDERINGS`."""

    limit: int = DEFAULT_LIMIT
    start: str | None = None
    order_by: str = "name"
    schema_name: str | None = None
    default: bool | None = None
    identity_graph: str | None = None
    attribute_merge: str | None = None
    is_active_on_edge: bool | None = None
    version: int | None = None


@dataclass(frozen=True)
class PolicyPage:
    policies: list[MergePolicy]
    total: int
    next_start: str | None


# --- reading ---------------------------------------------------------------------------------------------



def _from_row(row: Any, policy_id: str) -> MergePolicy:
    return MergePolicy(
        id=policy_id, version=int(row.version), name=row.name, schema_name=row.schema_name,
        identity_graph=cast(IdentityGraph, row.identity_graph),
        attribute_merge=cast(AttributeMerge, row.attribute_merge), order=list(row.dataset_order or []),
        is_default=bool(row.is_default), is_active_on_edge=bool(row.is_active_on_edge),
        updated_ms=int(row.updated_ms),
    )


def sandbox_of(conn: Connection, tenant: Tenant) -> Sandbox:
    """The tenant's sandbox record, for the `sandbox` object of a rendered policy."""
    sandbox = find_sandbox(conn, tenant.org_id, tenant.sandbox_name)
    if sandbox is None:  # the gateway resolved it moments ago; only a concurrent removal gets here
        raise NotFound(f"Sandbox '{tenant.sandbox_name}' does not exist in org '{tenant.org_id}'.")
    return sandbox


def _has_stored_default(conn: Connection, tenant: Tenant, schema_name: str) -> bool:
    return conn.execute(
        sa.select(merge_policies.c.id).where(
            tenant_scope(merge_policies, tenant), merge_policies.c.schema_name == schema_name,
            merge_policies.c.is_default == 1,
        )
    ).first() is not None


def built_in_policy(conn: Connection, tenant: Tenant) -> MergePolicy:
    """The virtual `timestampOrdered-none-mp` of this sandbox; default unless a stored profile policy is."""
    return MergePolicy(
        id=BUILT_IN_ID, version=1, name=BUILT_IN_NAME, schema_name=PROFILE_SCHEMA, identity_graph="none",
        attribute_merge="timestampOrdered", order=[],
        is_default=not _has_stored_default(conn, tenant, PROFILE_SCHEMA), is_active_on_edge=False,
        updated_ms=sandbox_of(conn, tenant).created_ms, built_in=True,
    )


def _not_found(policy_id: str) -> NotFound:
    return NotFound(f"Merge policy '{policy_id}' was not found in this sandbox.",
                    fields=[FieldError("mergePolicyId", f"unknown merge policy '{policy_id}'")])


def _version_not_found(policy_id: str, version: int, latest: int) -> NotFound:
    return NotFound(f"Merge policy '{policy_id}' has no version {version}; its versions are 1 to {latest}.",
                    fields=[FieldError("version", f"unknown version {version} of merge policy '{policy_id}'")])


def _current_row(conn: Connection, tenant: Tenant, policy_id: str) -> Any:
    return conn.execute(
        sa.select(merge_policies).where(tenant_scope(merge_policies, tenant), merge_policies.c.id == policy_id)
    ).first()


def get_merge_policy(conn: Connection, tenant: Tenant, policy_id: str, version: int | None = None) -> MergePolicy:
    """The policy's current version, or the kept `version`; `NotFound` naming the id or the version."""
    if policy_id == BUILT_IN_ID:
        if version is not None and version != 1:
            raise _version_not_found(policy_id, version, 1)
        return built_in_policy(conn, tenant)
    row = _current_row(conn, tenant, policy_id)
    if row is None:
        raise _not_found(policy_id)
    if version is None or version == row.version:
        return _from_row(row, policy_id)
    kept = conn.execute(
        sa.select(merge_policy_versions).where(
            tenant_scope(merge_policy_versions, tenant), merge_policy_versions.c.policy_id == policy_id,
            merge_policy_versions.c.version == version,
        )
    ).first()
    if kept is None:
        raise _version_not_found(policy_id, version, int(row.version))
    return _from_row(kept, policy_id)


def resolve_merge_policy(conn: Connection, tenant: Tenant, policy_id: str | None,
                         version: int | None) -> MergePolicy:
    """The policy a merge should use: `(id, version)`, the latest version when `version` is None, and the
    sandbox's `_xdm.context.profile` default (a stored one, else the built-in) when `policy_id` is None.
    Raises `NotFound` naming the id or the version."""
    if policy_id is None:
        row = conn.execute(
            sa.select(merge_policies.c.id).where(
                tenant_scope(merge_policies, tenant), merge_policies.c.schema_name == PROFILE_SCHEMA,
                merge_policies.c.is_default == 1,
            )
        ).first()
        policy_id = str(row.id) if row is not None else BUILT_IN_ID
    return get_merge_policy(conn, tenant, policy_id, version)


def bulk_get_merge_policies(conn: Connection, tenant: Tenant, policy_ids: list[str]) -> dict[str, MergePolicy | None]:
    """Each requested id's current policy, or None when this sandbox has no such policy."""
    found: dict[str, MergePolicy | None] = {}
    for policy_id in policy_ids:
        try:
            found[policy_id] = get_merge_policy(conn, tenant, policy_id)
        except NotFound:
            found[policy_id] = None
    return found


# --- listing ---------------------------------------------------------------------------------------------


def parse_order_by(raw: str | None) -> str:
    """`name`, `+name`, `-name` (and `updateEpoch` likewise; `asc:`/`desc:` too) → one of `ORDERINGS`.

    An unencoded `+` arrives as a space, so a leading space also means ascending; empty means `name`,
    as in the docs' own `orderBy=` links.
    """
    spec = (raw or "").strip()
    if not spec:
        return "name"
    descending = False
    if spec[0] in "+-":
        descending, spec = spec[0] == "-", spec[1:]
    elif ":" in spec:
        direction, _, spec = spec.partition(":")
        if direction.lower() not in ("asc", "desc"):
            spec = "?"
        descending = direction.lower() == "desc"
    if spec not in ("name", "updateEpoch"):
        raise ValidationFailed(
            f"orderBy '{raw}' is not supported; use name, +name, -name, updateEpoch, +updateEpoch or -updateEpoch.",
            fields=[FieldError("orderBy", f"'{raw}' is not one of name, +name, -name, updateEpoch, +updateEpoch, "
                                          "-updateEpoch")],
        )
    return f"-{spec}" if descending else spec


def _parse_bool(name: str, raw: str | None, problems: list[FieldError]) -> bool | None:
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in ("true", "false"):
        return value == "true"
    problems.append(FieldError(name, f"'{raw}' is not a boolean (true or false)"))
    return None


def _parse_int(name: str, raw: str | None, low: int, high: int, problems: list[FieldError]) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        problems.append(FieldError(name, f"'{raw}' is not an integer from {low} to {high}"))
        return None
    return value


def make_list_query(*, limit: str | None, start: str | None, order_by: str | None, schema_name: str | None,
                    default: str | None, identity_graph: str | None, attribute_merge: str | None,
                    is_active_on_edge: str | None, version: str | None) -> ListQuery:
    """Check every list parameter (as sent, strings) at once; the 400 names each bad one."""
    problems: list[FieldError] = []
    page_size = _parse_int("limit", limit, 1, MAX_LIMIT, problems)
    at_version = _parse_int("version", version, 1, 2**31 - 1, problems)
    is_default = _parse_bool("default", default, problems)
    on_edge = _parse_bool("isActiveOnEdge", is_active_on_edge, problems)
    choices = (("schema.name", schema_name, SCHEMA_NAMES), ("identityGraph.type", identity_graph, IDENTITY_GRAPHS),
               ("attributeMerge.type", attribute_merge, ATTRIBUTE_MERGES))
    for name, value, allowed in choices:
        if value is not None and value not in allowed:
            problems.append(FieldError(name, f"'{value}' is not one of {', '.join(allowed)}"))
    ordering = "name"
    try:
        ordering = parse_order_by(order_by)
    except ValidationFailed as exc:
        problems += exc.fields
    if problems:
        raise ValidationFailed("Invalid query: " + "; ".join(f"{p.path} {p.message}" for p in problems),
                               fields=problems)
    query = ListQuery(limit=page_size or DEFAULT_LIMIT, start=start or None, order_by=ordering,
                      schema_name=schema_name, default=is_default, identity_graph=identity_graph,
                      attribute_merge=attribute_merge, is_active_on_edge=on_edge, version=at_version)
    if query.start is not None:
        _decode_start(query.start, query.order_by)
    return query


def _sort_key(policy: MergePolicy, order_by: str) -> str | int:
    return policy.name if order_by.lstrip("-") == "name" else policy.updated_ms


def _encode_start(order_by: str, policy: MergePolicy) -> str:
    raw = json.dumps([order_by, _sort_key(policy, order_by), policy.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_start(token: str, order_by: str) -> tuple[str | int, str]:
    bad = ValidationFailed(f"start '{token}' is not a page token of this listing; use the href of _links.next.",
                           fields=[FieldError("start", "not a page token from _links.next (for this orderBy)")])
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not (isinstance(decoded, list) and len(decoded) == 3 and decoded[0] == order_by
            and isinstance(decoded[2], str)):
        raise bad
    key = decoded[1]
    wanted = str if order_by.lstrip("-") == "name" else int
    if not isinstance(key, wanted) or isinstance(key, bool):
        raise bad
    return key, decoded[2]


def _matches(policy: MergePolicy, query: ListQuery) -> bool:
    return ((query.schema_name is None or policy.schema_name == query.schema_name)
            and (query.default is None or policy.is_default == query.default)
            and (query.identity_graph is None or policy.identity_graph == query.identity_graph)
            and (query.attribute_merge is None or policy.attribute_merge == query.attribute_merge)
            and (query.is_active_on_edge is None or policy.is_active_on_edge == query.is_active_on_edge))


def list_merge_policies(conn: Connection, tenant: Tenant, query: ListQuery) -> PolicyPage:
    """One page of the sandbox's policies (the built-in included), filtered, ordered, after `query.start`.

    With `version`, each policy is listed as it was at that version, and policies without it are left out.
    """
    if query.version is None:
        rows = conn.execute(sa.select(merge_policies).where(tenant_scope(merge_policies, tenant))).all()
        policies = [_from_row(r, r.id) for r in rows]
    else:
        rows = conn.execute(
            sa.select(merge_policy_versions).join(
                merge_policies,
                sa.and_(merge_policies.c.id == merge_policy_versions.c.policy_id,
                        tenant_scope(merge_policies, tenant)),
            ).where(tenant_scope(merge_policy_versions, tenant), merge_policy_versions.c.version == query.version)
        ).all()
        policies = [_from_row(r, r.policy_id) for r in rows]
    if query.version in (None, 1):
        policies.append(built_in_policy(conn, tenant))
    chosen = [p for p in policies if _matches(p, query)]
    descending = query.order_by.startswith("-")
    chosen.sort(key=lambda p: (_sort_key(p, query.order_by), p.id), reverse=descending)
    remaining = chosen
    if query.start is not None:
        after = _decode_start(query.start, query.order_by)

        def beyond(p: MergePolicy) -> bool:
            key = (_sort_key(p, query.order_by), p.id)
            return key < after if descending else key > after

        remaining = [p for p in chosen if beyond(p)]
    page = remaining[:query.limit]
    next_start = _encode_start(query.order_by, page[-1]) if len(remaining) > query.limit else None
    return PolicyPage(policies=page, total=len(chosen), next_start=next_start)


def next_href(query: ListQuery, next_start: str | None) -> str:
    """`_links.next.href`: the same listing's next page relative to the service (`@/mergePolicies?...`), or ""."""
    if next_start is None:
        return ""
    params: list[tuple[str, str | int]] = [("start", next_start), ("orderBy", query.order_by),
                                           ("limit", query.limit)]
    for name, value in (("schema.name", query.schema_name), ("identityGraph.type", query.identity_graph),
                        ("attributeMerge.type", query.attribute_merge), ("version", query.version)):
        if value is not None:
            params.append((name, value))
    for name, flag in (("default", query.default), ("isActiveOnEdge", query.is_active_on_edge)):
        if flag is not None:
            params.append((name, "true" if flag else "false"))
    return "@/mergePolicies?" + urlencode(params)


# --- rendering -------------------------------------------------------------------------------------------


def policy_json(policy: MergePolicy, tenant: Tenant, sandbox: Sandbox) -> dict[str, Any]:
    """The docs' full merge-policy object (Adobe's schema lacks imsOrgId, sandbox and updateEpoch)."""
    attribute_merge: dict[str, Any] = {"type": policy.attribute_merge}
    if policy.attribute_merge == "dataSetPrecedence":
        attribute_merge["order"] = list(policy.order)
    return {
        "id": policy.id,
        "name": policy.name,
        "imsOrgId": tenant.org_id,
        "sandbox": {"sandboxId": sandbox.id, "sandboxName": sandbox.name, "type": sandbox.type,
                    "default": sandbox.is_default},
        "schema": {"name": policy.schema_name},
        "version": policy.version,
        "identityGraph": {"type": policy.identity_graph},
        "attributeMerge": attribute_merge,
        "isActiveOnEdge": policy.is_active_on_edge,
        "default": policy.is_default,
        "updateEpoch": policy.update_epoch,
    }


# --- writing ---------------------------------------------------------------------------------------------


def _lock(conn: Connection, tenant: Tenant) -> None:
    """Serialise this sandbox's merge-policy writers (a no-op on SQLite, whose writers already are)."""
    conn.execute(sa.select(sandboxes.c.id).where(sandboxes.c.id == tenant.sandbox_id).with_for_update())


def _writable_row(conn: Connection, tenant: Tenant, policy_id: str, action: str) -> Any:
    if policy_id == BUILT_IN_ID:
        raise Forbidden(
            f"The built-in merge policy '{BUILT_IN_ID}' is read-only and cannot be {action}; create a policy "
            "and make it the default instead.",
            fields=[FieldError("mergePolicyId", f"'{BUILT_IN_ID}' is read-only")],
        )
    row = _current_row(conn, tenant, policy_id)
    if row is None:
        raise _not_found(policy_id)
    return row


def _policy_from_request(request: MergePolicyRequest, policy_id: str, version: int, now: int) -> MergePolicy:
    attribute_merge = request.attributeMerge.type
    return MergePolicy(
        id=policy_id, version=version, name=request.name or policy_id, schema_name=request.schema_class.name,
        identity_graph=request.identityGraph.type, attribute_merge=attribute_merge,
        order=list(request.attributeMerge.order or []) if attribute_merge == "dataSetPrecedence" else [],
        is_default=request.default, is_active_on_edge=request.isActiveOnEdge, updated_ms=now,
    )


def _check_order(conn: Connection, tenant: Tenant, policy: MergePolicy) -> None:
    if policy.attribute_merge != "dataSetPrecedence":
        return
    if not policy.order:
        raise ValidationFailed(
            "attributeMerge.order is required for dataSetPrecedence: list the profile-enabled dataset ids by "
            "priority.",
            fields=[FieldError("/attributeMerge/order", "required, non-empty, for dataSetPrecedence")],
        )
    problems: list[FieldError] = []
    seen: set[str] = set()
    for index, dataset_id in enumerate(policy.order):
        where = f"/attributeMerge/order/{index}"
        if dataset_id in seen:
            problems.append(FieldError(where, f"dataset '{dataset_id}' is listed more than once"))
            continue
        seen.add(dataset_id)
        try:
            dataset = get_dataset(conn, tenant, dataset_id)
        except NotFound:
            problems.append(FieldError(where, f"dataset '{dataset_id}' does not exist in this sandbox"))
            continue
        if not dataset.profile_enabled:
            problems.append(FieldError(where, f"dataset '{dataset_id}' is not enabled for Profile "
                                              "(tags.unifiedProfile)"))
    if problems:
        raise ValidationFailed("Invalid attributeMerge.order: " + "; ".join(f"{p.path}: {p.message}" for p in problems),
                               fields=problems)


def _check_edge(conn: Connection, tenant: Tenant, policy: MergePolicy) -> None:
    if not policy.is_active_on_edge:
        return
    other = conn.execute(
        sa.select(merge_policies.c.id).where(
            tenant_scope(merge_policies, tenant), merge_policies.c.is_active_on_edge == 1,
            merge_policies.c.id != policy.id,
        )
    ).first()
    if other is not None:
        raise ValidationFailed(
            f"Only one merge policy per sandbox can be active on edge, and '{other.id}' already is; set its "
            "isActiveOnEdge to false first.",
            fields=[FieldError("/isActiveOnEdge", f"merge policy '{other.id}' is already active on edge")],
        )


def _columns(policy: MergePolicy) -> dict[str, Any]:
    return {
        "version": policy.version, "name": policy.name, "schema_name": policy.schema_name,
        "identity_graph": policy.identity_graph, "attribute_merge": policy.attribute_merge,
        "dataset_order": list(policy.order), "is_default": int(policy.is_default),
        "is_active_on_edge": int(policy.is_active_on_edge), "updated_ms": policy.updated_ms,
    }


def _keep_version(conn: Connection, tenant: Tenant, policy: MergePolicy) -> None:
    conn.execute(merge_policy_versions.insert().values(
        org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, policy_id=policy.id, **_columns(policy)))


def _update(conn: Connection, tenant: Tenant, policy: MergePolicy) -> None:
    conn.execute(merge_policies.update().where(tenant_scope(merge_policies, tenant),
                                               merge_policies.c.id == policy.id).values(**_columns(policy)))
    _keep_version(conn, tenant, policy)


def _undefault_others(conn: Connection, tenant: Tenant, policy: MergePolicy) -> None:
    """Before `policy` becomes its class's default, the previous default stops being one (a new version)."""
    if not policy.is_default:
        return
    rows = conn.execute(
        sa.select(merge_policies).where(
            tenant_scope(merge_policies, tenant), merge_policies.c.schema_name == policy.schema_name,
            merge_policies.c.is_default == 1, merge_policies.c.id != policy.id,
        )
    ).all()
    for row in rows:
        previous = _from_row(row, row.id)
        _update(conn, tenant, dataclasses.replace(previous, is_default=False, version=previous.version + 1,
                                                  updated_ms=policy.updated_ms))


def create_merge_policy(conn: Connection, tenant: Tenant, request: MergePolicyRequest, *,
                        max_policies: int) -> MergePolicy:
    """A new policy, version 1, after the order, limit and edge checks; call inside one transaction."""
    _lock(conn, tenant)
    policy = _policy_from_request(request, ids.new_uuid(), 1, now_ms())
    _check_order(conn, tenant, policy)
    count = conn.execute(
        sa.select(sa.func.count()).select_from(merge_policies).where(tenant_scope(merge_policies, tenant))
    ).scalar_one()
    if count >= max_policies:
        raise BadRequest(
            f"This sandbox already has {count} merge policies, the most allowed (max_merge_policies = "
            f"{max_policies}, set by OPENPROFILE_MAX_MERGE_POLICIES); delete one first. The built-in "
            f"'{BUILT_IN_ID}' does not count.",
            fields=[FieldError("max_merge_policies", f"at most {max_policies} merge policies per sandbox")],
        )
    _check_edge(conn, tenant, policy)
    _undefault_others(conn, tenant, policy)
    conn.execute(merge_policies.insert().values(
        org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, id=policy.id, created_ms=policy.updated_ms,
        **_columns(policy)))
    _keep_version(conn, tenant, policy)
    return policy


def _save(conn: Connection, tenant: Tenant, row: Any, request: MergePolicyRequest) -> MergePolicy:
    policy = _policy_from_request(request, row.id, int(row.version) + 1, now_ms())
    _check_order(conn, tenant, policy)
    _check_edge(conn, tenant, policy)
    _undefault_others(conn, tenant, policy)
    _update(conn, tenant, policy)
    return policy


def replace_merge_policy(conn: Connection, tenant: Tenant, policy_id: str,
                         request: MergePolicyRequest) -> MergePolicy:
    """PUT: the whole policy replaced, as a new version."""
    _lock(conn, tenant)
    row = _writable_row(conn, tenant, policy_id, "replaced")
    if request.id is not None and request.id != policy_id:
        raise ValidationFailed(f"The body's id '{request.id}' is not the path's '{policy_id}'.",
                               fields=[FieldError("/id", f"must be '{policy_id}' (or left out)")])
    return _save(conn, tenant, row, request)


# PATCH paths → where they land in the request-shaped document.
_PATCH_PATHS: dict[str, tuple[str, ...]] = {
    "/name": ("name",),
    "/schema": ("schema",),
    "/schema.name": ("schema", "name"),
    "/schema/name": ("schema", "name"),
    "/identityGraph": ("identityGraph",),
    "/identityGraph.type": ("identityGraph", "type"),
    "/identityGraph/type": ("identityGraph", "type"),
    "/attributeMerge": ("attributeMerge",),
    "/attributeMerge.type": ("attributeMerge", "type"),
    "/attributeMerge/type": ("attributeMerge", "type"),
    "/attributeMerge.order": ("attributeMerge", "order"),
    "/attributeMerge/order": ("attributeMerge", "order"),
    "/default": ("default",),
    "/isActiveOnEdge": ("isActiveOnEdge",),
    "/idActiveOnEdge": ("isActiveOnEdge",),
}
_READ_ONLY_PATHS = ("/id", "/version", "/imsOrgId", "/sandbox", "/updateEpoch")


def _request_document(policy: MergePolicy) -> dict[str, Any]:
    attribute_merge: dict[str, Any] = {"type": policy.attribute_merge}
    if policy.order:
        attribute_merge["order"] = list(policy.order)
    return {"name": policy.name, "schema": {"name": policy.schema_name}, "default": policy.is_default,
            "identityGraph": {"type": policy.identity_graph}, "attributeMerge": attribute_merge,
            "isActiveOnEdge": policy.is_active_on_edge}


def _order_value(value: Any) -> Any:
    """`order` as the spec's string-typed value allows: a JSON array or comma-separated ids."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return [part.strip() for part in value.split(",") if part.strip()]
    return parsed if isinstance(parsed, list) else value


def _patched_document(policy: MergePolicy, body: Any) -> dict[str, Any]:
    single = isinstance(body, dict)
    operations = [body] if single else body
    if not isinstance(operations, list) or not operations:
        raise BadRequest("A merge-policy PATCH body is a non-empty array of {op, path, value} operations "
                         "(or one such object).", fields=[FieldError("/", "expected [{op, path, value}, ...]")])
    document = _request_document(policy)
    for index, op in enumerate(operations):
        where = "" if single else f"/{index}"
        if not isinstance(op, dict):
            raise ValidationFailed(f"PATCH operation {index} is not an object",
                                   fields=[FieldError(where or "/", "expected {op, path, value}")])
        kind, path = op.get("op"), op.get("path")
        problems: list[FieldError] = []
        if kind not in ("add", "replace"):
            problems.append(FieldError(f"{where}/op", f"'{kind}' is not supported; use add or replace"))
        if not isinstance(path, str):
            problems.append(FieldError(f"{where}/path", "required string"))
        elif path in _READ_ONLY_PATHS or path.startswith("/sandbox/") or path.startswith("/sandbox."):
            problems.append(FieldError(f"{where}/path", f"'{path}' is read-only"))
        elif path not in _PATCH_PATHS:
            problems.append(FieldError(f"{where}/path", f"'{path}' cannot be patched; use one of "
                                                        + ", ".join(_PATCH_PATHS)))
        if "value" not in op:
            problems.append(FieldError(f"{where}/value", "required"))
        if problems:
            raise ValidationFailed(f"PATCH operation {index}: " + "; ".join(f"{p.path} {p.message}" for p in problems),
                                   fields=problems)
        target = _PATCH_PATHS[cast(str, path)]
        value = _order_value(op["value"]) if target == ("attributeMerge", "order") else op["value"]
        parent = document
        for step in target[:-1]:
            if not isinstance(parent.get(step), dict):
                parent[step] = {}
            parent = parent[step]
        parent[target[-1]] = value
    merge = document.get("attributeMerge")
    if isinstance(merge, dict) and merge.get("type") == "timestampOrdered":
        merge.pop("order", None)  # ignored for timestampOrdered, so switching type drops it
    return document


def patch_merge_policy(conn: Connection, tenant: Tenant, policy_id: str, body: Any) -> MergePolicy:
    """PATCH: the operations applied to the current policy, checked like a PUT, as a new version."""
    _lock(conn, tenant)
    row = _writable_row(conn, tenant, policy_id, "patched")
    document = _patched_document(_from_row(row, policy_id), body)
    return _save(conn, tenant, row, validate(MergePolicyRequest, document))


def delete_merge_policy(conn: Connection, tenant: Tenant, policy_id: str) -> None:
    """Forget the policy and all its versions; the edge policy refuses (turn isActiveOnEdge off first)."""
    _lock(conn, tenant)
    row = _writable_row(conn, tenant, policy_id, "deleted")
    if row.is_active_on_edge:
        raise Forbidden(
            f"Merge policy '{policy_id}' is active on edge and cannot be deleted; set isActiveOnEdge to false "
            "first.", fields=[FieldError("isActiveOnEdge", "an active-on-edge policy cannot be deleted")])
    conn.execute(merge_policy_versions.delete().where(tenant_scope(merge_policy_versions, tenant),
                                                      merge_policy_versions.c.policy_id == policy_id))
    conn.execute(merge_policies.delete().where(tenant_scope(merge_policies, tenant),
                                               merge_policies.c.id == policy_id))
