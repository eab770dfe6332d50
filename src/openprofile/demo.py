"""`openprofile demo`: the main flow end to end on the embedded default, through the real HTTP API.

It starts a server on a fresh data directory, registers credentials, gets a token, creates
schemas and profile-enabled datasets, generates synthetic profiles and events, ingests them with
the batch-ingestion API, and reports what it did, how long each step took and where the data is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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

    console.print(f"\n[bold]Done in {sum(s.seconds for s in steps):.1f} s.[/] Data is under "
                  f"[bold]{data_dir.resolve()}[/]: metadata.sqlite3 (catalog), lake/ (Parquet by org/sandbox/dataset/"
                  f"batch), generated/ (the source files). Start it again with "
                  f"`openprofile serve --data-dir {data_dir}`.")
