"""Data Access: a batch's files listed in AEP's shape, bytes downloaded whole or by Range."""

from __future__ import annotations

import pytest

from openprofile.core.platform import Platform
from tests.conftest import Api
from tests.helpers import assert_error, create_dataset, ingest, profile
from tests.specs import assert_matches_spec

EXPORT = "/data/foundation/export"


@pytest.fixture
def batch(api: Api) -> dict[str, object]:
    dataset_id = create_dataset(api, "CRM")
    done = ingest(api, dataset_id, [profile(f"C{n}", f"{n}@x.com", f"P{n}") for n in range(20)])
    assert done["status"] == "success"
    return done


def test_listing_and_bytes(api: Api, batch: dict[str, object], platform: Platform) -> None:
    files = api.get(f"{EXPORT}/batches/{batch['id']}/files").json()
    assert_matches_spec("data-access", "GET", "/batches/{batchId}/files", 200, files)
    assert files["_page"]["count"] == len(files["data"]) == 1
    entry = files["data"][0]
    assert entry["dataSetFileId"] == f"{batch['id']}-1"
    assert entry["_links"]["self"]["href"].endswith(f"/files/{entry['dataSetFileId']}")
    listing = api.get(f"{EXPORT}/files/{entry['dataSetFileId']}").json()
    assert_matches_spec("data-access", "GET", "/files/{dataSetFileId}", 200, listing)
    item = listing["data"][0]
    assert item["name"].endswith(".parquet")
    content = api.get(f"{EXPORT}/files/{entry['dataSetFileId']}", params={"path": item["name"]})
    assert content.status_code == 200
    assert content.headers["content-type"] == "application/parquet"
    on_disk = next(platform.lake.root.rglob(item["name"])).read_bytes()
    assert content.content == on_disk
    assert int(item["length"]) == len(on_disk)


def test_range_by_header_and_by_query(api: Api, batch: dict[str, object]) -> None:
    file_id = f"{batch['id']}-1"
    name = api.get(f"{EXPORT}/files/{file_id}").json()["data"][0]["name"]
    whole = api.get(f"{EXPORT}/files/{file_id}", params={"path": name}).content
    part = api.get(f"{EXPORT}/files/{file_id}", params={"path": name}, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    assert part.headers["content-length"] == "100"
    assert part.content == whole[:100]
    tail = api.get(f"{EXPORT}/files/{file_id}", params={"path": name, "range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole[-10:]
    assert_error(api.get(f"{EXPORT}/files/{file_id}", params={"path": name},
                         headers={"Range": f"bytes={len(whole) + 5}-"}), 416, "Range")
    assert_error(api.get(f"{EXPORT}/files/{file_id}", params={"path": name}, headers={"Range": "rows=1-2"}), 416)


def test_head(api: Api, batch: dict[str, object]) -> None:
    file_id = f"{batch['id']}-1"
    name = api.get(f"{EXPORT}/files/{file_id}").json()["data"][0]["name"]
    head = api.request("HEAD", f"{EXPORT}/files/{file_id}", params={"path": name})
    assert head.status_code == 200
    assert head.headers["accept-ranges"] == "bytes" and int(head.headers["content-length"]) > 0


def test_unknowns_are_404(api: Api, batch: dict[str, object]) -> None:
    assert_error(api.get(f"{EXPORT}/batches/{'a' * 32}/files"), 404, "a" * 32)
    assert_error(api.get(f"{EXPORT}/files/nope-1"), 404, "nope-1")
    assert_error(api.get(f"{EXPORT}/files/{batch['id']}-1", params={"path": "other.parquet"}), 404, "other.parquet")
    assert_error(api.get(f"{EXPORT}/batches/{batch['id']}/files", params={"limit": "lots"}), 400, "limit")
