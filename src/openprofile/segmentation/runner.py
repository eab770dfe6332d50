"""The segment job worker: evaluates a job's segments over merged profiles and publishes memberships.

Claimed from the durable queue (`segment.run`). Under the tenant's segmentation lock it applies pending
profile-store batches, then for each merge policy the job uses it materialises the merged profiles once
(a DuckDB temp table with `xEvent`), evaluates the policy's segments in `inSegment` dependency order at
one evaluation instant (a reference to a segment evaluated in the same job reads that job's qualified set,
any other reference the current membership), and writes the policy's next membership file
(`segmentation/membership.py`). The files become current only when the job moves to `SUCCEEDED`: the
compare-and-set and the pointer switches happen in one metadata transaction, so a job cancelled while it
ran publishes nothing. A re-run after a crash starts again from the previous membership.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb

from openprofile.core.clock import now_ms
from openprofile.core.errors import NotFound
from openprofile.core.locks import named_lock
from openprofile.core.platform import Platform
from openprofile.core.queue import ClaimedJob, Handler, JobCancelled, JobFailed
from openprofile.core.tenancy import Tenant
from openprofile.engine import segments as sql
from openprofile.engine.export import with_cluster_identities
from openprofile.engine.merge import merge_sql, merged_structure
from openprofile.engine.pql import (
    Expression,
    PQLError,
    References,
    check,
    parse,
    references,
    sql_string,
    timestamp_sql,
    to_sql,
)
from openprofile.engine.profile_store import connect
from openprofile.engine.structure import Structure
from openprofile.profile import memberships as membership
from openprofile.profile import store as profile_store
from openprofile.profile.policies import MergePolicy, resolve_merge_policy
from openprofile.segmentation import definitions, jobs

log = logging.getLogger(__name__)

EVALUATION_MEMORY_LIMIT = "3GB"
"""DuckDB's memory limit for one evaluation (segment job or preview): past it, the merged profiles table and
the joins spill to the data directory's `tmp/duckdb` instead of growing with the store."""




def _metric(start: int, end: int) -> dict[str, int]:
    return {"startTimeInMs": start, "endTimeInMs": end, "totalTimeInMs": end - start}


def quote_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _ordered(segments: list[dict[str, Any]], compiled: dict[str, Expression]) -> list[dict[str, Any]]:
    """Segments with every `inSegment` reference to another segment of the list before the segment itself."""
    by_id = {s["segmentId"]: s for s in segments}
    done: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(segment_id: str, path: tuple[str, ...]) -> None:
        if segment_id in seen or segment_id in path:
            return
        for ref in sorted(compiled[segment_id].segment_refs):
            if ref in by_id:
                visit(ref, (*path, segment_id))
        seen.add(segment_id)
        done.append(by_id[segment_id])

    for segment in segments:
        visit(segment["segmentId"], ())
    return done


def _check_running(platform: Platform, job: jobs.SegmentJob) -> None:
    with platform.engine.connect() as conn:
        try:
            current = jobs.get(conn, job.tenant, job.id)
        except NotFound:
            raise JobCancelled from None
    if current.status != jobs.PROCESSING:
        raise JobCancelled


ALWAYS_MERGED = ("identityMap", "extSourceSystemAudit")
"""Profile columns a segment evaluation always merges: the identities (`__ns`, `identities`) and the
custom timestamp that decides which fragment wins."""


def _only(structure: Structure, names: frozenset[str] | None, *keep: str) -> Structure:
    return structure if names is None else {k: v for k, v in structure.items() if k in names or k in keep}


def profiles_table(duck: duckdb.DuckDBPyConnection, platform: Platform, snapshot: profile_store.StoreSnapshot,
                   policy: MergePolicy, unions: tuple[Structure, Structure], reads: References | None = None) -> int:
    """Materialise the policy's merged profiles (with `xEvent`) as `__profiles`; returns how many there are.

    With `reads` (what the expressions to evaluate read, `pql.references`), only those profile columns are
    merged and only those event fields carried in `xEvent` (none, and no event lists, when no expression reads
    events; their groups still count as profiles): merging and listing what nobody reads was most of the
    cost."""
    inputs = profile_store.merge_inputs(platform, snapshot, policy)
    profile_union, event_union = unions
    stored_events = inputs.event_structure
    with_events = True
    if reads is not None:
        inputs = replace(inputs, sources=[replace(s, structure=_only(s.structure, reads.profile, *ALWAYS_MERGED))
                                          for s in inputs.sources])
        profile_union = _only(profile_union, reads.profile)
        stored_events = _only(stored_events, reads.item_fields, "timestamp")
        event_union = _only(event_union, reads.item_fields, "timestamp")
        with_events = reads.events
    merged: str | None = None
    if inputs.sources:
        merged = merge_sql(inputs.sources, inputs.rule)
        if inputs.members is not None:
            merged = with_cluster_identities(merged, inputs.members)
    select = sql.profiles_sql(merged, merged_structure(inputs.sources) if inputs.sources else {}, profile_union,
                              inputs.events, stored_events, event_union, with_events=with_events)
    duck.execute(f"CREATE OR REPLACE TEMP TABLE __profiles AS {select}")
    row = duck.execute("SELECT count(*) FROM __profiles").fetchone()
    return int(row[0]) if row else 0


def _reads(expressions: list[Expression]) -> References:
    """What a set of expressions reads together."""
    found = [references(e) for e in expressions]
    profile: frozenset[str] | None = frozenset()
    items: frozenset[str] | None = frozenset()
    for r in found:
        profile = None if profile is None or r.profile is None else profile | r.profile
        items = None if items is None or r.item_fields is None else items | r.item_fields
    return References(profile, any(r.events for r in found), items)


def _evaluate_policy(duck: duckdb.DuckDBPyConnection, platform: Platform, job: jobs.SegmentJob,
                     policy: MergePolicy, segments: list[dict[str, Any]], compiled: dict[str, Expression],
                     now_sql: str, metrics: dict[str, Any]) -> Path:
    """Evaluate one policy's segments over `__profiles`; write (not publish) its next membership file."""
    previous = membership.current_memberships(platform, job.tenant, policy.id)
    source = f"read_parquet({quote_path(previous)})" if previous else f"({sql.empty_membership_sql()})"
    duck.execute(f"CREATE OR REPLACE TEMP TABLE __prev AS SELECT _group, segment_id, status, "
                 f"CAST(last_qualification AS TIMESTAMPTZ) AS last_qualification FROM {source}")
    tables: dict[str, str] = {}
    for number, segment in enumerate(_ordered(segments, compiled)):
        _check_running(platform, job)
        segment_id = segment["segmentId"]
        expression = compiled[segment_id]
        relations = {ref: tables.get(ref, sql.active_members_sql("__prev", ref)) for ref in expression.segment_refs}
        joins = sql.InSegmentJoins(relations)
        condition = to_sql(expression, now_sql=now_sql, in_segment_sql=joins)
        table = f"__q_{number}"
        duck.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql.qualified_sql('__profiles', condition, joins)}")
        tables[segment_id] = table
        counts = duck.execute(f"SELECT coalesce(__ns, ''), count(*) FROM {table} GROUP BY 1").fetchall()
        metrics["segmentedProfileCounter"][segment_id] = sum(int(c) for _, c in counts)
        metrics["segmentedProfileByNamespaceCounter"][segment_id] = {str(ns): int(c) for ns, c in counts}
    qualified = " UNION ALL ".join(f"SELECT _group, {sql_string(segment_id)} AS segment_id FROM {table}"
                                   for segment_id, table in tables.items())
    duck.execute(f"CREATE OR REPLACE TEMP TABLE __qualified AS {qualified}")
    path = membership.write(duck, platform, job.tenant, policy.id,
                            sql.next_membership_sql("__prev", "__qualified", list(tables), now_sql))
    rows = duck.execute(
        f"SELECT segment_id, status, count(*) FROM read_parquet({quote_path(path)}) "
        f"WHERE status <> 'exited' OR last_qualification = {now_sql} GROUP BY ALL").fetchall()
    by_status: dict[str, Counter[str]] = {s: Counter() for s in tables}
    for segment_id, status, count in rows:
        if segment_id in by_status:
            by_status[segment_id][str(status)] += int(count)
    for segment_id, counter in by_status.items():
        metrics["segmentedProfileByStatusCounter"][segment_id] = {
            s: counter.get(s, 0) for s in ("realized", "existing", "exited")}
    duck.execute("DROP TABLE IF EXISTS __qualified")
    for table in tables.values():
        duck.execute(f"DROP TABLE IF EXISTS {table}")
    return path


def _execute(platform: Platform, job: jobs.SegmentJob) -> tuple[dict[str, Any], list[Path]]:
    tenant = job.tenant
    started = now_ms()
    profile_store.apply_pending(platform, tenant)  # the job sees every batch ingested before it ran
    snapshot = profile_store.snapshot(platform, tenant)
    now = dt.datetime.now(dt.UTC)
    now_sql = timestamp_sql(now)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with platform.engine.connect() as conn:
        unions = definitions.structures(conn, tenant)
        compiled: dict[str, Expression] = {}
        for segment in job.segments:
            text = str(segment["segment"]["expression"]["value"])
            try:
                compiled[segment["segmentId"]] = check(parse(text), *unions)
            except PQLError as error:
                raise JobFailed("SEGMENT_EXPRESSION_INVALID",
                                   f"Segment '{segment['segmentId']}' no longer compiles: {error.message}") from None
            ref = segment["segment"]["mergePolicy"]
            groups.setdefault((str(ref["id"]), int(ref["version"])), []).append(segment)
        policies = {key: resolve_merge_policy(conn, tenant, key[0], key[1]) for key in groups}
    metrics: dict[str, Any] = {"totalProfiles": 0, "segmentedProfileCounter": {},
                               "segmentedProfileByNamespaceCounter": {}, "segmentedProfileByStatusCounter": {},
                               "totalProfilesByMergePolicy": {}}
    written: list[Path] = []
    duck = connect(platform.settings.engine_threads, EVALUATION_MEMORY_LIMIT,
                   platform.settings.data_dir / "tmp" / "duckdb")
    try:
        for key, segments in groups.items():
            policy = policies[key]
            reads = _reads([compiled[s["segmentId"]] for s in segments])
            count = profiles_table(duck, platform, snapshot, policy, unions, reads)
            metrics["totalProfilesByMergePolicy"][policy.id] = count
            metrics["totalProfiles"] = max(metrics["totalProfiles"], count)
            written.append(_evaluate_policy(duck, platform, job, policy, segments, compiled, now_sql, metrics))
            duck.execute("DROP TABLE IF EXISTS __profiles")
    except BaseException:
        for path in written:
            membership.discard(path)
        raise
    finally:
        duck.close()
    finished = now_ms()
    metrics["profileSegmentationTime"] = _metric(started, finished)
    return metrics, written


def run(platform: Platform, claimed: ClaimedJob) -> None:
    tenant = claimed.tenant
    with platform.engine.begin() as conn:
        try:
            job = jobs.get(conn, tenant, str(claimed.payload["jobId"]))
        except NotFound:
            return
        if job.status == jobs.CANCELLING:
            jobs.transition(conn, job, jobs.CANCELLED)
            return
        if job.status not in (jobs.NEW, jobs.QUEUED, jobs.PROCESSING) or not jobs.transition(conn, job,
                                                                                             jobs.PROCESSING):
            return
    _run_processing(platform, job)


def run_inline(platform: Platform, tenant: Tenant, segment_ids: list[str], request_id: str) -> jobs.SegmentJob:
    """Evaluate segments now, in the caller's thread, as a segment job of their own (an export job with
    `evaluationInfo.segmentation`): the job is visible in `/segment/jobs` but never queued, so no worker runs
    it twice. Cancel it with `jobs.cancel`; a job left `PROCESSING` by an earlier attempt with the same
    `request_id` (its worker died) is failed first. Returns the finished job."""
    with platform.engine.begin() as conn:
        jobs.fail_unfinished(conn, tenant, request_id, "SEGMENT_ABORTED", "The job that ran this evaluation stopped.")
        job = jobs.create(conn, tenant, [{"segmentId": s} for s in segment_ids], request_id, queued=False)
        if not jobs.transition(conn, job, jobs.PROCESSING):
            raise RuntimeError(f"segment job {job.id} could not start")
    _run_processing(platform, job)
    finished = _reload(platform, job)
    assert finished is not None
    return finished


def _run_processing(platform: Platform, job: jobs.SegmentJob) -> None:
    """Evaluate a job its caller moved to PROCESSING, under the tenant's segmentation lock, and settle it."""
    tenant = job.tenant
    lock_dir = platform.settings.data_dir / "locks"
    with named_lock(platform.engine, lock_dir, f"segments:{tenant.org_id}:{tenant.sandbox_id}"):
        reloaded = _reload(platform, job)
        if reloaded is None:
            return
        job = reloaded
        written: list[Path] = []
        try:
            metrics, written = _execute(platform, job)
            _succeed(platform, job, metrics, written)
        except JobCancelled:
            for path in written:
                membership.discard(path)
            _settle_cancel(platform, job)
        except JobFailed as error:
            _fail(platform, job, error.code, error.message)
        except (duckdb.Error, OSError) as error:
            _fail(platform, job, "SEGMENT_EVALUATION_FAILED", f"The evaluation stopped: {error}")


def _reload(platform: Platform, job: jobs.SegmentJob) -> jobs.SegmentJob | None:
    with platform.engine.connect() as conn:
        try:
            return jobs.get(conn, job.tenant, job.id)
        except NotFound:
            return None


def _succeed(platform: Platform, job: jobs.SegmentJob, metrics: dict[str, Any], written: list[Path]) -> None:
    with platform.engine.begin() as conn:
        try:
            current = jobs.get(conn, job.tenant, job.id)
        except NotFound:
            raise JobCancelled from None
        finished = now_ms()
        metrics = {**metrics, "totalTime": _metric(current.created_ms, finished)}
        if current.status != jobs.PROCESSING or not jobs.transition(conn, current, jobs.SUCCEEDED, metrics=metrics):
            raise JobCancelled
        for path in written:  # inside the transaction: a failure here rolls the job back to PROCESSING
            membership.publish(path)


def _settle_cancel(platform: Platform, job: jobs.SegmentJob) -> None:
    with platform.engine.begin() as conn:
        try:
            current = jobs.get(conn, job.tenant, job.id)
        except NotFound:
            return
        if current.status == jobs.PROCESSING:  # moved on by someone else: nothing to settle
            return
        if current.status == jobs.CANCELLING:
            jobs.transition(conn, current, jobs.CANCELLED)


def _fail(platform: Platform, job: jobs.SegmentJob, code: str, message: str) -> None:
    log.warning("segment job %s failed: %s", job.id, message)
    with platform.engine.begin() as conn:
        try:
            current = jobs.get(conn, job.tenant, job.id)
        except NotFound:
            return
        if current.status == jobs.CANCELLING:
            jobs.transition(conn, current, jobs.CANCELLED)
        else:
            jobs.transition(conn, current, jobs.FAILED, errors=[{"code": code, "msg": message, "callStack": ""}])


def give_up(platform: Platform, claimed: ClaimedJob, reason: str) -> None:
    with platform.engine.connect() as conn:
        try:
            job = jobs.get(conn, claimed.tenant, str(claimed.payload["jobId"]))
        except NotFound:
            return
    _fail(platform, job, "SEGMENT_ABORTED", f"The segment job could not finish: {reason}")


def handler(platform: Platform) -> Handler:
    return Handler(run=lambda job: run(platform, job), give_up=lambda job, reason: give_up(platform, job, reason))
