"""`openprofile demo`: the main flow end to end on the embedded default, through the real HTTP API.

It starts a server on a fresh data directory, registers credentials, gets a token, creates
schemas and profile-enabled datasets, generates synthetic profiles and events, ingests them with
the batch-ingestion API; then it makes a stitching merge policy (`pdg`, timestamp-ordered) the
sandbox default, creates a profile-union dataset, exports merged profiles with their events into it
as an export job (followed with the CLI's progress display), lists the jobs, downloads the exported
Parquet through Data Access and reads a few profiles back. It reports what it did, how long each
step took and where the data is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ORG = "DEMO0000000000000000000@AdobeOrg"
CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"
PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_UNION = PROFILE_CLASS + "__union"
EXPORT_FIELDS = "identities.id,person.name,personalEmail.address,loyalty"
EXPORT_EVENT_FIELDS = "_id,timestamp,eventType,environment.browserDetails.name"


@dataclass
class Step:
    name: str
    seconds: float
    detail: str


class DemoClient:
    """An httpx client that carries the gateway headers of the demo org's prod sandbox."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=600)
        token = self.http.post("/ims/token/v3", data={
            "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "scope": "openid,AdobeID"}).raise_for_status().json()["access_token"]
        self.http.headers.update({"Authorization": f"Bearer {token}", "x-api-key": CLIENT_ID,
                                  "x-gw-ims-org-id": ORG, "x-sandbox-name": "prod"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} → {response.status_code}: {response.text}")
        return response.json() if response.content else None

    def create_schema(self, title: str, class_id: str) -> str:
        schema = self.call("POST", "/data/foundation/schemaregistry/tenant/schemas",
                           json={"title": title, "type": "object", "allOf": [{"$ref": class_id}]})
        self.call("PATCH", f"/data/foundation/schemaregistry/tenant/schemas/{schema['meta:altId']}",
                  json=[{"op": "add", "path": "/meta:immutableTags", "value": ["union"]}])
        return str(schema["$id"])

    def create_dataset(self, name: str, schema_id: str, profile: bool = True) -> str:
        body: dict[str, Any] = {"name": name, "schemaRef": {"id": schema_id,
                                                            "contentType": "application/vnd.adobe.xed+json;version=1"}}
        if profile:
            body["tags"] = {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}
        return str(self.call("POST", "/data/foundation/catalog/dataSets", json=body)[0].split("/")[-1])

    def ingest_files(self, dataset_id: str, files: list[Path]) -> dict[str, Any]:
        """One batch: upload each Parquet file (streamed), COMPLETE, and wait for the batch to settle."""
        batch_id = self.call("POST", "/data/foundation/import/batches",
                             json={"datasetId": dataset_id, "inputFormat": {"format": "parquet"}})["id"]
        for path in files:
            self.call("PUT", f"/data/foundation/import/batches/{batch_id}/datasets/{dataset_id}/files/{path.name}",
                      content=_chunks(path), headers={"Content-Type": "application/octet-stream"})
        self.call("POST", f"/data/foundation/import/batches/{batch_id}", params={"action": "COMPLETE"})
        while True:
            batch: dict[str, Any] = self.call("GET", f"/data/foundation/catalog/batches/{batch_id}")[batch_id]
            if batch["status"] not in ("loading", "processing"):
                batch["id"] = batch_id
                return batch
            time.sleep(0.2)


def _chunks(path: Path, size: int = 1024 * 1024) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


@contextmanager
def running_server(data_dir: Path, port: int) -> Iterator[str]:
    log = data_dir / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "openprofile", "serve", "--port", str(port), "--data-dir",
                                str(data_dir)], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=os.environ.copy())
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
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def run_demo(data_dir: Path, profiles: int, port: int, console: Console) -> None:
    from openprofile.core.platform import Platform
    from openprofile.core.settings import Settings
    from openprofile.core.tenancy import add_credentials
    from openprofile.generate import generate_dataset

    steps: list[Step] = []

    def step(name: str, started: float, detail: str) -> None:
        steps.append(Step(name, time.perf_counter() - started, detail))
        console.print(f"[green]✓[/] {name} [dim]({steps[-1].seconds:.2f} s)[/] {detail}")

    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    started = time.perf_counter()
    platform = Platform.open(Settings(data_dir=data_dir))
    with platform.engine.begin() as conn:
        add_credentials(conn, ORG, CLIENT_ID, CLIENT_SECRET)
    platform.close()
    step("metadata store and credentials", started, f"org {ORG}, client {CLIENT_ID}")

    started = time.perf_counter()
    generated = generate_dataset(data_dir / "generated", profiles, seed=42)
    total = sum(generated.records(n) for n in ("crm", "loyalty", "events"))
    step("generate synthetic data", started, f"{total:,} records for {profiles:,} people")

    started = time.perf_counter()
    with running_server(data_dir, port) as base_url:
        step("start server", started, base_url)
        started = time.perf_counter()
        client = DemoClient(base_url)
        step("IMS token", started, "POST /ims/token/v3")

        started = time.perf_counter()
        crm_schema = client.create_schema("Demo CRM profile", PROFILE_CLASS)
        loyalty_schema = client.create_schema("Demo loyalty profile", PROFILE_CLASS)
        event_schema = client.create_schema("Demo web and commerce events", EVENT_CLASS)
        datasets = {
            "crm": client.create_dataset("Demo CRM", crm_schema),
            "loyalty": client.create_dataset("Demo loyalty", loyalty_schema),
            "events": client.create_dataset("Demo events", event_schema),
        }
        step("schemas and profile-enabled datasets", started, ", ".join(f"{k}={v}" for k, v in datasets.items()))

        table = Table("dataset", "batch", "status", "records", "seconds", "records/s")
        for name, dataset_id in datasets.items():
            started = time.perf_counter()
            batch = client.ingest_files(dataset_id, [f.path for f in generated.files_for(name)])
            seconds = time.perf_counter() - started
            written = int(batch["metrics"].get("recordsWritten", 0))
            if batch["status"] != "success":
                raise RuntimeError(f"batch for {name} ended {batch['status']}: {batch['errors']}")
            step(f"ingest {name}", started, f"batch {batch['id']}: {written:,} records")
            table.add_row(name, batch["id"], batch["status"], f"{written:,}", f"{seconds:.2f}",
                          f"{written / seconds:,.0f}")
        console.print(table)
        union = client.call("GET", "/data/foundation/schemaregistry/tenant/unions/_xdm.context.profile__union")
        console.print(f"profile union fields: {', '.join(sorted(union['properties']))}")
        export_profiles(client, base_url, data_dir, console, step)

    console.print(f"\n[bold]Done in {sum(s.seconds for s in steps):.1f} s.[/] Data is under "
                  f"[bold]{data_dir.resolve()}[/]: metadata.sqlite3 (catalog), lake/ (Parquet by org/sandbox/dataset/"
                  f"batch), generated/ (the source files), export/ (the exported profiles, downloaded). "
                  f"Start it again with `openprofile serve --data-dir {data_dir}`.")


def export_profiles(client: DemoClient, base_url: str, data_dir: Path, console: Console,
                    step: Callable[[str, float, str], None]) -> None:
    """Export merged profiles with their events as a job, follow it, list jobs, download and read the files."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from openprofile.cli.export import (
        Connection,
        PlatformClient,
        build_body,
        download_job,
        downloads_table,
        follow_job,
        jobs_table,
        print_summary,
    )

    console.rule("profile export")
    started = time.perf_counter()
    policy = client.call("POST", "/data/core/ups/config/mergePolicies", json={
        "name": "Demo stitched profiles", "schema": {"name": "_xdm.context.profile"},
        "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True})
    step("default merge policy", started, f"{policy['id']}: identity graph pdg (stitched), timestampOrdered, "
                                          "now the sandbox's default")

    started = time.perf_counter()
    target = client.create_dataset("Demo profile export", PROFILE_UNION, profile=False)
    step("profile-union dataset", started, f"{target} on {PROFILE_UNION}")

    exporter = PlatformClient(Connection(url=base_url, org_id=ORG, client_id=CLIENT_ID, client_secret=CLIENT_SECRET),
                              timeout=600)
    with exporter:
        started = time.perf_counter()
        body = build_body(target, fields=EXPORT_FIELDS, event_fields=EXPORT_EVENT_FIELDS)  # no mergePolicy: default
        job = exporter.create_job(body)
        console.print(f"POST /data/core/ups/export/jobs → job [bold]{job['id']}[/] ({job['status']}), merge policy "
                      f"{job['mergePolicy']['id']} v{job['mergePolicy']['version']}, batch "
                      f"{job['destination']['batchId']}", highlight=False)
        job = follow_job(exporter, job, console, poll=0.25)
        if job["status"] != "SUCCEEDED":
            print_summary(console, job)
            raise RuntimeError(f"export job {job['id']} ended {job['status']}: {job.get('errors')}")
        exported = int(job["metrics"]["totalExportedProfileCounter"])
        step("export job", started, f"job {job['id']}: {exported:,} merged profiles with their events")
        print_summary(console, job)

        started = time.perf_counter()
        records = [r for page in exporter.job_pages() for r in page["records"]]
        console.print(jobs_table(records, title="GET /data/core/ups/export/jobs", compact=True))
        step("list export jobs", started, f"{len(records)} job(s)")

        started = time.perf_counter()
        downloaded = download_job(exporter, job, data_dir / "export", console)
        console.print(downloads_table(downloaded))
        step("download through Data Access", started,
             f"{len(downloaded.files)} file(s), {downloaded.total_bytes:,} bytes into {data_dir / 'export'}")

    started = time.perf_counter()
    table = pa.concat_tables([pq.read_table(f.path) for f in downloaded.files])
    with_events = pc.fill_null(pc.list_value_length(table["timeSeriesEvents"]), 0)
    show = table.filter(pc.and_(pc.is_valid(table["loyalty"]), pc.greater(with_events, 0))).slice(0, 3)
    step("read back with pyarrow", started, f"{table.num_rows:,} rows, columns {', '.join(table.column_names)}")
    rows = show.to_pylist()
    console.print(profiles_table(rows))
    if rows:
        first = dict(rows[0])
        events = first["timeSeriesEvents"] or []
        first["timeSeriesEvents"] = events[:2] + ([f"… {len(events) - 2} more"] if len(events) > 2 else [])
        console.print("The first of them as exported (nested Parquet: structs and lists):")
        console.print_json(json.dumps(first, default=str), indent=None)


def profiles_table(rows: list[dict[str, Any]]) -> Table:
    """Exported profiles in brief: who, loyalty, how many identities were stitched, and their events."""
    table = Table("name", "email", "loyalty", "identities", "events", "latest event", title="exported profiles")
    for row in rows:
        name = ((row.get("person") or {}).get("name")) or {}
        loyalty = row.get("loyalty") or {}
        events = row.get("timeSeriesEvents") or []
        latest = max(events, key=lambda e: e.get("timestamp") or 0) if events else {}
        table.add_row(
            " ".join(p for p in (name.get("firstName"), name.get("lastName")) if p),
            str((row.get("personalEmail") or {}).get("address") or ""),
            str(loyalty.get("tier") or ""),
            str(len(row.get("identities") or [])),
            str(len(events)),
            str(latest.get("eventType") or ""),
        )
    return table
