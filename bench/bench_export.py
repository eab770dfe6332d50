"""Benchmark: the profile export through the real HTTP API and worker, against its floor.

    python bench/bench_export.py --profiles 100000 [--events-per-profile 10] [--out bench/out]
                                 [--reuse] [--repeat 3] [--no-events] [--no-check]

Generates people with 3 record fragments over 2 datasets (`openprofile generate`), ingests them and their
events through the batch-ingestion API of a real `openprofile serve` process, then measures, in one run:

- **export**: a `pdg`, timestampOrdered export of all fields (POST → SUCCEEDED, wall time), then the same with
  an event list of all event fields;
- **floor**: DuckDB reading the same fragment (and event) Parquet files of the lake and writing them back to
  Parquet unmerged, on the same number of threads — the cost of touching the data once.

It reports wall and CPU seconds (the server's for an export, this process's for the floor), the server's peak
RSS during each export (its high-water mark is reset before each one), rows/s and the ratio to the floor, checks
the export's row count against an independent count (union-find over the same identities, in Python), and
writes JSON to `--out`. Only 127.0.0.1 is used; it stops by itself.

Generated data is kept in `--out` and reused when it matches. `--reuse` also keeps the ingested data directory
of an earlier run with the same `--profiles` (its dataset ids are in `bench-state.json`) and goes straight to the
exports; `--repeat N` runs the floor and each export N times and reports the fastest run (every run is listed);
`--no-events` skips the export with events, `--no-check` the independent row count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
from bench_common import BENCH_DIR as ROOT
from bench_common import UNION, Proc, lake_files, wait_store

from openprofile.demo import CLIENT_ID, CLIENT_SECRET, EVENT_CLASS, ORG, PROFILE_CLASS, DemoClient, running_server


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) and peak RSS (MiB) of a process, from /proc."""
    proc = Proc(pid)
    return {"cpu_s": proc.cpu_seconds(), "peak_rss_mib": proc.peak_mib()}


def server_pid(port: int) -> int:
    out = subprocess.run(["pgrep", "-f", f"openprofile serve --port {port}"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def floor(files: list[str], out: Path, threads: int) -> dict[str, float]:
    """Read the files and write them back unmerged: the cost of touching the data once."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    conn = duckdb.connect()
    conn.execute(f"SET threads = {threads}")
    started, cpu = time.perf_counter(), time.process_time()
    listed = ", ".join(f"'{f}'" for f in files)
    conn.execute(f"COPY (SELECT * FROM read_parquet([{listed}], union_by_name = true)) TO '{out}' "
                 "(FORMAT parquet, COMPRESSION zstd, PER_THREAD_OUTPUT true)")
    result = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}
    conn.close()
    return result


def expected_profiles(record_files: list[str], event_files: list[str]) -> int:
    """Clusters that hold a record fragment: union-find over every record's and event's identities."""
    conn = duckdb.connect()
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def items(files: list[str]) -> list[list[str]]:
        listed = ", ".join(f"'{f}'" for f in files)
        rows = conn.execute(
            f"SELECT list_transform(flatten(list_transform(map_entries(identityMap), lambda e: list_transform("
            f"e.value, lambda i: lower(e.key) || ':' || i.id))), lambda x: x) FROM read_parquet([{listed}])"
        ).fetchall()
        return [r[0] for r in rows]

    record_rows = items(record_files)
    for row in record_rows + items(event_files):
        for other in row[1:]:
            a, b = find(row[0]), find(other)
            if a != b:
                parent[a] = b
    primaries = set()
    for row in record_rows:
        primaries.add(find(row[0]))
    return len(primaries)


def reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS, so the next reading is one export's peak
    (if not allowed, the peak covers the server's whole life)."""
    Proc(pid).reset_peak()


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with every run's wall and CPU seconds."""
    best = dict(min(runs, key=lambda r: r["wall_s"]))
    best["runs"] = [{k: round(v, 3) for k, v in r.items() if k in ("wall_s", "cpu_s", "peak_rss_mib")} for r in runs]
    return best


def export(client: DemoClient, body: dict[str, Any], pid: int) -> dict[str, Any]:
    reset_peak(pid)
    before = proc_stats(pid)
    started = time.perf_counter()
    job = client.call("POST", "/data/core/ups/export/jobs", json=body)
    while job["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        time.sleep(0.1)
        job = client.call("GET", f"/data/core/ups/export/jobs/{job['id']}")
    wall = time.perf_counter() - started
    after = proc_stats(pid)
    if job["status"] != "SUCCEEDED":
        raise RuntimeError(f"export ended {job['status']}: {job.get('errors')}")
    return {"wall_s": wall, "cpu_s": after["cpu_s"] - before["cpu_s"], "peak_rss_mib": after["peak_rss_mib"],
            "rows": job["metrics"]["totalExportedProfileCounter"], "job": job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events-per-profile", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--reuse", action="store_true", help="reuse the ingested data of an earlier run")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the floor and of each export")
    parser.add_argument("--no-events", action="store_true", help="skip the export with an event list")
    parser.add_argument("--no-check", action="store_true", help="skip the independent row count")
    args = parser.parse_args()

    from openprofile.core.platform import Platform
    from openprofile.core.settings import Settings
    from openprofile.core.tenancy import add_credentials
    from openprofile.generate import generate_dataset

    out: Path = args.out
    gen_dir = out / f"gen-{args.profiles}-{args.events_per_profile}"
    data_dir = out / f"export-data-{args.profiles}"
    if not (gen_dir / "manifest.json").exists():
        generate_dataset(gen_dir, args.profiles, seed=11, events_per_profile=args.events_per_profile,
                         fragments_per_profile=3)
    generated = json.loads((gen_dir / "manifest.json").read_text())
    state_file = data_dir / "bench-state.json"
    reuse = (args.reuse and state_file.exists()
             and json.loads(state_file.read_text()).get("events_per_profile") == args.events_per_profile)
    if not reuse:
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        platform = Platform.open(Settings(data_dir=data_dir))
        with platform.engine.begin() as conn:
            add_credentials(conn, ORG, CLIENT_ID, CLIENT_SECRET)
        platform.close()
    results: dict[str, Any] = {"profiles": args.profiles, "events_per_profile": args.events_per_profile,
                               "machine": f"{host.machine()}, {os.cpu_count()} cores, {host.platform()}",
                               "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                               "load_average_before": os.getloadavg()}
    repeat = max(1, args.repeat)
    with running_server(data_dir, args.port) as base_url:
        client = DemoClient(base_url)
        pid = server_pid(args.port)
        if reuse:
            state = json.loads(state_file.read_text())
            datasets, results["ingest"] = state["datasets"], state["ingest"]
        else:
            datasets = {"crm": client.create_dataset("crm", PROFILE_CLASS),
                        "loyalty": client.create_dataset("loyalty", PROFILE_CLASS),
                        "events": client.create_dataset("events", EVENT_CLASS)}
            started = time.perf_counter()
            records = 0
            for name, dataset_id in datasets.items():
                files = [gen_dir / f["path"] for f in generated["datasets"][name]["files"]]
                batch = client.ingest_files(dataset_id, files)
                records += int(batch["metrics"]["recordsWritten"])
            wait_store(data_dir)
            ingest_wall = time.perf_counter() - started
            results["ingest"] = {"records": records, "wall_s": ingest_wall, "records_per_s": records / ingest_wall}
            state_file.write_text(json.dumps({"datasets": datasets, "ingest": results["ingest"],
                                                      "events_per_profile": args.events_per_profile}))
        policy = client.call("POST", "/data/core/ups/config/mergePolicies", json={
            "name": "bench pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"},
            "attributeMerge": {"type": "timestampOrdered"}})
        target = client.create_dataset("export target", UNION, profile=False)
        body = {"mergePolicy": {"id": policy["id"]}, "destination": {"datasetId": target},
                "schema": {"name": "_xdm.context.profile"}}
        record_files = lake_files(data_dir, datasets["crm"]) + lake_files(data_dir, datasets["loyalty"])
        event_files = lake_files(data_dir, datasets["events"])
        results["floor"] = best_of([floor(record_files, out / "floor", args.threads) for _ in range(repeat)])
        results["export"] = best_of([export(client, body, pid) for _ in range(repeat)])
        if not args.no_events:
            results["floor_events"] = best_of([floor(record_files + event_files, out / "floor", args.threads)
                                               for _ in range(repeat)])
            events_body = {**body, "additionalFields": {"eventList": {}}}
            results["export_events"] = best_of([export(client, events_body, pid) for _ in range(repeat)])
    keys = ["export"] if args.no_events else ["export", "export_events"]
    for key, floor_key in zip(keys, ["floor", "floor_events"], strict=False):
        metrics = results[key].pop("job")["metrics"]  # the server's own measure of the export's steps, in ms
        results[key]["job_ms"] = {name: metrics[name]["totalTimeInMs"] for name in
                                  ("profileExportTime", "aCPDatasetWriteTime", "totalTime") if name in metrics}
        results[key]["ratio_to_floor"] = results[key]["wall_s"] / results[floor_key]["wall_s"]
    rows = {results[key]["rows"] for key in keys}
    if not args.no_check:
        results["expected_rows"] = expected_profiles(record_files, event_files)
        results["correct"] = rows == {results["expected_rows"]}
    else:
        results["correct"] = len(rows) == 1
    (out / f"export-{args.profiles}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if not results["correct"]:
        raise SystemExit(f"wrong answer: exported {sorted(rows)} rows, expected {results.get('expected_rows')}")


if __name__ == "__main__":
    main()
