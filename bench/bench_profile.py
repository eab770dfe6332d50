"""The profile store end to end through a real server: ingestion throughput, lookup latency, memory.

    .venv/bin/python bench/bench_profile.py --profiles 100000 [--events-per-profile 10] [--out bench/out]

Issue 3's targets: ingesting 1M generated profiles plus 10M events, identity graph included, at 200k
records/s or better; a lookup by identity at 1M profiles with p99 under 50 ms; memory bounded as data grows.

What it does, all on 127.0.0.1 and stopping by itself:

1. generates crm, loyalty and events with `openprofile.generate.generate_dataset` (seed 42), or reuses the
   files under `{out}/generated-{N}x{E}` when their manifest matches;
2. starts a real `openprofile serve` process on a fresh data directory (`{out}/data-{N}x{E}`), gets a token,
   creates schemas and three profile-enabled datasets, and a `pdg` merge policy;
3. ingests the three datasets through the batch-ingestion HTTP API, one batch each, all submitted at once,
   and waits until every batch is `success` (*lake*), then until the profile store has applied them all
   (no `pending` row left in the metadata DB's `profile_batches` table) (*store*);
4. looks profiles up by CRMID through `GET /data/core/ups/access/entities`: `--lookups` sequential requests
   for random people under the `pdg` policy (identity graph → cluster → crm + loyalty fragments → merge),
   the same under the default policy (`none`), then a concurrent run with `--threads` clients;
5. checks every sequential answer's `person.name` against the merge of the generated crm and loyalty rows
   computed independently here (timestampOrdered: the latest `lastUpdatedDate`, else ingestion time, wins),
   so that a fast wrong answer cannot pass;
6. reads the server's peak RSS (VmHWM) and CPU time (utime+stime from /proc/PID/stat) — the machine may be
   shared, so CPU seconds say more than wall seconds — prints a table and writes
   `{out}/profile-{N}x{E}-{time}.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx

from openprofile.demo import CLIENT_ID, CLIENT_SECRET, EVENT_CLASS, ORG, PROFILE_CLASS, DemoClient
from openprofile.generate import GeneratedData, GeneratedFile, generate_dataset

ENTITIES = "/data/core/ups/access/entities"
POLICIES = "/data/core/ups/config/mergePolicies"
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
SEED = 42


# --------------------------------------------------------------------------------------------------
# The server process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (its threads included) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)

    def memory(self) -> dict[str, int]:
        """VmHWM (peak RSS) and VmRSS of the server process, in bytes."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0]) * 1024
        return found


@contextmanager
def running_server(data_dir: Path, threads: int | None) -> Iterator[Server]:
    """`openprofile serve` on 127.0.0.1 and a free port, on `data_dir` with the demo org's credentials."""
    from openprofile.core.platform import Platform
    from openprofile.core.settings import Settings
    from openprofile.core.tenancy import add_credentials

    platform = Platform.open(Settings(data_dir=data_dir))
    with platform.engine.begin() as conn:
        add_credentials(conn, ORG, CLIENT_ID, CLIENT_SECRET)
    platform.close()
    port = _free_port()
    env = {**os.environ, "OPENPROFILE_HOST": "127.0.0.1", "OPENPROFILE_POLL_SECONDS": "0.05"}
    if threads:
        env["OPENPROFILE_ENGINE_THREADS"] = str(threads)
    env.pop("OPENPROFILE_DATABASE_URL", None)
    log = data_dir / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "openprofile", "serve", "--host", "127.0.0.1", "--port",
                                str(port), "--data-dir", str(data_dir)],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server stopped: {log.read_text()}")
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        yield Server(base_url, process, data_dir)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------------------------------
# Data


def generated_data(out: Path, profiles: int, events_per_profile: int) -> tuple[GeneratedData, bool]:
    """The generated dataset under `out`, reused when its manifest matches (True) or written now (False)."""
    folder = out / f"generated-{profiles}x{events_per_profile}"
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("profiles"), manifest.get("eventsPerProfile"), manifest.get("seed")) == (
                profiles, events_per_profile, SEED):
            files = [GeneratedFile(name, folder / f["path"], int(f["records"]))
                     for name, entry in manifest["datasets"].items() for f in entry["files"]]
            if all(f.path.exists() for f in files):
                return GeneratedData(folder, SEED, profiles, files), True
    return generate_dataset(folder, profiles, seed=SEED, events_per_profile=events_per_profile), False


def expected_names(data: GeneratedData, crm_ids: list[str], ingest_ms: dict[str, int],
                   dataset_ids: dict[str, str], batch_ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    """For each CRMID: the `person.name` a pdg/timestampOrdered lookup must answer (crm + its linked loyalty
    record, per leaf the fragment with the latest lastUpdatedDate, else ingestion time, then ingestion time,
    dataset id, batch id), and the one the default policy (`none`: the crm record alone) must answer."""
    conn = duckdb.connect()
    files = {name: "[" + ", ".join(f"'{f.path}'" for f in data.files_for(name)) + "]" for name in ("crm", "loyalty")}
    conn.execute("CREATE TEMP TABLE wanted (crmid VARCHAR)")
    conn.executemany("INSERT INTO wanted VALUES (?)", [(c,) for c in crm_ids])
    rows = conn.execute(f"""
        WITH crm AS (
            SELECT "identityMap"['CRMID'][1].id AS crmid, lower("identityMap"['email'][1].id) AS email,
                   person.name.firstName AS first, person.name.lastName AS last,
                   epoch_us(extSourceSystemAudit.lastUpdatedDate) AS updated
            FROM read_parquet({files['crm']}) WHERE "identityMap"['CRMID'][1].id IN (SELECT crmid FROM wanted)
        ), loyalty AS (
            SELECT lower("identityMap"['email'][1].id) AS email, person.name.firstName AS first,
                   person.name.lastName AS last, epoch_us(extSourceSystemAudit.lastUpdatedDate) AS updated
            FROM read_parquet({files['loyalty']}) WHERE "identityMap"['email'] IS NOT NULL
        )
        SELECT c.crmid, c.first, c.last, c.updated, l.first, l.last, l.updated, l.email IS NOT NULL
        FROM crm c LEFT JOIN loyalty l USING (email)
    """).fetchall()
    conn.close()

    def key(dataset: str, updated: int | None) -> tuple[int, int, str, str]:
        ingest = ingest_ms[dataset]
        return (updated if updated is not None else ingest * 1000, ingest, dataset_ids[dataset], batch_ids[dataset])

    expected: dict[str, dict[str, Any]] = {}
    for crmid, c_first, c_last, c_upd, l_first, l_last, l_upd, linked in rows:
        fragments = [(key("crm", c_upd), {"firstName": c_first, "lastName": c_last})]
        if linked:
            fragments.append((key("loyalty", l_upd), {"firstName": l_first, "lastName": l_last}))
        merged: dict[str, Any] = {}
        for leaf in ("firstName", "lastName"):
            present = [(k, v[leaf]) for k, v in fragments if v[leaf] is not None]
            if present:
                merged[leaf] = max(present, key=lambda p: p[0])[1]
        expected[crmid] = {"pdg": merged,
                           "none": {k: v for k, v in (("firstName", c_first), ("lastName", c_last)) if v is not None},
                           "linked": bool(linked)}
    return expected


def sample_crm_ids(data: GeneratedData, count: int, seed: int) -> list[str]:
    files = "[" + ", ".join(f"'{f.path}'" for f in data.files_for("crm")) + "]"
    total = data.records("crm")
    rng = random.Random(seed)
    positions = sorted(rng.sample(range(total), min(count, total)))
    conn = duckdb.connect()
    conn.execute("CREATE TEMP TABLE pos (n BIGINT)")
    conn.executemany("INSERT INTO pos VALUES (?)", [(p,) for p in positions])
    found = [str(r[0]) for r in conn.execute(f"""
        SELECT "identityMap"['CRMID'][1].id FROM (
            SELECT "identityMap", row_number() OVER () - 1 AS n FROM read_parquet({files}))
        WHERE n IN (SELECT n FROM pos)
    """).fetchall()]
    conn.close()
    rng.shuffle(found)
    return found


# --------------------------------------------------------------------------------------------------
# Ingestion


def _metadata(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'metadata.sqlite3'}?mode=ro", uri=True, timeout=30)


def pending_batches(data_dir: Path) -> int:
    """Profile-store batches not applied yet; raises when an apply job failed (it would never settle)."""
    db = _metadata(data_dir)
    try:
        failed = db.execute("SELECT count(*) FROM queue_jobs WHERE kind = 'profile.apply' AND status = 'failed'"
                            ).fetchone()[0]
        if failed:
            raise RuntimeError(f"a profile.apply job failed: see {data_dir / 'server.log'}")
        return int(db.execute("SELECT count(*) FROM profile_batches WHERE status = 'pending'").fetchone()[0])
    finally:
        db.close()


def apply_latencies(data_dir: Path) -> dict[str, float]:
    """Per batch, seconds from its registration (lake success) to its apply in the store."""
    db = _metadata(data_dir)
    try:
        rows = db.execute("SELECT batch_id, created_ms, applied_ms FROM profile_batches").fetchall()
    finally:
        db.close()
    return {str(b): (int(a) - int(c)) / 1000 for b, c, a in rows if a is not None}


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def ingest_all(client: DemoClient, server: Server, datasets: dict[str, str], data: GeneratedData,
               timeout: float) -> dict[str, Any]:
    """Upload and complete one batch per dataset, then wait for the lake, then for the profile store."""
    started, cpu0 = time.perf_counter(), server.cpu_seconds()
    batches: dict[str, str] = {}
    for name, dataset_id in datasets.items():
        batch_id = client.call("POST", "/data/foundation/import/batches",
                               json={"datasetId": dataset_id, "inputFormat": {"format": "parquet"}})["id"]
        for generated in data.files_for(name):
            client.call("PUT", f"/data/foundation/import/batches/{batch_id}/datasets/{dataset_id}/files/"
                               f"{generated.path.name}", content=_chunks(generated.path),
                        headers={"Content-Type": "application/octet-stream"})
        client.call("POST", f"/data/foundation/import/batches/{batch_id}", params={"action": "COMPLETE"})
        batches[name] = batch_id
    uploaded = time.perf_counter() - started
    deadline = time.monotonic() + timeout
    settled: dict[str, dict[str, Any]] = {}
    while len(settled) < len(batches):
        for name, batch_id in batches.items():
            if name in settled:
                continue
            batch = client.call("GET", f"/data/foundation/catalog/batches/{batch_id}")[batch_id]
            if batch["status"] in ("success", "failed", "aborted"):
                if batch["status"] != "success":
                    raise RuntimeError(f"batch {batch_id} ({name}) ended {batch['status']}: {batch.get('errors')}")
                settled[name] = batch
        if time.monotonic() > deadline:
            raise TimeoutError("the lake did not settle in time")
        time.sleep(0.05)
    lake_s, lake_cpu = time.perf_counter() - started, server.cpu_seconds() - cpu0
    while pending_batches(server.data_dir):
        if time.monotonic() > deadline:
            raise TimeoutError("the profile store did not settle in time")
        time.sleep(0.05)
    store_s, store_cpu = time.perf_counter() - started, server.cpu_seconds() - cpu0
    latencies = apply_latencies(server.data_dir)
    records = {name: int(b["metrics"].get("recordsWritten", 0)) for name, b in settled.items()}
    total = sum(records.values())
    return {
        "records": records, "records_total": total, "upload_s": uploaded,
        "lake_s": lake_s, "lake_cpu_s": lake_cpu, "lake_records_per_s": total / lake_s,
        "store_s": store_s, "store_cpu_s": store_cpu, "store_records_per_s": total / store_s,
        "store_after_lake_s": store_s - lake_s,
        "batches": {name: {"id": batches[name], "completed_ms": int(b["completed"]),
                           "store_apply_after_lake_s": latencies.get(batches[name])} for name, b in settled.items()},
        "memory_after_ingest": server.memory(),
    }


# --------------------------------------------------------------------------------------------------
# Lookups


def _params(crm_id: str, policy_id: str | None) -> dict[str, str]:
    params = {"schema.name": "_xdm.context.profile", "entityId": crm_id, "entityIdNS": "CRMID"}
    if policy_id:
        params["mergePolicyId"] = policy_id
    return params


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1] * 1000  # nearest rank

    return {"n": len(ordered), "p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000,
            "mean_ms": statistics.fmean(ordered) * 1000}


def sequential_lookups(client: DemoClient, server: Server, crm_ids: list[str], policy_id: str | None,
                       expected: dict[str, dict[str, Any]], mode: str) -> dict[str, Any]:
    latencies: list[float] = []
    wrong: list[dict[str, Any]] = []
    cpu0 = server.cpu_seconds()
    for crm_id in crm_ids:
        started = time.perf_counter()
        response = client.http.get(ENTITIES, params=_params(crm_id, policy_id))
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            wrong.append({"crmid": crm_id, "status": response.status_code, "body": response.text[:300]})
            continue
        (entity,) = response.json().values()
        name = ((entity.get("entity") or {}).get("person") or {}).get("name") or {}
        want = expected[crm_id][mode]
        if name != want:
            wrong.append({"crmid": crm_id, "got": name, "want": want})
    return {**_percentiles(latencies), "cpu_s": server.cpu_seconds() - cpu0, "checked": len(crm_ids),
            "wrong": len(wrong), "wrong_sample": wrong[:5]}


def concurrent_lookups(base_url: str, server: Server, crm_ids: list[str], policy_id: str | None,
                       threads: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    chunks = [crm_ids[i::threads] for i in range(threads)]

    def work(chunk: list[str]) -> None:
        client = DemoClient(base_url)
        try:
            for crm_id in chunk:
                started = time.perf_counter()
                response = client.http.get(ENTITIES, params=_params(crm_id, policy_id))
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        errors.append(response.status_code)
        finally:
            client.http.close()

    cpu0 = server.cpu_seconds()
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    return {**_percentiles(latencies), "threads": threads, "wall_s": wall, "requests_per_s": len(latencies) / wall,
            "cpu_s": server.cpu_seconds() - cpu0, "errors": len(errors)}


# --------------------------------------------------------------------------------------------------


def run(profiles: int, events_per_profile: int = 10, out: Path = DEFAULT_OUT, lookups: int = 500,
        threads: int = 4, concurrent: int | None = None, engine_threads: int | None = None, keep: bool = False,
        timeout: float = 7200, quiet: bool = False) -> dict[str, Any]:
    """Run the whole benchmark and return its results (also written as JSON under `out`)."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data, reused = generated_data(out, profiles, events_per_profile)
    say(f"data: {sum(f.records for f in data.files):,} records for {profiles:,} people "
        f"({'reused' if reused else 'generated'} in {time.perf_counter() - started:.1f} s) in {data.out_dir}")
    data_dir = out / f"data-{profiles}x{events_per_profile}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    results: dict[str, Any] = {
        "benchmark": "profile", "profiles": profiles, "events_per_profile": events_per_profile,
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(), "git": _git_revision(),
    }
    try:
        with running_server(data_dir, engine_threads) as server:
            client = DemoClient(server.base_url)
            schemas = {"crm": client.create_schema("Bench CRM", PROFILE_CLASS),
                       "loyalty": client.create_schema("Bench loyalty", PROFILE_CLASS),
                       "events": client.create_schema("Bench events", EVENT_CLASS)}
            datasets = {name: client.create_dataset(f"Bench {name}", schema) for name, schema in schemas.items()}
            pdg = str(client.call("POST", POLICIES, json={
                "name": "bench-pdg", "schema": {"name": "_xdm.context.profile"},
                "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}})["id"])
            say("ingesting …")
            ingest = ingest_all(client, server, datasets, data, timeout)
            results["ingest"] = ingest
            say(f"lake {ingest['lake_s']:.1f} s, store {ingest['store_s']:.1f} s")

            crm_ids = sample_crm_ids(data, lookups, seed=7)
            expected = expected_names(
                data, crm_ids, {n: b["completed_ms"] for n, b in ingest["batches"].items()}, datasets,
                {n: b["id"] for n, b in ingest["batches"].items()})
            for crm_id in crm_ids[:3]:  # warm-up: first requests open files and connections
                client.http.get(ENTITIES, params=_params(crm_id, pdg))
            say("lookups …")
            results["lookup_pdg"] = sequential_lookups(client, server, crm_ids, pdg, expected, "pdg")
            results["lookup_none"] = sequential_lookups(client, server, crm_ids, None, expected, "none")
            many = crm_ids * max(1, -(-(concurrent or lookups) // max(1, len(crm_ids))))
            results["lookup_pdg_concurrent"] = concurrent_lookups(
                server.base_url, server, many[: concurrent or lookups], pdg, threads)
            results["linked_in_sample"] = sum(1 for c in crm_ids if expected[c]["linked"])
            results["memory"] = server.memory()
            results["server_cpu_s"] = server.cpu_seconds()
            results["store_bytes"] = _size(data_dir / "profile")
            results["lake_bytes"] = _size(data_dir / "lake")
            client.http.close()
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["correct"] = results["lookup_pdg"]["wrong"] == 0 and results["lookup_none"]["wrong"] == 0 and \
        results["lookup_pdg_concurrent"]["errors"] == 0
    results["load_average_after"] = os.getloadavg()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out / f"profile-{profiles}x{events_per_profile}-{stamp}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    results["results_file"] = str(target)
    if not quiet:
        print_table(results)
    return results


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _git_revision() -> str | None:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                               cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip()


def print_table(r: dict[str, Any]) -> None:
    ing = r["ingest"]
    rows = [
        ("records", f"{ing['records_total']:,}", ", ".join(f"{k} {v:,}" for k, v in ing["records"].items())),
        ("to lake success", f"{ing['lake_s']:.1f} s wall", f"{ing['lake_records_per_s']:,.0f} records/s; "
                                                           f"server cpu {ing['lake_cpu_s']:.1f} s"),
        ("incl. profile store", f"{ing['store_s']:.1f} s wall", f"{ing['store_records_per_s']:,.0f} records/s; "
                                                                f"server cpu {ing['store_cpu_s']:.1f} s; "
                                                                f"store after lake {ing['store_after_lake_s']:.1f} s"),
    ]
    for key, label in (("lookup_pdg", "lookup pdg (seq)"), ("lookup_none", "lookup none (seq)"),
                       ("lookup_pdg_concurrent", "lookup pdg (conc)")):
        lk = r[key]
        extra = (f"{lk['threads']} threads, {lk['requests_per_s']:.0f} req/s" if "threads" in lk
                 else f"{lk['wrong']} wrong of {lk['checked']}")
        rows.append((label, f"p50 {lk['p50_ms']:.1f} / p95 {lk['p95_ms']:.1f} / p99 {lk['p99_ms']:.1f} ms",
                     f"n={lk['n']}, cpu {lk['cpu_s']:.1f} s, {extra}"))
    mem = r["memory"]
    rows.append(("server peak RSS", f"{mem.get('VmHWM', 0) / 2**20:,.0f} MiB",
                 f"now {mem.get('VmRSS', 0) / 2**20:,.0f} MiB; after ingest "
                 f"{ing['memory_after_ingest'].get('VmHWM', 0) / 2**20:,.0f} MiB peak"))
    rows.append(("sizes", f"store {r['store_bytes'] / 2**20:,.0f} MiB", f"lake {r['lake_bytes'] / 2**20:,.0f} MiB"))
    rows.append(("correct", str(r["correct"]), f"load avg before {r['load_average_before'][0]:.2f}, "
                                               f"after {r['load_average_after'][0]:.2f}"))
    width = max(len(a) for a, _, _ in rows)
    middle = max(len(b) for _, b, _ in rows)
    print(f"\nprofile benchmark: {r['profiles']:,} profiles x {r['events_per_profile']} events")
    for a, b, c in rows:
        print(f"  {a:<{width}}  {b:<{middle}}  {c}")
    print(f"results: {r['results_file']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events-per-profile", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="generated data, server data and results")
    parser.add_argument("--lookups", type=int, default=500, help="sequential lookups per policy")
    parser.add_argument("--threads", type=int, default=4, help="clients of the concurrent lookup run")
    parser.add_argument("--concurrent", type=int, default=None, help="requests of the concurrent run")
    parser.add_argument("--engine-threads", type=int, default=None, help="OPENPROFILE_ENGINE_THREADS of the server")
    parser.add_argument("--keep", action="store_true", help="keep the server's data directory")
    parser.add_argument("--timeout", type=float, default=7200, help="give up ingestion after this many seconds")
    args = parser.parse_args()
    results = run(args.profiles, args.events_per_profile, args.out, args.lookups, args.threads, args.concurrent,
                  args.engine_threads, args.keep, args.timeout)
    if not results["correct"]:
        sys.exit("some lookups answered wrong: see the results file")


if __name__ == "__main__":
    main()
