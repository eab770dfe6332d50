"""Export jobs: create (validated before anything is queued), list, get, cancel or delete.

A job's batches are created in the destination dataset at creation, in status `staging` — invisible to
readers and closed to uploads — and become `success` only when the worker publishes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from openprofile.catalog import service as catalog
from openprofile.core import ids
from openprofile.core.errors import BadRequest, FieldError, NotFound, ValidationFailed
from openprofile.core.http import int_param
from openprofile.core.platform import Platform
from openprofile.core.queue import enqueue
from openprofile.core.tenancy import Tenant
from openprofile.engine.export import SEGMENT_MEMBERSHIP
from openprofile.engine.fields import UnknownField, check_fields, parse_fields
from openprofile.engine.merge import FragmentSource, profile_structure
from openprofile.engine.structure import Structure
from openprofile.export import jobs
from openprofile.export.models import CreateExportJobRequest
from openprofile.profile import store as profile_store
from openprofile.profile.policies import resolve_merge_policy
from openprofile.schemaregistry.service import EVENT_CLASS, PROFILE_CLASS, PROFILE_UNION
from openprofile.segmentation import definitions

JOB_KIND = "export.run"
PROFILE_SCHEMA = "_xdm.context.profile"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
_OFFSET = re.compile(r"^(\d{1,15})_(\d{1,18})$")


def profile_fields(conn: Connection, tenant: Tenant) -> Structure:
    """What export `fields` may name: the profile union's fields plus `identities` and `segmentMembership` (the
    profile class always has it; segment jobs fill it)."""
    union = catalog.union_structure(conn, tenant, PROFILE_CLASS, {"segmentMembership": SEGMENT_MEMBERSHIP})
    return profile_structure([FragmentSource("union", "", union)])


def event_fields(conn: Connection, tenant: Tenant) -> Structure:
    return catalog.union_structure(conn, tenant, EVENT_CLASS)


def _check_paths(value: str | None, structure: Structure, pointer: str) -> None:
    paths = parse_fields(value)
    if paths is None:
        return
    try:
        check_fields(paths, structure)
    except UnknownField as exc:
        raise ValidationFailed(
            f"{pointer.strip('/').replace('/', '.')}: '{exc.path}' is not a field of any profile-enabled dataset",
            fields=[FieldError(pointer, f"unknown field '{exc.path}'")]) from None


def create(platform: Platform, conn: Connection, tenant: Tenant, request: CreateExportJobRequest,
           request_id: str) -> jobs.ExportJob:
    if request.schema_.name != PROFILE_SCHEMA:
        raise ValidationFailed(f"schema.name '{request.schema_.name}' is not supported; use {PROFILE_SCHEMA}",
                               fields=[FieldError("/schema/name", f"must be {PROFILE_SCHEMA}")])
    destination_id = request.destination.datasetId
    try:
        destination = catalog.get_dataset(conn, tenant, destination_id)
    except NotFound as exc:
        exc.fields = [FieldError("/destination/datasetId", f"unknown dataset '{destination_id}'")]
        raise
    if destination.schema_id != PROFILE_UNION:
        raise ValidationFailed(
            f"Dataset '{destination_id}' is based on '{destination.schema_id}', not on {PROFILE_UNION}; "
            "exports are written only to profile-union datasets",
            fields=[FieldError("/destination/datasetId", f"dataset must be based on {PROFILE_UNION}")])
    segment_policy = _check_segments(platform, conn, tenant, request)
    policy_ref = request.mergePolicy
    try:
        policy = resolve_merge_policy(conn, tenant, policy_ref.id if policy_ref and policy_ref.id else segment_policy,
                                      policy_ref.version if policy_ref else None)
    except NotFound as exc:
        pointer = "/mergePolicy/version" if policy_ref and policy_ref.version and "version" in exc.detail \
            else "/mergePolicy/id"
        exc.fields = [FieldError(pointer, exc.detail)]
        raise
    if policy.schema_name != PROFILE_SCHEMA:
        raise ValidationFailed(f"Merge policy '{policy.id}' is for {policy.schema_name}, not {PROFILE_SCHEMA}",
                               fields=[FieldError("/mergePolicy/id", "must be a profile merge policy")])
    _check_paths(request.fields, profile_fields(conn, tenant), "/fields")
    event_list = request.additionalFields.eventList if request.additionalFields else None
    if event_list is not None:
        _check_paths(event_list.fields, event_fields(conn, tenant), "/additionalFields/eventList/fields")
    segments = request.filter.segments if request.filter and request.filter.segments else []
    body: dict[str, Any] = {"createdClient": tenant.client_id or "openprofile", "tags": {"export": ["profile"]}}
    destination_json: dict[str, Any] = {"datasetId": destination_id,
                                        "segmentPerBatch": request.destination.segmentPerBatch}
    if request.destination.segmentPerBatch and segments:
        batches = []
        for segment in segments:
            batch = catalog.create_batch(conn, tenant, destination_id, input_format=None, status="staging", body=body)
            batches.append({"segmentId": segment.segmentId, "segmentNs": segment.segmentNs,
                            "status": list(segment.status), "batchId": batch.id})
        destination_json["batches"] = batches
    else:
        batch = catalog.create_batch(conn, tenant, destination_id, input_format=None, status="staging", body=body)
        destination_json["batchId"] = batch.id
    stored = request.model_dump(by_alias=True, exclude_none=True, mode="json")
    stored["destination"] = {k: v for k, v in destination_json.items() if k in ("datasetId", "segmentPerBatch")}
    job = jobs.insert(conn, tenant, request=stored, destination=destination_json,
                      merge_policy={"id": policy.id, "version": policy.version}, request_id=request_id,
                      compute_job_id=ids.new_uuid())
    enqueue(conn, JOB_KIND, tenant, str(job.id), {"jobId": job.id})
    return job


def unknown_segments(platform: Platform, conn: Connection, tenant: Tenant, segment_ids: list[str]) -> list[str]:
    """The `ups` segment ids that are neither definitions of the sandbox nor in the applied ingested data."""
    ingested = profile_store.ingested_segments(conn, platform, tenant)
    unknown = []
    for segment_id in segment_ids:
        try:
            definitions.get(conn, tenant, segment_id)
        except NotFound:
            if ingested is not None and segment_id not in ingested:
                unknown.append(segment_id)
    return unknown


def _check_segments(platform: Platform, conn: Connection, tenant: Tenant, request: CreateExportJobRequest
                    ) -> str | None:
    """Every `ups` segment of the filter must be a segment definition of this sandbox or an audience the
    ingested `segmentMembership` data carries (with `evaluationInfo.segmentation`, a definition); other
    namespaces are external audiences, not checked. While ingested batches wait to be applied to the profile
    store the ingested audiences are not known yet: the runner checks again after applying them. Returns the
    merge policy of the first listed definition that names one: an export without `mergePolicy` uses it (AEP:
    the segment's merge policy), else the default."""
    segments = request.filter.segments if request.filter and request.filter.segments else []
    evaluate = bool(request.evaluationInfo and request.evaluationInfo.segmentation)
    ingested: set[str] | None = set()
    looked_up = False
    policy: str | None = None
    for n, segment in enumerate(segments):
        if segment.segmentNs.lower() != "ups":
            continue
        try:
            definition = definitions.get(conn, tenant, segment.segmentId)
        except NotFound:
            definition = None
        if definition is not None:
            policy = policy or definition.merge_policy_id
            continue
        pointer = f"/filter/segments/{n}/segmentId"
        if evaluate:
            raise NotFound(f"Segment '{segment.segmentId}' is not a segment definition of this sandbox (deleted, or "
                           "never created); evaluationInfo.segmentation evaluates definitions only",
                           fields=[FieldError(pointer, f"unknown segment '{segment.segmentId}'")])
        if not looked_up:
            ingested, looked_up = profile_store.ingested_segments(conn, platform, tenant), True
        if ingested is not None and segment.segmentId not in ingested:
            raise NotFound(f"Segment '{segment.segmentId}' is neither a segment definition of this sandbox "
                           "(deleted, or never created) nor an audience of the ingested segmentMembership data",
                           fields=[FieldError(pointer, f"unknown segment '{segment.segmentId}'")])
    return policy


@dataclass(frozen=True)
class Page:
    records: list[jobs.ExportJob]
    more: bool
    query: jobs.PageQuery




def list_page(conn: Connection, tenant: Tenant, *, limit: str | None, offset: str | None, status: str | None,
              start: str | None, page: str | None, sort: str | None) -> Page:
    """Both documented list styles: `limit`/`offset`(keyset)/`status`, and `start`/`page`/`sort`."""
    size = int_param("limit", limit, DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = None
    if offset:
        match = _OFFSET.match(offset.strip())
        if match is None:
            raise ValidationFailed(f"offset '{offset}' is not a page token of the form {{creationTimeMs}}_{{id}}",
                                   fields=[FieldError("offset", "use page.pageOffset of the previous page")])
        after = (int(match.group(1)), int(match.group(2)))
    if status is not None and status.upper() not in jobs.STATUSES:
        raise ValidationFailed(f"status '{status}' is not one of {', '.join(jobs.STATUSES)}",
                               fields=[FieldError("status", "unknown status")])
    sort_field, descending = "createdTime", True
    if sort:
        field_name, _, direction = sort.partition(":")
        if field_name not in ("createdTime", "creationTime", "updateTime") or direction.lower() not in ("", "asc",
                                                                                                        "desc"):
            raise ValidationFailed(f"sort '{sort}' is not supported",
                                   fields=[FieldError("sort", "use createdTime or updateTime with :asc or :desc")])
        sort_field = "updateTime" if field_name == "updateTime" else "createdTime"
        descending = direction.lower() != "asc"
    skip = int_param("start", start, 0, 0, 10**9)
    if page is not None:
        skip = (int_param("page", page, 1, 1, 10**6) - 1) * size
    query = jobs.PageQuery(limit=size + 1, after=after, status=status.upper() if status else None,
                           descending=descending, sort_field=sort_field, skip=skip)
    found = jobs.page(conn, tenant, query)
    return Page(found[:size], len(found) > size, query)


def page_json(result: Page) -> dict[str, Any]:
    records = result.records
    last = records[-1] if records else None
    token = f"{last.created_ms}_{last.id}" if last else ""
    size = len(records)
    next_link = ""
    if result.more and last is not None:
        params = f"limit={result.query.limit - 1}&offset={token}"
        if result.query.status:
            params += f"&status={result.query.status}"
        if result.query.sort_field == "updateTime" or result.query.skip:
            params = f"limit={result.query.limit - 1}&start={result.query.skip + size}"
        next_link = f"/export/jobs/?{params}"
    return {
        "records": [jobs.render(r) for r in records],
        "page": {"sortField": result.query.sort_field, "sort": "desc" if result.query.descending else "asc",
                 "pageOffset": token, "pageSize": size},
        "link": {"next": next_link},
    }


def job_id_of(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"Export job '{raw}' was not found in this sandbox.")
    return int(raw)


def cancel_or_delete(platform: Platform, conn: Connection, tenant: Tenant, job_id: int) -> None:
    """Unfinished: cancel (NEW at once, PROCESSING through CANCELLING). Finished: forget the job record.

    A worker may move the job between our read and our compare-and-set; states only move forward, so we
    read again and retry."""
    for _ in range(10):
        job = jobs.get(conn, tenant, job_id)
        if job.status == jobs.NEW and jobs.transition(conn, job, jobs.CANCELLED):
            for batch_id in job.batch_ids:
                catalog.set_batch_status(conn, tenant, batch_id, expected=("staging",), status="aborted")
            return
        if job.status == jobs.PROCESSING and jobs.transition(conn, job, jobs.CANCELLING):
            return
        if job.status == jobs.CANCELLING or (job.status in jobs.FINISHED and jobs.delete(conn, job)):
            return
    raise BadRequest(f"Export job {job_id} keeps changing state; try again.")
