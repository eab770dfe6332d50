"""The API under load: a bounded, closed-loop asyncio load generator on loopback.

`clients` asyncio tasks each keep one HTTP/1.1 keep-alive connection and send their next request as soon as
the previous answer is read, until `duration` seconds have passed (or `max_requests` were sent). A scenario
reports every request's latency (send → body read) as p50/p95/p99, requests/s, non-2xx answers, and the
server's CPU seconds and the load generator's over the run (both share the machine's cores).

The connections are `RawConnection`s (HTTP/1.1 on asyncio streams) by default: httpx's AsyncClient costs the
load generator several milliseconds of CPU per request, which on a 2-core machine takes a core away from the
server being measured; `loadgen="httpx"` runs the same scenario through httpx instead.

`store_jobs` inserts finished export jobs straight into the metadata database in one transaction, in the row
shape of `export_jobs` (core/tables.py), copied from a job the API created, so that listing and getting jobs is
measured with many jobs stored without POSTing them one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bench_common import Proc, percentiles

Request = tuple[str, str, dict[str, Any] | None]  # method, path with query, JSON body


@dataclass(frozen=True)
class Scenario:
    name: str
    make: Callable[[random.Random], Request]


def store_jobs(data_dir: Path, template_id: int, count: int, *, spacing_ms: int = 10) -> list[tuple[int, int]]:
    """Insert `count` SUCCEEDED export jobs like job `template_id` (same tenant, request, destination, metrics),
    created `spacing_ms` apart before it; returns their (id, created_ms)."""
    db = sqlite3.connect(data_dir / "metadata.sqlite3", timeout=60)
    try:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM export_jobs WHERE id = ?", (template_id,)).fetchone()
        if row is None:
            raise LookupError(f"export job {template_id} not found")
        base = int(row["created_ms"]) - count * spacing_ms
        columns = ("org_id", "sandbox_id", "status", "request", "destination", "merge_policy", "metrics", "errors",
                   "request_id", "compute_job_id", "created_ms", "updated_ms")
        values = [(row["org_id"], row["sandbox_id"], "SUCCEEDED", row["request"], row["destination"],
                   row["merge_policy"], row["metrics"], row["errors"], f"bench-{n}", f"bench-{n}",
                   base + n * spacing_ms, base + n * spacing_ms + 1000) for n in range(count)]
        with db:
            first = int(db.execute("SELECT coalesce(max(id), 0) FROM export_jobs").fetchone()[0]) + 1
            db.executemany(f"INSERT INTO export_jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           values)
        rows = db.execute("SELECT id, created_ms FROM export_jobs WHERE id >= ? AND request_id LIKE 'bench-%'",
                          (first,)).fetchall()
        return [(int(r[0]), int(r[1])) for r in rows]
    finally:
        db.close()


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: a request costs the load generator a small
    fraction of httpx's CPU, which matters when client and server share two cores."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        url = httpx.URL(base_url)
        self.host, self.port = url.host, url.port or 80
        fixed = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
        self.head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        reader, writer = await self._open()
        payload = json.dumps(body).encode() if body is not None else b""
        extra = f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n" if body is not None else ""
        writer.write(f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{self.head}{extra}\r\n".encode()
                     + payload)
        status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while size := int((await reader.readline()).split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readline()
            await reader.readline()
            data = b"".join(parts)
        else:
            data = await reader.readexactly(length)
        if close:
            await self.close()
        return status, data


async def _run(base_url: str, headers: dict[str, str], scenario: Scenario, clients: int, duration: float,
               max_requests: int, seed: int, loadgen: str) -> tuple[list[float], dict[int, int], float, list[str]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    sent = 0
    deadline = 0.0

    async def worker(number: int, send: Callable[[str, str, dict[str, Any] | None], Awaitable[tuple[int, bytes]]],
                     ) -> None:
        nonlocal sent
        rng = random.Random(seed * 1000 + number)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            method, path, body = scenario.make(rng)
            started = time.perf_counter()
            try:
                status, text = await send(method, path, body)
            except (httpx.HTTPError, OSError, ValueError, asyncio.IncompleteReadError) as error:
                statuses[0] = statuses.get(0, 0) + 1
                if len(failures) < 3:
                    failures.append(f"{method} {path}: {error!r}")
                continue
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 300 and len(failures) < 3:
                failures.append(f"{method} {path} → {status}: {text[:200]!r}")

    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:

        async def via_httpx(method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
            response = await client.request(method, path, json=body)
            return response.status_code, await response.aread()

        connections = [RawConnection(base_url, headers) for _ in range(clients)]
        sends = [via_httpx] * clients if loadgen == "httpx" else [c.request for c in connections]
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(*(worker(n, sends[n]) for n in range(clients)))
        wall = time.perf_counter() - started
        for connection in connections:
            await connection.close()
    return latencies, statuses, wall, failures


def run_scenario(base_url: str, headers: dict[str, str], scenario: Scenario, server: Proc, *, clients: int = 50,
                 duration: float = 30.0, max_requests: int = 1_000_000, seed: int = 1,
                 loadgen: str = "raw") -> dict[str, Any]:
    """One scenario: `clients` concurrent closed-loop clients for `duration` seconds; `loadgen` is `raw`
    (`RawConnection`, one connection per client) or `httpx` (one AsyncClient pool of `clients` connections)."""
    cpu0, own0 = server.cpu_seconds(), time.process_time()
    latencies, statuses, wall, failures = asyncio.run(
        _run(base_url, headers, scenario, clients, duration, max_requests, seed, loadgen))
    ok = sum(c for s, c in statuses.items() if 200 <= s < 300)
    return {**percentiles(latencies), "clients": clients, "loadgen": loadgen, "wall_s": wall,
            "requests_per_s": len(latencies) / wall,
            "ok": ok, "errors": sum(statuses.values()) - ok, "statuses": {str(k): v for k, v in statuses.items()},
            "failures": failures, "server_cpu_s": server.cpu_seconds() - cpu0,
            "loadgen_cpu_s": time.process_time() - own0}


def scenarios(*, export_body: dict[str, Any], stored: list[tuple[int, int]], profiles: int, crm_width: int,
              policy_id: str) -> list[Scenario]:
    """The four measured requests: list jobs (the first page, or a keyset page after a random stored job), get a
    random stored job, look a random person up by CRMID (pdg policy), create an export job."""

    def listing(rng: random.Random) -> Request:
        if rng.random() < 0.5:
            return "GET", "/data/core/ups/export/jobs?limit=50", None
        job_id, created = stored[rng.randrange(len(stored))]
        return "GET", f"/data/core/ups/export/jobs?limit=50&offset={created}_{job_id}", None

    def get(rng: random.Random) -> Request:
        return "GET", f"/data/core/ups/export/jobs/{stored[rng.randrange(len(stored))][0]}", None

    def lookup(rng: random.Random) -> Request:
        crm = f"CRM-{rng.randrange(profiles):0{crm_width}d}"
        return ("GET", f"/data/core/ups/access/entities?schema.name=_xdm.context.profile&entityId={crm}"
                       f"&entityIdNS=CRMID&mergePolicyId={policy_id}", None)

    def create(rng: random.Random) -> Request:
        return "POST", "/data/core/ups/export/jobs", json.loads(json.dumps(export_body))

    return [Scenario("list", listing), Scenario("get", get), Scenario("lookup", lookup), Scenario("create", create)]
