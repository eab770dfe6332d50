"""The merge's ranking of a group's fragments: most groups are ranked by (effective time, ingestion time) packed
into one number; a group where two fragments tie on it is ranked by the whole precedence key. Both kinds of
group in one query, and the extreme timestamps."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from openprofile.engine.merge import FragmentSource, MergeRule, merge_sql
from openprofile.engine.structure import Structure

STRUCTURE: Structure = {
    "name": "VARCHAR",
    "extSourceSystemAudit": {"struct": {"lastUpdatedDate": "TIMESTAMPTZ"}},
}


def merged(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, int, str, str, str | None]],
           rule: MergeRule) -> dict[str, Any]:
    """rows: (group, dataset, ingest ms, batch, name, lastUpdatedDate); one source per dataset."""
    sources = []
    for dataset in sorted({r[1] for r in rows}):
        values = ", ".join(
            f"('{g}', '{d}', {i}, '{b}', '{n}', {f'TIMESTAMPTZ {chr(39)}{t}{chr(39)}' if t else 'NULL::TIMESTAMPTZ'})"
            for g, d, i, b, n, t in rows if d == dataset)
        con.execute(f"""CREATE OR REPLACE TABLE src_{dataset} AS
            SELECT _group, _dataset, _ingest_ms, _batch, name, {{'lastUpdatedDate': t}} AS extSourceSystemAudit
            FROM (VALUES {values}) v(_group, _dataset, _ingest_ms, _batch, name, t)""")
        sources.append(FragmentSource(dataset, f"src_{dataset}", STRUCTURE))
    return dict(con.execute(f"SELECT _group, name FROM ({merge_sql(sources, rule)})").fetchall())


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def test_tied_and_untied_groups_in_one_merge(con: duckdb.DuckDBPyConnection) -> None:
    rows = [
        # untied: the later effective time wins, whatever the dataset
        ("g1", "a", 1000, "b1", "newer", "2024-01-02T00:00:00Z"),
        ("g1", "b", 1000, "b1", "older", "2024-01-01T00:00:00Z"),
        # tied on effective and ingestion time: the greater dataset id wins
        ("g2", "a", 1000, "b1", "from a", None),
        ("g2", "b", 1000, "b1", "from b", None),
        # tied, same dataset: the greater batch id wins
        ("g3", "a", 2000, "b1", "batch 1", "2024-01-01T00:00:00Z"),
        ("g3", "a", 2000, "b2", "batch 2", "2024-01-01T00:00:00Z"),
        # tied on effective time only: the later ingestion wins
        ("g4", "a", 1000, "b1", "ingested first", "2024-01-01T00:00:00Z"),
        ("g4", "b", 2000, "b1", "ingested later", "2024-01-01T00:00:00Z"),
    ]
    assert merged(con, rows, MergeRule("timestampOrdered")) == {
        "g1": "newer", "g2": "from b", "g3": "batch 2", "g4": "ingested later"}


def test_dataset_precedence_ties_within_a_dataset(con: duckdb.DuckDBPyConnection) -> None:
    rows = [
        ("g1", "a", 1000, "b1", "a first", None),
        ("g1", "a", 1000, "b2", "a second", None),  # same dataset and time: the batch decides
        ("g1", "b", 3000, "b1", "b", None),
        ("g2", "b", 1000, "b1", "b only", None),
    ]
    assert merged(con, rows, MergeRule("dataSetPrecedence", ("a", "b"))) == {"g1": "a second", "g2": "b only"}


def test_extreme_effective_times(con: duckdb.DuckDBPyConnection) -> None:
    rows = [
        ("g1", "a", 1000, "b1", "ancient", "0001-01-01T00:00:00Z"),
        ("g1", "b", 1000, "b1", "far future", "294000-01-01T00:00:00Z"),
        ("g1", "c", 1000, "b1", "now", "2024-01-01T00:00:00Z"),
        ("g2", "a", 1000, "b1", "ancient", "0001-01-01T00:00:00Z"),
        ("g2", "b", 1000, "b1", "ingest time", None),
    ]
    assert merged(con, rows, MergeRule("timestampOrdered")) == {"g1": "far future", "g2": "ingest time"}
