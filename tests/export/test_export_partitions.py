"""A stitched export reads the store's fragments as it keeps them, grouped by cluster (`Partitions`), instead of
splitting them itself: both ways give the same rows, with and without `fields`, filters and an event list (its
events read another way too, `_split_events`: from several lake files, inside an ingestion window, without the
events of oversized graphs)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from openprofile.core.platform import Platform
from openprofile.engine import profile_store as engine_store
from openprofile.engine.export import export_query, write_parquet
from openprofile.export.runner import build_plan
from openprofile.profile.policies import resolve_merge_policy
from tests.conftest import Api
from tests.helpers import EVENT_CLASS, create_dataset, event, ingest, profile
from tests.profile.test_store import settled, tenant_of

REQUESTS: list[dict[str, Any]] = [
    {},
    {"fields": "person.name.firstName,identities,personalEmail",
     "filter": {"fromIngestTimestamp": "2000-01-01T00:00:00Z"}},
    {"additionalFields": {"eventList": {"fields": "_id,timestamp"}}},
    {"additionalFields": {"eventList": {"filter": {"fromIngestTimestamp": "between the event batches"}}}},
    {"additionalFields": {"eventList": {"filter": {"toIngestTimestamp": "2000-01-01T00:00:00Z"}}}},
]


def exported(platform: Platform, plan: Any, out: Path) -> list[dict[str, Any]]:
    conn = engine_store.connect()
    written = write_parquet(conn, export_query(plan, scratch=out.with_suffix(".scratch")), out, rows_per_file=1000)
    rows = [r for name, _, _ in written.files for r in pq.read_table(out / name).to_pylist()]
    for row in rows:
        if row.get("identities"):
            row["identities"] = sorted(row["identities"], key=str)
    return sorted(rows, key=str)


@pytest.mark.parametrize("request_body", REQUESTS, ids=["all-fields", "fields-and-filter", "event-list",
                                                      "event-window", "no-event-in-window"])
def test_an_export_of_the_partitions_equals_one_that_splits_the_fragments(
        api: Api, platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request_body: dict[str, Any]) -> None:
    monkeypatch.setattr(engine_store, "FRAGMENTS_PER_PARTITION", 3)
    crm, loyalty = create_dataset(api, "CRM"), create_dataset(api, "Loyalty")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    ingest(api, crm, [profile(f"C{i}", f"p{i}@x.com", f"P{i}") for i in range(12)])
    ingest(api, loyalty, [{"identityMap": {"email": [{"id": f"p{i}@x.com", "primary": True}],
                                           "ECID": [{"id": f"{i:038d}"}]},
                           "person": {"name": {"firstName": f"L{i}", "lastName": "Loyal"}}} for i in range(0, 12, 3)])
    # a graph of 4 identities, over the limit of 3: its profile and its events are left out
    ingest(api, crm, [profile("BIG", "big@x.com", "Big", identityMap={
        "CRMID": [{"id": "BIG", "primary": True}], "email": [{"id": "big@x.com"}],
        "ECID": [{"id": "8" * 38}, {"id": "9" * 38}]})])
    monkeypatch.setattr(platform.settings, "max_graph_identities", 3)
    # events in two batches (two lake files), a profile's events in both, the second batch's times earlier
    ingest(api, web, [event(f"e{i}-{j}", f"{i:038d}", ts=f"2024-05-0{j + 4}T10:00:00Z")
                      for i in range(0, 12, 3) for j in range(3)] + [event("stray", "7" * 38)])
    between = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    time.sleep(0.01)
    ingest(api, web, [event(f"f{i}", f"{i:038d}", ts="2024-05-01T10:00:00Z") for i in range(0, 12, 3)]
           + [event("big", "9" * 38)])
    window = (request_body.get("additionalFields") or {}).get("eventList", {}).get("filter") or {}
    if "fromIngestTimestamp" in window:
        request_body = {"additionalFields": {"eventList": {"filter": {"fromIngestTimestamp": between}}}}
    tenant = tenant_of(platform)
    snapshot = settled(platform, tenant)
    with platform.engine.connect() as conn:
        policy = dataclasses.replace(resolve_merge_policy(conn, tenant, None, None), identity_graph="pdg")
    plan = build_plan(platform, snapshot, policy, request_body)
    assert plan.partitions is not None and len(plan.partitions) == 6  # ceil(16 fragments / 3)
    from_partitions = exported(platform, plan, tmp_path / "partitions")
    split = exported(platform, dataclasses.replace(plan, partitions=None), tmp_path / "split")
    assert from_partitions == split
    assert len(split) == 12
    if "additionalFields" in request_body:
        lists = [[e["_id"] for e in r["timeSeriesEvents"]] for r in split if r["timeSeriesEvents"]]
        if "toIngestTimestamp" in window:
            assert lists == []
        elif window:
            assert sorted(lists) == [[f"f{i}"] for i in (0, 3, 6, 9)]
        else:  # in event time: the second batch's event first
            assert sorted(lists) == [[f"f{i}", *(f"e{i}-{j}" for j in range(3))] for i in (0, 3, 6, 9)]
