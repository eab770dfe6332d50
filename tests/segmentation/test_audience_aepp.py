"""The evaluate-then-export flow of aep-semantics.md §3.3, end to end with the real aepp client against a real
server process: create a segment → segment job SUCCEEDED → export job with `filter.segments` → files through
Data Access; then new data arrives and a second evaluation turns some `realized` into `existing` and some into
`exited`, which the next exports and a lookup show."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import ServerProcess
from tests.export.test_export_aepp import _wait
from tests.helpers import PROFILE_CLASS, profile
from tests.profile.test_access_aepp import _ingest
from tests.specs import assert_matches_spec
from tests.test_aepp_client import configure_aepp

pytestmark = pytest.mark.server


def test_evaluate_then_export_twice(server: ServerProcess) -> None:
    configure_aepp(server.base_url)
    from aepp import catalog, customerprofile, dataaccess, ingestion, segmentation

    cat, ingest = catalog.Catalog(), ingestion.DataIngestion()
    crm = cat.createDataSet(name="CRM", schemaId=PROFILE_CLASS, profileEnabled=True)[0].split("/")[-1]
    points = {"A": 10, "B": 20, "C": 1, "D": 30}
    _ingest(ingest, cat, crm, [profile(f"C-{n}", f"{n}@x.com", n, loyalty={"points": p}) for n, p in points.items()])
    target = cat.createUnionProfileDataset()[0].split("/")[-1]

    seg = segmentation.Segmentation()
    segment = seg.createSegment({"name": "Loyal", "description": "more than 5 points",
                                 "expression": {"type": "PQL", "format": "pql/text", "value": "loyalty.points > 5"},
                                 "schema": {"name": "_xdm.context.profile"}, "ttlInDays": 30})
    assert_matches_spec("segmentation", "POST", "/segment/definitions", 200, segment)
    access = dataaccess.DataAccess()

    def evaluate() -> dict[str, Any]:
        job = seg.createJob([segment["id"]])
        assert_matches_spec("segmentation", "POST", "/segment/jobs", 200, job)
        done = _wait(seg.getJob, job["id"])
        assert_matches_spec("segmentation", "GET", "/segment/jobs/{SEGMENT_JOB_ID}", 200, done)
        assert done["status"] == "SUCCEEDED", done
        return done

    def exported(*statuses: str) -> dict[str, str]:
        """firstName → this segment's status, of the profiles an export with the segment filter writes."""
        wanted: dict[str, Any] = {"segmentId": segment["id"], "segmentNs": "ups"}
        if statuses:
            wanted["status"] = list(statuses)
        job = seg.createExport({"fields": "person.name.firstName,segmentMembership",
                                "destination": {"datasetId": target}, "schema": {"name": "_xdm.context.profile"},
                                "filter": {"segments": [wanted]}})
        done = _wait(seg.getExport, job["id"])
        assert done["status"] == "SUCCEEDED", done
        found = {}
        for entry in access.getBatchFiles(done["destination"]["batchId"]):
            for item in access.getFiles(entry["dataSetFileId"])["data"]:
                for row in pq.read_table(access.getFiles(entry["dataSetFileId"], path=item["name"])).to_pylist():
                    ups = dict(dict(row["segmentMembership"])["ups"])
                    found[row["person"]["name"]["firstName"]] = ups[segment["id"]]["status"]
        return found

    first = evaluate()
    assert first["metrics"]["segmentedProfileCounter"] == {segment["id"]: 3}
    assert exported("realized") == {"A": "realized", "B": "realized", "D": "realized"}
    assert exported("existing", "exited") == {}

    # New data: A drops out, C comes in, B and D stay.
    _ingest(ingest, cat, crm, [profile("C-A", "A@x.com", "A", loyalty={"points": 2}),
                               profile("C-C", "C@x.com", "C", loyalty={"points": 40})])
    second = evaluate()
    assert second["metrics"]["segmentedProfileByStatusCounter"][segment["id"]] == {
        "realized": 1, "existing": 2, "exited": 1}
    assert exported("realized") == {"C": "realized"}
    assert exported("existing") == {"B": "existing", "D": "existing"}
    assert exported("exited") == {"A": "exited"}
    assert exported() == {"B": "existing", "C": "realized", "D": "existing"}  # default: realized and existing

    entity = customerprofile.Profile().getEntity(entityId="C-A", entityIdNS="CRMID", fields="segmentMembership")
    (found,) = entity.values()
    assert found["entity"]["segmentMembership"]["ups"][segment["id"]]["status"] == "exited"
