"""`openprofile export ...` run as a subprocess against a real server process: create and follow to SUCCEEDED,
list (one page and all), get (JSON and table), download through Data Access (read back with pyarrow), cancel,
and every failure — unknown job, bad credentials, bad request, unreachable server — as the server's message with
a non-zero exit code, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import CLIENT_ID, CLIENT_SECRET, ORG, Api, ServerProcess, get_token
from tests.helpers import EVENT_CLASS, PROFILE_UNION, create_dataset, event, ingest, profile

pytestmark = pytest.mark.server

JOBS = "/data/core/ups/export/jobs"
ECID = "7" * 38
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])  # the CLI only speaks HTTP: one store is enough


def cli(server: ServerProcess, *args: str, credentials: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m openprofile export ARGS` with the connection in the environment, as a user would."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENPROFILE_")}
    clean.update({"COLUMNS": "250", "NO_COLOR": "1"})
    if credentials:
        clean.update({"OPENPROFILE_URL": server.base_url, "OPENPROFILE_ORG_ID": ORG,
                      "OPENPROFILE_CLIENT_ID": CLIENT_ID, "OPENPROFILE_CLIENT_SECRET": CLIENT_SECRET})
    clean.update(env)
    return subprocess.run([sys.executable, "-m", "openprofile", "export", *args], env=clean, capture_output=True,
                          text=True, timeout=120)


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int, *mentions: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    for mention in mentions:
        assert mention in result.stderr, f"{mention!r} not in {result.stderr!r}"


@pytest.fixture
def api(server: ServerProcess) -> Iterator[Api]:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield Api(client, ORG, "prod", CLIENT_ID, get_token(client, CLIENT_ID, CLIENT_SECRET))


@pytest.fixture
def target(api: Api) -> str:
    """Three people in CRM, Ann's loyalty record and two of her web events; the id of an export dataset."""
    crm = create_dataset(api, "CRM")
    loyalty = create_dataset(api, "Loyalty")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    assert ingest(api, crm, [profile("C1", "ann@x.com", "Ann"), profile("C2", "bob@x.com", "Bob"),
                             profile("C3", "cy@x.com", "Cy")])["status"] == "success"
    assert ingest(api, loyalty, [{"identityMap": {"CRMID": [{"id": "C1", "primary": True}]},
                                  "loyalty": {"tier": "gold"}}])["status"] == "success"
    assert ingest(api, web, [
        event("e1", ECID, "2024-05-01T10:00:00Z", identityMap={"ECID": [{"id": ECID, "primary": True}],
                                                             "CRMID": [{"id": "C1"}]}),
        event("e2", ECID, "2024-05-02T10:00:00Z"),
    ])["status"] == "success"
    return create_dataset(api, "Export target", schema_id=PROFILE_UNION, profile=False)


def wait_job(api: Api, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"{JOBS}/{job_id}").json()
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"export job {job_id} did not finish")


def start_job(api: Api, target: str, **more: Any) -> dict[str, Any]:
    response = api.post(JOBS, json={"destination": {"datasetId": target}, "schema": {"name": "_xdm.context.profile"},
                                    **more})
    assert response.status_code == 200, response.text
    return dict(response.json())


def summary_of(stdout: str) -> dict[str, str]:
    """The key/value lines of a job summary (`  label   value`)."""
    found = (re.match(r"^ +(\S.*?) {2,}(\S.*?) *$", line) for line in stdout.splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def created_id(stdout: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith("created export job "))
    return int(line.split()[3])


def test_create_follows_the_job_to_succeeded(server: ServerProcess, api: Api, target: str) -> None:
    result = cli(server, "create", "--dataset-id", target, "--fields", "identities.id,person.name.firstName",
                 "--fields", "loyalty", "--event-fields", "_id,eventType")
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = created_id(result.stdout)
    job = api.get(f"{JOBS}/{job_id}").json()
    assert job["status"] == "SUCCEEDED"
    assert job["fields"] == "identities.id,person.name.firstName,loyalty"  # repeated --fields are joined
    assert job["additionalFields"] == {"eventList": {"fields": "_id,eventType"}}
    assert job["mergePolicy"] == {"id": "timestampOrdered-none-mp", "version": 1}  # the sandbox default
    assert job["metrics"]["totalExportedProfileCounter"] == 3
    progress_line = next(line for line in result.stdout.splitlines() if "profiles written" in line)
    assert f"export job {job_id} SUCCEEDED" in progress_line and "3 profiles written" in progress_line
    assert "1 file " in progress_line + " "
    summary = summary_of(result.stdout)
    assert summary["status"] == "SUCCEEDED"
    assert summary["batch"] == job["destination"]["batchId"]
    assert summary["profiles exported"] == "3"
    assert summary["by namespace"] == "crmid 3"
    assert summary["merge policy"] == "timestampOrdered-none-mp v1"


@SQLITE_ONLY
def test_create_with_options_json_and_no_follow(server: ServerProcess, api: Api, target: str) -> None:
    policy = api.post("/data/core/ups/config/mergePolicies", json={
        "name": "stitched", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"},
        "attributeMerge": {"type": "timestampOrdered"}}).json()
    result = cli(server, "create", "--dataset-id", target, "--merge-policy", policy["id"],
                 "--merge-policy-version", "1", "--no-follow", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["status"] == "NEW" and created["mergePolicy"] == {"id": policy["id"], "version": 1}
    done = wait_job(api, created["id"])
    assert done["status"] == "SUCCEEDED"
    assert done["metrics"]["totalExportedProfileCounter"] == 3

    followed = cli(server, "create", "--dataset-id", target, "--merge-policy", policy["id"], "--json")
    assert followed.returncode == 0, followed.stderr
    final = json.loads(followed.stdout)  # only the job on stdout; the progress went to stderr
    assert final["status"] == "SUCCEEDED" and final["id"] == created["id"] + 1
    assert f"created export job {final['id']}" in followed.stderr


@SQLITE_ONLY
def test_body_file_is_sent_as_is(server: ServerProcess, api: Api, target: str, tmp_path: Path) -> None:
    body = tmp_path / "job.json"
    body.write_text(json.dumps({"fields": "personalEmail.address", "destination": {"dataSetId": target},
                                "schema": {"name": "_xdm.context.profile"}}))
    result = cli(server, "create", "--body", str(body))
    assert result.returncode == 0, result.stdout + result.stderr
    job = api.get(f"{JOBS}/{created_id(result.stdout)}").json()
    assert job["status"] == "SUCCEEDED" and job["fields"] == "personalEmail.address"

    broken = tmp_path / "broken.json"  # the seeds' example: a missing comma before "destination"
    broken.write_text('{\n  "fields": "identities.id"\n  "destination": {"datasetId": "x"}\n}')
    assert_clean_failure(cli(server, "create", "--body", str(broken)), 3, "Bad Request", "line 3", "column 3")
    assert_clean_failure(cli(server, "create", "--body", str(body), "--dataset-id", target), 2,
                         "--body is sent as-is", "--dataset-id")
    assert_clean_failure(cli(server, "create"), 2, "--dataset-id")
    assert [r["id"] for r in api.get(JOBS).json()["records"]] == [job["id"]]


@SQLITE_ONLY
def test_list_one_page_and_all(server: ServerProcess, api: Api, target: str) -> None:
    ids = [start_job(api, target)["id"] for _ in range(3)]
    for job_id in ids:
        assert wait_job(api, job_id)["status"] == "SUCCEEDED"
    everything = cli(server, "list", "--json")
    assert everything.returncode == 0, everything.stderr
    assert [r["id"] for r in json.loads(everything.stdout)] == ids[::-1]

    one = cli(server, "list", "--limit", "1")
    assert one.returncode == 0, one.stderr
    rows = [line for line in one.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 1 and rows[0].split("│")[1].strip() == str(ids[-1])
    assert "SUCCEEDED" in rows[0] and "1 export job; more with --all" in one.stdout

    walked = cli(server, "list", "--limit", "1", "--all")
    assert walked.returncode == 0, walked.stderr
    rows = [line for line in walked.stdout.splitlines() if line.startswith("│")]
    assert [int(r.split("│")[1]) for r in rows] == ids[::-1]
    assert "3 export jobs" in walked.stdout and "--all" not in walked.stdout

    api.delete(f"{JOBS}/{ids[0]}")
    filtered = cli(server, "list", "--all", "--limit", "1", "--status", "SUCCEEDED", "--json")
    assert [r["id"] for r in json.loads(filtered.stdout)] == ids[:0:-1]
    assert_clean_failure(cli(server, "list", "--status", "HAPPY"), 3, "status 'HAPPY'")


@SQLITE_ONLY
def test_get_as_json_and_table(server: ServerProcess, api: Api, target: str) -> None:
    job = wait_job(api, start_job(api, target, fields="person.name.firstName")["id"])
    as_json = cli(server, "get", str(job["id"]), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == job

    table = cli(server, "get", str(job["id"]))
    assert table.returncode == 0, table.stderr
    summary = summary_of(table.stdout)
    assert summary["job"] == str(job["id"]) and summary["status"] == "SUCCEEDED"
    assert summary["destination dataset"] == target and summary["batch"] == job["destination"]["batchId"]
    assert summary["fields"] == "person.name.firstName" and summary["profiles exported"] == "3"
    assert summary["merge policy"] == "timestampOrdered-none-mp v1"
    assert summary["total time"].endswith(" s")


def test_download_writes_the_exported_profiles(server: ServerProcess, api: Api, target: str,
                                               tmp_path: Path) -> None:
    policy = api.post("/data/core/ups/config/mergePolicies", json={
        "name": "stitched", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"},
        "attributeMerge": {"type": "timestampOrdered"}}).json()
    job = wait_job(api, start_job(api, target, fields="identities.id,person.name.firstName,loyalty",
                                  mergePolicy={"id": policy["id"]},
                                  additionalFields={"eventList": {"fields": "_id"}})["id"])
    assert job["status"] == "SUCCEEDED"
    out = tmp_path / "exported"
    result = cli(server, "download", str(job["id"]), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    batch_id = job["destination"]["batchId"]
    files = sorted((out / batch_id).glob("*"))
    assert files and all(f.suffix == ".parquet" for f in files)
    assert not list(out.rglob("*.part"))
    listed = api.get(f"/data/foundation/export/batches/{batch_id}/files").json()["data"]
    assert len(files) == len(listed)
    for f in files:
        assert str(f) in result.stdout.replace("\n", "")  # every file written is named
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    assert sorted(r["person"]["name"]["firstName"] for r in rows) == ["Ann", "Bob", "Cy"]
    ann = next(r for r in rows if r["person"]["name"]["firstName"] == "Ann")
    assert ann["loyalty"] == {"tier": "gold"}
    assert sorted(i["id"] for i in ann["identities"]) == sorted(["C1", "ann@x.com", ECID])
    assert [e["_id"] for e in ann["timeSeriesEvents"]] == ["e1", "e2"]
    assert f"{len(files)} file" in result.stdout


@SQLITE_ONLY
def test_cancel(server: ServerProcess, api: Api, target: str) -> None:
    assert_clean_failure(cli(server, "cancel", "999999"), 3, "Export job '999999' was not found in this sandbox.")
    assert_clean_failure(cli(server, "get", "abc"), 3, "Export job 'abc' was not found")
    assert_clean_failure(cli(server, "download", "999999", "--out", "unused"), 3, "'999999' was not found")

    finished = wait_job(api, start_job(api, target)["id"])
    result = cli(server, "cancel", str(finished["id"]))
    assert result.returncode == 0, result.stderr
    assert "Export job has been marked for cancelling" in result.stdout
    assert "its record is deleted" in result.stdout
    assert api.get(f"{JOBS}/{finished['id']}").status_code == 404
    assert api.get(f"/data/foundation/catalog/batches/{finished['destination']['batchId']}").status_code == 200

    fresh = start_job(api, target)  # a worker may finish it first: then the record goes, as above
    result = cli(server, "cancel", str(fresh["id"]), "--wait")
    assert result.returncode == 0, result.stderr
    after = api.get(f"{JOBS}/{fresh['id']}")
    if after.status_code == 200:
        assert after.json()["status"] == "CANCELLED" and "status: CANCELLED" in result.stdout
    else:
        assert after.status_code == 404 and "its record is deleted" in result.stdout


@SQLITE_ONLY
def test_a_job_that_fails_exits_non_zero(server: ServerProcess, api: Api, tmp_path: Path) -> None:
    empty_target = create_dataset(api, "Nothing ingested yet", schema_id=PROFILE_UNION, profile=False)
    result = cli(server, "create", "--dataset-id", empty_target)
    assert result.returncode == 1, result.stdout + result.stderr
    job = api.get(f"{JOBS}/{created_id(result.stdout)}").json()
    assert job["status"] == "FAILED"
    assert "FAILED" in result.stdout and job["errors"][0]["code"] in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert_clean_failure(cli(server, "download", str(job["id"]), "--out", str(tmp_path / "x")), 1,
                         f"Export job {job['id']} is FAILED")
    assert not (tmp_path / "x").exists()


@SQLITE_ONLY
def test_api_and_connection_errors_are_clear(server: ServerProcess, api: Api, target: str) -> None:
    assert_clean_failure(cli(server, "create", "--dataset-id", "0" * 24), 3,
                         "Error (404)", f"DataSet '{'0' * 24}'", "/destination/datasetId")
    assert_clean_failure(cli(server, "create", "--dataset-id", target, "--fields", "person.shoeSize"), 3,
                         "Error (400)", "person.shoeSize", "/fields")
    assert_clean_failure(cli(server, "list", OPENPROFILE_CLIENT_SECRET="wrong"), 3,
                         "Could not get a token", "invalid client_id or client_secret", "--client-secret")
    assert_clean_failure(cli(server, "list", OPENPROFILE_TOKEN="not-a-token"), 3,
                         "Error (401)", "Oauth token is not valid")
    assert_clean_failure(cli(server, "list", "--sandbox", "nope"), 3, "Sandbox 'nope' does not exist")
    assert_clean_failure(cli(server, "list", credentials=False, OPENPROFILE_URL=server.base_url), 3,
                         "Missing connection settings", "--org-id", "--client-id", "--client-secret")
    assert_clean_failure(cli(server, "list", "--url", "http://127.0.0.1:9"), 3, "Cannot reach the server",
                         "127.0.0.1:9")
    assert api.get(JOBS).json()["records"] == []


@SQLITE_ONLY
def test_options_instead_of_environment_and_a_token(server: ServerProcess, api: Api, target: str) -> None:
    job = wait_job(api, start_job(api, target)["id"])
    options = ["--url", server.base_url, "--org-id", ORG, "--client-id", CLIENT_ID, "--sandbox", "prod"]
    with_secret = cli(server, "get", str(job["id"]), "--json", *options, "--client-secret", CLIENT_SECRET,
                      credentials=False)
    assert with_secret.returncode == 0, with_secret.stderr
    assert json.loads(with_secret.stdout)["id"] == job["id"]
    with_token = cli(server, "list", "--json", *options, "--token", api.token, credentials=False)
    assert with_token.returncode == 0, with_token.stderr
    assert [r["id"] for r in json.loads(with_token.stdout)] == [job["id"]]
