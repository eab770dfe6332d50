"""Batch ingestion: create a batch, receive its files, and on COMPLETE turn them into lake Parquet.

COMPLETE only queues the work (`ingest.batch`); a worker parses and checks the files with the
engine, publishes the staged Parquet by rename and marks the batch `success` in one transaction,
or marks it `failed` with the reasons and publishes nothing. Re-running a job (after a worker died)
starts again from the uploaded files, so it is safe.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from openprofile.catalog import service as catalog
from openprofile.core.clock import now_ms
from openprofile.core.errors import BadRequest, FieldError, NotFound, ValidationFailed
from openprofile.core.platform import Platform
from openprofile.core.queue import ClaimedJob, Handler, enqueue
from openprofile.core.tenancy import Tenant
from openprofile.engine.ingest import IngestFailure, ingest_files
from openprofile.engine.structure import StructureConflict, merge_structures
from openprofile.ingest.models import CreateBatchRequest
from openprofile.profile import store as profile_store

JOB_KIND = "ingest.batch"
_FILE_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._ -]{0,254}$")


def create_batch(conn: Connection, tenant: Tenant, request: CreateBatchRequest) -> catalog.Batch:
    try:
        catalog.get_dataset(conn, tenant, request.datasetId)
    except NotFound as exc:
        exc.fields = [FieldError("/datasetId", f"unknown dataset '{request.datasetId}'")]
        raise
    body: dict[str, Any] = {"createdClient": tenant.client_id or "openprofile"}
    if request.tags:
        body["tags"] = request.tags
    return catalog.create_batch(conn, tenant, request.datasetId,
                                input_format=request.inputFormat.model_dump(exclude_none=True), body=body)


def check_file_name(name: str) -> None:
    if not _FILE_NAME.match(name) or name in (".", ".."):
        raise ValidationFailed(f"File name '{name}' is not allowed",
                               fields=[FieldError("fileName", "letters, digits, spaces and ._- only, at most 255")])


def loading_batch(conn: Connection, tenant: Tenant, batch_id: str, dataset_id: str | None = None) -> catalog.Batch:
    """The batch, if it still accepts files and actions; 400 once it is complete, aborted or failed."""
    batch = catalog.get_batch(conn, tenant, batch_id)
    if dataset_id is not None and batch.dataset_id != dataset_id:
        raise NotFound(f"Batch '{batch_id}' does not belong to dataset '{dataset_id}'.",
                       fields=[FieldError("datasetId", f"batch belongs to '{batch.dataset_id}'")])
    if batch.status != "loading":
        raise BadRequest(f"Batch '{batch_id}' is '{batch.status}'; files and actions are accepted only while it is "
                         "'loading'.")
    return batch


def uploaded_files(platform: Platform, batch_id: str) -> list[tuple[str, Path]]:
    folder = platform.lake.upload_dir(batch_id)
    if not folder.is_dir():
        return []
    return sorted((p.name, p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".part-"))


def complete(platform: Platform, conn: Connection, tenant: Tenant, batch_id: str) -> None:
    loading_batch(conn, tenant, batch_id)
    if not catalog.set_batch_status(conn, tenant, batch_id, expected=("loading",), status="processing",
                                    started_ms=now_ms()):
        raise BadRequest(f"Batch '{batch_id}' is no longer 'loading'.")
    enqueue(conn, JOB_KIND, tenant, batch_id, {"batchId": batch_id})


def abort(platform: Platform, conn: Connection, tenant: Tenant, batch_id: str, status: str = "aborted") -> None:
    loading_batch(conn, tenant, batch_id)
    if not catalog.set_batch_status(conn, tenant, batch_id, expected=("loading",), status=status):
        raise BadRequest(f"Batch '{batch_id}' is no longer 'loading'.")


def _fail(platform: Platform, tenant: Tenant, batch_id: str, code: str, description: str,
          rows: list[str] | None = None, metrics: dict[str, Any] | None = None) -> None:
    error = {"code": code, "description": description, "rows": rows or []}
    with platform.engine.begin() as conn:
        catalog.set_batch_status(conn, tenant, batch_id, expected=("processing",), status="failed",
                                 errors=[error], metrics=metrics or {})
    platform.lake.discard_staging(batch_id)


class _Superseded(Exception):
    """The batch left `processing` (aborted, or settled by another worker) while this one worked."""


def run_ingest_job(platform: Platform, job: ClaimedJob) -> None:
    tenant, batch_id = job.tenant, job.ref
    with platform.engine.connect() as conn:
        batch = catalog.get_batch(conn, tenant, batch_id)
        if batch.status != "processing":
            return
        try:
            dataset = catalog.get_dataset(conn, tenant, batch.dataset_id)
        except NotFound:
            _fail(platform, tenant, batch_id, "DATASET_DELETED", f"Dataset '{batch.dataset_id}' was deleted.")
            return
    started = now_ms()
    inputs = uploaded_files(platform, batch_id)
    staged = platform.lake.staging_dir(batch_id)
    input_bytes = sum(path.stat().st_size for _, path in inputs)
    try:
        result = ingest_files(
            inputs, str((batch.input_format or {}).get("format", "json")),
            dataset.xdm_class.kind if dataset.xdm_class else None, dataset.structure, staged,
            rows_per_file=platform.settings.rows_per_file, threads=platform.settings.engine_threads,
        )
    except IngestFailure as refused:
        rows = sorted({str(r.row) for r in refused.rows}, key=int)
        described = refused.message
        if refused.rows:
            described += " " + "; ".join(f"{r.file} row {r.row}: {r.reason}" for r in refused.rows[:100])
        _fail(platform, tenant, batch_id, refused.code, described, rows,
              {"recordsRead": 0, "recordsWritten": 0, "inputByteSize": input_bytes})
        return
    metrics = {
        "recordsRead": result.records_read, "recordsWritten": result.records_written, "recordsFailed": 0,
        "startTime": started, "endTime": now_ms(), "inputByteSize": input_bytes,
        "outputByteSize": sum(f.size for f in result.files), "size": sum(f.size for f in result.files),
        "partitionCount": len(result.files),
    }
    failure: tuple[str, str] | None = None
    try:
        with platform.engine.begin() as conn:
            try:
                current = catalog.get_dataset(conn, tenant, batch.dataset_id, lock=True)
                structure = merge_structures(current.structure, result.structure)
            except NotFound:
                failure = ("DATASET_DELETED", f"Dataset '{batch.dataset_id}' was deleted.")
            except StructureConflict as conflict:
                failure = ("SCHEMA_CONFLICT", str(conflict))
            else:
                target = platform.lake.publish(staged, tenant, batch.dataset_id, batch_id)
                catalog.register_files(conn, tenant, batch, [
                    (f.name, platform.lake.relative(target / f.name), f.size, f.records) for f in result.files
                ])
                catalog.set_structure(conn, current, structure)
                if not catalog.set_batch_status(conn, tenant, batch_id, expected=("processing",),
                                                status="success", metrics=metrics, errors=[]):
                    raise _Superseded
                profile_store.register_batch(conn, tenant, current, batch_id)
    except _Superseded:
        platform.lake.remove_batch(tenant, batch.dataset_id, batch_id)
        return
    if failure is not None:
        _fail(platform, tenant, batch_id, *failure)
        return
    platform.lake.discard_uploads(batch_id)


def give_up_ingest(platform: Platform, job: ClaimedJob, reason: str) -> None:
    _fail(platform, job.tenant, job.ref, "INGEST_ABORTED", f"Ingestion stopped: {reason}")


def handler(platform: Platform) -> Handler:
    return Handler(run=lambda job: run_ingest_job(platform, job),
                   give_up=lambda job, reason: give_up_ingest(platform, job, reason))


def upload_path(platform: Platform, batch_id: str, name: str) -> tuple[Path, Path]:
    """Where an upload is streamed (a hidden part file) and where it lands once whole."""
    folder = platform.lake.upload_dir(batch_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".part-{name}-{os.getpid()}-{now_ms()}", folder / name
