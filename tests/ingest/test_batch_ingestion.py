"""Batch ingestion: files streamed in, COMPLETE parses and checks them, the lake gets typed Parquet
only when the whole batch is good; bad input fails the batch with reasons and leaves the dataset as it was."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openprofile.core.platform import Platform
from tests.conftest import Api
from tests.helpers import (
    EVENT_CLASS,
    assert_error,
    create_dataset,
    event,
    ingest,
    profile,
    start_batch,
    upload,
    wait_for_batch,
)
from tests.specs import assert_matches_spec

IMPORT = "/data/foundation/import/batches"
CATALOG = "/data/foundation/catalog"


def download_table(api: Api, batch_id: str) -> pa.Table:
    files = api.get(f"/data/foundation/export/batches/{batch_id}/files").json()["data"]
    tables = []
    for entry in files:
        listing = api.get(f"/data/foundation/export/files/{entry['dataSetFileId']}").json()
        for item in listing["data"]:
            content = api.get(f"/data/foundation/export/files/{entry['dataSetFileId']}",
                              params={"path": item["name"]}).content
            tables.append(pq.read_table(io.BytesIO(content)))
    return pa.concat_tables(tables)


def test_json_batch_becomes_typed_parquet(api: Api) -> None:
    dataset_id = create_dataset(api, "CRM")
    records = [profile("C1", "a@example.com", "Ann", loyalty={"points": 10}),
               profile("C2", "b@example.com", "Bob", loyalty={"points": 20})]
    batch = ingest(api, dataset_id, records)
    assert batch["status"] == "success", batch
    assert batch["metrics"]["recordsRead"] == 2 and batch["metrics"]["recordsWritten"] == 2
    assert batch["relatedObjects"] == [{"type": "dataSet", "id": dataset_id}]
    raw = api.get(f"{CATALOG}/batches/{batch['id']}").json()
    assert_matches_spec("catalog", "GET", "/batches/{BATCH_ID}", 200, raw)
    table = download_table(api, batch["id"])
    assert table.num_rows == 2
    assert pa.types.is_map(table.schema.field("identityMap").type)
    assert pa.types.is_struct(table.schema.field("person").type)
    assert pa.types.is_integer(table.schema.field("loyalty").type.field("points").type)
    rows = sorted(table.to_pylist(), key=lambda r: r["person"]["name"]["firstName"])
    assert rows[0]["person"]["name"]["firstName"] == "Ann" and rows[1]["loyalty"]["points"] == 20
    assert dict(rows[0]["identityMap"])["CRMID"][0]["id"] == "C1"
    observable = api.get(f"{CATALOG}/dataSets/{dataset_id}").json()[dataset_id]["observableSchema"]
    assert "person" in observable["properties"] and "identityMap" in observable["properties"]


def test_ndjson_and_several_files_in_one_batch(api: Api) -> None:
    dataset_id = create_dataset(api, "Events", schema_id=EVENT_CLASS)
    batch_id = start_batch(api, dataset_id)
    first = "\n".join(json.dumps(event(f"e{n}", "1" * 38)) for n in range(3)).encode()
    upload(api, batch_id, dataset_id, "part1.json", first)
    upload(api, batch_id, dataset_id, "part2.json", json.dumps([event("e9", "2" * 38)]).encode())
    assert api.post(f"{IMPORT}/{batch_id}", params={"action": "COMPLETE"}).status_code == 200
    batch = wait_for_batch(api, batch_id)
    assert batch["status"] == "success", batch
    table = download_table(api, batch_id)
    assert sorted(table.column("_id").to_pylist()) == ["e0", "e1", "e2", "e9"]
    assert pa.types.is_timestamp(table.schema.field("timestamp").type)


def test_parquet_batch(api: Api) -> None:
    dataset_id = create_dataset(api, "Parquet CRM")
    item = pa.struct([("id", pa.string()), ("primary", pa.bool_()), ("authenticatedState", pa.string())])
    table = pa.table({
        "identityMap": pa.array([[("CRMID", [{"id": "P1", "primary": True, "authenticatedState": "ambiguous"}])]],
                                type=pa.map_(pa.string(), pa.list_(item))),
        "person": pa.array([{"name": {"firstName": "Pia"}}]),
    })
    sink = io.BytesIO()
    pq.write_table(table, sink)
    batch = ingest(api, dataset_id, sink.getvalue(), fmt="parquet", name="crm.parquet")
    assert batch["status"] == "success", batch
    back = download_table(api, batch["id"])
    assert back.column("person").to_pylist() == [{"name": {"firstName": "Pia"}}]


def test_row_errors_fail_the_whole_batch_with_row_numbers(api: Api, platform: Platform) -> None:
    dataset_id = create_dataset(api, "Events", schema_id=EVENT_CLASS)
    good = event("ok", "1" * 38)
    no_id = {k: v for k, v in event("x", "1" * 38).items() if k != "_id"}
    no_identity = {k: v for k, v in event("y", "1" * 38).items() if k != "identityMap"}
    batch = ingest(api, dataset_id, [good, no_id, good | {"_id": "ok2"}, no_identity])
    assert batch["status"] == "failed"
    error = batch["errors"][0]
    assert error["rows"] == ["2", "4"], error
    assert "_id" in error["description"] and "identit" in error["description"]
    assert api.get(f"/data/foundation/export/batches/{batch['id']}/files").json()["data"] == []
    assert not list(platform.lake.root.rglob("*.parquet"))


@pytest.mark.parametrize(("content", "code"), [(b"", "EMPTY"), (b"[{\"a\": 1},, ]", "MALFORMED"),
                                               (b"{\"identityMap\": ", "MALFORMED")])
def test_empty_or_corrupt_file_fails_the_batch(api: Api, content: bytes, code: str) -> None:
    dataset_id = create_dataset(api, "CRM")
    batch = ingest(api, dataset_id, content)
    assert batch["status"] == "failed"
    assert code in batch["errors"][0]["code"]
    assert batch["errors"][0]["description"]


def test_type_conflict_fails_and_leaves_dataset_as_it_was(api: Api) -> None:
    dataset_id = create_dataset(api, "CRM")
    assert ingest(api, dataset_id, [profile("C1", "a@x.com", "Ann", loyalty={"points": 10})])["status"] == "success"
    before = api.get(f"{CATALOG}/dataSets/{dataset_id}").json()[dataset_id]["observableSchema"]
    bad = ingest(api, dataset_id, [profile("C2", "b@x.com", "Bob", loyalty={"points": "many"})])
    assert bad["status"] == "failed"
    assert "loyalty.points" in bad["errors"][0]["description"]
    after = api.get(f"{CATALOG}/dataSets/{dataset_id}").json()[dataset_id]["observableSchema"]
    assert after == before
    evolved = ingest(api, dataset_id, [profile("C3", "c@x.com", "Cy", loyalty={"tier": "gold"})])
    assert evolved["status"] == "success"
    grown = api.get(f"{CATALOG}/dataSets/{dataset_id}").json()[dataset_id]["observableSchema"]
    assert set(grown["properties"]["loyalty"]["properties"]) == {"points", "tier"}


def test_files_and_actions_after_complete_are_400(api: Api) -> None:
    dataset_id = create_dataset(api, "CRM")
    batch = ingest(api, dataset_id, [profile("C1", "a@x.com", "Ann")])
    late = api.put(f"{IMPORT}/{batch['id']}/datasets/{dataset_id}/files/late.json", content=b"[]",
                   headers={"Content-Type": "application/octet-stream"})
    assert_error(late, 400, "success")
    assert_error(api.post(f"{IMPORT}/{batch['id']}", params={"action": "COMPLETE"}), 400, batch["id"])


def test_abort_discards_the_batch(api: Api) -> None:
    dataset_id = create_dataset(api, "CRM")
    batch_id = start_batch(api, dataset_id)
    upload(api, batch_id, dataset_id, "a.json", json.dumps([profile("C1", "a@x.com", "Ann")]).encode())
    assert api.post(f"{IMPORT}/{batch_id}", params={"action": "ABORT"}).status_code == 200
    assert api.get(f"{CATALOG}/batches/{batch_id}").json()[batch_id]["status"] == "aborted"


@pytest.mark.parametrize(("body", "status", "mention"), [
    ({"datasetId": "0" * 24, "inputFormat": {"format": "json"}}, 404, "0" * 24),
    ({"inputFormat": {"format": "json"}}, 400, "/datasetId"),
    ({"datasetId": "x", "inputFormat": {"format": "xml"}}, 400, "/inputFormat/format"),
    ({"datasetId": "x"}, 400, "/inputFormat"),
])
def test_bad_batch_requests(api: Api, body: dict[str, object], status: int, mention: str) -> None:
    assert_error(api.post(IMPORT, json=body), status, mention)


def test_bad_action_upload_path_and_unknown_batch(api: Api) -> None:
    dataset_id = create_dataset(api, "CRM")
    batch_id = start_batch(api, dataset_id)
    assert_error(api.post(f"{IMPORT}/{batch_id}", params={"action": "EXPLODE"}), 400, "action")
    other = create_dataset(api, "Other")
    wrong = api.put(f"{IMPORT}/{batch_id}/datasets/{other}/files/a.json", content=b"[]")
    assert_error(wrong, 404, other)
    assert_error(api.post(f"{IMPORT}/{'f' * 32}", params={"action": "COMPLETE"}), 404, "f" * 32)


def test_complete_with_no_files_fails_the_batch(api: Api) -> None:
    dataset_id = create_dataset(api, "CRM")
    batch_id = start_batch(api, dataset_id)
    api.post(f"{IMPORT}/{batch_id}", params={"action": "COMPLETE"})
    batch = wait_for_batch(api, batch_id)
    assert batch["status"] == "failed" and batch["errors"][0]["code"] == "EMPTY_FILE"


def test_batches_list_filters(api: Api) -> None:
    crm = create_dataset(api, "CRM")
    events = create_dataset(api, "Events", schema_id=EVENT_CLASS)
    good = ingest(api, crm, [profile("C1", "a@x.com", "Ann")])
    bad = ingest(api, events, [{"_id": "x"}])
    listed = api.get(f"{CATALOG}/batches").json()
    assert_matches_spec("catalog", "GET", "/batches", 200, listed)
    assert set(listed) == {good["id"], bad["id"]}
    assert set(api.get(f"{CATALOG}/batches", params={"dataSet": crm}).json()) == {good["id"]}
    assert set(api.get(f"{CATALOG}/batches", params={"status": "failed"}).json()) == {bad["id"]}
    assert len(api.get(f"{CATALOG}/batches", params={"limit": 1, "orderBy": "desc:created"}).json()) == 1
    assert_error(api.get(f"{CATALOG}/batches", params={"status": "weird"}), 400, "status")


def test_a_bad_namespace_code_is_a_row_error(api: Api) -> None:
    dataset_id = create_dataset(api, "Events", schema_id=EVENT_CLASS)
    good = event("ok", "1" * 38)
    bad_ns = event("x", "1" * 38, identityMap={"my namespace!": [{"id": "a", "primary": True}]})
    batch = ingest(api, dataset_id, [good, bad_ns, good | {"_id": "ok2"}])
    assert batch["status"] == "failed"
    error = batch["errors"][0]
    assert error["rows"] == ["2"], error
    assert "my namespace!" in error["description"] and "namespace code" in error["description"]
