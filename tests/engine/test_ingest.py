"""The batch-ingestion engine: real files in, real Parquet out, read back with pyarrow."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openprofile.engine.ingest import IngestFailure, IngestResult, RowError, WrittenFile, ingest_files
from openprofile.engine.structure import Structure, to_arrow_type

IDENTITY_ITEM = pa.struct([("id", pa.string()), ("primary", pa.bool_()), ("authenticatedState", pa.string())])
IDENTITY_MAP = pa.map_(pa.string(), pa.list_(IDENTITY_ITEM))
TS = pa.timestamp("us", tz="UTC")
SEGMENTS = pa.map_(pa.string(), pa.map_(pa.string(), pa.struct([("status", pa.string()),
                                                                 ("lastQualificationTime", TS)])))


def event(i: int, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "_id": f"evt-{i}",
        "timestamp": f"2024-05-01T10:00:{i % 60:02d}Z",
        "identityMap": {"ECID": [{"id": f"ecid-{i}", "primary": True, "authenticatedState": "ambiguous"}]},
        "eventType": "web.webpagedetails.pageViews",
        "web": {"webPageDetails": {"name": f"page {i}", "URL": f"https://example.com/{i}"}},
        "productListItems": [{"SKU": f"SKU-{i}", "quantity": i, "priceTotal": 9.5 * i}],
    }
    record.update(extra)
    return record


def write_json(path: Path, records: list[dict[str, Any]], layout: str = "array") -> Path:
    if layout == "array":
        path.write_text(json.dumps(records))  # what aepp uploads: one line
    elif layout == "ndjson":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        assert len(records) == 1
        path.write_text(json.dumps(records[0], indent=2))
    return path


def read_back(out: Path, result: IngestResult) -> pa.Table:
    assert [f.name for f in result.files] == [f"part-{i:05d}.parquet" for i in range(len(result.files))]
    assert sorted(p.name for p in out.iterdir()) == [f.name for f in result.files]
    tables = []
    for f in result.files:
        path = out / f.name
        assert path.stat().st_size == f.size
        table = pq.read_table(path)
        assert table.num_rows == f.records
        tables.append(table)
    return pa.concat_tables(tables)


def as_python(value: Any) -> Any:
    """Arrow's Python form of maps (lists of pairs) as dicts, recursively."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {k: as_python(v) for k, v in value}
    if isinstance(value, list):
        return [as_python(v) for v in value]
    if isinstance(value, dict):
        return {k: as_python(v) for k, v in value.items()}
    return value


def ingest(tmp_path: Path, files: list[tuple[str, Path]], fmt: str = "json", record_class: str | None = None,
           structure: Structure | None = None, out: str = "out", **kw: Any) -> tuple[IngestResult, Path]:
    out_dir = tmp_path / out
    return ingest_files(files, fmt, record_class, structure, out_dir, **kw), out_dir


def fail(tmp_path: Path, files: list[tuple[str, Path]], fmt: str = "json", record_class: str | None = None,
         structure: Structure | None = None, **kw: Any) -> IngestFailure:
    out_dir = tmp_path / "failed"
    with pytest.raises(IngestFailure) as caught:
        ingest_files(files, fmt, record_class, structure, out_dir, **kw)
    assert not out_dir.exists() or list(out_dir.iterdir()) == [], "a failed batch left files behind"
    return caught.value


# ---------------------------------------------------------------------------------------------------------
# JSON


@pytest.mark.parametrize("layout", ["array", "ndjson"])
def test_json_round_trips_nested_values_with_their_types(tmp_path: Path, layout: str) -> None:
    records = [event(i) for i in range(1, 6)]
    records[1]["segmentMembership"] = {"ups": {"seg-1": {"status": "realized",
                                                         "lastQualificationTime": "2024-04-01T00:00:00+02:00"}}}
    records[2]["identityMap"]["email"] = [{"id": "a@example.com", "primary": False}]
    records[3]["web"] = None
    records[4]["productListItems"] = []
    path = write_json(tmp_path / f"events.{layout}", records, layout)
    result, out = ingest(tmp_path, [("events.json", path)], record_class="experienceevent")
    assert (result.records_read, result.records_written) == (5, 5)
    assert result.files == [WrittenFile("part-00000.parquet", (out / "part-00000.parquet").stat().st_size, 5)]
    table = read_back(out, result)
    schema = table.schema
    assert schema.field("identityMap").type == IDENTITY_MAP
    assert schema.field("segmentMembership").type == SEGMENTS
    assert schema.field("timestamp").type == TS
    assert schema.field("web").type == pa.struct(
        [("webPageDetails", pa.struct([("name", pa.string()), ("URL", pa.string())]))]
    )
    assert schema.field("productListItems").type == pa.list_(
        pa.struct([("SKU", pa.string()), ("quantity", pa.int64()), ("priceTotal", pa.float64())])
    )
    assert sorted(schema.names) == sorted(
        ["_id", "timestamp", "identityMap", "eventType", "web", "productListItems", "segmentMembership"]
    ), "no extra columns"
    assert result.structure["productListItems"] == {
        "list": {"struct": {"SKU": "VARCHAR", "quantity": "BIGINT", "priceTotal": "DOUBLE"}}
    }

    rows = [as_python(r) for r in table.to_pylist()]
    for got, want in zip(rows, records, strict=True):
        assert got["_id"] == want["_id"]
        assert got["eventType"] == want["eventType"]
        assert got["timestamp"] == datetime.fromisoformat(want["timestamp"])
        assert got["web"] == want["web"]
        assert got["productListItems"] == want["productListItems"]
        expected_map = {
            ns: [{"id": item["id"], "primary": item.get("primary"),
                  "authenticatedState": item.get("authenticatedState")} for item in items]
            for ns, items in want["identityMap"].items()
        }
        assert got["identityMap"] == expected_map
    assert rows[1]["segmentMembership"] == {
        "ups": {"seg-1": {"status": "realized",
                          "lastQualificationTime": datetime(2024, 3, 31, 22, 0, tzinfo=UTC)}}
    }
    assert rows[0]["segmentMembership"] is None


def test_a_single_pretty_printed_object(tmp_path: Path) -> None:
    path = write_json(tmp_path / "one.json", [{"a": {"b": [1, 2]}, "c": "x"}], layout="object")
    result, out = ingest(tmp_path, [("one.json", path)])
    assert result.records_written == 1
    assert read_back(out, result).to_pylist() == [{"a": {"b": [1, 2]}, "c": "x"}]
    assert result.structure == {"a": {"struct": {"b": {"list": "BIGINT"}}}, "c": "VARCHAR"}


def test_json_structure_is_inferred_over_all_records(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [{"n": i, "x": i} for i in range(3000)]
    records[2999]["x"] = 0.5  # the last record makes x DOUBLE
    records[2500]["late"] = {"deep": True}
    records[10]["nothing"] = None
    path = write_json(tmp_path / "many.json", records, layout="ndjson")
    result, out = ingest(tmp_path, [("many.json", path)])
    assert result.structure == {"n": "BIGINT", "x": "DOUBLE", "nothing": "VARCHAR",
                                "late": {"struct": {"deep": "BOOLEAN"}}} or result.structure == {
        "n": "BIGINT", "x": "DOUBLE", "late": {"struct": {"deep": "BOOLEAN"}}, "nothing": "VARCHAR"}
    table = read_back(out, result)
    assert table.schema.field("x").type == pa.float64()
    rows = table.to_pylist()
    assert [r["n"] for r in rows] == list(range(3000))
    assert rows[2999]["x"] == 0.5 and rows[7]["x"] == 7.0
    assert rows[2500]["late"] == {"deep": True} and rows[0]["late"] is None


def test_timestamps_in_several_iso_forms(tmp_path: Path) -> None:
    stamps = ["2024-05-01T10:00:00Z", "2024-05-01T12:00:00+02:00", "2019-04-15T02:41:50.000+0000",
              "2021-03-10 10:03:08", "2022-01-13T11:33:28.211895Z"]
    records = [{"id": str(i), "timestamp": s, "extSourceSystemAudit": {"lastUpdatedDate": s, "by": "crm"}}
               for i, s in enumerate(stamps)]
    path = write_json(tmp_path / "t.json", records)
    result, out = ingest(tmp_path, [("t.json", path)])
    assert result.structure["timestamp"] == "TIMESTAMPTZ"
    assert result.structure["extSourceSystemAudit"] == {
        "struct": {"lastUpdatedDate": "TIMESTAMPTZ", "by": "VARCHAR"}
    }
    table = read_back(out, result)
    assert table.schema.field("timestamp").type == TS
    expected = [
        datetime(2024, 5, 1, 10, tzinfo=UTC),
        datetime(2024, 5, 1, 10, tzinfo=UTC),
        datetime(2019, 4, 15, 2, 41, 50, tzinfo=UTC),
        datetime(2021, 3, 10, 10, 3, 8, tzinfo=UTC),
        datetime(2022, 1, 13, 11, 33, 28, 211895, tzinfo=UTC),
    ]
    assert table.column("timestamp").to_pylist() == expected
    assert [r["lastUpdatedDate"] for r in table.column("extSourceSystemAudit").to_pylist()] == expected


def test_a_field_that_is_a_string_and_a_number_conflicts(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [{"person": {"age": 31}}, {"person": {"age": 40}}, {"person": {"age": "forty"}}]
    path = write_json(tmp_path / "people.json", records, layout="ndjson")
    failure = fail(tmp_path, [("people.json", path)])
    assert failure.code == "SCHEMA_CONFLICT"
    assert "'person.age'" in failure.message
    assert "a number (first in 'people.json' record 1)" in failure.message
    assert "a string (first in 'people.json' record 3)" in failure.message


def test_fields_that_are_only_empty_objects_are_dropped(tmp_path: Path) -> None:
    path = write_json(tmp_path / "e.json", [{"a": 1, "attrs": {}}, {"a": 2, "attrs": None}])
    result, out = ingest(tmp_path, [("e.json", path)])
    assert result.structure == {"a": "BIGINT"}
    assert read_back(out, result).to_pylist() == [{"a": 1}, {"a": 2}]


def test_an_identity_map_of_the_wrong_shape_is_a_schema_conflict(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", [{"identityMap": {"email": "a@example.com"}}])
    failure = fail(tmp_path, [("p.json", path)], record_class="profile")
    assert failure.code == "SCHEMA_CONFLICT"
    assert "identityMap" in failure.message


# ---------------------------------------------------------------------------------------------------------
# Schema evolution


def test_a_second_batch_adds_a_field(tmp_path: Path) -> None:
    first, _ = ingest(tmp_path, [("a.json", write_json(tmp_path / "a.json", [{"id": "1", "p": {"x": 1}}]))],
                      out="b1")
    assert first.structure == {"id": "VARCHAR", "p": {"struct": {"x": "BIGINT"}}}
    second, out = ingest(tmp_path, [("b.json", write_json(tmp_path / "b.json", [{"p": {"y": "z"}, "new": True}]))],
                         structure=first.structure, out="b2")
    assert second.structure == {"id": "VARCHAR", "p": {"struct": {"x": "BIGINT", "y": "VARCHAR"}}, "new": "BOOLEAN"}
    table = read_back(out, second)
    assert table.schema.names == ["p", "new"], "only the batch's own columns, in the dataset's order"
    assert table.to_pylist() == [{"p": {"x": None, "y": "z"}, "new": True}]


def test_bigint_then_double_widens(tmp_path: Path) -> None:
    first, _ = ingest(tmp_path, [("a.json", write_json(tmp_path / "a.json", [{"n": 1}]))], out="b1")
    assert first.structure == {"n": "BIGINT"}
    second, _ = ingest(tmp_path, [("b.json", write_json(tmp_path / "b.json", [{"n": 2.5}]))],
                         structure=first.structure, out="b2")
    assert second.structure == {"n": "DOUBLE"}
    third, out3 = ingest(tmp_path, [("c.json", write_json(tmp_path / "c.json", [{"n": 7}]))],
                         structure=second.structure, out="b3")
    assert third.structure == {"n": "DOUBLE"}
    assert read_back(out3, third).schema.field("n").type == pa.float64(), "written in the dataset's type"
    assert read_back(out3, third).to_pylist() == [{"n": 7.0}]


def test_varchar_then_bigint_conflicts_naming_the_field(tmp_path: Path) -> None:
    dataset: Structure = {"person": {"struct": {"age": "VARCHAR"}}}
    path = write_json(tmp_path / "b.json", [{"person": {"age": 42}}])
    failure = fail(tmp_path, [("b.json", path)], structure=dataset)
    assert failure.code == "SCHEMA_CONFLICT"
    assert failure.message == "field 'person.age' is VARCHAR in the dataset but BIGINT in this batch"


# ---------------------------------------------------------------------------------------------------------
# Record checks


def test_experience_event_rules_with_exact_row_numbers(tmp_path: Path) -> None:
    records = [
        event(1),                                                            # 1 fine
        {k: v for k, v in event(2).items() if k != "_id"},                   # 2 no _id
        event(3, _id=""),                                                    # 3 empty _id
        {k: v for k, v in event(4).items() if k != "timestamp"},             # 4 no timestamp
        event(5, timestamp="yesterday"),                                     # 5 unparseable timestamp
        {k: v for k, v in event(6).items() if k != "identityMap"},           # 6 no identity
        event(7, identityMap={"email": [{"id": "a@x"}, {"primary": False}]}),  # 7 item without id
        event(8, identityMap={"email": [{"id": "a@x", "primary": True}],
                              "ECID": [{"id": "1", "primary": True}]}),      # 8 two primaries
        event(9, identityMap={"email": [{"id": "  "}]}),                      # 9 blank id, so no identity
        event(10),                                                           # 10 fine
    ]
    path = write_json(tmp_path / "ee.json", records)
    failure = fail(tmp_path, [("ee.json", path)], record_class="experienceevent")
    assert failure.code == "ROW_VALIDATION"
    assert set(failure.rows) == {
        RowError("ee.json", 2, "ExperienceEvent record has no '_id'"),
        RowError("ee.json", 3, "ExperienceEvent record has no '_id'"),
        RowError("ee.json", 4, "ExperienceEvent record has no 'timestamp'"),
        RowError("ee.json", 5, "timestamp 'yesterday' is not an ISO 8601 date-time"),
        RowError("ee.json", 6, "ExperienceEvent record has no identity (no identityMap item with an id)"),
        RowError("ee.json", 7, "identityMap.email[1] has no id"),
        RowError("ee.json", 8, "identityMap has 2 identities marked primary; at most one may be"),
        RowError("ee.json", 9, "identityMap.email[0] has no id"),
        RowError("ee.json", 9, "ExperienceEvent record has no identity (no identityMap item with an id)"),
    }
    assert len(failure.rows) == 9
    assert [r.row for r in failure.rows] == sorted(r.row for r in failure.rows)
    assert failure.message.startswith("8 records failed validation (9 problems)")


def test_profile_rules(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [
        {"person": {"name": "a"}, "identityMap": {"CRMID": [{"id": "c1", "primary": True}]}},
        {"person": {"name": "b"}},
        {"person": {"name": "c"}, "identityMap": {}},
        {"person": {"name": "d"}, "identityMap": {"CRMID": [{"id": "c2"}], "email": [{"id": ""}]}},
    ]
    path = write_json(tmp_path / "crm.json", records, layout="ndjson")
    failure = fail(tmp_path, [("crm.json", path)], record_class="profile")
    assert failure.code == "ROW_VALIDATION"
    assert failure.rows == [
        RowError("crm.json", 2, "Profile record has no identity (no identityMap item with an id)"),
        RowError("crm.json", 3, "Profile record has no identity (no identityMap item with an id)"),
        RowError("crm.json", 4, "identityMap.email[0] has no id"),
    ]
    # a profile needs neither _id nor timestamp
    fine = [r for i, r in enumerate(records) if i == 0]
    result, _ = ingest(tmp_path, [("ok.json", write_json(tmp_path / "ok.json", fine))], record_class="profile")
    assert result.records_written == 1


def test_ad_hoc_data_gets_no_xdm_checks_but_timestamps_must_parse(tmp_path: Path) -> None:
    ok = write_json(tmp_path / "ok.json", [{"v": 1}, {"v": 2, "identityMap": {"x": [{"primary": True}]}}])
    result, _ = ingest(tmp_path, [("ok.json", ok)])
    assert result.records_written == 2
    bad = write_json(tmp_path / "bad.json", [{"timestamp": "2024-01-01T00:00:00Z"}, {"timestamp": "soon"}])
    failure = fail(tmp_path, [("bad.json", bad)])
    assert failure.rows == [RowError("bad.json", 2, "timestamp 'soon' is not an ISO 8601 date-time")]


def test_row_numbers_are_per_file_and_capped_at_100(tmp_path: Path) -> None:
    good = write_json(tmp_path / "good.json", [event(i) for i in range(5)])
    records = [event(i) for i in range(300)]
    for i in range(50, 300):
        records[i]["_id"] = ""
    bad = write_json(tmp_path / "bad.json", records, layout="ndjson")
    failure = fail(tmp_path, [("good.json", good), ("bad.json", bad)], record_class="experienceevent")
    assert failure.code == "ROW_VALIDATION"
    assert len(failure.rows) == 100
    assert failure.rows[0] == RowError("bad.json", 51, "ExperienceEvent record has no '_id'")
    assert [r.row for r in failure.rows] == list(range(51, 151))
    assert "250 records failed validation" in failure.message


def test_records_that_are_not_objects(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text('[{"a": 1}, 2, "x"]')
    failure = fail(tmp_path, [("mixed.json", path)])
    assert failure.code == "ROW_VALIDATION"
    assert failure.rows == [RowError("mixed.json", 2, "record is not a JSON object"),
                            RowError("mixed.json", 3, "record is not a JSON object")]


# ---------------------------------------------------------------------------------------------------------
# Malformed and empty input


def test_malformed_ndjson_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3 "b": 4}\n{"a": 5}\n')
    failure = fail(tmp_path, [("ok.json", write_json(tmp_path / "ok.json", [{"a": 0}])), ("broken.json", path)])
    assert failure.code == "MALFORMED_JSON"
    assert "'broken.json'" in failure.message
    assert "line 3" in failure.message
    assert "byte" in failure.message
    assert str(tmp_path) not in failure.message, "the path on disk is not shown"


def test_malformed_json_array_names_the_record(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"a": 1}, {"a": 2 "b": 3}]')
    failure = fail(tmp_path, [("broken.json", path)])
    assert failure.code == "MALFORMED_JSON"
    assert failure.message.startswith("Malformed JSON in file 'broken.json', record 2 (byte ")


@pytest.mark.parametrize("content", ["", "[]", "  \n\n", "[\n]\n"])
def test_empty_json_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(content)
    failure = fail(tmp_path, [("empty.json", path)])
    assert failure.code == "EMPTY_FILE"
    assert "'empty.json'" in failure.message


def test_no_files_and_unknown_formats(tmp_path: Path) -> None:
    assert fail(tmp_path, []).code == "EMPTY_FILE"
    path = write_json(tmp_path / "a.json", [{"a": 1}])
    failure = fail(tmp_path, [("a.json", path)], fmt="avro")
    assert failure.code == "UNSUPPORTED_FORMAT"
    assert "avro" in failure.message


def test_one_empty_file_fails_the_batch(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", [{"a": 1}])
    (tmp_path / "b.json").write_text("")
    failure = fail(tmp_path, [("a.json", path), ("b.json", tmp_path / "b.json")])
    assert failure.code == "EMPTY_FILE"
    assert "'b.json'" in failure.message


# ---------------------------------------------------------------------------------------------------------
# CSV


def test_csv_with_dotted_headers_and_an_identity_map_column(tmp_path: Path) -> None:
    path = tmp_path / "crm.csv"
    path.write_text(
        "crmId,person.name.firstName,person.name.lastName,person.age,homeAddress.postalCode,birthDate,"
        "timestamp,identityMap\n"
        'c1,Ann,Lee,31,01234,1990-02-03,2024-05-01T10:00:00Z,"{""CRMID"": [{""id"": ""c1"", ""primary"": true}]}"\n'
        'c2,Bob,,,,,2024-05-02 11:00:00,"{""email"": [{""id"": ""b@x.com""}]}"\n'
        'c3,,,,,,,"{""CRMID"": [{""id"": ""c3""}]}"\n'
    )
    result, out = ingest(tmp_path, [("crm.csv", path)], fmt="csv", record_class="profile")
    assert result.structure == {
        "crmId": "VARCHAR",
        "person": {"struct": {"name": {"struct": {"firstName": "VARCHAR", "lastName": "VARCHAR"}}, "age": "BIGINT"}},
        "homeAddress": {"struct": {"postalCode": "VARCHAR"}},
        "birthDate": "DATE",
        "timestamp": "TIMESTAMPTZ",
        "identityMap": {"map": {"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN",
                                                    "authenticatedState": "VARCHAR"}}}},
    }
    table = read_back(out, result)
    assert table.schema.field("identityMap").type == IDENTITY_MAP
    assert table.schema.field("person").type == pa.struct([
        ("name", pa.struct([("firstName", pa.string()), ("lastName", pa.string())])), ("age", pa.int64())
    ])
    rows = [as_python(r) for r in table.to_pylist()]
    assert rows[0] == {
        "crmId": "c1",
        "person": {"name": {"firstName": "Ann", "lastName": "Lee"}, "age": 31},
        "homeAddress": {"postalCode": "01234"},
        "birthDate": date(1990, 2, 3),
        "timestamp": datetime(2024, 5, 1, 10, tzinfo=UTC),
        "identityMap": {"CRMID": [{"id": "c1", "primary": True, "authenticatedState": None}]},
    }
    assert rows[1]["person"] == {"name": {"firstName": "Bob", "lastName": None}, "age": None}
    assert rows[1]["homeAddress"] is None, "a group whose cells are all empty is null"
    assert rows[2]["person"] is None
    assert rows[2]["timestamp"] is None


def test_csv_row_errors_count_data_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('name,identityMap\na,"{""e"": [{""id"": ""1""}]}"\nb,not json\nc,\n')
    failure = fail(tmp_path, [("p.csv", path)], fmt="csv", record_class="profile")
    assert failure.code == "ROW_VALIDATION"
    assert failure.rows == [
        RowError("p.csv", 2, "identityMap is not a JSON object"),
        RowError("p.csv", 2, "Profile record has no identity (no identityMap item with an id)"),
        RowError("p.csv", 3, "Profile record has no identity (no identityMap item with an id)"),
    ]


def test_csv_header_only_and_malformed(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("a,b\n")
    assert fail(tmp_path, [("h.csv", tmp_path / "h.csv")], fmt="csv").code == "EMPTY_FILE"
    (tmp_path / "q.csv").write_text('a,b\n1,"unterminated\n')
    failure = fail(tmp_path, [("q.csv", tmp_path / "q.csv")], fmt="csv")
    assert failure.code == "MALFORMED_CSV"
    assert "'q.csv'" in failure.message
    assert "unterminated quote" in failure.message
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3,4,5\n")
    failure = fail(tmp_path, [("r.csv", tmp_path / "r.csv")], fmt="csv")
    assert failure.code == "MALFORMED_CSV"
    assert "Line: 3" in failure.message and "Expected Number of Columns: 2 Found: 3" in failure.message
    assert str(tmp_path) not in failure.message


def test_csv_headers_that_clash(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("person,person.name\nx,y\n")
    failure = fail(tmp_path, [("c.csv", tmp_path / "c.csv")], fmt="csv")
    assert failure.code == "SCHEMA_CONFLICT"
    assert "person" in failure.message


# ---------------------------------------------------------------------------------------------------------
# Parquet


def profile_table(n: int) -> pa.Table:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    return pa.table({
        "person": pa.array([{"name": {"firstName": f"f{i}", "lastName": None}} for i in range(n)],
                           pa.struct([("name", pa.struct([("firstName", pa.string()), ("lastName", pa.string())]))])),
        "extSourceSystemAudit": pa.array([{"lastUpdatedDate": base + timedelta(hours=i)} for i in range(n)],
                                         pa.struct([("lastUpdatedDate", TS)])),
        "segmentMembership": pa.array(
            [[("ups", [(f"seg-{i}", {"status": "realized", "lastQualificationTime": base})])] if i % 2 else None
             for i in range(n)], SEGMENTS),
        "identityMap": pa.array(
            [[("CRMID", [{"id": f"c{i}", "primary": True, "authenticatedState": None}]),
              ("email", [{"id": f"e{i}@x.com", "primary": False, "authenticatedState": "authenticated"}])]
             for i in range(n)], IDENTITY_MAP),
        "points": pa.array(range(n), pa.int64()),
    })


def test_parquet_with_map_identity_map_round_trips_unchanged(tmp_path: Path) -> None:
    source = profile_table(7)
    path = tmp_path / "crm.parquet"
    pq.write_table(source, path)
    result, out = ingest(tmp_path, [("crm.parquet", path)], fmt="parquet", record_class="profile")
    table = read_back(out, result)
    assert table.schema.equals(source.schema, check_metadata=False)
    assert table.equals(source)
    assert {k: to_arrow_type(v) for k, v in result.structure.items()} == {f.name: f.type for f in source.schema}


def test_parquet_struct_identity_map_and_narrow_types_are_converted(tmp_path: Path) -> None:
    records = [
        {"_id": "1", "timestamp": "2024-05-01T10:00:00Z", "n": 1,
         "identityMap": {"email": [{"id": "a@x", "primary": True}], "ECID": None}},
        {"_id": "2", "timestamp": "2024-05-01T11:00:00+01:00", "n": 2,
         "identityMap": {"email": None, "ECID": [{"id": "9", "primary": False}]}},
    ]
    table = pa.Table.from_pylist(records, schema=pa.schema([
        ("_id", pa.string()), ("timestamp", pa.string()), ("n", pa.int16()),
        ("identityMap", pa.struct([
            ("email", pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))),
            ("ECID", pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))),
        ])),
    ]))
    path = tmp_path / "ev.parquet"
    pq.write_table(table, path)
    result, out = ingest(tmp_path, [("ev.parquet", path)], fmt="parquet", record_class="experienceevent")
    written = read_back(out, result)
    assert written.schema.field("identityMap").type == IDENTITY_MAP
    assert written.schema.field("timestamp").type == TS
    assert written.schema.field("n").type == pa.int64()
    rows = [as_python(r) for r in written.to_pylist()]
    assert rows[0]["identityMap"] == {"email": [{"id": "a@x", "primary": True, "authenticatedState": None}]}
    assert rows[1]["identityMap"] == {"ECID": [{"id": "9", "primary": False, "authenticatedState": None}]}
    assert rows[1]["timestamp"] == datetime(2024, 5, 1, 10, tzinfo=UTC)


def test_parquet_row_checks(tmp_path: Path) -> None:
    table = pa.table({
        "_id": ["a", None, "c"],
        "timestamp": pa.array([datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC), None], TS),
        "identityMap": pa.array([[("ECID", [{"id": "1", "primary": True, "authenticatedState": None}])],
                                 [("ECID", [{"id": "2", "primary": True, "authenticatedState": None}])],
                                 []], IDENTITY_MAP),
    })
    path = tmp_path / "ev.parquet"
    pq.write_table(table, path)
    failure = fail(tmp_path, [("ev.parquet", path)], fmt="parquet", record_class="experienceevent")
    assert failure.rows == [
        RowError("ev.parquet", 2, "ExperienceEvent record has no '_id'"),
        RowError("ev.parquet", 3, "ExperienceEvent record has no 'timestamp'"),
        RowError("ev.parquet", 3, "ExperienceEvent record has no identity (no identityMap item with an id)"),
    ]


def test_parquet_problems(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    failure = fail(tmp_path, [("junk.parquet", tmp_path / "junk.parquet")], fmt="parquet")
    assert failure.code == "MALFORMED_PARQUET"
    assert "'junk.parquet'" in failure.message
    pq.write_table(pa.table({"blob": pa.array([b"x"], pa.binary())}), tmp_path / "bin.parquet")
    failure = fail(tmp_path, [("bin.parquet", tmp_path / "bin.parquet")], fmt="parquet")
    assert failure.code == "SCHEMA_CONFLICT"
    assert "blob" in failure.message
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), tmp_path / "none.parquet")
    assert fail(tmp_path, [("none.parquet", tmp_path / "none.parquet")], fmt="parquet").code == "EMPTY_FILE"
    pq.write_table(pa.table({"identityMap": ["a@x.com"]}), tmp_path / "im.parquet")
    failure = fail(tmp_path, [("im.parquet", tmp_path / "im.parquet")], fmt="parquet", record_class="profile")
    assert failure.code == "SCHEMA_CONFLICT"
    assert "'identityMap'" in failure.message


def test_parquet_files_of_one_batch_merge(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"a": [0.5], "c": [True]}), tmp_path / "2.parquet")
    result, out = ingest(tmp_path, [("1.parquet", tmp_path / "1.parquet"), ("2.parquet", tmp_path / "2.parquet")],
                         fmt="parquet")
    assert result.structure == {"a": "DOUBLE", "b": "VARCHAR", "c": "BOOLEAN"}
    assert read_back(out, result).to_pylist() == [
        {"a": 1.0, "b": "x", "c": None}, {"a": 2.0, "b": "y", "c": None}, {"a": 0.5, "b": None, "c": True},
    ]
    pq.write_table(pa.table({"b": [1]}), tmp_path / "3.parquet")
    failure = fail(tmp_path, [("1.parquet", tmp_path / "1.parquet"), ("3.parquet", tmp_path / "3.parquet")],
                   fmt="parquet")
    assert failure.code == "SCHEMA_CONFLICT"
    assert "'b'" in failure.message and "'3.parquet'" in failure.message


# ---------------------------------------------------------------------------------------------------------
# Output files


def test_rotation_at_rows_per_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "e.json", [event(i) for i in range(10)], layout="ndjson")
    result, out = ingest(tmp_path, [("e.json", path)], record_class="experienceevent", rows_per_file=3, threads=1)
    assert [f.records for f in result.files] == [3, 3, 3, 1]
    table = read_back(out, result)
    assert table.column("_id").to_pylist() == [f"evt-{i}" for i in range(10)]


def test_rotation_of_a_larger_parquet_batch(tmp_path: Path) -> None:
    n = 300_000
    pq.write_table(pa.table({"i": pa.array(range(n), pa.int64())}), tmp_path / "big.parquet")
    result, out = ingest(tmp_path, [("big.parquet", tmp_path / "big.parquet")], fmt="parquet", rows_per_file=100_001)
    assert [f.records for f in result.files] == [100_001, 100_001, 99_998]
    assert read_back(out, result).column("i").to_pylist() == list(range(n))


def test_a_failure_while_writing_removes_what_was_written(tmp_path: Path) -> None:
    values = [1, 2, 3, 4, 2**64 - 1]  # the last does not fit BIGINT
    pq.write_table(pa.table({"u": pa.array(values, pa.uint64())}), tmp_path / "u.parquet")
    failure = fail(tmp_path, [("u.parquet", tmp_path / "u.parquet")], fmt="parquet", rows_per_file=1)
    assert failure.code == "INVALID_DATA"
    assert str(tmp_path) not in failure.message


def test_stale_parts_are_replaced(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for i in range(3):
        (out_dir / f"part-{i:05d}.parquet").write_bytes(b"stale")
    (out_dir / "keep.txt").write_text("not ours")
    path = write_json(tmp_path / "a.json", [{"a": 1}])
    result = ingest_files([("a.json", path)], "json", None, None, out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt", "part-00000.parquet"]
    assert pq.read_table(out_dir / result.files[0].name).to_pylist() == [{"a": 1}]


def test_argument_errors() -> None:
    with pytest.raises(ValueError):
        ingest_files([], "json", "lookup", None, Path("/nonexistent"))
    with pytest.raises(ValueError):
        ingest_files([], "json", None, None, Path("/nonexistent"), rows_per_file=0)


def test_timezone_offsets_do_not_depend_on_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    path = write_json(tmp_path / "t.json", [{"timestamp": "2024-05-01 10:00:00"}])
    result, out = ingest(tmp_path, [("t.json", path)])
    value = read_back(out, result).column("timestamp").to_pylist()[0]
    assert value == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)  # noqa: UP017


# ---------------------------------------------------------------------------------------------------------
# More JSON shapes


def test_identity_map_that_is_sometimes_a_string(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", [{"identityMap": {"e": [{"id": "1"}]}}, {"identityMap": "x"}])
    failure = fail(tmp_path, [("p.json", path)], record_class="profile")
    assert failure.code == "SCHEMA_CONFLICT"
    assert "field 'identityMap' is an object (first in 'p.json' record 1)" in failure.message
    assert "a string (first in 'p.json' record 2)" in failure.message


def test_identity_items_of_different_types_under_different_namespaces(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", [{"identityMap": {"e": [{"id": "1", "primary": True}]}},
                                            {"identityMap": {"f": [{"id": "2", "primary": "yes"}]}}])
    failure = fail(tmp_path, [("p.json", path)], record_class="profile")
    assert failure.code == "SCHEMA_CONFLICT"
    assert "'identityMap.primary'" in failure.message


def test_segment_membership_from_json(tmp_path: Path) -> None:
    records = [
        {"identityMap": {"e": [{"id": "1"}]},
         "segmentMembership": {"ups": {"s1": {"status": "realized", "lastQualificationTime": "2024-01-01T00:00:00Z",
                                              "validUntil": "2024-02-01"}}}},
        {"identityMap": {"e": [{"id": "2"}]}, "segmentMembership": {"ups": {}}},
        {"identityMap": {"e": [{"id": "3"}]}, "segmentMembership": {"ups": {"s2": {"status": "exited"}}}},
    ]
    result, out = ingest(tmp_path, [("p.json", write_json(tmp_path / "p.json", records))], record_class="profile")
    assert result.structure["segmentMembership"] == {"map": {"map": {"struct": {
        "status": "VARCHAR", "lastQualificationTime": "TIMESTAMPTZ", "validUntil": "VARCHAR"}}}}
    rows = [as_python(r["segmentMembership"]) for r in read_back(out, result).to_pylist()]
    assert rows[0] == {"ups": {"s1": {"status": "realized", "lastQualificationTime": datetime(2024, 1, 1, tzinfo=UTC),
                                      "validUntil": "2024-02-01"}}}
    assert rows[1] in ({"ups": []}, {"ups": {}})
    assert rows[2] == {"ups": {"s2": {"status": "exited", "lastQualificationTime": None, "validUntil": None}}}

    bad = [{"identityMap": {"e": [{"id": "1"}]},
            "segmentMembership": {"ups": {"s1": {"status": "realized", "lastQualificationTime": "nope"}}}}]
    failure = fail(tmp_path, [("bad.json", write_json(tmp_path / "bad.json", bad))], record_class="profile")
    assert failure.rows == [
        RowError("bad.json", 1, "segmentMembership lastQualificationTime 'nope' is not an ISO 8601 date-time")
    ]
    shape = [{"segmentMembership": {"ups": "x"}}]
    failure = fail(tmp_path, [("shape.json", write_json(tmp_path / "shape.json", shape))])
    assert failure.code == "SCHEMA_CONFLICT"
    assert "'segmentMembership'" in failure.message


# ---------------------------------------------------------------------------------------------------------
# What openprofile's own generator writes ingests as is


def test_generated_datasets_ingest_unchanged(tmp_path: Path) -> None:
    from openprofile.generate import generate_dataset

    data = generate_dataset(tmp_path / "gen", 60, seed=7, events_per_profile=5)
    for dataset, record_class in (("crm", "profile"), ("loyalty", "profile"), ("events", "experienceevent")):
        files = data.files_for(dataset)
        source = pa.concat_tables([pq.read_table(f.path) for f in files])
        result, out = ingest(tmp_path, [(f.path.name, f.path) for f in files], fmt="parquet",
                             record_class=record_class, out=f"out-{dataset}")
        assert result.records_written == source.num_rows > 0
        written = read_back(out, result)
        assert written.schema.equals(source.schema, check_metadata=False), dataset
        assert written.equals(source), dataset


def test_identity_items_that_are_empty_objects(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [{"identityMap": {"e": [{}]}}, {"identityMap": {}},
                                     {"identityMap": {"e": [{"id": "x"}]}}]
    failure = fail(tmp_path, [("p.json", write_json(tmp_path / "p.json", records))], record_class="profile")
    assert failure.code == "ROW_VALIDATION"
    assert failure.rows == [
        RowError("p.json", 1, "identityMap.e[0] has no id"),
        RowError("p.json", 1, "Profile record has no identity (no identityMap item with an id)"),
        RowError("p.json", 2, "Profile record has no identity (no identityMap item with an id)"),
    ]
    result, out = ingest(tmp_path, [("ok.json", write_json(tmp_path / "ok.json", records[1:]))])
    assert result.structure["identityMap"] == {"map": {"list": {"struct": {
        "id": "VARCHAR", "primary": "BOOLEAN", "authenticatedState": "VARCHAR"}}}}
    assert [as_python(r["identityMap"]) for r in read_back(out, result).to_pylist()] in (
        [[], {"e": [{"id": "x", "primary": None, "authenticatedState": None}]}],
        [{}, {"e": [{"id": "x", "primary": None, "authenticatedState": None}]}],
    )


@pytest.mark.parametrize("blank", ["", " ", "\u00a0", "\t "])
def test_blank_ids_are_missing_ids(tmp_path: Path, blank: str) -> None:
    records = [event(1), event(2, _id=blank, identityMap={"email": [{"id": blank, "primary": True}]}),
               event(3, identityMap={"email": [{"id": "é@x"}], "ECID": [None]})]
    failure = fail(tmp_path, [("e.json", write_json(tmp_path / "e.json", records))], record_class="experienceevent")
    problems = {(r.row, r.reason) for r in failure.rows}
    assert (2, "identityMap.email[0] has no id") in problems
    assert (2, "ExperienceEvent record has no identity (no identityMap item with an id)") in problems
    assert (3, "identityMap.ECID[0] has no id") in problems
    assert all(r.row != 1 for r in failure.rows)
    assert (2, "ExperienceEvent record has no '_id'") in problems


def test_ids_that_only_look_suspect_pass(tmp_path: Path) -> None:
    records = [event(1, _id="été-1", identityMap={"email": [{"id": "élodie@example.com", "primary": True}]})]
    result, out = ingest(tmp_path, [("e.json", write_json(tmp_path / "e.json", records))],
                         record_class="experienceevent")
    assert read_back(out, result).column("_id").to_pylist() == ["été-1"]
