"""The gateway: IMS tokens, the required headers and their error codes, request ids, limits, docs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openprofile.app import create_app
from openprofile.core.platform import Platform
from openprofile.core.settings import AuthMode, Settings
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    ORG,
    OTHER_CLIENT_ID,
    OTHER_ORG,
    OTHER_SECRET,
    Api,
    get_token,
)
from tests.helpers import assert_error

DATASETS = "/data/foundation/catalog/dataSets"


def test_token_has_ims_shape(api: Api) -> None:
    response = api.client.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                                      "client_secret": CLIENT_SECRET, "scope": "openid,AdobeID"})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86399
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2


@pytest.mark.parametrize(("form", "status", "error"), [
    ({"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "wrong"}, 401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}, 401, "invalid_client"),
    ({"grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, 400, "unsupported_grant_type"),
    ({"grant_type": "client_credentials", "client_secret": CLIENT_SECRET}, 400, "invalid_request"),
])
def test_token_refusals(api: Api, form: dict[str, str], status: int, error: str) -> None:
    response = api.client.post("/ims/token/v3", data=form)
    assert response.status_code == status
    assert response.json()["error"] == error


def test_token_needs_a_form(api: Api) -> None:
    response = api.client.post("/ims/token/v3", json={"client_id": CLIENT_ID})
    assert response.status_code == 415


@pytest.mark.parametrize(("drop", "replace", "status", "code"), [
    ("Authorization", None, 403, "403010"),
    (None, {"Authorization": "Bearer not-a-token"}, 401, "401013"),
    (None, {"Authorization": "Basic abc"}, 401, "401013"),
    ("x-api-key", None, 403, "403000"),
    (None, {"x-api-key": "someone-else"}, 403, "403003"),
    ("x-gw-ims-org-id", None, 400, "400003"),
    (None, {"x-gw-ims-org-id": OTHER_ORG}, 403, "403025"),
    ("x-sandbox-name", None, 400, "400003"),
])
def test_gateway_errors(api: Api, drop: str | None, replace: dict[str, str] | None, status: int, code: str) -> None:
    headers = api.headers(**(replace or {}))
    if drop:
        headers.pop(drop)
    response = api.client.get(DATASETS, headers=headers)
    body = assert_error(response, status)
    assert body["error_code"] == code
    assert body["message"]


def test_unknown_sandbox_is_404(api: Api) -> None:
    response = api.get(DATASETS, headers={"x-sandbox-name": "nope"})
    assert_error(response, 404, "nope")


def test_sandbox_lookup_returns_an_id(api: Api) -> None:
    response = api.get("/data/foundation/sandbox-management/sandboxes/prod")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "prod" and body["type"] == "production" and len(body["id"]) == 36
    dev = api.get("/data/foundation/sandbox-management/sandboxes/dev").json()
    assert dev["id"] != body["id"]
    assert_error(api.get("/data/foundation/sandbox-management/sandboxes/missing"), 404, "missing")


def test_other_orgs_sandboxes_are_not_visible(api: Api) -> None:
    other = api.as_tenant(OTHER_ORG, "prod", OTHER_CLIENT_ID, OTHER_SECRET)
    names = {s["name"] for s in other.get("/data/foundation/sandbox-management/sandboxes").json()["sandboxes"]}
    assert names == {"prod"}  # the test org's "dev" sandbox is not the other org's
    assert_error(other.get("/data/foundation/sandbox-management/sandboxes/dev"), 404, "dev")


def test_request_id_is_echoed_or_made(api: Api) -> None:
    echoed = api.get(DATASETS, headers={"x-request-id": "my-request-42"})
    assert echoed.headers["x-request-id"] == "my-request-42"
    made = api.get(DATASETS)
    assert made.headers["x-request-id"]
    failed = api.get(f"{DATASETS}/missing", headers={"x-request-id": "req-404"})
    assert failed.json()["requestId"] == "req-404"


def test_openapi_docs_are_served(api: Api) -> None:
    spec = api.client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path in ("/ims/token/v3", "/data/foundation/catalog/dataSets", "/data/foundation/import/batches",
                 "/data/foundation/export/files/{file_id}"):
        assert path in paths
    assert api.client.get("/docs").status_code == 200


def test_health(api: Api) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}


def test_unknown_route_gets_the_envelope(api: Api) -> None:
    assert_error(api.get("/data/foundation/nothing-here"), 404, "/data/foundation/nothing-here")


@pytest.fixture
def small_limits_client(tmp_path: Path, database_url: str | None) -> TestClient:
    settings = Settings(data_dir=tmp_path / "small", database_url=database_url, workers=0, max_header_bytes=2048,
                        max_json_body_bytes=1024)
    return TestClient(create_app(settings))


def test_oversized_header_and_body_get_413(small_limits_client: TestClient, api: Api) -> None:
    headers = api.headers()
    response = small_limits_client.get(DATASETS, headers={**headers, "x-padding": "a" * 4000})
    assert_error(response, 413, "headers")
    response = small_limits_client.post(DATASETS, headers=headers, content=b"{" + b" " * 5000 + b"}")
    assert_error(response, 413, "body")


def test_permissive_mode_accepts_any_token(tmp_path: Path, database_url: str | None) -> None:
    settings = Settings(data_dir=tmp_path / "permissive", database_url=database_url, workers=0,
                        auth=AuthMode.permissive)
    platform = Platform.open(settings)
    with TestClient(create_app(platform=platform)) as client:
        headers = {"Authorization": "Bearer anything", "x-api-key": "whatever", "x-gw-ims-org-id": "LOCAL@AdobeOrg",
                   "x-sandbox-name": "my-sandbox"}
        assert client.get(DATASETS, headers=headers).json() == {}
        sandbox = client.get("/data/foundation/sandbox-management/sandboxes/my-sandbox", headers=headers)
        assert sandbox.status_code == 200
        missing = client.get(DATASETS, headers={k: v for k, v in headers.items() if k != "Authorization"})
        assert missing.status_code == 403
    platform.close()


def test_token_of_one_org_cannot_act_for_another(api: Api) -> None:
    token = get_token(api.client, OTHER_CLIENT_ID, OTHER_SECRET)
    response = api.client.get(DATASETS, headers={"Authorization": f"Bearer {token}", "x-api-key": OTHER_CLIENT_ID,
                                                 "x-gw-ims-org-id": ORG, "x-sandbox-name": "prod"})
    assert response.json()["error_code"] == "403025"
