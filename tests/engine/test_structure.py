"""Dataset storage structures: merging, DuckDB/Arrow types, observableSchema, field paths."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openprofile.engine.structure import (
    Structure,
    StructureConflict,
    TypeNode,
    check_structure,
    field_paths,
    from_arrow_schema,
    from_arrow_type,
    merge_structures,
    to_arrow_schema,
    to_arrow_type,
    to_duckdb_type,
    to_observable_schema,
)

IDENTITY_MAP: TypeNode = {
    "map": {"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN", "authenticatedState": "VARCHAR"}}}
}


# ---------------------------------------------------------------------------------------------------------
# merge_structures


def test_merge_from_nothing_copies_the_incoming_structure() -> None:
    incoming: Structure = {"a": "BIGINT", "p": {"struct": {"x": "VARCHAR"}}}
    merged = merge_structures(None, incoming)
    assert merged == incoming
    node = merged["p"]
    assert isinstance(node, dict)
    node["struct"]["y"] = "BIGINT"
    assert incoming == {"a": "BIGINT", "p": {"struct": {"x": "VARCHAR"}}}, "the argument was modified"


def test_merge_adds_columns_and_nested_fields_in_order() -> None:
    current: Structure = {
        "id": "VARCHAR",
        "person": {"struct": {"name": {"struct": {"first": "VARCHAR"}}}},
        "items": {"list": {"struct": {"sku": "VARCHAR"}}},
        "m": {"map": {"struct": {"a": "BIGINT"}}},
    }
    incoming: Structure = {
        "extra": "BOOLEAN",
        "person": {"struct": {"name": {"struct": {"last": "VARCHAR"}}, "age": "BIGINT"}},
        "items": {"list": {"struct": {"qty": "BIGINT", "sku": "VARCHAR"}}},
        "m": {"map": {"struct": {"b": "DATE"}}},
    }
    merged = merge_structures(current, incoming)
    assert list(merged) == ["id", "person", "items", "m", "extra"]
    assert merged["person"] == {
        "struct": {"name": {"struct": {"first": "VARCHAR", "last": "VARCHAR"}}, "age": "BIGINT"}
    }
    assert merged["items"] == {"list": {"struct": {"sku": "VARCHAR", "qty": "BIGINT"}}}
    assert merged["m"] == {"map": {"struct": {"a": "BIGINT", "b": "DATE"}}}
    assert current["person"] == {"struct": {"name": {"struct": {"first": "VARCHAR"}}}}, "argument modified"


def test_bigint_and_double_widen_to_double_both_ways() -> None:
    assert merge_structures({"n": "BIGINT"}, {"n": "DOUBLE"}) == {"n": "DOUBLE"}
    assert merge_structures({"n": "DOUBLE"}, {"n": "BIGINT"}) == {"n": "DOUBLE"}
    nested = merge_structures({"l": {"list": "BIGINT"}}, {"l": {"list": "DOUBLE"}})
    assert nested == {"l": {"list": "DOUBLE"}}


@pytest.mark.parametrize(
    ("current", "incoming", "path", "existing", "new"),
    [
        ({"age": "VARCHAR"}, {"age": "BIGINT"}, "age", "VARCHAR", "BIGINT"),
        ({"person": {"struct": {"age": "BIGINT"}}}, {"person": {"struct": {"age": "VARCHAR"}}},
         "person.age", "BIGINT", "VARCHAR"),
        ({"p": {"struct": {"a": "BIGINT"}}}, {"p": "VARCHAR"}, "p", "STRUCT", "VARCHAR"),
        ({"t": "TIMESTAMPTZ"}, {"t": "DATE"}, "t", "TIMESTAMPTZ", "DATE"),
        ({"l": {"list": {"struct": {"q": "BOOLEAN"}}}}, {"l": {"list": {"struct": {"q": "BIGINT"}}}},
         "l.q", "BOOLEAN", "BIGINT"),
        ({"m": {"map": "BIGINT"}}, {"m": {"struct": {"k": "BIGINT"}}}, "m", "MAP<BIGINT>", "STRUCT"),
    ],
)
def test_other_mismatches_conflict_with_the_path(current: Structure, incoming: Structure, path: str,
                                                  existing: str, new: str) -> None:
    with pytest.raises(StructureConflict) as caught:
        merge_structures(current, incoming)
    assert (caught.value.path, caught.value.existing, caught.value.incoming) == (path, existing, new)
    assert str(caught.value) == f"field '{path}' is {existing} in the dataset but {new} in this batch"


def test_the_readable_message() -> None:
    with pytest.raises(StructureConflict, match=r"^field 'person\.age' is BIGINT in the dataset but VARCHAR in this "
                                                r"batch$"):
        merge_structures({"person": {"struct": {"age": "BIGINT"}}}, {"person": {"struct": {"age": "VARCHAR"}}})


def test_names_that_differ_only_in_case_conflict() -> None:
    with pytest.raises(StructureConflict, match="letter case") as caught:
        merge_structures({"person": {"struct": {"email": "VARCHAR"}}}, {"person": {"struct": {"Email": "VARCHAR"}}})
    assert caught.value.path == "person.Email"


def test_malformed_structures_are_refused() -> None:
    bad: object
    for bad in ({"a": "INTEGER"}, {"a": {"struct": {}}}, {"a": {"list": "BIGINT", "map": "BIGINT"}}, {"": "BIGINT"},
                {"a": "BIGINT", "A": "BIGINT"}, ["a"]):
        with pytest.raises(ValueError):
            check_structure(bad)
    with pytest.raises(ValueError):
        merge_structures({"a": "BIGINT"}, {"b": "FLOAT"})


# --- properties -------------------------------------------------------------------------------------------

_NAMES = st.sampled_from(["a", "b", "c", "id", "name", "primary"])
_SCALARS = st.sampled_from(["VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "DATE", "TIMESTAMPTZ"])


def _nodes() -> st.SearchStrategy[Any]:
    return st.recursive(
        _SCALARS,
        lambda children: st.one_of(
            st.dictionaries(_NAMES, children, min_size=1, max_size=3).map(lambda f: {"struct": f}),
            children.map(lambda c: {"list": c}),
            children.map(lambda c: {"map": c}),
        ),
        max_leaves=8,
    )


_STRUCTURES = st.dictionaries(_NAMES, _nodes(), min_size=1, max_size=4)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_STRUCTURES)
def test_merging_is_idempotent(a: Structure) -> None:
    assert merge_structures(a, a) == a
    assert merge_structures(None, a) == a


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_STRUCTURES, _STRUCTURES)
def test_a_merge_keeps_every_path_and_absorbs_its_inputs(a: Structure, b: Structure) -> None:
    try:
        merged = merge_structures(a, b)
    except StructureConflict as conflict:
        assert conflict.path in set(field_paths(a)) & set(field_paths(b))
        with pytest.raises(StructureConflict):  # merging the other way round conflicts too
            merge_structures(b, a)
        return
    paths = set(field_paths(merged))
    assert set(field_paths(a)) <= paths
    assert set(field_paths(b)) <= paths
    assert paths == set(field_paths(a)) | set(field_paths(b))
    assert merge_structures(merged, a) == merged
    assert merge_structures(merged, b) == merged
    assert list(merged)[: len(a)] == list(a)
    json.dumps(merged)  # stays JSON-serialisable
    check_structure(merged)


# ---------------------------------------------------------------------------------------------------------
# Types


def test_to_duckdb_type_quotes_names_and_is_accepted_by_duckdb() -> None:
    assert to_duckdb_type({"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN"}}}) == (
        'STRUCT("id" VARCHAR, "primary" BOOLEAN)[]'
    )
    assert to_duckdb_type(IDENTITY_MAP) == (
        'MAP(VARCHAR, STRUCT("id" VARCHAR, "primary" BOOLEAN, "authenticatedState" VARCHAR)[])'
    )
    assert to_duckdb_type({"struct": {'we"ird name': "DATE"}}) == 'STRUCT("we""ird name" DATE)'
    con = duckdb.connect()
    try:
        for node in (IDENTITY_MAP, {"struct": {'we"ird name': "DATE", "order": {"map": "TIMESTAMPTZ"}}}):
            names = con.execute(f"SELECT CAST(NULL AS {to_duckdb_type(node)}) AS x").fetchall()
            assert names == [(None,)]
    finally:
        con.close()


def test_arrow_round_trip() -> None:
    structure: Structure = {
        "s": "VARCHAR", "i": "BIGINT", "d": "DOUBLE", "b": "BOOLEAN", "day": "DATE", "t": "TIMESTAMPTZ",
        "identityMap": IDENTITY_MAP,
        "segmentMembership": {
            "map": {"map": {"struct": {"status": "VARCHAR", "lastQualificationTime": "TIMESTAMPTZ"}}}
        },
        "p": {"struct": {"q": {"list": "BIGINT"}}},
    }
    schema = to_arrow_schema(structure)
    assert schema.field("t").type == pa.timestamp("us", tz="UTC")
    assert schema.field("identityMap").type == pa.map_(
        pa.string(),
        pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_()), ("authenticatedState", pa.string())])),
    )
    assert from_arrow_schema(schema) == structure


@pytest.mark.parametrize(
    ("arrow", "node"),
    [
        (pa.int8(), "BIGINT"), (pa.int32(), "BIGINT"), (pa.uint64(), "BIGINT"), (pa.float32(), "DOUBLE"),
        (pa.decimal128(10, 2), "DOUBLE"), (pa.large_string(), "VARCHAR"), (pa.null(), "VARCHAR"),
        (pa.dictionary(pa.int32(), pa.string()), "VARCHAR"), (pa.date32(), "DATE"),
        (pa.timestamp("ns"), "TIMESTAMPTZ"), (pa.timestamp("ms", tz="Europe/Paris"), "TIMESTAMPTZ"),
        (pa.large_list(pa.int16()), {"list": "BIGINT"}), (pa.list_(pa.bool_(), 3), {"list": "BOOLEAN"}),
        (pa.map_(pa.large_string(), pa.float64()), {"map": "DOUBLE"}),
        (pa.struct([("a", pa.string())]), {"struct": {"a": "VARCHAR"}}),
    ],
)
def test_from_arrow_type(arrow: pa.DataType, node: TypeNode) -> None:
    assert from_arrow_type(arrow) == node


@pytest.mark.parametrize(
    "arrow",
    [pa.binary(), pa.time64("us"), pa.duration("s"), pa.map_(pa.int64(), pa.string()), pa.struct([])],
)
def test_unsupported_arrow_types_name_the_path(arrow: pa.DataType) -> None:
    schema = pa.schema([("outer", pa.struct([("inner", arrow)]))])
    with pytest.raises(StructureConflict) as caught:
        from_arrow_schema(schema)
    assert caught.value.path == "outer.inner"
    assert "outer.inner" in str(caught.value)


def test_to_arrow_type_of_each_scalar() -> None:
    assert [str(to_arrow_type(s)) for s in ("VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "DATE", "TIMESTAMPTZ")] == [
        "string", "int64", "double", "bool", "date32[day]", "timestamp[us, tz=UTC]",
    ]


# ---------------------------------------------------------------------------------------------------------
# AEP views


def test_observable_schema() -> None:
    structure: Structure = {
        "name": "VARCHAR", "n": "BIGINT", "x": "DOUBLE", "ok": "BOOLEAN", "born": "DATE", "timestamp": "TIMESTAMPTZ",
        "tags": {"list": "VARCHAR"},
        "identityMap": IDENTITY_MAP,
        "person": {"struct": {"age": "BIGINT"}},
    }
    assert to_observable_schema(structure) == {
        "type": "object",
        "meta:xdmType": "object",
        "properties": {
            "name": {"type": "string"},
            "n": {"type": "integer", "meta:xdmType": "long"},
            "x": {"type": "number"},
            "ok": {"type": "boolean"},
            "born": {"type": "string", "format": "date"},
            "timestamp": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "identityMap": {
                "type": "object",
                "meta:xdmType": "map",
                "additionalProperties": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "meta:xdmType": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "primary": {"type": "boolean"},
                            "authenticatedState": {"type": "string"},
                        },
                    },
                },
            },
            "person": {"type": "object", "meta:xdmType": "object",
                       "properties": {"age": {"type": "integer", "meta:xdmType": "long"}}},
        },
    }


def test_field_paths() -> None:
    structure: Structure = {
        "_id": "VARCHAR",
        "person": {"struct": {"name": {"struct": {"first": "VARCHAR", "last": "VARCHAR"}}, "age": "BIGINT"}},
        "productListItems": {"list": {"struct": {"SKU": "VARCHAR", "qty": "BIGINT"}}},
        "identityMap": IDENTITY_MAP,
        "segmentMembership": {"map": {"map": {"struct": {"status": "VARCHAR"}}}},
    }
    assert field_paths(structure) == [
        "_id",
        "person", "person.name", "person.name.first", "person.name.last", "person.age",
        "productListItems", "productListItems.SKU", "productListItems.qty",
        "identityMap", "identityMap.id", "identityMap.primary", "identityMap.authenticatedState",
        "segmentMembership", "segmentMembership.status",
    ]
