"""Benchmark: the profile export through the real HTTP API and worker, against its floor.

    python bench/bench_export.py --profiles 100000 [--events-per-profile 10] [--out bench/out]

Generates people with 3 record fragments over 2 datasets (`openprofile generate`), ingests them and their
events through the batch-ingestion API of a real `openprofile serve` process, then measures, in one run:

- **export**: a `pdg`, timestampOrdered export of all fields (POST → SUCCEEDED, wall time), then the same with
  an event list of all event fields;
- **floor**: DuckDB reading the same fragment (and event) Parquet files of the lake and writing them back to
  Parquet unmerged, on the same number of threads — the cost of touching the data once.

It reports wall and CPU seconds, the server's peak RSS, rows/s and the ratio to the floor, checks the export's
row count against an independent count (union-find over the same identities, in Python), and writes JSON to
`--out`. Only 127.0.0.1 is used; it stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

from openprofile.demo import CLIENT_ID, CLIENT_SECRET, EVENT_CLASS, ORG, PROFILE_CLASS, DemoClient, running_server

ROOT = Path(__file__).resolve().parent
UNION = "https://ns.adobe.com/xdm/context/profile__union"


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) and peak RSS (MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return {"cpu_s": cpu, "peak_rss_mib": peak}


def server_pid(port: int) -> int:
    out = subprocess.run(["pgrep", "-f", f"openprofile serve --port {port}"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def wait_store(data_dir: Path) -> None:
    db = sqlite3.connect(data_dir / "metadata.sqlite3")
    while db.execute("SELECT count(*) FROM profile_batches WHERE status = 'pending'").fetchone()[0]:
        time.sleep(0.2)
    db.close()


def lake_files(data_dir: Path, dataset_id: str) -> list[str]:
    return sorted(str(p) for p in (data_dir / "lake").glob(f"*/*/{dataset_id}/*/*.parquet"))


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


def export(client: DemoClient, body: dict[str, Any], pid: int) -> dict[str, Any]:
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
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    platform = Platform.open(Settings(data_dir=data_dir))
    with platform.engine.begin() as conn:
        add_credentials(conn, ORG, CLIENT_ID, CLIENT_SECRET)
    platform.close()
    results: dict[str, Any] = {"profiles": args.profiles, "events_per_profile": args.events_per_profile,
                               "machine": f"{host.machine()}, {os.cpu_count()} cores, {host.platform()}",
                               "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    with running_server(data_dir, args.port) as base_url:
        client = DemoClient(base_url)
        pid = server_pid(args.port)
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
        policy = client.call("POST", "/data/core/ups/config/mergePolicies", json={
            "name": "bench pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"},
            "attributeMerge": {"type": "timestampOrdered"}})
        target = client.create_dataset("export target", UNION, profile=False)
        body = {"mergePolicy": {"id": policy["id"]}, "destination": {"datasetId": target},
                "schema": {"name": "_xdm.context.profile"}}
        record_files = lake_files(data_dir, datasets["crm"]) + lake_files(data_dir, datasets["loyalty"])
        event_files = lake_files(data_dir, datasets["events"])
        results["floor"] = floor(record_files, out / "floor", args.threads)
        results["export"] = export(client, body, pid)
        results["floor_events"] = floor(record_files + event_files, out / "floor", args.threads)
        results["export_events"] = export(client, {**body, "additionalFields": {"eventList": {}}}, pid)
    results["expected_rows"] = expected_profiles(record_files, event_files)
    for key in ("export", "export_events"):
        results[key].pop("job")
    results["export"]["ratio_to_floor"] = results["export"]["wall_s"] / results["floor"]["wall_s"]
    results["export_events"]["ratio_to_floor"] = results["export_events"]["wall_s"] / results["floor_events"]["wall_s"]
    results["correct"] = results["export"]["rows"] == results["expected_rows"] == results["export_events"]["rows"]
    (out / f"export-{args.profiles}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if not results["correct"]:
        exported, expected = results["export"]["rows"], results["expected_rows"]
        raise SystemExit(f"wrong answer: exported {exported} rows, expected {expected}")


if __name__ == "__main__":
    main()
