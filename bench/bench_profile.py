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
import os
import random
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from bench_common import (
    DEFAULT_OUT,
    ENTITIES,
    EVENT_CLASS,
    POLICIES,
    PROFILE_CLASS,
    DemoClient,
    Server,
    git_revision,
    ingest_all,
    percentiles,
    running_server,
    size_of,
)
from bench_common import generated_data as generate

from openprofile.generate import GeneratedData

SEED = 42


# --------------------------------------------------------------------------------------------------
# Data


def generated_data(out: Path, profiles: int, events_per_profile: int) -> tuple[GeneratedData, bool]:
    """The generated dataset under `out`, reused when its manifest matches (True) or written now (False)."""
    return generate(out / f"generated-{profiles}x{events_per_profile}", profiles, events_per_profile, SEED)


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
# Lookups


def _params(crm_id: str, policy_id: str | None) -> dict[str, str]:
    params = {"schema.name": "_xdm.context.profile", "entityId": crm_id, "entityIdNS": "CRMID"}
    if policy_id:
        params["mergePolicyId"] = policy_id
    return params


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
    return {**percentiles(latencies), "cpu_s": server.cpu_seconds() - cpu0, "checked": len(crm_ids),
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
    return {**percentiles(latencies), "threads": threads, "wall_s": wall, "requests_per_s": len(latencies) / wall,
            "cpu_s": server.cpu_seconds() - cpu0, "errors": len(errors)}


# --------------------------------------------------------------------------------------------------


def run(profiles: int, events_per_profile: int = 10, out: Path = DEFAULT_OUT, lookups: int = 500,
        threads: int = 4, concurrent: int | None = None, engine_threads: int | None = None, keep: bool = False,
        timeout: float = 7200, quiet: bool = False) -> dict[str, Any]:
    """Run the whole benchmark and return its results (also written as JSON under `out`)."""
    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

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
        "load_average_before": os.getloadavg(), "git": git_revision(),
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
            results["store_bytes"] = size_of(data_dir / "profile")
            results["lake_bytes"] = size_of(data_dir / "lake")
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
