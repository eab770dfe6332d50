"""The benchmark harness (issue 6): the export at scale, side by side with its floor, Spark and pandas.

    .venv/bin/python bench/run.py --scale 1000000 [--scale 100000,1000000] [--load-seconds 30] ...
    make bench SCALE=100000

For each scale N, in one run on this machine:

1. **data**: `openprofile generate` writes N people, 3 fragments each over 2 datasets (crm: a CRMID-keyed and an
   email-keyed record; loyalty: an email-keyed record for ~60%), and 10 events per person (seed 11; reused from
   `{out}/gen-{N}x{E}` when it matches);
2. **ingestion**: a real `openprofile serve` (no in-process workers) and one `openprofile worker` process; the
   three datasets are ingested through the batch-ingestion API, timed to the lake and to the profile store;
3. **exports** through the API, each `POST /export/jobs` → SUCCEEDED: all fields under a `pdg`,
   timestampOrdered merge policy; the same with an event list (all event fields); the same filtered on three
   of the ingested `segmentMembership` segments (about a third of the profiles). CPU is the server's plus the
   worker's (/proc/PID/stat); peak memory is each one's VmHWM, reset before each export;
4. **segmentation**: 20 segment definitions (`POST /segment/definitions`: attributes, events, both) evaluated
   by one segment job (`POST /segment/jobs`);
5. **the API under load** (the worker stopped first, so POSTed export jobs stay queued and nothing runs
   behind the measurement; they are cancelled through the API afterwards): 100k finished export jobs inserted
   into the metadata DB in bulk, then one client alone and 50 concurrent closed-loop clients for
   `--load-seconds` each against `GET /export/jobs` (first page or a keyset page), `GET /export/jobs/{id}`,
   `GET /access/entities` (by CRMID, pdg) and `POST /export/jobs`;
6. **the floor and the peers**, each in its own process after the server has stopped (`peers.py`): DuckDB
   reading the same lake files and writing them back unmerged; pandas (up to `--pandas-max` profiles) and
   PySpark `local[cores]` (up to `--spark-max`) computing each export's result from the same files;
7. **checks** (`verify.py`): every export's row count equals the pandas and Spark answers and its Parquet row
   count; a sample of profiles (matched on their smallest identity) equals theirs field by field, events
   included; each segment's count equals the condition evaluated again in SQL over the checked profiles and the
   events; lookups answer what the export wrote. Any failure fails the run (exit status 1).

Results go to `{results}/scale-{N}.json`; `RESULTS.md` and `results.png` are rewritten from every scale's file
found there (`report.py`). Big scratch data stays under `--out` (bench/out, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadtest
import report
import verify
from bench_common import (
    BENCH_DIR,
    DEFAULT_OUT,
    ENTITIES,
    EVENT_CLASS,
    EXPORT_JOBS,
    POLICIES,
    PROFILE_CLASS,
    UNION,
    DemoClient,
    Proc,
    Server,
    generated_data,
    git_revision,
    ingest_all,
    lake_files,
    machine,
    now_utc,
    running_server,
    start_worker,
    stop_process,
)
from peers import Source, Spec

from openprofile.generate import SEGMENTS

SEED = 11
FILTER_SEGMENTS = list(SEGMENTS)[:3]
"""The export's segment filter: three of the generator's segments, about a third of the profiles."""
TASKS = ("profiles", "events", "segment")
SEGMENTS_DEFINED: list[dict[str, str]] = [
    # name, PQL, and the same condition in SQL: over a merged profile (profile_sql), over its events (event_sql)
    {"name": "Paris", "pql": 'homeAddress.city = "Paris"', "profile_sql": "homeAddress.city = 'Paris'"},
    {"name": "US residents", "pql": 'homeAddress.countryCode = "US"', "profile_sql": "homeAddress.countryCode = 'US'"},
    {"name": "Europe", "pql": 'homeAddress.countryCode in ["DE", "FR", "ES", "NL", "GB"]',
     "profile_sql": "homeAddress.countryCode IN ('DE', 'FR', 'ES', 'NL', 'GB')"},
    {"name": "Gold tier", "pql": 'loyalty.tier = "gold"', "profile_sql": "loyalty.tier = 'gold'"},
    {"name": "Platinum tier", "pql": 'loyalty.tier = "platinum"', "profile_sql": "loyalty.tier = 'platinum'"},
    {"name": "Points over 20k", "pql": "loyalty.points > 20000", "profile_sql": "loyalty.points > 20000"},
    {"name": "Points 60k and up", "pql": "loyalty.points >= 60000", "profile_sql": "loyalty.points >= 60000"},
    {"name": "Women", "pql": 'person.gender = "female"', "profile_sql": "person.gender = 'female'"},
    {"name": "Works in Germany", "pql": 'workAddress.country = "Germany"',
     "profile_sql": "workAddress.country = 'Germany'"},
    {"name": "Smiths", "pql": 'person.name.lastName = "Smith"', "profile_sql": "person.name.lastName = 'Smith'"},
    {"name": "Tokyo with points", "pql": 'homeAddress.city = "Tokyo" and loyalty.points > 10000',
     "profile_sql": "homeAddress.city = 'Tokyo' AND loyalty.points > 10000"},
    {"name": "Mary or James", "pql": 'person.name.firstName = "Mary" or person.name.firstName = "James"',
     "profile_sql": "person.name.firstName IN ('Mary', 'James')"},
    {"name": "Buyers", "pql": 'xEvent[eventType = "commerce.purchases"].count() > 0',
     "event_sql": "count(*) FILTER (WHERE eventType = 'commerce.purchases') > 0"},
    {"name": "Repeat buyers", "pql": 'xEvent[eventType = "commerce.purchases"].count() >= 2',
     "event_sql": "count(*) FILTER (WHERE eventType = 'commerce.purchases') >= 2"},
    {"name": "Cart adders", "pql": 'xEvent[eventType = "commerce.productListAdds"].count() > 0',
     "event_sql": "count(*) FILTER (WHERE eventType = 'commerce.productListAdds') > 0"},
    {"name": "Big spenders", "pql": "xEvent.sum(commerce.order.priceTotal) > 500",
     "event_sql": "sum(commerce.order.priceTotal) > 500"},
    {"name": "Active", "pql": "xEvent.count() > 12", "event_sql": "count(*) > 12"},
    {"name": "One large order", "pql": "exists E from xEvent where E.commerce.order.priceTotal > 200",
     "event_sql": "bool_or(commerce.order.priceTotal > 200)"},
    {"name": "Gold buyers", "pql": 'loyalty.tier = "gold" and xEvent[eventType = "commerce.purchases"].count() > 0',
     "profile_sql": "loyalty.tier = 'gold'",
     "event_sql": "count(*) FILTER (WHERE eventType = 'commerce.purchases') > 0"},
    {"name": "US product viewers",
     "pql": 'homeAddress.countryCode = "US" and xEvent[eventType = "commerce.productViews"].count() >= 3',
     "profile_sql": "homeAddress.countryCode = 'US'",
     "event_sql": "count(*) FILTER (WHERE eventType = 'commerce.productViews') >= 3"},
]


@dataclass
class Options:
    scale: int
    events_per_profile: int = 10
    out: Path = DEFAULT_OUT
    results_dir: Path = BENCH_DIR / "results"
    report: Path | None = BENCH_DIR / "RESULTS.md"
    plot: Path | None = BENCH_DIR / "results.png"
    peers: tuple[str, ...] = ("pandas", "spark")
    pandas_max: int = 1_000_000
    spark_max: int = 1_000_000
    load_seconds: float = 30.0
    clients: int = 50
    loadgen: str = "raw"
    stored_jobs: int = 100_000
    sample: int = 500
    lookups_checked: int = 100
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    worker_concurrency: int = 2
    spark_memory: str = "8g"
    timeout: float = 4 * 3600
    keep: bool = False
    quiet: bool = False
    command: str = ""


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.work = options.out / f"run-{options.scale}x{options.events_per_profile}"
        self.data_dir = self.work / "data"
        self.results: dict[str, Any] = {
            "scale": options.scale, "events_per_profile": options.events_per_profile, "fragments_per_profile": 3,
            "started": now_utc(), "date": time.strftime("%Y-%m-%d"), "command": options.command,
            "machine": machine(), "git": git_revision(), "load_average_before": os.getloadavg(),
            "threads": options.threads, "checks": {}, "failures": [],
        }

    def say(self, text: str) -> None:
        if not self.o.quiet:
            print(text, flush=True)

    def fail(self, what: str) -> None:
        self.results["failures"].append(what)
        self.say(f"  WRONG: {what}")

    # ----------------------------------------------------------------------------------------------

    def __call__(self) -> dict[str, Any]:
        o = self.o
        started = time.perf_counter()
        gen_dir = o.out / f"gen-{o.scale}x{o.events_per_profile}"
        data, reused = generated_data(gen_dir, o.scale, o.events_per_profile, SEED, fragments_per_profile=3)
        records = {name: data.records(name) for name in ("crm", "loyalty", "events")}
        self.results["generate"] = {"records": records, "reused": reused, "wall_s": time.perf_counter() - started}
        self.say(f"[{o.scale:,}] data: {records} ({'reused' if reused else 'generated'} in "
                 f"{self.results['generate']['wall_s']:.1f} s)")
        shutil.rmtree(self.work, ignore_errors=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise RuntimeError(f"{self.data_dir} is in use by another process: choose another --out")
        try:
            with running_server(self.data_dir, o.threads, workers=0) as server:
                worker = start_worker(server, o.worker_concurrency)
                try:
                    self.serve(server, worker, data)
                finally:
                    stop_process(worker)
            self.peers()
            self.check()
        finally:
            self.results["load_average_after"] = os.getloadavg()
            self.results["finished"] = now_utc()
            self.results["correct"] = not self.results["failures"]
            self.results["ratios"] = ratios(self.results)
            if not o.keep:
                shutil.rmtree(self.work, ignore_errors=True)
        return self.results

    def serve(self, server: Server, worker_process: subprocess.Popen[bytes], data: Any) -> None:
        o = self.o
        worker = Proc(worker_process.pid)
        client = DemoClient(server.base_url)
        schemas = {"crm": client.create_schema("Bench CRM", PROFILE_CLASS),
                   "loyalty": client.create_schema("Bench loyalty", PROFILE_CLASS),
                   "events": client.create_schema("Bench events", EVENT_CLASS)}
        datasets = {name: client.create_dataset(f"Bench {name}", schema) for name, schema in schemas.items()}
        self.say(f"[{o.scale:,}] ingesting through the API …")
        worker.reset_peak()
        ingest = ingest_all(client, server, datasets, data, o.timeout, [worker])
        ingest["worker_peak_rss_mib"] = worker.peak_mib()
        ingest["server_peak_rss_mib"] = server.proc.peak_mib()
        self.results["ingest"] = ingest
        self.say(f"  lake {ingest['lake_s']:.1f} s, store {ingest['store_s']:.1f} s, "
                 f"{ingest['store_records_per_s']:,.0f} records/s")
        policy = str(client.call("POST", POLICIES, json={
            "name": "bench pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"},
            "attributeMerge": {"type": "timestampOrdered"}})["id"])
        target = client.create_dataset("Bench export", UNION, profile=False)
        base = {"mergePolicy": {"id": policy}, "destination": {"datasetId": target},
                "schema": {"name": "_xdm.context.profile"}}
        bodies: dict[str, dict[str, Any]] = {
            "profiles": base,
            "events": {**base, "additionalFields": {"eventList": {}}},
            "segment": {**base, "filter": {"segments": [{"segmentId": s, "segmentNs": "ups"}
                                                        for s in FILTER_SEGMENTS]}},
        }
        exports: dict[str, Any] = {}
        for task in TASKS:
            self.say(f"[{o.scale:,}] export {task} …")
            exports[task] = export(client, bodies[task], server, worker, o.timeout)
            exports[task]["files"] = lake_files(self.data_dir, target, exports[task]["batch"])
            self.say(f"  {exports[task]['rows']:,} rows in {exports[task]['wall_s']:.2f} s, "
                     f"worker peak {exports[task]['worker_peak_rss_mib']:,.0f} MiB")
        self.results["exports"] = exports
        self.say(f"[{o.scale:,}] segment job, {len(SEGMENTS_DEFINED)} segments …")
        self.results["segmentation"] = segmentation(client, server, worker, policy, o.timeout)
        self.say(f"  {self.results['segmentation']['wall_s']:.2f} s")
        self.results["lookups_checked"] = self.check_lookups(client, policy)

        stop_process(worker_process)  # from here on nothing runs jobs: POSTed exports stay queued
        self.say(f"[{o.scale:,}] API under load: storing {o.stored_jobs:,} jobs …")
        stored = loadtest.store_jobs(self.data_dir, int(exports["profiles"]["job_id"]), o.stored_jobs)
        width = max(8, len(str(max(o.scale - 1, 0))))
        api: dict[str, Any] = {"stored_jobs": len(stored), "clients": o.clients, "seconds": o.load_seconds,
                               "worker": "stopped (POSTed jobs stay queued)"}
        for scenario in loadtest.scenarios(export_body=bodies["profiles"], stored=stored, profiles=o.scale,
                                           crm_width=width, policy_id=policy):
            headers = dict(client.http.headers)
            # One client first (latency without queueing), then the load.
            api[f"{scenario.name}_1"] = loadtest.run_scenario(server.base_url, headers, scenario, server.proc,
                                                              clients=1, duration=min(5.0, o.load_seconds),
                                                              loadgen=o.loadgen)
            api[scenario.name] = loadtest.run_scenario(server.base_url, headers, scenario, server.proc,
                                                       clients=o.clients, duration=o.load_seconds, loadgen=o.loadgen)
            for key in (f"{scenario.name}_1", scenario.name):
                found = api[key]
                self.say(f"  {key}: p50 {found.get('p50_ms', 0):.1f} ms, p99 {found.get('p99_ms', 0):.1f} ms, "
                         f"{found['requests_per_s']:,.0f} req/s, {found['errors']} errors")
                if found["errors"] or not found["ok"]:
                    self.fail(f"API {key}: {found['errors']} errors of {found['ok'] + found['errors']} "
                              f"({found['failures'][:1]})")
        api["server_peak_rss_mib"] = server.proc.peak_mib()
        api["cancelled_after"] = cancel_queued(client)
        self.results["api"] = api
        self.results["spec"] = self.spec(datasets, ingest).to_dict()
        client.http.close()

    def spec(self, datasets: dict[str, str], ingest: dict[str, Any]) -> Spec:
        batches = ingest["batches"]

        def source(name: str) -> Source:
            return Source(datasets[name], batches[name]["id"], int(batches[name]["completed_ms"]),
                          lake_files(self.data_dir, datasets[name]))

        partitions = max(4, min(64, self.o.scale // 25_000))
        return Spec(records=[source("crm"), source("loyalty")], events=[source("events")],
                    segments=[{"segmentId": s, "segmentNs": "ups", "status": ["realized", "existing"]}
                              for s in FILTER_SEGMENTS],
                    out=str(self.work / "peers"), threads=self.o.threads, spark_memory=self.o.spark_memory,
                    spark_partitions=partitions)

    def check_lookups(self, client: DemoClient, policy: str) -> dict[str, Any]:
        """Profile Access by CRMID answers what the export wrote for the same profiles."""
        files = self.results["exports"]["profiles"]["files"]
        keys = [k for k in verify.export_keys(files, self.o.lookups_checked * 2) if k.startswith("crmid:")]
        rows = verify.rows_by_key(files, keys[: self.o.lookups_checked], export=True)
        wrong = []
        for key, row in rows.items():
            response = client.http.get(ENTITIES, params={"schema.name": "_xdm.context.profile",
                                                         "entityId": key.split(":", 1)[1], "entityIdNS": "CRMID",
                                                         "mergePolicyId": policy})
            if response.status_code != 200:
                wrong.append({"key": key, "status": response.status_code})
                continue
            (entity,) = response.json().values()
            diff = verify.compare_lookup(row, entity.get("entity") or {})
            if diff:
                wrong.append({"key": key, "diff": diff})
        if wrong:
            self.fail(f"lookups: {len(wrong)} of {len(rows)} differ from the export, e.g. {wrong[0]}")
        return {"checked": len(rows), "wrong": len(wrong), "wrong_sample": wrong[:3]}

    # ----------------------------------------------------------------------------------------------

    def peers(self) -> None:
        o = self.o
        spec = Spec.from_dict(self.results["spec"])
        spec_path = self.work / "spec.json"
        spec.dump(spec_path)
        found: dict[str, dict[str, Any]] = {}
        plan: list[tuple[str, tuple[str, ...]]] = [("floor", ("profiles", "events"))]
        for peer, limit in (("pandas", o.pandas_max), ("spark", o.spark_max)):
            if peer in o.peers and o.scale <= limit:
                plan.append((peer, TASKS))
            elif peer in o.peers:
                found[peer] = {"skipped": f"above --{peer}-max {limit:,}"}
        for peer, tasks in plan:
            found[peer] = {}
            for task in tasks:
                self.say(f"[{o.scale:,}] {peer} {task} …")
                found[peer][task] = run_peer(peer, task, spec_path, self.work, o.timeout)
                result = found[peer][task]
                if "error" in result:
                    self.fail(f"{peer} {task} did not finish: {result['error'][-300:]}")
                else:
                    self.say(f"  {result['rows']:,} rows in {result['wall_s']:.2f} s, "
                             f"peak {result['peak_rss_mib']:,.0f} MiB")
        self.results["peers"] = found

    def check(self) -> None:
        o = self.o
        exports = self.results["exports"]
        checks: dict[str, Any] = {}
        for task in TASKS:
            files = exports[task]["files"]
            written = verify.count_rows(files)
            entry: dict[str, Any] = {"export_rows": exports[task]["rows"], "parquet_rows": written}
            if written != exports[task]["rows"]:
                self.fail(f"export {task}: the job counts {exports[task]['rows']:,} profiles, its files {written:,}")
            for peer in ("pandas", "spark"):
                result = self.results["peers"].get(peer, {}).get(task)
                if not result:
                    continue
                if "error" in result:
                    continue
                peer_files = verify.parquet_in(result["out"])
                entry[f"{peer}_rows"] = result["rows"]
                if result["rows"] != written:
                    self.fail(f"export {task}: {written:,} rows, {peer} {result['rows']:,}")
                keys = verify.sample_keys(peer_files, o.sample)
                entry[f"{peer}_sample"] = verify.compare_sample(files, peer_files, keys)
                if entry[f"{peer}_sample"]["wrong"]:
                    self.fail(f"export {task}: {entry[f'{peer}_sample']['wrong']} of {len(keys)} sampled profiles "
                              f"differ from {peer}'s, e.g. {entry[f'{peer}_sample']['wrong_sample'][0]}")
            if not any(k.endswith("_sample") for k in entry):
                entry["unchecked"] = "no peer ran at this scale: only the export's own counts were checked"
            checks[task] = entry
        checks["segment_share"] = exports["segment"]["rows"] / max(1, exports["profiles"]["rows"])
        checks["segmentation"] = self.check_segments()
        self.results["checks"] = checks

    def check_segments(self) -> dict[str, Any]:
        peers_dir = self.work / "peers"
        clusters = peers_dir / "pandas-clusters.parquet"
        if not clusters.exists():
            spark_parts = verify.parquet_in(peers_dir / "spark-clusters") if (peers_dir / "spark-clusters").exists() \
                else []
            if not spark_parts:
                return {"unchecked": "no peer's identity graph at this scale"}
            clusters = Path(spark_parts[0])
        spec = self.results["spec"]
        expected = verify.segment_expectations(
            self.results["exports"]["profiles"]["files"], str(clusters),
            [f for s in spec["events"] for f in s["files"]], SEGMENTS_DEFINED, spec["max_cluster_size"])
        got = self.results["segmentation"]
        wrong = {name: {"job": got["counts"].get(name), "expected": count}
                 for name, count in expected["counts"].items() if got["counts"].get(name) != count}
        if got["total_profiles"] != expected["total_profiles"]:
            wrong["totalProfiles"] = {"job": got["total_profiles"], "expected": expected["total_profiles"]}
        if wrong:
            self.fail(f"segment job: {len(wrong)} counts differ from the conditions evaluated again: "
                      f"{dict(list(wrong.items())[:3])}")
        return {"expected": expected, "wrong": wrong}


# --------------------------------------------------------------------------------------------------


def export(client: DemoClient, body: dict[str, Any], server: Server, worker: Proc, timeout: float) -> dict[str, Any]:
    """POST an export job and wait for it: wall, CPU (server + worker) and peak RSS of each during the job."""
    procs = [server.proc, worker]
    for proc in procs:
        proc.reset_peak()
    cpu0 = [p.cpu_seconds() for p in procs]
    started = time.perf_counter()
    job = client.call("POST", EXPORT_JOBS, json=body)
    deadline = time.monotonic() + timeout
    while job["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"export job {job['id']} did not finish")
        time.sleep(0.05)
        job = client.call("GET", f"{EXPORT_JOBS}/{job['id']}")
    wall = time.perf_counter() - started
    if job["status"] != "SUCCEEDED":
        raise RuntimeError(f"export ended {job['status']}: {job.get('errors')}")
    server_cpu, worker_cpu = (p.cpu_seconds() - c for p, c in zip(procs, cpu0, strict=True))
    metrics = job["metrics"]
    rows = int(metrics["totalExportedProfileCounter"])
    return {"job_id": job["id"], "batch": job["destination"]["batchId"], "rows": rows, "wall_s": wall,
            "rows_per_s": rows / wall, "cpu_s": server_cpu + worker_cpu, "server_cpu_s": server_cpu,
            "worker_cpu_s": worker_cpu, "worker_peak_rss_mib": worker.peak_mib(),
            "server_peak_rss_mib": server.proc.peak_mib(), "peak_rss_mib": worker.peak_mib(),
            "job_total_ms": metrics["totalTime"]["totalTimeInMs"],
            "job_export_ms": metrics.get("profileExportTime", {}).get("totalTimeInMs"),
            "job_write_ms": metrics.get("aCPDatasetWriteTime", {}).get("totalTimeInMs")}


def cancel_queued(client: DemoClient) -> int:
    """Cancel the export jobs the load test queued (DELETE on a NEW job: CANCELLED at once), so that a data
    directory kept with --keep does not start a thousand exports when a worker next runs on it."""
    cancelled = 0
    while True:
        page = client.call("GET", EXPORT_JOBS, params={"status": "NEW", "limit": "1000"})
        if not page["records"]:
            return cancelled
        for job in page["records"]:
            client.call("DELETE", f"{EXPORT_JOBS}/{job['id']}")
            cancelled += 1


def segmentation(client: DemoClient, server: Server, worker: Proc, policy: str, timeout: float) -> dict[str, Any]:
    """Define the segments, then evaluate them all in one segment job."""
    ids: dict[str, str] = {}
    started = time.perf_counter()
    for segment in SEGMENTS_DEFINED:
        created = client.call("POST", "/data/core/ups/segment/definitions", json={
            "name": segment["name"], "expression": {"type": "PQL", "format": "pql/text", "value": segment["pql"]},
            "schema": {"name": "_xdm.context.profile"}, "mergePolicyId": policy, "ttlInDays": 30})
        ids[str(created["id"])] = segment["name"]
    define_s = time.perf_counter() - started
    procs = [server.proc, worker]
    for proc in procs:
        proc.reset_peak()
    cpu0 = sum(p.cpu_seconds() for p in procs)
    started = time.perf_counter()
    job = client.call("POST", "/data/core/ups/segment/jobs", json=[{"segmentId": s} for s in ids])
    deadline = time.monotonic() + timeout
    while job["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"segment job {job['id']} did not finish")
        time.sleep(0.05)
        job = client.call("GET", f"/data/core/ups/segment/jobs/{job['id']}")
    wall = time.perf_counter() - started
    if job["status"] != "SUCCEEDED":
        raise RuntimeError(f"segment job ended {job['status']}: {job.get('errors')}")
    metrics = job["metrics"]
    return {"segments": len(ids), "define_s": define_s, "wall_s": wall,
            "cpu_s": sum(p.cpu_seconds() for p in procs) - cpu0, "worker_peak_rss_mib": worker.peak_mib(),
            "peak_rss_mib": worker.peak_mib(), "total_profiles": int(metrics["totalProfiles"]),
            "profiles_per_s": int(metrics["totalProfiles"]) / wall,
            "evaluation_ms": metrics["profileSegmentationTime"]["totalTimeInMs"],
            "counts": {ids[s]: int(c) for s, c in metrics["segmentedProfileCounter"].items()}}


def run_peer(peer: str, task: str, spec_path: Path, work: Path, timeout: float) -> dict[str, Any]:
    result_path = work / f"result-{peer}-{task}.json"
    log = work / f"{peer}-{task}.log"
    started = time.perf_counter()
    try:
        with log.open("wb") as out:
            done = subprocess.run([sys.executable, str(BENCH_DIR / "peers.py"), peer, task, str(spec_path),
                                   str(result_path)], stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0 or not result_path.exists():
        return {"error": f"exit status {done.returncode}: {log.read_text(errors='replace')[-2000:]}"}
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["process_wall_s"] = time.perf_counter() - started
    result["rows_per_s"] = result["rows"] / result["wall_s"] if result["wall_s"] else None
    return result


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Export wall time over the floor's, and each peer's wall time over the export's, per task."""
    exports, peers = results.get("exports") or {}, results.get("peers") or {}
    floor = peers.get("floor") or {}
    found: dict[str, Any] = {}
    for task, measured in exports.items():
        entry: dict[str, Any] = {}
        floor_task = floor.get("events" if task == "events" else "profiles") or {}
        if floor_task.get("wall_s"):
            entry["export_over_floor"] = measured["wall_s"] / floor_task["wall_s"]
        for peer in ("pandas", "spark"):
            other = (peers.get(peer) or {}).get(task) or {}
            if other.get("wall_s"):
                entry[f"{peer}_over_export"] = other["wall_s"] / measured["wall_s"]
                entry[f"{peer}_over_floor"] = other["wall_s"] / floor_task["wall_s"] if floor_task.get("wall_s") \
                    else None
        found[task] = entry
    return found


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="100000,1000000",
                        help="profiles, or several separated by commas (5000000 is the opt-in large run)")
    parser.add_argument("--events-per-profile", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="scratch: generated data, server data, peers")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results", help="per-scale result files")
    parser.add_argument("--report", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--plot", type=Path, default=BENCH_DIR / "results.png")
    parser.add_argument("--peers", default="pandas,spark", help="peers to run besides the floor")
    parser.add_argument("--pandas-max", type=int, default=1_000_000, help="largest scale pandas runs at")
    parser.add_argument("--spark-max", type=int, default=1_000_000, help="largest scale Spark runs at")
    parser.add_argument("--load-seconds", type=float, default=30.0, help="seconds of each load scenario")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients of the load test")
    parser.add_argument("--loadgen", choices=("raw", "httpx"), default="raw",
                        help="load generator connections: raw asyncio HTTP/1.1 (cheap) or httpx's AsyncClient")
    parser.add_argument("--stored-jobs", type=int, default=100_000, help="export jobs stored for list/get")
    parser.add_argument("--sample", type=int, default=500, help="profiles compared field by field per peer")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="engine threads, Spark cores")
    parser.add_argument("--spark-memory", default="8g")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data of the run")
    args = parser.parse_args()
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])
    failed = False
    for scale in [int(s.replace("_", "")) for s in str(args.scale).split(",") if s.strip()]:
        options = Options(scale=scale, events_per_profile=args.events_per_profile, out=args.out,
                          results_dir=args.results, report=args.report, plot=args.plot,
                          peers=tuple(p for p in args.peers.split(",") if p), pandas_max=args.pandas_max,
                          spark_max=args.spark_max, load_seconds=args.load_seconds, clients=args.clients,
                          loadgen=args.loadgen,
                          stored_jobs=args.stored_jobs, sample=args.sample, threads=args.threads,
                          spark_memory=args.spark_memory, keep=args.keep, command=command)
        results = run(options)
        failed |= not results["correct"]
    if failed:
        sys.exit("some answers were wrong: see the failures in the results file")


def run(options: Options) -> dict[str, Any]:
    """One scale: measure, check, write `{results_dir}/scale-{N}.json`, and rewrite the report and plot."""
    results = Run(options)()
    options.results_dir.mkdir(parents=True, exist_ok=True)
    path = options.results_dir / f"scale-{options.scale}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    results["results_file"] = str(path)
    if options.report is not None:
        report.write(options.results_dir, options.report, options.plot)
    if not options.quiet:
        print(f"results: {path}" + (f"; report: {options.report}" if options.report else ""))
        for failure in results["failures"]:
            print(f"WRONG: {failure}")
    return results


if __name__ == "__main__":
    main()
