"""Shared fixtures: a platform on SQLite or PostgreSQL, an in-process API client, a real server process.

Tests that take `backend` (directly or through `platform`/`api`) run once per metadata store.
PostgreSQL is the server at 127.0.0.1:5432 (user postgres, trust auth); each test gets a fresh database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from openprofile.app import create_app
from openprofile.core.platform import Platform
from openprofile.core.settings import Settings
from openprofile.core.tenancy import add_credentials, create_sandbox

PG_ADMIN = os.environ.get("OPENPROFILE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ORG = "1BD6382559DF0C130A49422D@AdobeOrg"
OTHER_ORG = "OTHERORG0000000000000000@AdobeOrg"
CLIENT_ID, CLIENT_SECRET = "test-client", "test-secret"
OTHER_CLIENT_ID, OTHER_SECRET = "other-client", "other-secret"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    name = f"op_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, workers=2, poll_seconds=0.05)


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    opened = Platform.open(settings)
    with opened.engine.begin() as conn:
        add_credentials(conn, ORG, CLIENT_ID, CLIENT_SECRET)
        add_credentials(conn, OTHER_ORG, OTHER_CLIENT_ID, OTHER_SECRET)
        create_sandbox(conn, ORG, "dev")
    yield opened
    opened.close()


@dataclass
class Api:
    """An HTTP client that sends the gateway headers of one (org, sandbox)."""

    client: Any
    org: str
    sandbox: str
    client_id: str
    token: str
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self, **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "x-api-key": self.client_id, "x-gw-ims-org-id": self.org,
                "x-sandbox-name": self.sandbox, **self.extra, **more}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = self.headers(**kwargs.pop("headers", {}))
        response: httpx.Response = self.client.request(method, path, headers=headers, **kwargs)
        return response

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    def as_tenant(self, org: str, sandbox: str, client_id: str, secret: str) -> Api:
        token = get_token(self.client, client_id, secret)
        return Api(self.client, org, sandbox, client_id, token)


def get_token(client: Any, client_id: str, secret: str) -> str:
    response = client.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": client_id,
                                                  "client_secret": secret, "scope": "openid"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def test_client(platform: Platform) -> Iterator[TestClient]:
    with TestClient(create_app(platform=platform)) as client:
        yield client


@pytest.fixture
def api(test_client: TestClient) -> Api:
    return Api(test_client, ORG, "prod", CLIENT_ID, get_token(test_client, CLIENT_ID, CLIENT_SECRET))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    env: dict[str, str]
    log: Path


def start_server(data_dir: Path, database_url: str | None, *, extra_args: list[str] | None = None) -> ServerProcess:
    port = free_port()
    env = {**os.environ, "OPENPROFILE_POLL_SECONDS": "0.05"}
    if database_url:
        env["OPENPROFILE_DATABASE_URL"] = database_url
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "openprofile", "serve", "--port", str(port), "--data-dir", str(data_dir),
         *(extra_args or [])],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return ServerProcess(base_url, process, data_dir, env, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not become healthy: {log.read_text()}")


def stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def server(tmp_path: Path, database_url: str | None) -> Iterator[ServerProcess]:
    """A real `openprofile serve` process, with the test org's credentials registered."""
    data_dir = tmp_path / "server-data"
    env = {**os.environ}
    if database_url:
        env["OPENPROFILE_DATABASE_URL"] = database_url
    subprocess.run(
        [sys.executable, "-m", "openprofile", "credentials", "add", "--org-id", ORG, "--client-id", CLIENT_ID,
         "--client-secret", CLIENT_SECRET, "--data-dir", str(data_dir)],
        env=env, check=True, capture_output=True,
    )
    running = start_server(data_dir, database_url)
    yield running
    stop_server(running)
