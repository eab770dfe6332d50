"""A stitched export reads the store's fragments as it keeps them, grouped by cluster (`Partitions`), instead of
splitting them itself: both ways give the same rows, with and without `fields`, filters and an event list."""

from __future__ import annotations

import dataclasses
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
]


def exported(platform: Platform, plan: Any, out: Path) -> list[dict[str, Any]]:
    conn = engine_store.connect()
    written = write_parquet(conn, export_query(plan, scratch=out.with_suffix(".scratch")), out, rows_per_file=1000)
    rows = [r for name, _, _ in written.files for r in pq.read_table(out / name).to_pylist()]
    for row in rows:
        for key in ("identities", "timeSeriesEvents"):
            if row.get(key):
                row[key] = sorted(row[key], key=str)
    return sorted(rows, key=str)


@pytest.mark.parametrize("request_body", REQUESTS, ids=["all-fields", "fields-and-filter", "event-list"])
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
    ingest(api, web, [event(f"e{i}-{j}", f"{i:038d}", ts=f"2024-05-0{j + 1}T10:00:00Z")
                      for i in range(0, 12, 3) for j in range(3)] + [event("stray", "7" * 38)])
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
        assert sum(len(r["timeSeriesEvents"] or []) for r in split) == 12
