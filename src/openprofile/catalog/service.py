"""Catalog: datasets and batches, the lake's table of contents.

Datasets and batches are rows scoped by (org, sandbox); their bodies render in AEP's shapes,
keyed by id. A batch changes status only by compare-and-set (`set_batch_status`), so a late writer
can never overwrite a state another has already settled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openprofile.catalog.models import DataSetRequest
from openprofile.core import ids
from openprofile.core.clock import now_ms
from openprofile.core.errors import BadRequest, FieldError, NotFound, ValidationFailed
from openprofile.core.jsonpatch import apply_patch
from openprofile.core.tables import batch_files, batches, datasets
from openprofile.core.tenancy import Tenant, tenant_scope
from openprofile.engine.structure import Structure, StructureConflict, merge_structures, to_observable_schema
from openprofile.schemaregistry.service import XdmClass, class_of

BATCH_STATUSES = ("loading", "staging", "processing", "success", "failed", "aborted")
FINAL_BATCH_STATUSES = ("success", "failed", "aborted")
READ_ONLY_DATASET_FIELDS = {"id", "imsOrg", "created", "updated", "createdClient", "createdUser", "updatedUser",
                            "version", "observableSchema", "basePath", "files", "viewId", "lastBatchId",
                            "lastBatchStatus", "classification"}
_ENABLED = re.compile(r"^\s*enabled\s*:\s*true\s*$", re.IGNORECASE)
MAX_LIMIT = 100


@dataclass(frozen=True)
class Dataset:
    id: str
    tenant: Tenant
    body: dict[str, Any]
    structure: Structure | None
    created_ms: int
    updated_ms: int
    xdm_class: XdmClass | None

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))

    def tag_enabled(self, tag: str) -> bool:
        values = (self.body.get("tags") or {}).get(tag) or []
        return any(isinstance(v, str) and _ENABLED.match(v) for v in values)

    @property
    def profile_enabled(self) -> bool:
        return self.tag_enabled("unifiedProfile")

    @property
    def schema_id(self) -> str | None:
        ref = self.body.get("schemaRef") or {}
        return ref.get("id") if isinstance(ref, dict) else None


def _dataset_from_row(conn: Connection, tenant: Tenant, row: Any) -> Dataset:
    schema_id = (row.body.get("schemaRef") or {}).get("id")
    return Dataset(
        id=row.id, tenant=tenant, body=dict(row.body), structure=row.structure, created_ms=row.created_ms,
        updated_ms=row.updated_ms, xdm_class=class_of(conn, tenant, schema_id) if schema_id else None,
    )



def _check_schema_ref(conn: Connection, tenant: Tenant, body: dict[str, Any]) -> None:
    ref = body.get("schemaRef")
    if ref is None:
        return
    if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
        raise ValidationFailed("schemaRef must be {id, contentType}", fields=[FieldError("/schemaRef/id", "required")])
    if class_of(conn, tenant, ref["id"]) is None:
        raise ValidationFailed(
            f"schemaRef.id '{ref['id']}' is not a class, union or schema of this sandbox.",
            fields=[FieldError("/schemaRef/id", f"unknown schema '{ref['id']}'")],
        )


def _check_tags(body: dict[str, Any]) -> None:
    tags = body.get("tags")
    if tags is None:
        return
    if not isinstance(tags, dict) or not all(
        isinstance(v, list) and all(isinstance(i, str) for i in v) for v in tags.values()
    ):
        raise ValidationFailed("tags must map names to lists of strings",
                               fields=[FieldError("/tags", "must be {name: [string, ...]}")])


def create_dataset(conn: Connection, tenant: Tenant, request: DataSetRequest) -> Dataset:
    body = request.model_dump(exclude_none=True)
    for field in READ_ONLY_DATASET_FIELDS & body.keys():
        body.pop(field)
    _check_schema_ref(conn, tenant, body)
    now = now_ms()
    dataset_id = ids.dataset_id()
    body["createdClient"] = tenant.client_id or "openprofile"
    conn.execute(datasets.insert().values(
        id=dataset_id, org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, name=request.name, body=body,
        structure=None, created_ms=now, updated_ms=now,
    ))
    return get_dataset(conn, tenant, dataset_id)


def get_dataset(conn: Connection, tenant: Tenant, dataset_id: str, *, lock: bool = False) -> Dataset:
    query = sa.select(datasets).where(datasets.c.id == dataset_id, tenant_scope(datasets, tenant))
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"DataSet '{dataset_id}' was not found in this sandbox.")
    return _dataset_from_row(conn, tenant, row)


def find_datasets(conn: Connection, tenant: Tenant) -> list[Dataset]:
    rows = conn.execute(sa.select(datasets).where(tenant_scope(datasets, tenant)).order_by(datasets.c.created_ms))
    return [_dataset_from_row(conn, tenant, r) for r in rows]


def union_structure(conn: Connection, tenant: Tenant, class_id: str, base: Structure | None = None) -> Structure:
    """The fields of every profile-enabled dataset of an XDM class (its union view), over `base`.

    A column whose type conflicts between datasets keeps the type it was first seen with."""
    merged: Structure = dict(base or {})
    for dataset in find_datasets(conn, tenant):
        if (dataset.xdm_class is None or dataset.xdm_class.id != class_id or not dataset.profile_enabled
                or not dataset.structure):
            continue
        for name, node in dataset.structure.items():
            try:
                merged = merge_structures(merged, {name: node})
            except StructureConflict:
                continue
    return merged


def _order(table: sa.Table, order_by: str | None, allowed: set[str]) -> list[Any]:
    """AEP's `orderBy=desc:created` / `asc:created,updated` (also `+created`/`-created`)."""
    if not order_by:
        return [table.c.created_ms.desc(), table.c.id]
    direction = "asc"
    spec = order_by
    if ":" in spec:
        direction, _, spec = spec.partition(":")
    elif spec[:1] in "+-":
        direction, spec = ("desc" if spec[0] == "-" else "asc"), spec[1:]
    columns = {"created": table.c.created_ms, "updated": table.c.updated_ms, "id": table.c.id}
    if hasattr(table.c, "name"):
        columns["name"] = table.c.name
    result = []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name not in columns or name not in allowed or direction.lower() not in ("asc", "desc"):
            raise ValidationFailed(f"orderBy '{order_by}' is not supported",
                                   fields=[FieldError("orderBy", "use asc:|desc: with created, updated, name or id")])
        result.append(columns[name].desc() if direction.lower() == "desc" else columns[name].asc())
    return [*result, table.c.id]


def check_paging(limit: int | None, start: int | None) -> tuple[int, int]:
    problems = []
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        problems.append(FieldError("limit", f"must be between 1 and {MAX_LIMIT}"))
    if start is not None and start < 0:
        problems.append(FieldError("start", "must be 0 or more"))
    if problems:
        raise ValidationFailed("Invalid paging: " + ", ".join(f"{p.path} {p.message}" for p in problems),
                               fields=problems)
    return (limit or 50), (start or 0)


def list_datasets(conn: Connection, tenant: Tenant, *, limit: int, start: int, order_by: str | None,
                  name: str | None = None) -> list[Dataset]:
    query = sa.select(datasets).where(tenant_scope(datasets, tenant))
    if name is not None:
        query = query.where(datasets.c.name == name)
    rows = conn.execute(query.order_by(*_order(datasets, order_by, {"created", "updated", "name", "id"}))
                        .limit(limit).offset(start))
    return [_dataset_from_row(conn, tenant, r) for r in rows]


def _last_batch(conn: Connection, dataset_id: str) -> Any:
    return conn.execute(
        sa.select(batches.c.id, batches.c.status).where(batches.c.dataset_id == dataset_id)
        .order_by(batches.c.created_ms.desc(), batches.c.id.desc()).limit(1)
    ).first()


def dataset_json(conn: Connection, dataset: Dataset, properties: list[str] | None = None) -> dict[str, Any]:
    body = dict(dataset.body)
    behavior = {"profile": "record", "experienceevent": "time-series"}.get(
        dataset.xdm_class.kind if dataset.xdm_class else "", "adhoc")
    rendered: dict[str, Any] = {
        **body,
        "version": "1.0.0",
        "imsOrg": dataset.tenant.org_id,
        "sandboxId": dataset.tenant.sandbox_id,
        "created": dataset.created_ms,
        "updated": dataset.updated_ms,
        "createdClient": body.get("createdClient", "openprofile"),
        "createdUser": body.get("createdClient", "openprofile") + "@AdobeID",
        "updatedUser": body.get("createdClient", "openprofile") + "@AdobeID",
        "tags": body.get("tags") or {},
        "classification": {"dataBehavior": behavior, "managedBy": "CUSTOMER"},
        "viewId": dataset.id,
        "files": f"@/dataSetFiles?dataSetId={dataset.id}",
        "observableSchema": to_observable_schema(dataset.structure) if dataset.structure else {},
    }
    last = _last_batch(conn, dataset.id)
    if last is not None:
        rendered["lastBatchId"] = last.id
        rendered["lastBatchStatus"] = last.status
    if properties:
        rendered = {k: v for k, v in rendered.items() if k in properties}
    return rendered


def patch_dataset(conn: Connection, tenant: Tenant, dataset_id: str, patch: Any) -> Dataset:
    """JSON-Patch (a list of operations) or a JSON merge of top-level fields (an object)."""
    dataset = get_dataset(conn, tenant, dataset_id, lock=True)
    if isinstance(patch, list):
        for index, op in enumerate(patch):
            path = op.get("path", "") if isinstance(op, dict) else ""
            top = path.lstrip("/").split("/", 1)[0]
            if top in READ_ONLY_DATASET_FIELDS:
                raise ValidationFailed(f"'{path}' is read-only", fields=[FieldError(f"/{index}/path", "read-only")])
        body = apply_patch(dataset.body, patch)
    elif isinstance(patch, dict):
        read_only = sorted(READ_ONLY_DATASET_FIELDS & patch.keys())
        if read_only:
            raise ValidationFailed(f"read-only fields: {', '.join(read_only)}",
                                   fields=[FieldError(f"/{f}", "read-only") for f in read_only])
        body = {**dataset.body, **patch}
    else:
        raise BadRequest("A PATCH body is a JSON-Patch array or a JSON object.")
    if not isinstance(body.get("name"), str) or not body["name"]:
        raise ValidationFailed("name must stay a non-empty string", fields=[FieldError("/name", "required")])
    _check_tags(body)
    _check_schema_ref(conn, tenant, body)
    conn.execute(datasets.update().where(datasets.c.id == dataset.id).values(
        body=body, name=body["name"], updated_ms=now_ms()))
    return get_dataset(conn, tenant, dataset_id)


def set_structure(conn: Connection, dataset: Dataset, structure: Structure) -> None:
    conn.execute(datasets.update().where(datasets.c.id == dataset.id).values(structure=structure, updated_ms=now_ms()))


def delete_dataset(conn: Connection, tenant: Tenant, dataset_id: str) -> None:
    """Forget the dataset and its batches and files; the caller removes its lake directory."""
    dataset = get_dataset(conn, tenant, dataset_id, lock=True)
    conn.execute(batch_files.delete().where(batch_files.c.dataset_id == dataset.id))
    conn.execute(batches.delete().where(batches.c.dataset_id == dataset.id))
    conn.execute(datasets.delete().where(datasets.c.id == dataset.id))


# --- batches -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    id: str
    tenant: Tenant
    dataset_id: str
    status: str
    input_format: dict[str, Any] | None
    body: dict[str, Any]
    errors: list[dict[str, Any]]
    metrics: dict[str, Any]
    created_ms: int
    updated_ms: int
    started_ms: int | None
    completed_ms: int | None


def _batch_from_row(tenant: Tenant, row: Any) -> Batch:
    return Batch(
        id=row.id, tenant=tenant, dataset_id=row.dataset_id, status=row.status, input_format=row.input_format,
        body=dict(row.body), errors=list(row.errors), metrics=dict(row.metrics), created_ms=row.created_ms,
        updated_ms=row.updated_ms, started_ms=row.started_ms, completed_ms=row.completed_ms,
    )


def create_batch(conn: Connection, tenant: Tenant, dataset_id: str, *, input_format: dict[str, Any] | None,
                 status: str = "loading", body: dict[str, Any] | None = None, batch_id: str | None = None) -> Batch:
    get_dataset(conn, tenant, dataset_id)
    now = now_ms()
    batch_id = batch_id or ids.batch_id()
    conn.execute(batches.insert().values(
        id=batch_id, org_id=tenant.org_id, sandbox_id=tenant.sandbox_id, dataset_id=dataset_id, status=status,
        input_format=input_format, body=body or {}, errors=[], metrics={}, created_ms=now, updated_ms=now,
    ))
    return get_batch(conn, tenant, batch_id)


def get_batch(conn: Connection, tenant: Tenant, batch_id: str) -> Batch:
    row = conn.execute(sa.select(batches).where(batches.c.id == batch_id, tenant_scope(batches, tenant))).first()
    if row is None:
        raise NotFound(f"Batch '{batch_id}' was not found in this sandbox.")
    return _batch_from_row(tenant, row)


def list_batches(conn: Connection, tenant: Tenant, *, limit: int, start: int, order_by: str | None,
                 dataset_id: str | None = None, status: str | None = None,
                 created_after: int | None = None, created_before: int | None = None) -> list[Batch]:
    query = sa.select(batches).where(tenant_scope(batches, tenant))
    if dataset_id is not None:
        query = query.where(batches.c.dataset_id == dataset_id)
    if status is not None:
        query = query.where(batches.c.status == status)
    if created_after is not None:
        query = query.where(batches.c.created_ms > created_after)
    if created_before is not None:
        query = query.where(batches.c.created_ms < created_before)
    rows = conn.execute(query.order_by(*_order(batches, order_by, {"created", "updated", "id"})).limit(limit)
                        .offset(start))
    return [_batch_from_row(tenant, r) for r in rows]


def set_batch_status(conn: Connection, tenant: Tenant, batch_id: str, *, expected: tuple[str, ...], status: str,
                     **values: Any) -> bool:
    """Compare-and-set: move the batch to `status` only if it is in one of `expected`."""
    now = now_ms()
    extra = {"completed_ms": now} if status in FINAL_BATCH_STATUSES else {}
    result = conn.execute(
        batches.update()
        .where(batches.c.id == batch_id, tenant_scope(batches, tenant), batches.c.status.in_(expected))
        .values(status=status, updated_ms=now, **extra, **values)
    )
    return result.rowcount == 1


def batch_json(batch: Batch) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "id": batch.id,
        "imsOrg": batch.tenant.org_id,
        "sandboxId": batch.tenant.sandbox_id,
        "status": batch.status,
        "created": batch.created_ms,
        "updated": batch.updated_ms,
        "createdClient": batch.body.get("createdClient", "openprofile"),
        "createdUser": batch.body.get("createdClient", "openprofile") + "@AdobeID",
        "updatedUser": batch.body.get("createdClient", "openprofile") + "@AdobeID",
        "version": "1.0.0",
        "relatedObjects": [{"type": "dataSet", "id": batch.dataset_id}],
        "metrics": batch.metrics,
        "errors": batch.errors,
        "tags": batch.body.get("tags") or {},
    }
    if batch.input_format is not None:
        rendered["inputFormat"] = batch.input_format
    if batch.started_ms is not None:
        rendered["started"] = batch.started_ms
    if batch.completed_ms is not None:
        rendered["completed"] = batch.completed_ms
    if "recordsWritten" in batch.metrics:
        rendered["recordCount"] = batch.metrics["recordsWritten"]
        rendered["failedRecordCount"] = batch.metrics.get("recordsFailed", 0)
    if "size" in batch.metrics:
        rendered["size"] = batch.metrics["size"]
    return rendered


# --- batch files ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchFile:
    id: str
    batch_id: str
    dataset_id: str
    name: str
    path: str
    size: int
    records: int
    created_ms: int


def register_files(conn: Connection, tenant: Tenant, batch: Batch, files: list[tuple[str, str, int, int]]) -> None:
    """Record a published batch's files: (name, lake-relative path, size, records), one dataSetFile each."""
    now = now_ms()
    conn.execute(batch_files.delete().where(batch_files.c.batch_id == batch.id))
    if files:
        conn.execute(batch_files.insert(), [
            {"id": f"{batch.id}-{n}", "org_id": tenant.org_id, "sandbox_id": tenant.sandbox_id,
             "batch_id": batch.id, "dataset_id": batch.dataset_id, "name": name, "path": path, "size": size,
             "records": records, "created_ms": now}
            for n, (name, path, size, records) in enumerate(files, start=1)
        ])


def _file_from_row(row: Any) -> BatchFile:
    return BatchFile(row.id, row.batch_id, row.dataset_id, row.name, row.path, row.size, row.records, row.created_ms)


def list_files(conn: Connection, tenant: Tenant, batch_id: str) -> list[BatchFile]:
    rows = conn.execute(
        sa.select(batch_files).where(batch_files.c.batch_id == batch_id, tenant_scope(batch_files, tenant))
        .order_by(batch_files.c.id)
    )
    return [_file_from_row(r) for r in rows]


def get_file(conn: Connection, tenant: Tenant, file_id: str) -> BatchFile:
    """A published file of a successful batch of this tenant (others are invisible)."""
    row = conn.execute(
        sa.select(batch_files).join(batches, batches.c.id == batch_files.c.batch_id)
        .where(batch_files.c.id == file_id, tenant_scope(batch_files, tenant), batches.c.status == "success")
    ).first()
    if row is None:
        raise NotFound(f"Dataset file '{file_id}' was not found in this sandbox.")
    return _file_from_row(row)
