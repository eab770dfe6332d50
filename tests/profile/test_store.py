"""The profile store fed by ingestion: fragments replace per key, events dedupe on `_id`, and the identity
graph stitches identities seen together, incrementally and the same after a rebuild."""

from __future__ import annotations

import time

import duckdb
import pytest

from openprofile.core.platform import Platform
from openprofile.core.tenancy import Tenant, find_sandbox
from openprofile.engine import profile_store
from openprofile.engine.merge import precedence_keys_sql
from openprofile.engine.profile_store import Partitions, indexed_rows, partition_of
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


def partition_rows(snapshot: store.StoreSnapshot, dataset_id: str) -> list[tuple[int, str, str, str]]:
    """(partition, cluster key, identity id, first name) of a dataset's partitioned fragments."""
    partitions = snapshot.manifest.partitions
    assert partitions is not None
    found = []
    for k, name in enumerate(partitions.datasets[dataset_id]):
        found += [(k, *r) for r in duckdb.sql(
            f"SELECT _group, _identity_id, person.name.firstName "
            f"FROM read_parquet('{snapshot.path(name)}')").fetchall()]
    return found


def test_partitions_keep_each_cluster_whole_and_are_remade_only_when_their_inputs_change(
        api: Api, platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile_store, "FRAGMENTS_PER_PARTITION", 4)
    crm, loyalty = create_dataset(api, "CRM"), create_dataset(api, "Loyalty")
    ingest(api, crm, [profile(f"C{i}", f"p{i}@x.com", f"P{i}") for i in range(10)])
    # loyalty records keyed by email: each joins the cluster of the crm record with that email
    ingest(api, loyalty, [{"identityMap": {"email": [{"id": f"p{i}@x.com", "primary": True}]},
                           "person": {"name": {"firstName": f"L{i}"}}} for i in range(0, 10, 2)])
    snapshot = settled(platform, tenant_of(platform))
    partitions = snapshot.manifest.partitions
    assert partitions is not None and partitions.count == 4  # ceil(15 fragments / 4)
    rows = partition_rows(snapshot, crm) + partition_rows(snapshot, loyalty)
    assert len(rows) == 15
    where: dict[str, set[int]] = {}
    for k, cluster, _, _ in rows:
        where.setdefault(cluster, set()).add(k)
    assert len(where) == 10 and all(len(ks) == 1 for ks in where.values())
    assert len({k for ks in where.values() for k in ks}) > 1
    for cluster, ks in where.items():  # the partition is the one `partition_of` names, as for the members
        expected = duckdb.sql(f"SELECT {partition_of(repr(cluster), 4)}").fetchall()[0][0]
        assert ks == {expected}
        members = duckdb.sql(f"SELECT count(*) FROM read_parquet('{snapshot.path(partitions.members[expected])}') "
                             f"WHERE _group = '{cluster}'").fetchall()[0][0]
        assert members == 2  # its CRMID and its email
    assert {(i, n) for _, _, i, n in partition_rows(snapshot, crm)} == {(f"C{i}", f"P{i}") for i in range(10)}
    for dataset in (crm, loyalty):  # the precedence key's record parts, kept as the merge would compute them
        entry = snapshot.manifest.datasets[dataset]
        for name in partitions.datasets[dataset]:
            stored = duckdb.sql(f"SELECT __kt, __kh, {', '.join(precedence_keys_sql(entry.structure))} "
                                f"FROM read_parquet('{snapshot.path(name)}')").fetchall()
            assert all(kt == computed_kt and kh == computed_kh for kt, kh, computed_kt, computed_kh in stored)

    # A newer record for a key the store has: no new identity, so only the crm partitions are remade.
    ingest(api, crm, [profile("C3", "p3@x.com", "Renamed")])
    later = settled(platform, tenant_of(platform))
    assert later.manifest.partitions is not None and later.manifest.identities == snapshot.manifest.identities
    assert later.manifest.partitions.datasets[loyalty] == partitions.datasets[loyalty]
    assert later.manifest.partitions.members == partitions.members
    assert set(later.manifest.partitions.datasets[crm]).isdisjoint(partitions.datasets[crm])
    assert ("C3", "Renamed") in {(i, n) for _, _, i, n in partition_rows(later, crm)}
    assert ("C3", "P3") not in {(i, n) for _, _, i, n in partition_rows(later, crm)}

    # A new identity changes the clusters: everything is remade, and the old files are collected in time.
    ingest(api, crm, [profile("C99", "p99@x.com", "New")])
    newest = settled(platform, tenant_of(platform))
    assert newest.manifest.partitions is not None
    assert set(newest.manifest.partitions.files()).isdisjoint(later.manifest.partitions.files())
    assert len(partition_rows(newest, crm)) == 11


def test_a_partition_holds_at_most_its_share_of_fragments_and_of_events() -> None:
    fragments, events = profile_store.FRAGMENTS_PER_PARTITION, profile_store.EVENTS_PER_PARTITION
    assert profile_store.partition_count(0) == 1
    assert profile_store.partition_count(fragments) == 1
    assert profile_store.partition_count(fragments + 1) == 2
    assert profile_store.partition_count(1, 3 * events) == 3  # the events need more partitions than the fragments
    assert profile_store.partition_count(5 * fragments, 3 * events) == 5


def test_partitions_of_an_older_layout_are_not_current() -> None:
    """A manifest written before the partitions kept their group key and precedence keys (no `layout`): exports
    do not read its partitions (`merge_inputs`), and the next apply remakes them all (`_update_partitions`)."""
    stored = Partitions(2, "identities-x", ["m0", "m1"], {"d": ["f0", "f1"]}, {"d": ["i0"]})
    assert stored.current and Partitions.from_json(stored.to_json()) == stored
    older = stored.to_json()
    del older["layout"]
    assert not Partitions.from_json(older).current
