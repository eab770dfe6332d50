"""The export worker: runs one job's plan, publishes its batches, and settles the job — or cleans up.

Claimed from the durable queue (`export.run`). A re-run after a crash starts from the beginning with
the same batch ids (staging is emptied first). A watcher thread polls the job while the query runs
and interrupts DuckDB as soon as the job is `CANCELLING`. Publishing every batch, registering its
files, and moving the job to `SUCCEEDED` happen in one metadata transaction whose compare-and-set
fails if a cancel came first, so a cancelled job never leaves a visible batch.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import duckdb

from openprofile.catalog import service as catalog
from openprofile.core.clock import now_ms
from openprofile.core.errors import NotFound
from openprofile.core.platform import Platform
from openprofile.core.queue import ClaimedJob, Handler, JobCancelled, JobFailed
from openprofile.engine.export import (
    EventPlan,
    ExportPlan,
    SegmentCondition,
    WrittenBatch,
    export_query,
    write_parquet,
)
from openprofile.engine.fields import parse_fields
from openprofile.engine.profile_store import connect, partition_count
from openprofile.engine.structure import from_arrow_schema, merge_structures
from openprofile.export import jobs
from openprofile.export import service as export_service
from openprofile.export.models import parse_rfc3339
from openprofile.profile import memberships
from openprofile.profile import store as profile_store
from openprofile.profile.policies import MergePolicy, resolve_merge_policy
from openprofile.segmentation import jobs as segment_jobs
from openprofile.segmentation import runner as segment_runner

log = logging.getLogger(__name__)

EXPORT_MEMORY_LIMIT = "1GB"
"""DuckDB's memory limit for one export job (it runs inside the server process): past it, its sorts, joins
and aggregates spill to the data directory's `tmp/duckdb`. Arrow batches on their way to the Parquet writer
come on top."""




def _ms(value: str | None) -> int | None:
    return int(parse_rfc3339(value).timestamp() * 1000) if value else None


def build_plan(platform: Platform, snapshot: profile_store.StoreSnapshot, policy: MergePolicy,
               request: dict[str, Any]) -> ExportPlan:
    inputs = profile_store.merge_inputs(platform, snapshot, policy)
    filters = request.get("filter") or {}
    qualification = filters.get("segmentQualificationTime") or {}
    events = None
    event_list = (request.get("additionalFields") or {}).get("eventList")
    if event_list is not None and inputs.events:
        window = event_list.get("filter") or {}
        events = EventPlan(
            relations=inputs.events, structure=inputs.event_structure, paths=parse_fields(event_list.get("fields")),
            from_ingest_ms=_ms(window.get("fromIngestTimestamp")), to_ingest_ms=_ms(window.get("toIngestTimestamp")),
            files=inputs.event_files)
    return ExportPlan(
        sources=inputs.sources, rule=inputs.rule, members=inputs.members, paths=parse_fields(request.get("fields")),
        segments=tuple(SegmentCondition(s["segmentId"], s.get("segmentNs", "ups"),
                                        tuple(s.get("status") or ("realized", "existing")))
                       for s in filters.get("segments") or []),
        qualified_from_ms=_ms(qualification.get("startTime")), qualified_to_ms=_ms(qualification.get("endTime")),
        from_ingest_ms=_ms(filters.get("fromIngestTimestamp")), empty_profiles=bool(filters.get("emptyProfiles")),
        events=events, slices=partition_count(inputs.fragments), partitions=inputs.partitions,
        memberships=memberships.current_memberships(platform, snapshot.tenant, policy.id),
    )


def _watch(platform: Platform, job: jobs.ExportJob, conn: duckdb.DuckDBPyConnection,
           stop: threading.Event, cancelled: threading.Event, progress: list[WrittenBatch]) -> None:
    """Interrupt the query when the job is cancelled (or deleted); meanwhile, record its progress."""
    reported = (-1, -1)
    while not stop.wait(0.25):
        try:
            with platform.engine.begin() as meta:
                current = jobs.get(meta, job.tenant, job.id)
                now = (sum(p.rows for p in progress), sum(len(p.files) for p in progress))
                if current.status == jobs.PROCESSING and now != reported:
                    jobs.record_progress(meta, current, {"profilesWritten": now[0], "files": now[1]})
                    reported = now
        except NotFound:
            current = None
        if current is None or current.status == jobs.CANCELLING:
            cancelled.set()
            conn.interrupt()
            for written in progress:
                written.interrupted.set()
                for cursor in list(written.cursors):
                    cursor.interrupt()
            return


def _metric(start: int, end: int) -> dict[str, int]:
    return {"startTimeInMs": start, "endTimeInMs": end, "totalTimeInMs": end - start}


def run(platform: Platform, claimed: ClaimedJob) -> None:
    tenant = claimed.tenant
    with platform.engine.begin() as conn:
        try:
            job = jobs.get(conn, tenant, int(claimed.payload["jobId"]))
        except NotFound:
            return
        if job.status == jobs.CANCELLING:
            _settle_cancel(platform, job)
            return
        if job.status not in (jobs.NEW, jobs.PROCESSING) or not jobs.transition(conn, job, jobs.PROCESSING):
            return
    job = _reload(platform, job)
    for batch_id in job.batch_ids:
        platform.lake.discard_staging(batch_id)
    try:
        written = _execute(platform, job)
        _publish(platform, job, written)
    except JobCancelled:
        _settle_cancel(platform, _reload(platform, job))
    except JobFailed as error:
        _fail(platform, job, error.code, error.message, "")
    except (duckdb.Error, OSError) as error:
        code = "EXPORT_WRITE_FAILED" if isinstance(error, OSError) else "EXPORT_QUERY_FAILED"
        _fail(platform, job, code, f"The export stopped: {error}", type(error).__name__)


def _reload(platform: Platform, job: jobs.ExportJob) -> jobs.ExportJob:
    with platform.engine.connect() as conn:
        return jobs.get(conn, job.tenant, job.id)


def evaluated_segments(request: dict[str, Any]) -> list[str]:
    """The segments an export evaluates first (`evaluationInfo.segmentation: true`): its `ups` filter segments."""
    if not (request.get("evaluationInfo") or {}).get("segmentation"):
        return []
    listed = ((request.get("filter") or {}).get("segments")) or []
    return list(dict.fromkeys(s["segmentId"] for s in listed if str(s.get("segmentNs", "ups")).lower() == "ups"))


def _evaluate_segments(platform: Platform, job: jobs.ExportJob) -> None:
    """With `evaluationInfo.segmentation`, evaluate the filter's segments as a segment job run here, before the
    export reads the memberships; a cancel of the export cancels it."""
    segment_ids = evaluated_segments(job.request)
    if not segment_ids:
        return
    request_id = f"export-{job.id}"
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.25):
            try:
                status = _reload(platform, job).status
            except NotFound:
                status = jobs.CANCELLING
            if status == jobs.CANCELLING:
                with platform.engine.begin() as conn:
                    for running in segment_jobs.unfinished(conn, job.tenant, request_id):
                        segment_jobs.cancel(conn, job.tenant, running.id)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        evaluation = segment_runner.run_inline(platform, job.tenant, segment_ids, request_id)
    finally:
        stop.set()
        watcher.join()
    if evaluation.status == segment_jobs.CANCELLED:
        raise JobCancelled
    if evaluation.status != segment_jobs.SUCCEEDED:
        reason = "; ".join(str(e.get("msg")) for e in evaluation.errors) or evaluation.status
        raise JobFailed("EXPORT_SEGMENTATION_FAILED",
                          f"Evaluating the segments (segment job {evaluation.id}) failed: {reason}")


def _execute(platform: Platform, job: jobs.ExportJob) -> dict[str, tuple[WrittenBatch, Path]]:
    profile_store.apply_pending(platform, job.tenant)  # an export sees every batch ingested before it ran
    snapshot = profile_store.snapshot(platform, job.tenant)
    with platform.engine.connect() as conn:
        policy = resolve_merge_policy(conn, job.tenant, job.merge_policy["id"], job.merge_policy["version"])
    listed = [s["segmentId"] for s in (job.request.get("filter") or {}).get("segments") or []
              if str(s.get("segmentNs", "ups")).lower() == "ups"]
    with platform.engine.connect() as conn:
        unknown = export_service.unknown_segments(platform, conn, job.tenant, listed)
    if unknown:
        raise JobFailed("EXPORT_UNKNOWN_SEGMENT", f"Segment '{unknown[0]}' is neither a segment definition of this "
                          "sandbox nor an audience of the ingested segmentMembership data.")
    _evaluate_segments(platform, job)
    plan = build_plan(platform, snapshot, policy, job.request)
    duck = connect(platform.settings.engine_threads, EXPORT_MEMORY_LIMIT, platform.settings.data_dir / "tmp" / "duckdb")
    stop, cancelled = threading.Event(), threading.Event()
    progress: list[WrittenBatch] = []
    watcher = threading.Thread(target=_watch, args=(platform, job, duck, stop, cancelled, progress), daemon=True)
    watcher.start()
    results: dict[str, tuple[WrittenBatch, Path]] = {}
    try:
        targets: list[tuple[str, SegmentCondition | None]]
        if job.destination.get("batches"):
            targets = [(b["batchId"], SegmentCondition(b["segmentId"], b.get("segmentNs", "ups"),
                                                       tuple(b["status"] if isinstance(b["status"], list)
                                                             else [b["status"]])))
                       for b in job.destination["batches"]]
        else:
            targets = [(job.destination["batchId"], None)]
        for batch_id, segment in targets:
            if cancelled.is_set():
                raise JobCancelled
            if not plan.sources and plan.events is None:
                raise JobFailed("EXPORT_NO_DATA", "No profile-enabled dataset has data for this merge policy yet.")
            staged = platform.lake.staging_dir(batch_id)
            scratch = platform.settings.data_dir / "tmp" / f"export-{job.id}-{len(progress)}"
            shutil.rmtree(scratch, ignore_errors=True)  # a re-run after a crash starts afresh
            query = export_query(plan, only_segment=segment, table=f"__export_rows_{len(progress)}", scratch=scratch)
            progress.append(WrittenBatch())
            results[batch_id] = (write_parquet(duck, query, staged, rows_per_file=platform.settings.rows_per_file,
                                               result=progress[-1]), staged)
    except duckdb.InterruptException:
        raise JobCancelled from None
    except duckdb.Error:
        if cancelled.is_set():
            raise JobCancelled from None
        raise
    finally:
        stop.set()
        watcher.join()
        duck.close()
    if cancelled.is_set():
        raise JobCancelled
    return results


def _publish(platform: Platform, job: jobs.ExportJob, written: dict[str, tuple[WrittenBatch, Path]]) -> None:
    started = now_ms()
    tenant = job.tenant
    published: list[str] = []
    dataset_id = job.destination["datasetId"]
    try:
        with platform.engine.begin() as conn:
            try:
                destination = catalog.get_dataset(conn, tenant, dataset_id, lock=True)
            except NotFound:
                raise JobFailed("EXPORT_DESTINATION_DELETED",
                                  f"The destination dataset '{dataset_id}' was deleted while the job ran.") from None
            structure = destination.structure
            total, query_ms, write_ms = 0, 0.0, 0.0
            by_namespace: dict[str, int] = {}
            for batch_id, (result, staged) in written.items():
                target = platform.lake.publish(staged, tenant, dataset_id, batch_id)
                published.append(batch_id)
                batch = catalog.get_batch(conn, tenant, batch_id)
                catalog.register_files(conn, tenant, batch, [
                    (name, platform.lake.relative(target / name), size, rows) for name, size, rows in result.files])
                batch_metrics = {"recordsRead": result.rows, "recordsWritten": result.rows, "recordsFailed": 0,
                           "startTime": job.created_ms, "endTime": now_ms(),
                           "outputByteSize": sum(f[1] for f in result.files), "partitionCount": len(result.files)}
                if not catalog.set_batch_status(conn, tenant, batch_id, expected=("staging",), status="success",
                                                metrics=batch_metrics, errors=[], started_ms=started):
                    raise JobCancelled
                if result.schema is not None:
                    structure = merge_structures(structure, from_arrow_schema(result.schema))
                total += result.rows
                for namespace, count in result.by_namespace.items():
                    by_namespace[namespace] = by_namespace.get(namespace, 0) + count
                query_ms += result.query_ms
                write_ms += result.write_ms
            if structure:
                catalog.set_structure(conn, destination, structure)
            finished = now_ms()
            export_start = started - int(query_ms + write_ms)
            metrics: dict[str, Any] = {
                **{k: v for k, v in job.metrics.items() if k != "progress"},
                "totalTime": _metric(job.created_ms, finished),
                "profileExportTime": _metric(export_start, export_start + int(query_ms)),
                "aCPDatasetWriteTime": _metric(export_start + int(query_ms), finished),
                "totalExportedProfileCounter": total,
                "exportedProfileByNamespaceCounter": by_namespace,
            }
            current = jobs.get(conn, tenant, job.id)
            if current.status != jobs.PROCESSING or not jobs.transition(conn, current, jobs.SUCCEEDED,
                                                                       metrics=metrics):
                raise JobCancelled
    except (JobCancelled, JobFailed):
        for batch_id in published:
            platform.lake.remove_batch(tenant, dataset_id, batch_id)
        raise


def _settle_cancel(platform: Platform, job: jobs.ExportJob) -> None:
    with platform.engine.begin() as conn:
        current = jobs.get(conn, job.tenant, job.id)
        if current.status == jobs.CANCELLING:
            jobs.transition(conn, current, jobs.CANCELLED, errors=[])
        for batch_id in job.batch_ids:
            catalog.set_batch_status(conn, job.tenant, batch_id, expected=("staging",), status="aborted")
    for batch_id in job.batch_ids:
        platform.lake.discard_staging(batch_id)


def _fail(platform: Platform, job: jobs.ExportJob, code: str, message: str, call_stack: str) -> None:
    log.warning("export job %s failed: %s", job.id, message)
    with platform.engine.begin() as conn:
        current = jobs.get(conn, job.tenant, job.id)
        if current.status == jobs.CANCELLING:
            jobs.transition(conn, current, jobs.CANCELLED)
        else:
            jobs.transition(conn, current, jobs.FAILED, errors=[{"code": code, "msg": message,
                                                                 "callStack": call_stack}])
        for batch_id in job.batch_ids:
            catalog.set_batch_status(conn, job.tenant, batch_id, expected=("staging",), status="failed",
                                     errors=[{"code": code, "description": message, "rows": []}])
    for batch_id in job.batch_ids:
        platform.lake.discard_staging(batch_id)


def give_up(platform: Platform, claimed: ClaimedJob, reason: str) -> None:
    with platform.engine.connect() as conn:
        try:
            job = jobs.get(conn, claimed.tenant, int(claimed.payload["jobId"]))
        except NotFound:
            return
    _fail(platform, job, "EXPORT_ABORTED", f"The export could not finish: {reason}", "")


def handler(platform: Platform) -> Handler:
    return Handler(run=lambda job: run(platform, job), give_up=lambda job, reason: give_up(platform, job, reason))

