"""The real `aepp` client (0.6.0) against a real `openprofile serve` process, recipe A of aepp-client.md §1.6:
token from our IMS endpoint, datasets, batch ingestion, and the Parquet it downloads equal to what went in."""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, ServerProcess
from tests.helpers import PROFILE_CLASS, profile
from tests.specs import assert_matches_spec

pytestmark = pytest.mark.server


def configure_aepp(base_url: str) -> Any:
    import aepp
    from aepp import config

    aepp.configure(org_id=ORG, client_id=CLIENT_ID, secret=CLIENT_SECRET, scopes="openid,AdobeID", sandbox="prod")
    config.endpoints["global"] = base_url
    config.config_object["oauthTokenEndpointV2"] = f"{base_url}/ims/token/v3"
    return aepp


def test_aepp_catalog_ingestion_and_data_access(server: ServerProcess) -> None:
    configure_aepp(server.base_url)
    from aepp import catalog, dataaccess, ingestion

    cat = catalog.Catalog()
    created = cat.createDataSet(name="CRM via aepp", schemaId=PROFILE_CLASS, profileEnabled=True,
                                identityEnabled=True)
    assert_matches_spec("catalog", "POST", "/dataSets", 201, created)
    dataset_id = created[0].split("/")[-1]
    one = cat.getDataSet(dataset_id)
    assert one[dataset_id]["name"] == "CRM via aepp"
    assert one[dataset_id]["tags"]["unifiedProfile"] == ["enabled:true"]
    listed = cat.getDataSets()
    assert dataset_id in listed

    records = [profile(f"CRM-{n}", f"p{n}@example.com", f"Name{n}", loyalty={"points": n * 10}) for n in range(25)]
    ingest = ingestion.DataIngestion()
    batch = ingest.createBatch(datasetId=dataset_id)
    batch_id = batch["id"]
    ingest.uploadSmallFile(batch_id, dataset_id, "crm.json", data=records)
    ingest.uploadSmallFileFinish(batch_id)
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        got = cat.getBatch(batch_id)
        assert_matches_spec("catalog", "GET", "/batches/{BATCH_ID}", 200, got)
        status = got[batch_id]["status"]
        if status not in ("loading", "processing"):
            break
        time.sleep(0.1)
    assert status == "success", got

    access = dataaccess.DataAccess()
    files = access.getBatchFiles(batch_id)
    assert len(files) >= 1
    rows: list[dict[str, Any]] = []
    for entry in files:
        listing = access.getFiles(entry["dataSetFileId"])
        for item in listing["data"]:
            content = access.getFiles(entry["dataSetFileId"], path=item["name"])
            rows += pq.read_table(content).to_pylist()
    assert len(rows) == len(records)
    by_crm = {dict(r["identityMap"])["CRMID"][0]["id"]: r for r in rows}
    for record in records:
        got_row = by_crm[record["identityMap"]["CRMID"][0]["id"]]
        assert got_row["person"] == record["person"]
        assert got_row["personalEmail"] == record["personalEmail"]
        assert got_row["loyalty"] == record["loyalty"]
        assert dict(got_row["identityMap"])["email"][0]["id"] == record["identityMap"]["email"][0]["id"]
