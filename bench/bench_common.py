"""What the benchmarks share: processes and their /proc readings, the server and worker, generated data,
ingestion through the batch-ingestion API, percentiles, and the machine's description.

Imported by the scripts beside it (`bench_profile.py`, `bench_export.py`, `run.py`, ...) as a sibling module:
running `python bench/x.py` puts this folder on `sys.path`; tests add it themselves.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform as host
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from openprofile.demo import CLIENT_ID as CLIENT_ID  # re-exported for the benchmarks
from openprofile.demo import CLIENT_SECRET as CLIENT_SECRET
from openprofile.demo import EVENT_CLASS as EVENT_CLASS
from openprofile.demo import ORG as ORG
from openprofile.demo import PROFILE_CLASS as PROFILE_CLASS
from openprofile.demo import DemoClient as DemoClient
from openprofile.generate import GeneratedData, GeneratedFile

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out"
ENTITIES = "/data/core/ups/access/entities"
POLICIES = "/data/core/ups/config/mergePolicies"
EXPORT_JOBS = "/data/core/ups/export/jobs"
UNION = "https://ns.adobe.com/xdm/context/profile__union"


# --------------------------------------------------------------------------------------------------
# Processes, read from /proc


@dataclass(frozen=True)
class Proc:
    """A process of ours, read through /proc: CPU seconds (user + system, its threads included) and memory."""

    pid: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (stat fields 14, 15)

    def memory(self) -> dict[str, int]:
        """VmHWM (peak RSS) and VmRSS, in bytes."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0]) * 1024
        return found

    def peak_mib(self) -> float:
        return self.memory().get("VmHWM", 0) / 2**20

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (`clear_refs` 5), so the next reading is the peak from now on."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds: only this process, by its id."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------------------------------
# The server and its workers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def proc(self) -> Proc:
        return Proc(self.process.pid)

    def cpu_seconds(self) -> float:
        return self.proc.cpu_seconds()

    def memory(self) -> dict[str, int]:
        return self.proc.memory()


def _server_env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "OPENPROFILE_HOST": "127.0.0.1", "OPENPROFILE_POLL_SECONDS": "0.05"}
    if threads:
        env["OPENPROFILE_ENGINE_THREADS"] = str(threads)
    env.pop("OPENPROFILE_DATABASE_URL", None)
    return env


@contextmanager
def running_server(data_dir: Path, threads: int | None = None, workers: int | None = None) -> Iterator[Server]:
    """`openprofile serve` on 127.0.0.1 and a free port, on `data_dir` with the demo org's credentials;
    `workers` in-process job workers (None: the server's default; 0: only `openprofile worker` runs jobs)."""
    from openprofile.core.platform import Platform
    from openprofile.core.settings import Settings
    from openprofile.core.tenancy import add_credentials

    data_dir.mkdir(parents=True, exist_ok=True)
    platform = Platform.open(Settings(data_dir=data_dir))
    with platform.engine.begin() as conn:
        add_credentials(conn, ORG, CLIENT_ID, CLIENT_SECRET)
    platform.close()
    port = _free_port()
    env = _server_env(threads)
    command = [sys.executable, "-m", "openprofile", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir)]
    if workers is not None:
        command += ["--workers", str(workers)]
    log = data_dir / "server.log"
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
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
        yield Server(base_url, process, data_dir, env)
    finally:
        stop_process(process)


def start_worker(server: Server, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """An `openprofile worker` process on the server's data directory (stop it with `stop_process`)."""
    log = server.data_dir / "worker.log"
    return subprocess.Popen([sys.executable, "-m", "openprofile", "worker", "--data-dir", str(server.data_dir),
                             "--concurrency", str(concurrency)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=server.env)


# --------------------------------------------------------------------------------------------------
# Data


def generated_data(folder: Path, profiles: int, events_per_profile: int, seed: int,
                   fragments_per_profile: int = 2) -> tuple[GeneratedData, bool]:
    """The data `openprofile generate` writes into `folder`, reused when its manifest matches (True) or
    generated now by running the command (False)."""
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        wanted = (profiles, events_per_profile, seed, fragments_per_profile)
        if (manifest.get("profiles"), manifest.get("eventsPerProfile"), manifest.get("seed"),
                manifest.get("fragmentsPerProfile", 2)) == wanted:
            files = [GeneratedFile(name, folder / f["path"], int(f["records"]))
                     for name, entry in manifest["datasets"].items() for f in entry["files"]]
            if all(f.path.exists() for f in files):
                return GeneratedData(folder, seed, profiles, files), True
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "openprofile", "generate", "--profiles", str(profiles), "--seed", str(seed),
                    "--out", str(folder), "--events-per-profile", str(events_per_profile),
                    "--fragments-per-profile", str(fragments_per_profile)],
                   check=True, stdout=subprocess.DEVNULL)
    data, reused = generated_data(folder, profiles, events_per_profile, seed, fragments_per_profile)
    assert reused, f"openprofile generate wrote no matching manifest in {folder}"
    return data, False


def lake_files(data_dir: Path, dataset_id: str, batch_id: str | None = None) -> list[str]:
    """The Parquet files of a dataset in the server's lake (of one batch, if given)."""
    return sorted(str(p) for p in (data_dir / "lake").glob(f"*/*/{dataset_id}/{batch_id or '*'}/*.parquet"))


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


def wait_store(data_dir: Path, timeout: float = 7200) -> None:
    deadline = time.monotonic() + timeout
    while pending_batches(data_dir):
        if time.monotonic() > deadline:
            raise TimeoutError("the profile store did not settle in time")
        time.sleep(0.05)


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
               timeout: float, workers: Sequence[Proc] = ()) -> dict[str, Any]:
    """Upload and complete one batch per dataset, then wait for the lake, then for the profile store.
    CPU seconds are the server's plus those of `workers` (other processes running the jobs)."""
    procs = [server.proc, *workers]

    def cpu() -> float:
        return sum(p.cpu_seconds() for p in procs)

    started, cpu0 = time.perf_counter(), cpu()
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
    lake_s, lake_cpu = time.perf_counter() - started, cpu() - cpu0
    wait_store(server.data_dir, max(1.0, deadline - time.monotonic()))
    store_s, store_cpu = time.perf_counter() - started, cpu() - cpu0
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
# Reporting


def percentiles(latencies: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles (ms) of latencies in seconds."""
    if not latencies:
        return {"n": 0}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1] * 1000

    return {"n": len(ordered), "p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000,
            "mean_ms": statistics.fmean(ordered) * 1000}


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def git_revision() -> str | None:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                               cwd=BENCH_DIR)
    except (OSError, subprocess.CalledProcessError):
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=BENCH_DIR).stdout.strip()
    return found.stdout.strip() + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """The machine: CPU model and count (/proc/cpuinfo), memory (/proc/meminfo), kernel, Python, Java."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    java = None
    with contextlib.suppress(OSError):
        out = subprocess.run(["java", "-version"], capture_output=True, text=True)
        java = (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else None
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1),
            "kernel": host.release(), "python": host.python_version(), "java": java}


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
