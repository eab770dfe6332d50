"""The real aepp client runs exports against a real server: `Profile.createExportJob/getExportJobs/getExportJob/
deleteExportJob`, `Segmentation.createExport/getExportJobs/getExport/deleteExport` (its list walks several pages
and stops), and `DataAccess` downloads the files; every export-jobs response validates against the spec."""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import ServerProcess
from tests.helpers import PROFILE_CLASS, PROFILE_UNION, profile
from tests.profile.test_access_aepp import _ingest
from tests.specs import assert_matches_spec
from tests.test_aepp_client import configure_aepp

pytestmark = pytest.mark.server


def _wait(get: Any, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = get(job_id)
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_aepp_exports(server: ServerProcess) -> None:
    configure_aepp(server.base_url)
    from aepp import catalog, customerprofile, dataaccess, ingestion, segmentation

    cat, ingest = catalog.Catalog(), ingestion.DataIngestion()
    crm = cat.createDataSet(name="CRM", schemaId=PROFILE_CLASS, profileEnabled=True)[0].split("/")[-1]
    _ingest(ingest, cat, crm, [profile(f"C{n}", f"p{n}@x.com", f"P{n}") for n in range(4)])
    target = cat.createUnionProfileDataset()[0].split("/")[-1]
    assert cat.getDataSet(target)[target]["schemaRef"]["id"] == PROFILE_UNION

    prof = customerprofile.Profile()
    created = prof.createExportJob(fields=["identities.id", "person.name.firstName"],
                                   mergePolicyId="timestampOrdered-none-mp", datasetId=target)
    assert_matches_spec("segmentation", "POST", "/export/jobs", 200, created)
    done = _wait(prof.getExportJob, created["id"])
    assert_matches_spec("segmentation", "GET", "/export/jobs/{EXPORT_JOB_ID}", 200, done)
    assert done["status"] == "SUCCEEDED" and done["metrics"]["totalExportedProfileCounter"] == 4
    listed = prof.getExportJobs(limit=10)
    assert_matches_spec("segmentation", "GET", "/export/jobs", 200, listed)
    assert [r["id"] for r in listed["records"]] == [created["id"]]

    access = dataaccess.DataAccess()
    names = []
    for entry in access.getBatchFiles(done["destination"]["batchId"]):
        for item in access.getFiles(entry["dataSetFileId"])["data"]:
            table = pq.read_table(access.getFiles(entry["dataSetFileId"], path=item["name"]))
            names += [r["person"]["name"]["firstName"] for r in table.to_pylist()]
    assert sorted(names) == ["P0", "P1", "P2", "P3"]

    seg = segmentation.Segmentation()
    more = [seg.createExport({"fields": "person.name", "destination": {"datasetId": target},
                              "schema": {"name": "_xdm.context.profile"}})["id"] for _ in range(4)]
    assert seg.getExport(more[0])["id"] == more[0]
    walked = seg.getExportJobs(limit=2)  # three pages of two, following link.next's offset, then it stops
    assert sorted(j["id"] for j in walked) == sorted([created["id"], *more])
    for job_id in more:
        _wait(seg.getExport, job_id)

    assert prof.deleteExportJob(created["id"]) == 200
    assert seg.deleteExport(more[0]) == 200
    assert prof.getExportJob(created["id"])["status"] == 404  # aepp returns the error body as it is
    remaining = [j["id"] for j in seg.getExportJobs(limit=2)]
    assert sorted(remaining) == sorted(more[1:])
