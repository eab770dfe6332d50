"""The ``fields`` projection (`openprofile.engine.fields`): parsing, checking, and the SQL run on DuckDB."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
import pytest

from openprofile.engine.fields import UnknownField, check_fields, parse_fields, project_sql, project_structure
from openprofile.engine.structure import Structure, to_arrow_schema, to_duckdb_type

STRUCTURE: Structure = {
    "identityMap": {"map": {"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN"}}}},
    "person": {"struct": {
        "name": {"struct": {"firstName": "VARCHAR", "middleName": "VARCHAR", "lastName": "VARCHAR"}},
        "gender": "VARCHAR",
        "birthDate": "DATE",
    }},
    "personalEmail": {"struct": {"address": "VARCHAR", "status": "VARCHAR"}},
    "identities": {"list": {"struct": {"id": "VARCHAR", "namespace": {"struct": {"code": "VARCHAR"}},
                                       "primary": "BOOLEAN"}}},
    "segmentMembership": {"map": {"map": {"struct": {"status": "VARCHAR", "version": "BIGINT"}}}},
    "orders": {"list": {"list": {"struct": {"sku": "VARCHAR", "qty": "BIGINT"}}}},
    "loyalty points": "BIGINT",
}

ROWS: list[dict[str, Any]] = [
    {
        "identityMap": {"email": [{"id": "ann@x.com", "primary": True}], "ecid": [{"id": "123", "primary": False}]},
        "person": {"name": {"firstName": "Ann", "middleName": None, "lastName": "Lee"}, "gender": "female"},
        "personalEmail": {"address": "ann@x.com", "status": "active"},
        "identities": [{"id": "123", "namespace": {"code": "ecid"}, "primary": False},
                       {"id": "ann@x.com", "namespace": {"code": "email"}, "primary": True}],
        "segmentMembership": {"ups": {"s1": {"status": "realized", "version": 2}}},
        "orders": [[{"sku": "a", "qty": 1}], [], None],
        "loyalty points": 7,
    },
    {
        "identityMap": None,
        "person": {"name": None, "gender": "male"},
        "personalEmail": None,
        "identities": [],
        "segmentMembership": None,
        "orders": None,
        "loyalty points": None,
    },
]


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    rows = [{**row, "_group": f"g{i}"} for i, row in enumerate(ROWS)]
    schema = to_arrow_schema(STRUCTURE).append(pa.field("_group", pa.string()))
    connection.register("profiles", pa.Table.from_pylist(rows, schema=schema))
    return connection


def project(con: duckdb.DuckDBPyConnection, fields: str | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows (maps as dicts) of the projection, checking its types against `project_structure`."""
    paths = parse_fields(fields)
    items = project_sql(paths, STRUCTURE)
    result = con.sql(f"SELECT {', '.join(items)} FROM profiles ORDER BY _group")
    want = project_structure(paths, STRUCTURE)
    probe = ", ".join(f"CAST(NULL AS {to_duckdb_type(node)}) AS c{i}" for i, node in enumerate(want.values()))
    assert [str(t) for t in result.types] == [str(t) for t in con.sql(f"SELECT {probe}").types]
    assert result.columns == list(want)
    arrow = result.to_arrow_table()
    return arrow.column_names, [
        {n: _py(r[n], arrow.schema.field(n).type) for n in arrow.column_names} for r in arrow.to_pylist()
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


# --------------------------------------------------------------------------------------------------
# parse_fields


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ("", None),
    (" , ,", None),
    ([], None),
    ("personalEmail,person.name,person.gender", ["personalEmail", "person.name", "person.gender"]),
    ("_id, _experience", ["_id", "_experience"]),  # Adobe's example with a space
    ("a,,b, a ,b", ["a", "b"]),
    (["a,b", " c", "a"], ["a", "b", "c"]),
])
def test_parse_fields(value: str | list[str] | None, expected: list[str] | None) -> None:
    assert parse_fields(value) == expected


# --------------------------------------------------------------------------------------------------
# check_fields


def test_check_fields_accepts_every_path_of_the_structure() -> None:
    check_fields(["person", "person.name", "person.name.firstName", "identities.namespace.code", "identityMap.id",
                  "segmentMembership.status", "orders.sku", "loyalty points"], STRUCTURE)


@pytest.mark.parametrize("path", [
    "nope", "person.nickname", "person.name.firstName.x", "Person", "identityMap.email", "segmentMembership.ups",
    "person.", ".person", "person(name,gender)",
])
def test_unknown_paths_raise_naming_the_path(path: str) -> None:
    with pytest.raises(UnknownField) as info:
        check_fields(["person", path], STRUCTURE)
    assert info.value.path == path
    assert path in str(info.value)
    with pytest.raises(UnknownField):
        project_sql([path], STRUCTURE)
    with pytest.raises(UnknownField):
        project_structure([path], STRUCTURE)


# --------------------------------------------------------------------------------------------------
# project_sql, run on DuckDB


def test_aep_example_identities_id_and_personal_email_address(con: duckdb.DuckDBPyConnection) -> None:
    columns, rows = project(con, "identities.id,personalEmail.address")
    assert columns == ["personalEmail", "identities"]  # structure order; nothing else
    assert rows[0] == {"personalEmail": {"address": "ann@x.com"}, "identities": [{"id": "123"}, {"id": "ann@x.com"}]}
    assert rows[1] == {"personalEmail": None, "identities": []}


def test_aep_example_identity_map(con: duckdb.DuckDBPyConnection) -> None:
    columns, rows = project(con, "identityMap")
    assert columns == ["identityMap"]
    assert rows[0]["identityMap"] == ROWS[0]["identityMap"]
    assert rows[1]["identityMap"] is None


def test_aep_example_first_and_last_name(con: duckdb.DuckDBPyConnection) -> None:
    columns, rows = project(con, "person.name.firstName,person.name.lastName")
    assert columns == ["person"]
    assert rows[0] == {"person": {"name": {"firstName": "Ann", "lastName": "Lee"}}}
    assert rows[1] == {"person": None}  # nothing selected has a value: NULL, not {"name": null}


def test_parent_path_selects_the_whole_subtree(con: duckdb.DuckDBPyConnection) -> None:
    _, rows = project(con, "person")
    assert rows[0]["person"] == {**ROWS[0]["person"], "birthDate": None}
    _, again = project(con, "person.name.firstName, person ,person.gender")
    assert again == rows


def test_sibling_paths_keep_structure_order(con: duckdb.DuckDBPyConnection) -> None:
    _, rows = project(con, "person.gender,person.name.firstName")
    assert list(rows[0]["person"]) == ["name", "gender"]
    assert rows[0]["person"] == {"name": {"firstName": "Ann"}, "gender": "female"}
    assert rows[1]["person"] == {"name": None, "gender": "male"}


def test_paths_through_maps_and_nested_lists(con: duckdb.DuckDBPyConnection) -> None:
    _, rows = project(con, "identityMap.id,segmentMembership.status,orders.qty,identities.namespace.code")
    assert rows[0]["identityMap"] == {"email": [{"id": "ann@x.com"}], "ecid": [{"id": "123"}]}
    assert rows[0]["segmentMembership"] == {"ups": {"s1": {"status": "realized"}}}
    assert rows[0]["orders"] == [[{"qty": 1}], [], None]
    assert rows[0]["identities"] == [{"namespace": {"code": "ecid"}}, {"namespace": {"code": "email"}}]
    assert rows[1] == {"identityMap": None, "identities": [], "segmentMembership": None, "orders": None}


def test_all_fields_and_awkward_names(con: duckdb.DuckDBPyConnection) -> None:
    columns, rows = project(con, None)
    assert columns == list(STRUCTURE)
    _, rows = project(con, "loyalty points")
    assert rows == [{"loyalty points": 7}, {"loyalty points": None}]


def test_source_alias_or_expressions() -> None:
    assert project_sql(["person.gender"], STRUCTURE, source="m")[0].startswith('CASE WHEN struct_extract(m."person"')
    items = project_sql(["loyalty points", "personalEmail"], STRUCTURE, source={"loyalty points": "42"})
    assert items == ['"personalEmail" AS "personalEmail"', '42 AS "loyalty points"']
    assert project_sql(None, {"a": "BIGINT"}, source="t") == ['t."a" AS "a"']
