"""Export jobs under stress, against real server processes: cancel while PROCESSING, kill -9 of the server
mid-export then restart, and 50 jobs submitted concurrently that all run exactly once."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from openprofile.generate import generate_dataset
from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, ServerProcess, start_server, stop_server
from tests.helpers import EVENT_CLASS, PROFILE_CLASS, PROFILE_UNION

pytestmark = pytest.mark.server
JOBS = "/data/core/ups/export/jobs"


class Client:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=120)
        token = self.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                                      "client_secret": CLIENT_SECRET}).json()["access_token"]
        self.http.headers.update({"Authorization": f"Bearer {token}", "x-api-key": CLIENT_ID,
                                  "x-gw-ims-org-id": ORG, "x-sandbox-name": "prod"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code < 400, response.text
        return response.json() if response.content else None

    def dataset(self, name: str, schema_id: str, profile: bool = True) -> str:
        body: dict[str, Any] = {"name": name, "schemaRef": {"id": schema_id, "contentType": "application/json"}}
        if profile:
            body["tags"] = {"unifiedProfile": ["enabled:true"]}
        return str(self.call("POST", "/data/foundation/catalog/dataSets", json=body)[0].split("/")[-1])

    def ingest(self, dataset_id: str, files: list[Path]) -> None:
        batch = self.call("POST", "/data/foundation/import/batches",
                          json={"datasetId": dataset_id, "inputFormat": {"format": "parquet"}})["id"]
        for path in files:
            self.call("PUT", f"/data/foundation/import/batches/{batch}/datasets/{dataset_id}/files/{path.name}",
                      content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        self.call("POST", f"/data/foundation/import/batches/{batch}", params={"action": "COMPLETE"})
        deadline = time.monotonic() + 120
        while self.call("GET", f"/data/foundation/catalog/batches/{batch}")[batch]["status"] != "success":
            assert time.monotonic() < deadline
            time.sleep(0.1)

    def job(self, job_id: int) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", f"{JOBS}/{job_id}")
        return found

    def wait(self, job_id: int, statuses: tuple[str, ...] = ("SUCCEEDED", "FAILED", "CANCELLED"),
             timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} never reached {statuses}: {self.job(job_id)}")

    def visible_batches(self, dataset_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", "/data/foundation/catalog/batches",
                                          params={"dataSet": dataset_id, "status": "success"})
        return found


def _load(client: Client, tmp: Path, people: int) -> str:
    data = generate_dataset(tmp / "gen", people, seed=3, events_per_profile=10)
    crm = client.dataset("CRM", PROFILE_CLASS)
    web = client.dataset("Web", EVENT_CLASS)
    client.ingest(crm, [f.path for f in data.files_for("crm")])
    client.ingest(web, [f.path for f in data.files_for("events")])
    return client.dataset("Target", PROFILE_UNION, profile=False)


HEAVY = {"schema": {"name": "_xdm.context.profile"},
         "additionalFields": {"eventList": {"fields": "_id,timestamp,web,environment,commerce,productListItems"}}}


def test_cancel_while_processing(server: ServerProcess, tmp_path: Path) -> None:
    client = Client(server.base_url)
    target = _load(client, tmp_path, 20_000)
    job = client.call("POST", JOBS, json={**HEAVY, "destination": {"datasetId": target}})
    client.wait(job["id"], ("PROCESSING", "SUCCEEDED"))
    assert client.call("DELETE", f"{JOBS}/{job['id']}")["status"] is True
    final = client.wait(job["id"])
    if final["status"] == "SUCCEEDED":
        pytest.skip("the export finished before the cancel reached it")
    assert final["status"] == "CANCELLED"
    assert client.visible_batches(target) == {}
    assert not any((server.data_dir / "staging").iterdir())
    assert not list((server.data_dir / "lake").rglob(f"*{job['destination']['batchId']}*"))


def test_kill_9_mid_export_then_restart(tmp_path: Path, database_url: str | None) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "OPENPROFILE_LEASE_SECONDS": "2"}
    if database_url:
        env["OPENPROFILE_DATABASE_URL"] = database_url
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "openprofile", "credentials", "add", "--org-id", ORG, "--client-id",
                    CLIENT_ID, "--client-secret", CLIENT_SECRET, "--data-dir", str(data_dir)], env=env, check=True,
                   capture_output=True)
    os.environ["OPENPROFILE_LEASE_SECONDS"] = "2"
    try:
        first = start_server(data_dir, database_url)
        client = Client(first.base_url)
        target = _load(client, tmp_path, 20_000)
        job = client.call("POST", JOBS, json={**HEAVY, "destination": {"datasetId": target}})
        client.wait(job["id"], ("PROCESSING", "SUCCEEDED"))
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        second = start_server(data_dir, database_url)
        try:
            client = Client(second.base_url)
            final = client.wait(job["id"])
            assert final["status"] in ("SUCCEEDED", "FAILED")
            visible = client.visible_batches(target)
            if final["status"] == "SUCCEEDED":
                assert list(visible) == [job["destination"]["batchId"]]  # the same batch id, once
                files = client.call("GET", f"/data/foundation/export/batches/{job['destination']['batchId']}/files")
                assert sum(int(f["records"]) for f in files["data"]) == final["metrics"]["totalExportedProfileCounter"]
            else:
                assert visible == {}
            assert not any((data_dir / "staging").iterdir())
        finally:
            stop_server(second)
    finally:
        os.environ.pop("OPENPROFILE_LEASE_SECONDS", None)


def test_fifty_concurrent_jobs_each_run_once(server: ServerProcess, tmp_path: Path) -> None:
    client = Client(server.base_url)
    target = _load(client, tmp_path, 200)
    body = {"fields": "identities.id", "destination": {"datasetId": target}, "schema": {"name": "_xdm.context.profile"}}

    def submit(_: int) -> int:
        return int(Client(server.base_url).call("POST", JOBS, json=body)["id"])

    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(submit, range(50)))
    assert len(set(ids)) == 50
    finals = [client.wait(i) for i in ids]
    assert {f["status"] for f in finals} == {"SUCCEEDED"}
    assert all(f["metrics"]["totalExportedProfileCounter"] == 200 for f in finals)
    visible = client.visible_batches(target)
    assert sorted(visible) == sorted(f["destination"]["batchId"] for f in finals)
    import sqlalchemy as sa

    url = server.env.get("OPENPROFILE_DATABASE_URL") or f"sqlite:///{server.data_dir / 'metadata.sqlite3'}"
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        attempts = conn.execute(sa.text("SELECT attempts FROM queue_jobs WHERE kind = 'export.run'")).scalars().all()
    engine.dispose()
    assert len(attempts) == 50 and set(attempts) == {1}
