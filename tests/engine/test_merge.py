"""Worked examples of the profile merge (`openprofile.engine.merge`), run on DuckDB."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openprofile.engine.merge import (
    IDENTITIES,
    FragmentSource,
    MergeRule,
    merge_sql,
    merged_structure,
    profile_structure,
)
from openprofile.engine.structure import Structure, StructureConflict, TypeNode, to_arrow_type, to_duckdb_type

IDENTITY_MAP: TypeNode = {
    "map": {"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN", "authenticatedState": "VARCHAR"}}}
}
SEGMENT_MEMBERSHIP: TypeNode = {
    "map": {"map": {"struct": {"status": "VARCHAR", "lastQualificationTime": "TIMESTAMPTZ"}}}
}
AUDIT: TypeNode = {"struct": {"lastUpdatedDate": "TIMESTAMPTZ"}}
PERSON: TypeNode = {
    "struct": {"name": {"struct": {"firstName": "VARCHAR", "lastName": "VARCHAR"}}, "gender": "VARCHAR"}
}

TS = MergeRule("timestampOrdered")
SYSTEM = [("_group", pa.string()), ("_dataset", pa.string()), ("_ingest_ms", pa.int64()), ("_batch", pa.string())]


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def table(structure: Structure, rows: list[dict[str, Any]]) -> pa.Table:
    fields = [pa.field(k, to_arrow_type(v)) for k, v in structure.items()] + [pa.field(k, t) for k, t in SYSTEM]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


class Lake:
    """Fragment relations registered on one DuckDB connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.sources: list[FragmentSource] = []

    def add(self, dataset: str, structure: Structure, rows: list[dict[str, Any]], *, batch: str | None = None,
            ingest_ms: int = 1000) -> FragmentSource:
        full = [
            {"_dataset": dataset, "_batch": batch or f"{dataset}-batch", "_ingest_ms": ingest_ms, **row}
            for row in rows
        ]
        name = f"frag_{dataset}"
        self.con.register(name, table(structure, full))
        source = FragmentSource(dataset, name, structure)
        self.sources.append(source)
        return source

    def merge(self, rule: MergeRule = TS, *, where: str | None = None,
              sources: list[FragmentSource] | None = None) -> dict[str, dict[str, Any]]:
        result = self.con.sql(merge_sql(self.sources if sources is None else sources, rule, where=where))
        rows = to_python(result.to_arrow_table())
        return {row.pop("_group"): row for row in rows}


def to_python(arrow: pa.Table) -> list[dict[str, Any]]:
    """Rows of an Arrow table with maps as dicts."""
    return [
        {name: _py(row[name], arrow.schema.field(name).type) for name in arrow.column_names}
        for row in arrow.to_pylist()
    ]


def _py(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_map(t):
        return {k: _py(v, t.item_type) for k, v in value}
    if pa.types.is_struct(t):
        return {t.field(i).name: _py(value[t.field(i).name], t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t):
        return [_py(v, t.value_type) for v in value]
    return value


@pytest.fixture
def lake() -> Lake:
    return Lake(duckdb.connect())


def idm(**namespaces: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return dict(namespaces)


# --------------------------------------------------------------------------------------------------


def test_stitching_keeps_non_conflicting_attributes_of_both_datasets(lake: Lake) -> None:
    crm: Structure = {"identityMap": IDENTITY_MAP, "person": PERSON}
    loyalty: Structure = {"identityMap": IDENTITY_MAP, "loyalty": {"struct": {"points": "BIGINT", "tier": "VARCHAR"}}}
    lake.add("crm", crm, [{"_group": "g", "identityMap": idm(email=[{"id": "a@x.com", "primary": True}]),
                           "person": {"name": {"firstName": "Ann", "lastName": "Lee"}, "gender": "female"}}],
             batch="b1", ingest_ms=1000)
    lake.add("loyalty", loyalty, [{"_group": "g", "identityMap": idm(crm=[{"id": "C1", "primary": True}],
                                                                     email=[{"id": "a@x.com"}]),
                                   "loyalty": {"points": 120, "tier": "gold"}}],
             batch="b2", ingest_ms=5000)
    (group, row), = lake.merge().items()
    assert group == "g"
    assert row["person"] == {"name": {"firstName": "Ann", "lastName": "Lee"}, "gender": "female"}
    assert row["loyalty"] == {"points": 120, "tier": "gold"}
    assert row["identities"] == [
        {"id": "C1", "namespace": {"code": "crm"}, "primary": True},
        {"id": "a@x.com", "namespace": {"code": "email"}, "primary": True},
    ]
    assert row["_sources"] == ["crm", "loyalty"]
    assert row["_tags"] == ["b1", "b2"]
    assert row["_last_modified_ms"] == 5000


def test_timestamp_ordered_picks_the_later_ingestion_per_leaf(lake: Lake) -> None:
    s: Structure = {"person": PERSON}
    lake.add("old", s, [{"_group": "g", "person": {"name": {"firstName": "Old", "lastName": "Smith"}}}],
             ingest_ms=1000)
    lake.add("new", s, [{"_group": "g", "person": {"name": {"firstName": "New"}, "gender": "male"}}],
             ingest_ms=2000)
    row = lake.merge()["g"]
    # firstName conflicts: the later wins; lastName only the older has: kept.
    assert row["person"] == {"name": {"firstName": "New", "lastName": "Smith"}, "gender": "male"}
    # Source order does not matter.
    assert lake.merge(sources=list(reversed(lake.sources)))["g"] == row


def test_custom_last_updated_date_beats_a_later_ingestion(lake: Lake) -> None:
    s: Structure = {"person": PERSON, "extSourceSystemAudit": AUDIT}
    lake.add("a", s, [{"_group": "g", "person": {"gender": "female"},
                       "extSourceSystemAudit": {"lastUpdatedDate": utc(9_000)}}], ingest_ms=1000)
    lake.add("b", s, [{"_group": "g", "person": {"gender": "male"}}], ingest_ms=5000)
    row = lake.merge()["g"]
    assert row["person"]["gender"] == "female"
    assert row["extSourceSystemAudit"] == {"lastUpdatedDate": utc(9_000)}
    assert row["_last_modified_ms"] == 5000  # last modification is ingestion time


def test_custom_last_updated_date_older_than_an_ingestion_loses(lake: Lake) -> None:
    s: Structure = {"person": PERSON, "extSourceSystemAudit": AUDIT}
    lake.add("a", s, [{"_group": "g", "person": {"gender": "female"},
                       "extSourceSystemAudit": {"lastUpdatedDate": utc(500)}}], ingest_ms=9000)
    lake.add("b", s, [{"_group": "g", "person": {"gender": "male"}}], ingest_ms=1000)
    row = lake.merge()["g"]
    assert row["person"]["gender"] == "male"
    # The audit field is an ordinary leaf: only "a" has it.
    assert row["extSourceSystemAudit"] == {"lastUpdatedDate": utc(500)}


def test_dataset_precedence_excludes_unlisted_datasets_entirely(lake: Lake) -> None:
    s: Structure = {"identityMap": IDENTITY_MAP, "person": PERSON, "score": "BIGINT"}
    lake.add("d1", s, [{"_group": "g", "identityMap": idm(email=[{"id": "e1", "primary": True}]),
                        "person": {"gender": "female"}}], batch="b1", ingest_ms=9000)
    lake.add("d2", s, [{"_group": "g", "identityMap": idm(email=[{"id": "e1"}]),
                        "person": {"gender": "male", "name": {"firstName": "Bo"}}}], batch="b2", ingest_ms=1000)
    lake.add("d3", s, [{"_group": "g", "identityMap": idm(phone=[{"id": "555", "primary": True}]),
                        "person": {"gender": "other"}, "score": 7},
                       {"_group": "only3", "identityMap": idm(phone=[{"id": "777"}]), "score": 1}],
             batch="b3", ingest_ms=99_000)
    merged = lake.merge(MergeRule("dataSetPrecedence", ("d2", "d1")))
    assert set(merged) == {"g"}  # a group only d3 has is not a profile at all
    row = merged["g"]
    assert row["person"] == {"name": {"firstName": "Bo", "lastName": None}, "gender": "male"}  # d2 first, though older
    assert row["score"] is None
    assert row["identityMap"] == {"email": [{"id": "e1", "primary": True, "authenticatedState": None}]}
    assert row["identities"] == [{"id": "e1", "namespace": {"code": "email"}, "primary": True}]
    assert row["_sources"] == ["d1", "d2"]
    assert row["_tags"] == ["b1", "b2"]
    assert row["_last_modified_ms"] == 9000
    # timestampOrdered merges d3 too.
    assert lake.merge(TS)["g"]["person"]["gender"] == "other"


def test_dataset_precedence_ties_within_one_dataset_go_to_the_latest(lake: Lake) -> None:
    s: Structure = {"person": PERSON, "extSourceSystemAudit": AUDIT}
    lake.add("d1", s, [
        {"_group": "g", "person": {"gender": "a"}, "_ingest_ms": 3000},
        {"_group": "g", "person": {"gender": "b"}, "_ingest_ms": 1000,
         "extSourceSystemAudit": {"lastUpdatedDate": utc(4000)}},
        {"_group": "g", "person": {"gender": "c"}, "_ingest_ms": 2000},
    ])
    lake.add("d2", s, [{"_group": "g", "person": {"gender": "z"}}], ingest_ms=10_000)
    assert lake.merge(MergeRule("dataSetPrecedence", ("d1", "d2")))["g"]["person"]["gender"] == "b"
    assert lake.merge(MergeRule("dataSetPrecedence", ("d2", "d1")))["g"]["person"]["gender"] == "z"


def test_equal_times_are_broken_by_ingestion_then_dataset_then_batch(lake: Lake) -> None:
    s: Structure = {"v": "VARCHAR", "extSourceSystemAudit": AUDIT}
    at = {"lastUpdatedDate": utc(5000)}
    lake.add("a", s, [{"_group": "g1", "v": "a", "extSourceSystemAudit": at, "_ingest_ms": 2000},
                      {"_group": "g2", "v": "a"},
                      {"_group": "g3", "v": "a1", "_batch": "b1"},
                      {"_group": "g3", "v": "a2", "_batch": "b2"}])
    lake.add("b", s, [{"_group": "g1", "v": "b", "extSourceSystemAudit": at, "_ingest_ms": 1000},
                      {"_group": "g2", "v": "b"}])
    merged = lake.merge()
    assert merged["g1"]["v"] == "a"   # same effective time: the later ingestion
    assert merged["g2"]["v"] == "b"   # same times: the greater dataset id
    assert merged["g3"]["v"] == "a2"  # same dataset too: the greater batch id


def test_full_ties_are_deterministic_whatever_the_row_order(lake: Lake) -> None:
    # Six fragments of one dataset, one batch, one ingestion time, stitched into one group.
    s: Structure = {"identityMap": IDENTITY_MAP, "a": "VARCHAR", "b": "VARCHAR"}
    rows = [{"_group": "g", "identityMap": idm(email=[{"id": f"e{i}", "primary": True}]),
             "a": f"a{i}", "b": None if i % 2 else f"b{i}", "_dataset": "d", "_batch": "x", "_ingest_ms": 1}
            for i in range(6)]
    lake.add("d", s, rows)
    baseline = lake.merge()
    assert baseline["g"]["a"] in {f"a{i}" for i in range(6)}
    for order in (rows[::-1], rows[3:] + rows[:3], rows[1::2] + rows[::2]):
        lake.con.register("frag_d", table(s, order))
        assert lake.merge() == baseline


def test_arrays_are_atomic(lake: Lake) -> None:
    s: Structure = {"tags": {"list": "VARCHAR"}, "items": {"list": {"struct": {"sku": "VARCHAR", "qty": "BIGINT"}}}}
    lake.add("old", s, [{"_group": "g", "tags": ["a", "b", "c"], "items": [{"sku": "x", "qty": 1}]}], ingest_ms=1)
    lake.add("new", s, [{"_group": "g", "tags": ["z"], "items": None}], ingest_ms=2)
    row = lake.merge()["g"]
    assert row["tags"] == ["z"]  # the winner's whole list, not a union
    assert row["items"] == [{"sku": "x", "qty": 1}]  # the newer has none: the older's list


def test_maps_merge_key_by_key(lake: Lake) -> None:
    s: Structure = {"attributes": {"map": "BIGINT"}, "segmentMembership": SEGMENT_MEMBERSHIP}
    q1, q2 = utc(1_000_000), utc(2_000_000)
    lake.add("old", s, [{"_group": "g", "attributes": {"x": 1, "y": 2},
                         "segmentMembership": {"ups": {"s1": {"status": "realized", "lastQualificationTime": q1},
                                                       "s2": {"status": "existing", "lastQualificationTime": q1}}}}],
             ingest_ms=1)
    lake.add("new", s, [{"_group": "g", "attributes": {"y": 3, "z": None},
                         "segmentMembership": {"ups": {"s1": {"status": "exited", "lastQualificationTime": q2}},
                                               "other": {"s9": {"status": "realized"}}}}],
             ingest_ms=2)
    row = lake.merge()["g"]
    assert row["attributes"] == {"x": 1, "y": 3}  # a null value is no value
    assert row["segmentMembership"] == {
        "other": {"s9": {"status": "realized", "lastQualificationTime": None}},
        "ups": {"s1": {"status": "exited", "lastQualificationTime": q2},
                "s2": {"status": "existing", "lastQualificationTime": q1}},
    }
    # Keys come out sorted.
    arrow = lake.con.sql(merge_sql(lake.sources, TS)).to_arrow_table()
    assert [k for k, _ in arrow.column("attributes").to_pylist()[0]] == ["x", "y"]


def test_empty_maps_contribute_nothing(lake: Lake) -> None:
    s: Structure = {"attributes": {"map": "BIGINT"}, "segmentMembership": SEGMENT_MEMBERSHIP}
    lake.add("d", s, [{"_group": "g", "attributes": {}, "segmentMembership": {"ups": {}}}])
    row = lake.merge()["g"]
    assert row["attributes"] is None
    assert row["segmentMembership"] is None


def test_identity_map_is_the_union_of_all_fragments(lake: Lake) -> None:
    s: Structure = {"identityMap": IDENTITY_MAP}
    lake.add("d1", s, [{"_group": "g", "identityMap": idm(
        email=[{"id": "a@x", "primary": True, "authenticatedState": "ambiguous"}],
        ECID=[{"id": "e2"}, {"id": "e1", "primary": False}])}], ingest_ms=1)
    lake.add("d2", s, [{"_group": "g", "identityMap": idm(
        ECID=[{"id": "e1", "authenticatedState": "authenticated"}, {"id": "", "primary": True}],
        Email=[{"id": "a@x"}], email=[{"id": "a@x", "authenticatedState": "loggedOut"}])}], ingest_ms=2)
    row = lake.merge()["g"]
    assert row["identityMap"] == {
        "ECID": [{"id": "e1", "primary": False, "authenticatedState": "authenticated"},
                 {"id": "e2", "primary": None, "authenticatedState": None}],
        "Email": [{"id": "a@x", "primary": None, "authenticatedState": None}],
        "email": [{"id": "a@x", "primary": True, "authenticatedState": "loggedOut"}],
    }
    assert row["identities"] == [
        {"id": "e1", "namespace": {"code": "ecid"}, "primary": False},
        {"id": "e2", "namespace": {"code": "ecid"}, "primary": False},
        {"id": "a@x", "namespace": {"code": "email"}, "primary": True},
    ]


def test_all_null_struct_is_null_and_missing_columns_are_null(lake: Lake) -> None:
    s1: Structure = {"person": PERSON, "a": "VARCHAR"}
    s2: Structure = {"a": "VARCHAR", "never": {"struct": {"x": "BIGINT"}}}
    lake.add("d1", s1, [{"_group": "g", "person": {"name": {"firstName": None}, "gender": None}, "a": "1"},
                        {"_group": "h", "person": {"name": {"lastName": "L"}}}])
    lake.add("d2", s2, [{"_group": "g", "never": None}, {"_group": "k", "a": "2"}])
    merged = lake.merge()
    assert merged["g"]["person"] is None
    assert merged["g"]["never"] is None
    assert merged["h"]["person"] == {"name": {"firstName": None, "lastName": "L"}, "gender": None}
    assert merged["k"]["person"] is None  # d2 does not even have the column
    assert merged["k"]["identities"] == []


def test_where_restricts_fragments_before_merging(lake: Lake) -> None:
    s: Structure = {"identityMap": IDENTITY_MAP, "v": "BIGINT"}
    lake.add("d1", s, [{"_group": "g1", "v": 1, "identityMap": idm(email=[{"id": "a"}])},
                       {"_group": "g2", "v": 2, "identityMap": idm(email=[{"id": "b"}])},
                       {"_group": "g3", "v": 3}], batch="b1")
    lake.add("d2", s, [{"_group": "g2", "v": 20}], batch="b2", ingest_ms=2000)
    everything = lake.merge()
    assert set(everything) == {"g1", "g2", "g3"}
    one = lake.merge(where="_group = 'g2'")
    assert one == {"g2": everything["g2"]}
    assert one["g2"]["v"] == 20 and one["g2"]["_sources"] == ["d1", "d2"]
    assert lake.merge(where="_group IN ('g1', 'g3')") == {k: everything[k] for k in ("g1", "g3")}
    # The condition is on fragments: leaving out d2's fragment changes g2.
    assert lake.merge(where="_dataset = 'd1'")["g2"]["v"] == 2


def test_fragments_without_a_group_are_ignored(lake: Lake) -> None:
    lake.add("d", {"v": "BIGINT"}, [{"_group": None, "v": 1}, {"_group": "g", "v": 2}])
    assert lake.merge() == {"g": {"v": 2, "identities": [], "_sources": ["d"], "_tags": ["d-batch"],
                                  "_last_modified_ms": 1000}}


def test_output_types_are_the_merged_structure(lake: Lake) -> None:
    s1: Structure = {"identityMap": IDENTITY_MAP, "n": "BIGINT",
                     "p": {"struct": {"a": "VARCHAR"}}, "l": {"list": {"struct": {"x": "BIGINT"}}}}
    s2: Structure = {"n": "DOUBLE", "p": {"struct": {"b": "DATE"}}, "l": {"list": {"struct": {"y": "VARCHAR"}}},
                     "m": {"map": {"struct": {"k": "BOOLEAN"}}}}
    lake.add("d1", s1, [{"_group": "g", "n": 3, "p": {"a": "x"}, "l": [{"x": 1}]}], ingest_ms=2)
    lake.add("d2", s2, [{"_group": "g", "n": 2.5, "p": {"b": dt.date(2024, 1, 2)}, "l": [{"y": "q"}],
                         "m": {"k1": {"k": True}}}], ingest_ms=1)
    merged = merged_structure(lake.sources)
    assert merged == {"identityMap": IDENTITY_MAP, "n": "DOUBLE", "p": {"struct": {"a": "VARCHAR", "b": "DATE"}},
                      "l": {"list": {"struct": {"x": "BIGINT", "y": "VARCHAR"}}},
                      "m": {"map": {"struct": {"k": "BOOLEAN"}}}}
    expected = {"_group": "VARCHAR", **{k: to_duckdb_type(v) for k, v in merged.items()},
                "identities": to_duckdb_type(IDENTITIES), "_sources": "VARCHAR[]", "_tags": "VARCHAR[]",
                "_last_modified_ms": "BIGINT"}
    probe = ", ".join(f"CAST(NULL AS {t}) AS \"{k}\"" for k, t in expected.items())
    want = lake.con.sql(f"DESCRIBE SELECT {probe}").fetchall()
    got = lake.con.sql(f"DESCRIBE {merge_sql(lake.sources, TS)}").fetchall()
    assert [(r[0], r[1]) for r in got] == [(r[0], r[1]) for r in want]
    row = lake.merge()["g"]
    assert row["n"] == 3.0
    assert row["p"] == {"a": "x", "b": dt.date(2024, 1, 2)}
    assert row["l"] == [{"x": 1, "y": None}]
    assert row["m"] == {"k1": {"k": True}}
    assert profile_structure(lake.sources) == {**merged, "identities": IDENTITIES}


def test_no_merged_dataset_gives_an_empty_result_of_the_right_shape(lake: Lake) -> None:
    s: Structure = {"identityMap": IDENTITY_MAP, "v": "BIGINT", "m": {"map": "VARCHAR"}}
    lake.add("d", s, [{"_group": "g", "v": 1}])
    result = lake.con.sql(merge_sql(lake.sources, MergeRule("dataSetPrecedence", ("nope",))))
    assert result.columns == ["_group", "identityMap", "v", "m", "identities", "_sources", "_tags",
                              "_last_modified_ms"]
    assert result.fetchall() == []
    empty = lake.con.sql(merge_sql([], TS))
    assert empty.columns == ["_group", "identities", "_sources", "_tags", "_last_modified_ms"]
    assert empty.fetchall() == []


def test_read_parquet_relations_and_awkward_names(lake: Lake, tmp_path: Path) -> None:
    s: Structure = {"it's": {"struct": {"a b": "VARCHAR", "primary": "BIGINT"}}, "select": "VARCHAR"}
    for i, (dataset, value) in enumerate([("d1", "one"), ("d2", "two")]):
        path = tmp_path / f"{dataset}.parquet"
        pq.write_table(table(s, [{"_group": "g", "_dataset": dataset, "_batch": "b", "_ingest_ms": i,
                                  "it's": {"a b": value, "primary": i}, "select": None}]), path)
        lake.sources.append(FragmentSource(dataset, f"read_parquet(['{path}'])", s))
    row = lake.merge()["g"]
    assert row["it's"] == {"a b": "two", "primary": 1}
    assert row["select"] is None


def test_reserved_columns_are_not_merged(lake: Lake) -> None:
    s: Structure = {"identities": {"list": {"struct": {"id": "VARCHAR"}}}, "v": "BIGINT"}
    lake.add("d", s, [{"_group": "g", "identities": [{"id": "legacy"}], "v": 1}])
    assert merged_structure(lake.sources) == {"v": "BIGINT"}
    assert lake.merge()["g"]["identities"] == []


def test_bad_rules_and_conflicting_structures_raise() -> None:
    with pytest.raises(ValueError, match="attributeMerge"):
        MergeRule("newest")
    a = FragmentSource("a", "ta", {"x": "BIGINT"})
    b = FragmentSource("b", "tb", {"x": "VARCHAR"})
    with pytest.raises(StructureConflict):
        merge_sql([a, b], TS)
