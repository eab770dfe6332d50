"""Small helpers the API tests share: create datasets, ingest records, wait for batches."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import Api

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_UNION = PROFILE_CLASS + "__union"


def create_dataset(api: Api, name: str = "CRM", schema_id: str | None = PROFILE_CLASS,
                   profile: bool = True, **extra: Any) -> str:
    body: dict[str, Any] = {"name": name, **extra}
    if schema_id:
        body["schemaRef"] = {"id": schema_id, "contentType": "application/vnd.adobe.xed+json;version=1"}
    if profile:
        body["tags"] = {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}
    response = api.post("/data/foundation/catalog/dataSets", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()[0].split("/")[-1])


def wait_for_batch(api: Api, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(f"/data/foundation/catalog/batches/{batch_id}")
        assert response.status_code == 200, response.text
        batch: dict[str, Any] = response.json()[batch_id]
        if batch["status"] not in ("loading", "processing", "staging"):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish")


def start_batch(api: Api, dataset_id: str, fmt: str = "json") -> str:
    body = {"datasetId": dataset_id, "inputFormat": {"format": fmt}}
    response = api.post("/data/foundation/import/batches", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload(api: Api, batch_id: str, dataset_id: str, name: str, content: bytes) -> None:
    response = api.put(f"/data/foundation/import/batches/{batch_id}/datasets/{dataset_id}/files/{name}",
                       content=content, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text


def ingest(api: Api, dataset_id: str, records: list[dict[str, Any]] | bytes, fmt: str = "json",
           name: str = "records.json") -> dict[str, Any]:
    """Create a batch, upload one file, COMPLETE it, and wait for its final state."""
    batch_id = start_batch(api, dataset_id, fmt)
    content = records if isinstance(records, bytes) else json.dumps(records).encode()
    upload(api, batch_id, dataset_id, name, content)
    response = api.post(f"/data/foundation/import/batches/{batch_id}", params={"action": "COMPLETE"})
    assert response.status_code == 200, response.text
    batch = wait_for_batch(api, batch_id)
    batch["id"] = batch_id
    return batch


def profile(crm_id: str, email: str, first: str, **more: Any) -> dict[str, Any]:
    return {
        "identityMap": {"CRMID": [{"id": crm_id, "primary": True}], "email": [{"id": email}]},
        "person": {"name": {"firstName": first, "lastName": "Doe"}},
        "personalEmail": {"address": email},
        **more,
    }


def event(event_id: str, ecid: str, ts: str = "2024-05-01T10:00:00Z", **more: Any) -> dict[str, Any]:
    return {"_id": event_id, "timestamp": ts, "eventType": "web.webpagedetails.pageViews",
            "identityMap": {"ECID": [{"id": ecid, "primary": True}]}, **more}


def assert_error(response: Any, status: int, *mentions: str) -> dict[str, Any]:
    """An AEP error envelope with this status whose text names every mention."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    for key in ("type", "status", "title", "detail", "requestId"):
        assert key in body, f"{key} missing from {body}"
    assert body["status"] == status
    text = json.dumps(body)
    for mention in mentions:
        assert mention in text, f"{mention!r} not in {text}"
    return body
