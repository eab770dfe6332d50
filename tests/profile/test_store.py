"""The profile store fed by ingestion: fragments replace per key, events dedupe on `_id`, and the identity
graph stitches identities seen together, incrementally and the same after a rebuild."""

from __future__ import annotations

import time

import duckdb

from openprofile.core.platform import Platform
from openprofile.core.tenancy import Tenant, find_sandbox
from openprofile.engine.profile_store import indexed_rows
from openprofile.identity.namespaces import xid
from openprofile.profile import store
from tests.conftest import ORG, Api
from tests.helpers import EVENT_CLASS, create_dataset, event, ingest, profile

ECID_A, ECID_B = "1" * 38, "2" * 38


def tenant_of(platform: Platform, sandbox: str = "prod") -> Tenant:
    with platform.engine.connect() as conn:
        found = find_sandbox(conn, ORG, sandbox)
    assert found is not None
    return Tenant(ORG, found.id, found.name)


def settled(platform: Platform, tenant: Tenant) -> store.StoreSnapshot:
    deadline = time.monotonic() + 30
    while store.pending_count(platform, tenant) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.pending_count(platform, tenant) == 0
    return store.snapshot(platform, tenant)


def clusters(snapshot: store.StoreSnapshot) -> dict[str, set[str]]:
    assert snapshot.manifest.members is not None
    members = snapshot.path(snapshot.manifest.members)
    query = f"SELECT replace(cluster::VARCHAR, '-', ''), ns || ':' || id FROM read_parquet('{members}')"
    rows = duckdb.sql(query).fetchall()
    grouped: dict[str, set[str]] = {}
    for cluster, identity in rows:
        grouped.setdefault(cluster, set()).add(identity)
    return grouped


def test_two_ecids_are_stitched_through_a_shared_crmid(api: Api, platform: Platform) -> None:
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    crm = create_dataset(api, "CRM")
    assert ingest(api, web, [
        event("e1", ECID_A, identityMap={"ECID": [{"id": ECID_A, "primary": True}], "CRMID": [{"id": "C1"}]}),
        event("e2", ECID_B, identityMap={"ECID": [{"id": ECID_B, "primary": True}]}),
    ])["status"] == "success"
    tenant = tenant_of(platform)
    before = clusters(settled(platform, tenant))
    assert {f"ecid:{ECID_A}", "crmid:C1"} in before.values()
    assert {f"ecid:{ECID_B}"} in before.values()
    assert ingest(api, crm, [profile("C1", "ann@x.com", "Ann") | {"identityMap": {
        "CRMID": [{"id": "C1", "primary": True}], "ECID": [{"id": ECID_B}]}}])["status"] == "success"
    after = clusters(settled(platform, tenant))
    assert {f"ecid:{ECID_A}", f"ecid:{ECID_B}", "crmid:C1"} in after.values()
    assert min(xid("ecid", ECID_A), xid("ecid", ECID_B), xid("crmid", "C1")) in after


def test_newer_record_replaces_and_events_dedupe(api: Api, platform: Platform) -> None:
    crm = create_dataset(api, "CRM")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    ingest(api, crm, [profile("C1", "a@x.com", "Ann"), profile("C2", "b@x.com", "Bob")])
    ingest(api, crm, [profile("C1", "a@x.com", "Anna")])
    ingest(api, web, [event("e1", ECID_A), event("e2", ECID_A)])
    ingest(api, web, [event("e2", ECID_A), event("e3", ECID_A)])
    snapshot = settled(platform, tenant_of(platform))
    view = snapshot.view
    fragments = indexed_rows(view.lake_root, view.files, snapshot.manifest.datasets[crm])
    names = dict(duckdb.sql(f"SELECT _identity_id, person.name.firstName FROM {fragments}").fetchall())
    assert names == {"C1": "Anna", "C2": "Bob"}
    events = indexed_rows(view.lake_root, view.files, snapshot.manifest.datasets[web])
    ids = sorted(r[0] for r in duckdb.sql(f'SELECT "_id" FROM {events}').fetchall())
    assert ids == ["e1", "e2", "e3"]


def test_datasets_not_enabled_for_profile_do_not_feed_the_store(api: Api, platform: Platform) -> None:
    plain = create_dataset(api, "Plain", profile=False)
    ingest(api, plain, [profile("C9", "z@x.com", "Zed")])
    snapshot = settled(platform, tenant_of(platform))
    assert plain not in snapshot.manifest.datasets


def test_rebuild_gives_the_same_store(api: Api, platform: Platform) -> None:
    crm = create_dataset(api, "CRM")
    web = create_dataset(api, "Web", schema_id=EVENT_CLASS)
    ingest(api, web, [event("e1", ECID_A, identityMap={"ECID": [{"id": ECID_A, "primary": True}],
                                                       "CRMID": [{"id": "C1"}]})])
    ingest(api, crm, [profile("C1", "a@x.com", "Ann"), profile("C2", "b@x.com", "Bob")])
    tenant = tenant_of(platform)
    before = clusters(settled(platform, tenant))
    assert store.rebuild(platform, tenant) == 2
    after = clusters(store.snapshot(platform, tenant))
    assert after == before
