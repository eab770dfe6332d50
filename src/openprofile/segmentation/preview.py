"""Segment previews and estimates: how many profiles a PQL expression qualifies, and a sample of them.

`POST /preview` checks the request as a segment definition is checked (PQL parsed and checked against the
sandbox's unions with line and column, `inSegment` references, the merge policy resolved: the body's
`mergePolicyId`, else the sandbox default) and stores the preview in `NEW`. The evaluation runs on the
durable job queue (`segment.preview`), as AEP runs it asynchronously: a worker moves the preview to
`RUNNING`, evaluates the expression exactly as a segment job does (pending profile-store batches applied,
the policy's merged profiles with `xEvent` materialised by `segmentation/runner.py`, the compiled PQL
over them, `inSegment` read from the current membership), and stores the result in the metadata store:
`RESULT_READY`, or `FAILED` with the reason (the store or the schema changed so that the expression no
longer compiles, the merge policy was deleted, the engine failed). Clients poll `GET /preview/{id}` or
`GET /estimate/{id}` until the state is final; the preview and its estimate share the id, as in AEP.

Every profile is read, so the estimate is exact: `estimatedSize` is the number of qualifying profiles
(what a segment job with the same expression and policy counts), `standardError` is 0, and
`estimatedNamespaceDistribution` counts qualifying profiles per identity namespace they have (a profile
with two namespaces counts in both, as AEP documents). The preview keeps the first `SAMPLE_SIZE`
qualifying profiles (ordered by profile key): each result has AEP's `objectId` (the XID of its primary
identity), `_href` (its Profile Access lookup under the same merge policy) and `relatedObjects` (its other
identities), plus `entity`, the merged profile's attributes, so a sample can be read without a lookup.

`graphType` is checked (`pdg` or `none`) and kept with the request, but the merge policy decides identity stitching:
aepp sends `pdg` on every preview, and a preview is meant to predict what a segment job under that
policy qualifies. States are AEP's documented ones: `NEW`, `RUNNING`, `RESULT_READY`, `FAILED`.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import duckdb
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from openprofile.core import ids
from openprofile.core.clock import now_ms
from openprofile.core.errors import FieldError, NotFound, ValidationFailed
from openprofile.core.http import int_param
from openprofile.core.platform import Platform
from openprofile.core.queue import ClaimedJob, Handler, enqueue
from openprofile.core.tables import segment_previews
from openprofile.core.tenancy import Tenant, tenant_scope
from openprofile.engine import segments as sql
from openprofile.engine.pql import Expression, PQLError, check, parse, timestamp_sql, to_sql
from openprofile.engine.profile_store import connect
from openprofile.identity.namespaces import xid
from openprofile.profile import memberships
from openprofile.profile import store as profile_store
from openprofile.profile.access import jsonable
from openprofile.profile.policies import MergePolicy, resolve_merge_policy
from openprofile.segmentation import definitions
from openprofile.segmentation.runner import EVALUATION_MEMORY_LIMIT, profiles_table, quote_path

log = logging.getLogger(__name__)

JOB_KIND = "segment.preview"
NEW, RUNNING, RESULT_READY, FAILED = "NEW", "RUNNING", "RESULT_READY", "FAILED"
PREDICATE_TYPE = "pql/text"
MODELS = ("_xdm.context.profile", "xdm.model.profile")  # the spec's default name is the older spelling
GRAPH_TYPES = ("pdg", "none")
SAMPLE_SIZE = 100
MAX_LIMIT = 1000
BASE = "/data/core/ups"


class PreviewRequest(BaseModel):
    """`POST /preview` (what aepp's `createPreview` and Adobe's examples send; other fields are ignored)."""

    model_config = ConfigDict(extra="allow")
    predicateExpression: str = Field(min_length=1)
    predicateType: str = PREDICATE_TYPE
    predicateModel: str = MODELS[0]
    graphType: str | None = None
    mergePolicyId: str | None = None


@dataclass(frozen=True)
class Preview:
    id: str
    query_id: str
    tenant: Tenant
    state: str
    request: dict[str, Any]
    result: dict[str, Any]
    error: dict[str, Any]
    created_ms: int
    updated_ms: int


class PreviewFailed(Exception):
    """The evaluation cannot produce a result; the preview becomes FAILED with this message."""


def _from_row(tenant: Tenant, row: Any) -> Preview:
    return Preview(id=row.id, query_id=row.query_id, tenant=tenant, state=row.state, request=dict(row.request),
                   result=dict(row.result), error=dict(row.error), created_ms=row.created_ms,
                   updated_ms=row.updated_ms)


def get(conn: Connection, tenant: Tenant, preview_id: str) -> Preview:
    row = conn.execute(sa.select(segment_previews).where(segment_previews.c.id == preview_id,
                                                         tenant_scope(segment_previews, tenant))).first()
    if row is None:
        raise NotFound(f"Preview '{preview_id}' was not found in this sandbox.",
                       fields=[FieldError("previewId", f"unknown preview '{preview_id}'")])
    return _from_row(tenant, row)


def _check(request: PreviewRequest) -> None:
    problems = []
    if request.predicateType != PREDICATE_TYPE:
        problems.append(FieldError("/predicateType", f"only {PREDICATE_TYPE} is supported (got "
                                                     f"{request.predicateType!r})"))
    if request.predicateModel not in MODELS:
        problems.append(FieldError("/predicateModel", f"only {MODELS[0]} is supported (got "
                                                      f"{request.predicateModel!r})"))
    if request.graphType is not None and request.graphType not in GRAPH_TYPES:
        problems.append(FieldError("/graphType", f"must be pdg or none (got {request.graphType!r})"))
    if problems:
        raise ValidationFailed("Invalid preview: " + "; ".join(f"{p.path} {p.message}" for p in problems),
                               fields=problems)


def create(conn: Connection, tenant: Tenant, request: PreviewRequest, request_id: str) -> Preview:
    """Check the request, store the preview in NEW and queue its evaluation (in the caller's transaction)."""
    _check(request)
    definitions.compile_checked(conn, tenant, request.predicateExpression, pointer="/predicateExpression")
    try:
        policy = resolve_merge_policy(conn, tenant, request.mergePolicyId or None, None)
    except NotFound as exc:
        exc.fields = [FieldError("/mergePolicyId", f"unknown merge policy '{request.mergePolicyId}'")]
        raise
    query_id = ids.new_uuid()
    preview_id = base64.urlsafe_b64encode(f"0:{query_id}:0".encode()).decode().rstrip("=")
    stored = {"predicateExpression": request.predicateExpression, "predicateType": request.predicateType,
              "predicateModel": request.predicateModel, "graphType": request.graphType,
              "mergePolicy": {"id": policy.id, "version": policy.version}}
    now = now_ms()
    conn.execute(segment_previews.insert().values(
        id=preview_id, query_id=query_id, org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, state=NEW,
        request=stored, result={}, error={}, request_id=request_id, created_ms=now, updated_ms=now))
    enqueue(conn, JOB_KIND, tenant, preview_id, {"previewId": preview_id})
    return get(conn, tenant, preview_id)


def delete(conn: Connection, tenant: Tenant, preview_id: str) -> None:
    """Remove the preview; a worker still evaluating it then stores nothing (its update matches no row)."""
    get(conn, tenant, preview_id)
    conn.execute(segment_previews.delete().where(segment_previews.c.id == preview_id,
                                                 tenant_scope(segment_previews, tenant)))


def _move(conn: Connection, preview: Preview, from_states: tuple[str, ...], to: str, **values: Any) -> bool:
    """One compare-and-set: the preview moves only if it is still in one of `from_states`."""
    result = conn.execute(
        segment_previews.update()
        .where(segment_previews.c.id == preview.id, tenant_scope(segment_previews, preview.tenant),
               segment_previews.c.state.in_(from_states))
        .values(state=to, updated_ms=now_ms(), **values))
    return result.rowcount == 1


# --- evaluation (the worker) ----------------------------------------------------------------------------------


def _href(object_id: str, policy_id: str) -> str:
    query = urlencode({"schema.name": definitions.PROFILE_SCHEMA, "entityId": object_id, "mergePolicyId": policy_id})
    return f"{BASE}/access/entities?{query}"


def _identity_xids(identities: list[dict[str, Any]]) -> list[str]:
    """The XIDs of a merged profile's identities, the primary one first."""
    ordered = sorted(identities, key=lambda i: not i.get("primary"))
    found: list[str] = []
    for identity in ordered:
        namespace = (identity.get("namespace") or {}).get("code")
        if namespace and identity.get("id") is not None:
            value = xid(str(namespace), str(identity["id"]))
            if value not in found:
                found.append(value)
    return found


def _sample_entry(row: dict[str, Any], policy_id: str) -> dict[str, Any]:
    xids = _identity_xids(list(row.get("identities") or []))
    object_id = xids[0] if xids else str(row["_group"])
    entity = jsonable({k: v for k, v in row.items() if k != "_group" and not k.startswith("__")})
    return {"objectId": object_id, "_href": _href(object_id, policy_id),
            "relatedObjects": [{"objectId": x, "_href": _href(x, policy_id)} for x in xids[1:]],
            "entity": entity}


def _load_memberships(duck: duckdb.DuckDBPyConnection, platform: Platform, tenant: Tenant, policy_id: str) -> None:
    """The policy's current membership as `__prev` (for `inSegment`). A segment job may publish a new file and
    remove the old one between reading the pointer and reading the file: then read the pointer again."""
    for attempt in range(3):
        current = memberships.current_memberships(platform, tenant, policy_id)
        source = f"read_parquet({quote_path(current)})" if current else f"({sql.empty_membership_sql()})"
        try:
            duck.execute(f"CREATE OR REPLACE TEMP TABLE __prev AS SELECT _group, segment_id, status, "
                         f"CAST(last_qualification AS TIMESTAMPTZ) AS last_qualification FROM {source}")
            return
        except duckdb.IOException:
            if attempt == 2:
                raise


def evaluate(platform: Platform, preview: Preview) -> dict[str, Any]:
    """Count and sample the profiles the preview's expression qualifies, as a segment job would evaluate it."""
    tenant = preview.tenant
    profile_store.apply_pending(platform, tenant)  # the preview sees every batch ingested before it ran
    snapshot = profile_store.snapshot(platform, tenant)
    now_sql = timestamp_sql(dt.datetime.now(dt.UTC))
    ref = preview.request["mergePolicy"]
    with platform.engine.connect() as conn:
        unions = definitions.structures(conn, tenant)
        try:
            expression: Expression = check(parse(str(preview.request["predicateExpression"])), *unions)
        except PQLError as error:
            raise PreviewFailed(f"The expression no longer compiles: {error.message}") from None
        try:
            policy: MergePolicy = resolve_merge_policy(conn, tenant, str(ref["id"]), int(ref["version"]))
        except NotFound as error:
            raise PreviewFailed(error.detail) from None
    duck = connect(platform.settings.engine_threads, EVALUATION_MEMORY_LIMIT,
                   platform.settings.data_dir / "tmp" / "duckdb")
    try:
        total = profiles_table(duck, platform, snapshot, policy, unions)
        if expression.segment_refs:
            _load_memberships(duck, platform, tenant, policy.id)
        relations = {r: sql.active_members_sql("__prev", r) for r in expression.segment_refs}
        joins = sql.InSegmentJoins(relations)
        condition = to_sql(expression, now_sql=now_sql, in_segment_sql=joins)
        duck.execute(f"CREATE OR REPLACE TEMP TABLE __q AS {sql.qualified_sql('__profiles', condition, joins)}")
        row = duck.execute("SELECT count(*) FROM __q").fetchone()
        matched = int(row[0]) if row else 0
        namespaces = duck.execute(
            "SELECT ns, count(DISTINCT _group) FROM (SELECT _group, unnest(identities).namespace.code AS ns "
            "FROM __profiles WHERE _group IN (SELECT _group FROM __q)) WHERE ns IS NOT NULL GROUP BY ns "
            "ORDER BY ns").fetchall()
        sample = duck.sql(
            f'SELECT * EXCLUDE ("xEvent", __ns) FROM __profiles WHERE _group IN '
            f"(SELECT _group FROM __q ORDER BY _group LIMIT {SAMPLE_SIZE}) ORDER BY _group").to_arrow_table()
    finally:
        duck.close()
    return {"totalRows": total, "matched": matched, "namespaces": {str(ns): int(n) for ns, n in namespaces},
            "sample": [_sample_entry(r, policy.id) for r in sample.to_pylist()]}


def _finish(platform: Platform, preview: Preview, to: str, **values: Any) -> None:
    with platform.engine.begin() as conn:
        _move(conn, preview, (RUNNING,), to, **values)


def _fail(platform: Platform, preview: Preview, message: str) -> None:
    """FAILED from NEW too: a worker that dies before moving the preview on must not leave it NEW forever."""
    log.warning("preview %s failed: %s", preview.id, message)
    with platform.engine.begin() as conn:
        _move(conn, preview, (NEW, RUNNING), FAILED, error={"description": message, "traceback": ""})


def run(platform: Platform, claimed: ClaimedJob) -> None:
    """Evaluate a queued preview. Idempotent: a finished or deleted preview is left as it is; a re-run after
    a crash (still RUNNING) evaluates again."""
    with platform.engine.begin() as conn:
        try:
            preview = get(conn, claimed.tenant, str(claimed.payload["previewId"]))
        except NotFound:
            return
        if preview.state not in (NEW, RUNNING) or not _move(conn, preview, (NEW, RUNNING), RUNNING):
            return
    try:
        result = evaluate(platform, preview)
    except PreviewFailed as error:
        _fail(platform, preview, str(error))
        return
    except (duckdb.Error, OSError) as error:
        _fail(platform, preview, f"The evaluation stopped: {error}")
        return
    _finish(platform, preview, RESULT_READY, result=result)


def give_up(platform: Platform, claimed: ClaimedJob, reason: str) -> None:
    with platform.engine.connect() as conn:
        try:
            preview = get(conn, claimed.tenant, str(claimed.payload["previewId"]))
        except NotFound:
            return
    _fail(platform, preview, f"The preview could not finish: {reason}")


def handler(platform: Platform) -> Handler:
    return Handler(run=lambda job: run(platform, job), give_up=lambda job, reason: give_up(platform, job, reason))


# --- rendering --------------------------------------------------------------------------------------------------


def render_created(preview: Preview) -> dict[str, Any]:
    """The POST answer (`PreviewQueryResponse`)."""
    return {"state": preview.state, "previewQueryId": preview.query_id, "previewQueryStatus": preview.state,
            "previewId": preview.id, "previewExecutionId": 0}




def render_preview(preview: Preview, *, offset: str | None = None, limit: str | None = None) -> dict[str, Any]:
    """`GET /preview/{id}`: the state and a page (`offset`, `limit`) of the sample; empty until RESULT_READY."""
    start = int_param("offset", offset, 0, 0, 10**9)
    size = int_param("limit", limit, MAX_LIMIT, 1, MAX_LIMIT)
    sample: list[dict[str, Any]] = list(preview.result.get("sample", []))
    page = sample[start:start + size]
    path = f"{BASE}/preview/{preview.id}"

    def link(at: int) -> str:
        return f"{path}?{urlencode({'offset': at, 'limit': size})}"

    body: dict[str, Any] = {
        **render_created(preview),
        "results": page,
        "page": {"offset": start, "size": len(page)},
        "links": {"_self": link(start), "next": link(start + size) if start + size < len(sample) else "",
                  "prev": link(max(0, start - size)) if start > 0 else ""},
    }
    if preview.state == FAILED:
        body["error"] = preview.error
    return body


def render_estimate(preview: Preview) -> dict[str, Any]:
    """`GET /estimate/{id}`: exact counts once RESULT_READY (zeros before)."""
    result = preview.result
    total, matched = int(result.get("totalRows", 0)), int(result.get("matched", 0))
    return {
        "state": preview.state,
        "estimatedSize": matched,
        "numRowsToRead": total,
        "profilesReadSoFar": total,
        "profilesMatchedSoFar": matched,
        "totalRows": total,
        "estimatedNamespaceDistribution": [{"namespaceId": ns, "profilesMatchedSoFar": n}
                                           for ns, n in dict(result.get("namespaces", {})).items()],
        "standardError": 0,
        "confidenceInterval": "95%",
        "error": {"description": str(preview.error.get("description", "")),
                  "traceback": str(preview.error.get("traceback", ""))},
        "previewId": preview.id,
        "_links": {"preview": f"{BASE}/preview/{preview.id}"},
    }
