"""Tests of the synthetic data generator: the shape readers rely on and the shares the docs promise."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openprofile import generate
from openprofile.generate import GeneratedData, GeneratedFile, generate_dataset, reference_time

N = 3000
EPP = 6
PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
NAMESPACES = {"CRMID", "email", "phone", "ECID"}
STATES = {"ambiguous", "authenticated", "loggedOut"}
TS = pa.timestamp("us", tz="UTC")


def _read(data: GeneratedData, dataset: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f.path) for f in data.files_for(dataset)])


def _rows(data: GeneratedData, dataset: str) -> list[dict[str, Any]]:
    return _read(data, dataset).to_pylist()  # type: ignore[no-any-return]


def _identities(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(namespace, identity) pairs of a row's identityMap (a map reads back as a list of pairs)."""
    return [(ns, ident) for ns, idents in row["identityMap"] for ident in idents]


def _primary(row: dict[str, Any]) -> tuple[str, str]:
    (found,) = [(ns, i["id"]) for ns, i in _identities(row) if i["primary"]]
    return found


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate_dataset(tmp_path_factory.mktemp("gen"), N, seed=7, events_per_profile=EPP)


@pytest.fixture(scope="module")
def rows(data: GeneratedData) -> dict[str, list[dict[str, Any]]]:
    return {d: _rows(data, d) for d in ("crm", "loyalty", "events")}


def test_same_seed_gives_same_data_and_another_seed_does_not(tmp_path: Path, data: GeneratedData) -> None:
    again = generate_dataset(tmp_path / "again", N, seed=7, events_per_profile=EPP)
    other = generate_dataset(tmp_path / "other", N, seed=8, events_per_profile=EPP)
    for dataset in ("crm", "loyalty", "events"):
        assert _read(again, dataset).equals(_read(data, dataset)), dataset
        assert not _read(other, dataset).equals(_read(data, dataset)), dataset
    crm = data.files_for("crm")[0].path.read_bytes()
    assert again.files_for("crm")[0].path.read_bytes() == crm


def test_record_counts_match_files_and_documented_shares(data: GeneratedData) -> None:
    assert data.profiles == N and data.seed == 7
    for f in data.files:
        assert pq.ParquetFile(f.path).metadata.num_rows == f.records
    assert data.records("crm") == N
    assert data.records("events") == N * EPP
    assert 0.55 * N < data.records("loyalty") < 0.65 * N
    assert [f.path.name for f in data.files] == ["part-00000.parquet"] * 3
    assert [f.path.parent.name for f in data.files] == ["crm", "loyalty", "events"]
    with pytest.raises(ValueError, match="unknown dataset"):
        data.files_for("crn")


def test_arrow_types_are_the_xdm_shapes(data: GeneratedData) -> None:
    identity = pa.struct([("id", pa.string()), ("primary", pa.bool_()), ("authenticatedState", pa.string())])
    identity_map = pa.map_(pa.string(), pa.list_(identity))
    segment_membership = pa.map_(
        pa.string(), pa.map_(pa.string(), pa.struct([("status", pa.string()), ("lastQualificationTime", TS)]))
    )
    person = pa.struct(
        [
            ("name", pa.struct([("firstName", pa.string()), ("lastName", pa.string())])),
            ("birthDate", pa.string()),
            ("gender", pa.string()),
        ]
    )
    loyalty = pa.struct([("tier", pa.string()), ("points", pa.int64()), ("joinDate", pa.string())])
    crm = _read(data, "crm").schema
    assert crm.names == [
        "person",
        "personalEmail",
        "mobilePhone",
        "homeAddress",
        "workAddress",
        "loyalty",
        "extSourceSystemAudit",
        "segmentMembership",
        "identityMap",
    ]
    assert crm.field("person").type == person
    assert crm.field("homeAddress").type == pa.struct(
        [("city", pa.string()), ("countryCode", pa.string()), ("postalCode", pa.string())]
    )
    assert crm.field("workAddress").type == pa.struct([("country", pa.string())])
    assert crm.field("loyalty").type == loyalty
    assert crm.field("extSourceSystemAudit").type == pa.struct([("lastUpdatedDate", TS)])
    assert crm.field("segmentMembership").type == segment_membership
    assert crm.field("identityMap").type == identity_map

    loy = _read(data, "loyalty").schema
    assert loy.names == ["person", "personalEmail", "mobilePhone", "loyalty", "extSourceSystemAudit", "identityMap"]
    assert loy.field("loyalty").type == loyalty
    assert loy.field("person").type == person  # same field group type as in crm
    assert loy.field("identityMap").type == identity_map

    ev = _read(data, "events").schema
    assert ev.field("_id").type == pa.string()
    assert ev.field("timestamp").type == TS
    assert ev.field("eventType").type == pa.string()
    assert ev.field("web").type == pa.struct(
        [("webPageDetails", pa.struct([("name", pa.string()), ("URL", pa.string())]))]
    )
    assert ev.field("environment").type == pa.struct(
        [("browserDetails", pa.struct([("name", pa.string()), ("version", pa.string())]))]
    )
    assert ev.field("commerce").type == pa.struct(
        [("order", pa.struct([("priceTotal", pa.float64()), ("currencyCode", pa.string())]))]
    )
    assert ev.field("productListItems").type == pa.list_(
        pa.struct([("SKU", pa.string()), ("name", pa.string()), ("quantity", pa.int64()), ("priceTotal", pa.float64())])
    )
    assert ev.field("identityMap").type == identity_map


def test_every_record_has_exactly_one_primary_identity(rows: dict[str, list[dict[str, Any]]]) -> None:
    for dataset, records in rows.items():
        for row in records:
            identities = _identities(row)
            assert sum(i["primary"] for _, i in identities) == 1, (dataset, row["identityMap"])
            for ns, ident in identities:
                assert ns in NAMESPACES
                assert ident["authenticatedState"] in STATES
                assert ident["id"]  # never null or empty
    assert {_primary(r)[0] for r in rows["crm"]} == {"CRMID"}
    assert {_primary(r)[0] for r in rows["events"]} == {"ECID"}


def test_identity_formats(rows: dict[str, list[dict[str, Any]]]) -> None:
    patterns = {
        "CRMID": r"CRM-\d{8}",
        "email": r"[a-z]+\.[a-z]+\d+@example\.(com|org|net)",
        "phone": r"\+(1555\d{7}|447\d{9})",
        "ECID": r"\d{38}",
    }
    seen: dict[str, set[str]] = defaultdict(set)
    for records in rows.values():
        for row in records:
            for ns, ident in _identities(row):
                assert re.fullmatch(patterns[ns], ident["id"]), (ns, ident["id"])
                seen[ns].add(ident["id"])
    assert len(seen["CRMID"]) == N
    ecids_of_person: dict[str, set[str]] = defaultdict(set)
    person_of_ecid: dict[str, set[str]] = defaultdict(set)
    for row in rows["events"]:
        ids = dict((ns, i["id"]) for ns, i in _identities(row))
        if "CRMID" in ids:
            ecids_of_person[ids["CRMID"]].add(ids["ECID"])
            person_of_ecid[ids["ECID"]].add(ids["CRMID"])
    assert all(len(p) == 1 for p in person_of_ecid.values())  # an ECID is one person's device
    assert max(len(e) for e in ecids_of_person.values()) == 3
    assert len(seen["ECID"]) > N  # 1 to 3 devices per person


def test_loyalty_links_to_crm_through_email_except_phone_only_records(
    rows: dict[str, list[dict[str, Any]]],
) -> None:
    crm_emails = {i["id"] for r in rows["crm"] for ns, i in _identities(r) if ns == "email"}
    crm_phones = {r["mobilePhone"]["number"] for r in rows["crm"] if r["mobilePhone"]}
    event_ids = {i["id"] for r in rows["events"] for _, i in _identities(r)}
    linked = unlinked = 0
    phones: Counter[str] = Counter()
    for row in rows["loyalty"]:
        ns, value = _primary(row)
        if ns == "email":
            linked += 1
            assert value in crm_emails
        else:
            unlinked += 1
            assert ns == "phone" and len(_identities(row)) == 1
            assert value.startswith("+447") and value not in crm_phones and value not in event_ids
            assert row["personalEmail"] is None and row["mobilePhone"] == {"number": value}
            phones[value] += 1
    assert max(phones.values()) == 1  # appears nowhere else
    assert 0.07 < unlinked / (linked + unlinked) < 0.13
    # Deliberate conflicts with CRM: another email domain on ~15%, another first name on ~10%.
    crm_by_email = {_identities(r)[1][1]["id"]: r for r in rows["crm"]}
    linked_rows = [r for r in rows["loyalty"] if _primary(r)[0] == "email"]
    other_address = sum(r["personalEmail"]["address"] != _primary(r)[1] for r in linked_rows) / len(linked_rows)
    other_name = sum(
        r["person"]["name"]["firstName"] != crm_by_email[_primary(r)[1]]["person"]["name"]["firstName"]
        for r in linked_rows
    ) / len(linked_rows)
    assert 0.10 < other_address < 0.20
    assert 0.06 < other_name < 0.14
    tiers = {_primary(r)[1]: r["loyalty"]["tier"] for r in linked_rows}
    crm_tiers = [(i["id"], r["loyalty"]["tier"]) for r in rows["crm"] if r["loyalty"] for _, i in _identities(r)[1:]]
    assert crm_tiers and all(tiers.get(email) not in (None, tier) for email, tier in crm_tiers if email in tiers)


def test_crm_attributes_and_segments(rows: dict[str, list[dict[str, Any]]]) -> None:
    crm = rows["crm"]
    with_segments = [r for r in crm if r["segmentMembership"] is not None]
    assert 0.35 < len(with_segments) / N < 0.45
    for r in with_segments:
        ((ns, segments),) = r["segmentMembership"]
        assert ns == "ups" and 1 <= len(segments) <= len(generate.SEGMENTS)
        for seg_id, status in segments:
            assert seg_id in generate.SEGMENTS
            assert status["status"] in {"realized", "existing", "exited"}
            assert status["lastQualificationTime"] < reference_time(7)
    audited = [r for r in crm if r["extSourceSystemAudit"] is not None]
    assert 0.6 < len(audited) / N < 0.8
    assert all(r["extSourceSystemAudit"]["lastUpdatedDate"] is not None for r in audited)
    for r in crm:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["person"]["birthDate"] or "2000-01-01")
        assert r["person"]["gender"] in {"male", "female", "non_specific", "not_specified"}
        assert r["personalEmail"]["address"] == _identities(r)[1][1]["id"]
        assert r["homeAddress"]["postalCode"].isdigit()
    assert any(r["person"]["birthDate"] is None for r in crm)


def test_no_empty_strings_anywhere(rows: dict[str, list[dict[str, Any]]]) -> None:
    def walk(value: Any) -> None:
        assert value != ""
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    for records in rows.values():
        for row in records[:500]:
            walk(row)


def test_events(rows: dict[str, list[dict[str, Any]]]) -> None:
    events = rows["events"]
    ids = [e["_id"] for e in events]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids)
    ref = reference_time(7)
    assert all(ref - timedelta(days=90) <= e["timestamp"] < ref for e in events)
    types = Counter(e["eventType"] for e in events)
    assert set(types) == {
        "web.webpagedetails.pageViews",
        "web.webinteraction.linkClicks",
        "commerce.productViews",
        "commerce.productListAdds",
        "commerce.purchases",
    }
    for e in events:
        purchase = e["eventType"] == "commerce.purchases"
        assert (e["commerce"] is not None) == purchase
        assert (e["productListItems"] is not None) == e["eventType"].startswith("commerce.")
        if purchase:
            total = sum(item["priceTotal"] for item in e["productListItems"])
            assert e["commerce"]["order"]["priceTotal"] == pytest.approx(total)
            assert e["commerce"]["order"]["currencyCode"] == "USD"
        assert e["web"]["webPageDetails"]["URL"].startswith("https://")
        assert e["environment"]["browserDetails"]["name"]
    authenticated = [e for e in events if len(e["identityMap"]) == 2]
    assert 0.27 < len(authenticated) / len(events) < 0.33
    states = Counter(_identities(e)[1][1]["authenticatedState"] for e in authenticated)
    assert set(states) == {"authenticated", "loggedOut"}
    assert 0.85 < states["authenticated"] / len(authenticated) < 0.95


def test_timestamps_follow_the_seed_not_the_clock() -> None:
    assert reference_time(7) == reference_time(7 + 365)
    assert reference_time(8) - reference_time(7) == timedelta(days=1)
    assert reference_time(7).utcoffset() == timedelta(0)


def test_rows_per_file_rotates_parts_without_changing_data(tmp_path: Path, data: GeneratedData) -> None:
    split = generate_dataset(tmp_path, N, seed=7, events_per_profile=EPP, rows_per_file=1000)
    events = split.files_for("events")
    assert [f.path.name for f in events] == [f"part-{i:05d}.parquet" for i in range(18)]
    assert all(f.records == 1000 for f in events)
    assert [f.records for f in split.files_for("crm")] == [1000, 1000, 1000]
    loyalty = split.files_for("loyalty")
    assert len(loyalty) == 2 and loyalty[0].records == 1000 and loyalty[1].records == data.records("loyalty") - 1000
    for dataset in ("crm", "loyalty", "events"):
        assert _read(split, dataset).equals(_read(data, dataset))
    # A smaller run in the same directory removes the parts it no longer writes.
    again = generate_dataset(tmp_path, 10, seed=7, events_per_profile=EPP, rows_per_file=1000)
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == ["part-00000.parquet"]
    assert again.records("events") == 60


def test_manifest(data: GeneratedData) -> None:
    manifest = json.loads((data.out_dir / "manifest.json").read_text())
    assert manifest["seed"] == 7
    assert manifest["profiles"] == N
    assert manifest["eventsPerProfile"] == EPP
    assert manifest["fragmentsPerProfile"] == 2
    assert manifest["referenceTime"] == reference_time(7).strftime("%Y-%m-%dT%H:%M:%SZ")
    expected_classes = {"crm": PROFILE_CLASS, "loyalty": PROFILE_CLASS, "events": EVENT_CLASS}
    assert set(manifest["datasets"]) == set(expected_classes)
    for name, entry in manifest["datasets"].items():
        assert entry["xdmClass"] == expected_classes[name]
        assert entry["records"] == data.records(name)
        assert entry["files"] == [{"path": f"{name}/{f.path.name}", "records": f.records} for f in data.files_for(name)]
        for f in entry["files"]:
            assert (data.out_dir / f["path"]).is_file()


def test_three_fragments_per_profile(tmp_path: Path, data: GeneratedData) -> None:
    three = generate_dataset(tmp_path, N, seed=7, events_per_profile=EPP, fragments_per_profile=3)
    assert three.records("crm") == 2 * N
    crm = _rows(three, "crm")
    primary, legacy = crm[:N], crm[N:]
    assert all(_primary(r)[0] == "CRMID" for r in primary)
    assert all(_primary(r)[0] == "email" and len(_identities(r)) == 1 for r in legacy)
    # The first crm records and the loyalty records are exactly those of the default run.
    assert pa.Table.from_pylist(primary, schema=_read(data, "crm").schema).equals(_read(data, "crm"))
    assert _read(three, "loyalty").equals(_read(data, "loyalty"))

    # Group fragments into people by the identities they share (CRMID and email).
    person_of_email = {_identities(r)[1][1]["id"]: _primary(r)[1] for r in primary}
    fragments: Counter[str] = Counter(_primary(r)[1] for r in primary)
    by_crmid = {_primary(r)[1]: r for r in primary}
    conflicts = Counter[str]()
    for r in legacy:
        crmid = person_of_email[_primary(r)[1]]
        fragments[crmid] += 1
        first = by_crmid[crmid]
        conflicts["city"] += r["homeAddress"]["city"] != first["homeAddress"]["city"]
        conflicts["lastName"] += r["person"]["name"]["lastName"] != first["person"]["name"]["lastName"]
        assert r["person"]["name"]["firstName"] == first["person"]["name"]["firstName"]
        assert r["extSourceSystemAudit"]["lastUpdatedDate"] < reference_time(7) - timedelta(days=729)
    linked = 0
    for r in _rows(three, "loyalty"):
        ns, value = _primary(r)
        if ns == "email":
            fragments[person_of_email[value]] += 1
            linked += 1
    assert len(fragments) == N
    assert Counter(fragments.values()) == {3: linked, 2: N - linked}
    assert conflicts["city"] == N
    assert 0.06 < conflicts["lastName"] / N < 0.14


def test_one_fragment_per_profile_writes_an_empty_loyalty_dataset(tmp_path: Path) -> None:
    one = generate_dataset(tmp_path, 50, seed=1, events_per_profile=0, fragments_per_profile=1)
    assert one.records("loyalty") == 0 and one.records("events") == 0 and one.records("crm") == 50
    for dataset in ("loyalty", "events"):
        (f,) = one.files_for(dataset)
        assert f == GeneratedFile(dataset, tmp_path / dataset / "part-00000.parquet", 0)
        assert pq.read_table(f.path).num_rows == 0
    assert "identityMap" in pq.read_schema(one.files_for("loyalty")[0].path).names


def test_blocks_and_event_slices_keep_identities_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "PERSON_BLOCK", 400)
    monkeypatch.setattr(generate, "EVENT_CHUNK", 900)  # 400 people x 5 events = 3 slices per block
    small = generate_dataset(tmp_path, 1000, seed=3, events_per_profile=5)
    assert small.records("crm") == 1000 and small.records("events") == 5000
    crm = _rows(small, "crm")
    assert [_primary(r)[1] for r in crm] == [f"CRM-{i:08d}" for i in range(1000)]
    events = _rows(small, "events")
    assert len({e["_id"] for e in events}) == 5000
    owner: dict[str, str] = {}
    for e in events:
        ids = dict((ns, i["id"]) for ns, i in _identities(e))
        if "CRMID" in ids:
            assert owner.setdefault(ids["ECID"], ids["CRMID"]) == ids["CRMID"]
    assert {int(crmid[4:]) // 400 for crmid in owner.values()} == {0, 1, 2}  # events of every block


@pytest.mark.parametrize(
    "kwargs",
    [
        {"profiles": -1},
        {"profiles": 1, "seed": -1},
        {"profiles": 1, "events_per_profile": -1},
        {"profiles": 1, "fragments_per_profile": 4},
        {"profiles": 1, "rows_per_file": 0},
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, **kwargs)
