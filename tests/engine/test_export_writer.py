"""The export's writing side (`openprofile.engine.export`): profile rows streamed into Parquet files, each row's
events attached from a second, position-ordered stream, and a stitched profile's cluster identities."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openprofile.engine import export
from openprofile.engine.export import (
    EventPlan,
    ExportPart,
    ExportPlan,
    WrittenBatch,
    export_query,
    with_cluster_identities,
    write_parquet,
)
from openprofile.engine.merge import FragmentSource, MergeRule
from openprofile.engine.structure import Structure, TypeNode

PROFILES = ("SELECT x, __ns FROM (VALUES ('a', 'email'), ('b', 'crmid'), ('c', 'email'), ('d', 'email'), "
            "('e', 'crmid')) t(x, __ns) ORDER BY x")
# Events come in no order: the writer orders them by every column but `__event` (position, then `__t`).
EVENTS = ("SELECT pos AS __pos, n AS __t, {'id': id, 'n': n} AS __event FROM (VALUES (4, 'e6', 6), (1, 'e2', 2), "
          "(3, 'e3', 3), (4, 'e4', 4), (1, 'e1', 1), (4, 'e5', 5)) t(pos, id, n)")


def rows(out: Path, written: WrittenBatch) -> list[dict[str, Any]]:
    return [r for name, _, _ in written.files for r in pq.read_table(out / name).to_pylist()]


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


@pytest.mark.parametrize("bucket_rows", [1, 3, 1000])
@pytest.mark.parametrize("batch_rows", [1, 2, 3, 100])
def test_events_attach_to_their_profile_rows(conn: duckdb.DuckDBPyConnection, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, batch_rows: int,
                                             bucket_rows: int) -> None:
    # Small batches on both streams: a profile batch's events end in the middle of an event batch, or later;
    # small buckets: a profile batch's events span several sorted buckets.
    monkeypatch.setattr(export, "BATCH_ROWS", batch_rows)
    monkeypatch.setattr(export, "EVENT_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(export, "EVENT_BUCKET_ROWS", bucket_rows)
    written = write_parquet(conn, ExportPart(PROFILES, EVENTS), tmp_path, rows_per_file=1000)
    got = {r["x"]: r["timeSeriesEvents"] for r in rows(tmp_path, written)}
    assert got == {
        "a": [{"id": "e1", "n": 1}, {"id": "e2", "n": 2}],
        "b": None,  # no event: NULL, not []
        "c": [{"id": "e3", "n": 3}],
        "d": [{"id": "e4", "n": 4}, {"id": "e5", "n": 5}, {"id": "e6", "n": 6}],
        "e": None,
    }
    assert written.rows == 5 and sum(f[2] for f in written.files) == 5
    assert dict(written.by_namespace) == {"email": 3, "crmid": 2}
    assert written.schema is not None and written.schema.names == ["x", "timeSeriesEvents"]
    assert written.schema.field("timeSeriesEvents").type == pa.list_(
        pa.field("l", pa.struct([pa.field("id", pa.string()), pa.field("n", pa.int32())])))


def test_setup_runs_first_and_cleanup_last(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    query = ExportPart("SELECT * FROM t ORDER BY x", setup=("CREATE TABLE t AS SELECT range AS x FROM range(3)",),
                        cleanup=("DROP TABLE t",))
    written = write_parquet(conn, query, tmp_path, rows_per_file=10)
    assert [r["x"] for r in rows(tmp_path, written)] == [0, 1, 2]
    assert conn.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchall() == [(0,)]


def test_files_hold_at_most_rows_per_file(conn: duckdb.DuckDBPyConnection, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "BATCH_ROWS", 4)
    written = write_parquet(conn, "SELECT range AS x FROM range(23)", tmp_path, rows_per_file=5)
    assert sorted(r["x"] for r in rows(tmp_path, written)) == list(range(23))
    assert all(0 < count <= 5 for _, _, count in written.files)
    assert [name for name, _, _ in written.files] == [f"part-{i:05d}.parquet" for i in range(len(written.files))]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name for name, _, _ in written.files]
    for name, size, count in written.files:
        assert (tmp_path / name).stat().st_size == size and pq.read_metadata(tmp_path / name).num_rows == count
    assert written.rows == 23


def test_an_empty_export_is_one_empty_file(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    query = ExportPart("SELECT 'a' AS x, 'email' AS __ns WHERE false",
                        "SELECT 1::BIGINT AS __pos, {'id': 'e'} AS __event WHERE false")
    written = write_parquet(conn, query, tmp_path, rows_per_file=10)
    (name, _, count), = written.files
    table = pq.read_table(tmp_path / name)
    assert count == 0 and table.num_rows == 0 and table.schema.names == ["x", "timeSeriesEvents"]


def test_a_failing_query_still_cleans_up(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    query = ExportPart("SELECT error('boom') AS x FROM t", setup=("CREATE TABLE t AS SELECT 1 AS x",),
                        cleanup=("DROP TABLE t",))
    with pytest.raises(duckdb.Error, match="boom"):
        write_parquet(conn, query, tmp_path, rows_per_file=10)
    assert conn.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchall() == [(0,)]


def test_cluster_identities_add_the_members_the_fragments_do_not_name(conn: duckdb.DuckDBPyConnection,
                                                                       tmp_path: Path) -> None:
    members = tmp_path / "members.parquet"
    conn.execute(f"""COPY (SELECT * FROM (VALUES
        ('00000000-0000-0000-0000-000000000001'::UUID, 'email', 'b@x'),
        ('00000000-0000-0000-0000-000000000001'::UUID, 'crmid', 'C1'),
        ('00000000-0000-0000-0000-000000000001'::UUID, 'ecid', 'a1'),
        ('00000000-0000-0000-0000-000000000002'::UUID, 'email', 'z@x')) t(cluster, ns, id)) TO '{members}'""")
    merged = """SELECT * FROM (VALUES
        ('00000000000000000000000000000001',
         [{'id': 'C1', 'namespace': {'code': 'crmid'}, 'primary': true},
          {'id': 'b@x', 'namespace': {'code': 'email'}, 'primary': false}]),
        ('00000000000000000000000000000003', [{'id': 'q', 'namespace': {'code': 'phone'}, 'primary': true}])
        ) t(_group, identities)"""
    got = dict(conn.sql(f"SELECT _group, identities FROM ({with_cluster_identities(merged, members)})").fetchall())
    assert got == {
        # ordered by (id, namespace); the fragments' primary flag kept, members they do not name not primary
        "00000000000000000000000000000001": [
            {"id": "C1", "namespace": {"code": "crmid"}, "primary": True},
            {"id": "a1", "namespace": {"code": "ecid"}, "primary": False},
            {"id": "b@x", "namespace": {"code": "email"}, "primary": False},
        ],
        "00000000000000000000000000000003": [{"id": "q", "namespace": {"code": "phone"}, "primary": True}],
    }


def test_a_sliced_export_writes_the_same_rows(tmp_path: Path) -> None:
    """Merged in slices of the groups (fragments split into Arrow files first) or at once: the same rows."""
    conn = duckdb.connect()
    person: TypeNode = {"struct": {"name": "VARCHAR", "age": "BIGINT"}}
    structure: Structure = {"person": person, "tags": {"list": "VARCHAR"}}
    for name, offset in (("crm", 0), ("loyalty", 1)):
        conn.execute(f"""CREATE TABLE {name} AS SELECT 'g' || (range % 40)::VARCHAR AS _group, '{name}' AS _dataset,
                         1000 + range + {offset} AS _ingest_ms, 'b-{name}' AS _batch,
                         {{'name': CASE WHEN range % 3 = {offset} THEN NULL ELSE '{name}' || range::VARCHAR END,
                           'age': range}} AS person, ['t' || range::VARCHAR] AS tags
                         FROM range(100)""")
    conn.execute("""CREATE TABLE ev AS SELECT 'g' || (range % 50)::VARCHAR AS _group, range AS _ingest_ms,
                    'x' || range::VARCHAR AS _xid, 'e' || range::VARCHAR AS _id,
                    TIMESTAMPTZ '2024-01-01' + to_seconds(range % 7) AS "timestamp" FROM range(300)""")
    sources = [FragmentSource(n, n, structure) for n in ("crm", "loyalty")]
    events = EventPlan(["ev"], {"_id": "VARCHAR", "timestamp": "TIMESTAMPTZ"}, None)
    for event_plan in (None, events):
        got = []
        for slices in (1, 3):
            plan = ExportPlan(sources, MergeRule("timestampOrdered"), events=event_plan, slices=slices)
            out = tmp_path / f"{slices}-{event_plan is not None}"
            written = write_parquet(conn, export_query(plan, scratch=tmp_path / "scratch"), out, rows_per_file=1000)
            got.append(sorted(rows(out, written), key=lambda r: str(r["person"])))
            assert not (tmp_path / "scratch").exists()
        assert got[0] == got[1] and len(got[0]) == 40


def _crm_export(*, groups: int, rows: int, slices: int) -> tuple[duckdb.DuckDBPyConnection, ExportPlan]:
    """A connection holding `rows` CRM fragments of `groups` profiles, and an export of them in `slices` slices."""
    conn = duckdb.connect()
    conn.execute(f"""CREATE TABLE crm AS SELECT 'g' || (range % {groups})::VARCHAR AS _group, 'crm' AS _dataset,
                     1000 + range AS _ingest_ms, 'b' AS _batch, {{'name': 'n' || range::VARCHAR}} AS person
                     FROM range({rows})""")
    return conn, ExportPlan([FragmentSource("crm", "crm", {"person": {"struct": {"name": "VARCHAR"}}})],
                            MergeRule("timestampOrdered"), slices=slices)


def test_an_interrupted_export_stops_between_slices(tmp_path: Path) -> None:
    """A cancel that lands while no query runs (a slice being merged on Arrow arrays) still stops the batch."""
    conn, plan = _crm_export(groups=40, rows=100, slices=3)
    written = WrittenBatch()
    written.interrupted.set()
    with pytest.raises(duckdb.InterruptException):
        write_parquet(conn, export_query(plan, scratch=tmp_path / "scratch"), tmp_path / "out", rows_per_file=1000,
                      result=written)
    assert written.rows == 0 and not (tmp_path / "scratch").exists()


def test_the_namespace_counted_on_arrow_is_the_one_sql_counts(conn: duckdb.DuckDBPyConnection) -> None:
    """All fields and no filter write the merged rows without SQL: `__ns` is computed on the Arrow side, and must
    be what the SQL path's expression gives (the primary identity's namespace, else the first's, else NULL)."""
    def item(ns: str, primary: bool | None) -> str:
        return f"{{'id': 'x', 'namespace': {{'code': '{ns}'}}, 'primary': {'NULL' if primary is None else primary}}}"

    lists = [f"[{item('email', False)}, {item('crmid', True)}, {item('phone', True)}]",
             f"[{item('ecid', False)}, {item('email', None)}]", f"[{item('phone', None)}]", "[]", "NULL"]
    table = conn.sql(" UNION ALL ".join(f"SELECT {k} AS k, {v} AS identities" for k, v in enumerate(lists))
                     + " ORDER BY k").to_arrow_table()
    conn.register("t", table)
    expected = [r[0] for r in conn.execute(
        "SELECT coalesce(list_filter(identities, lambda i: i.\"primary\")[1], identities[1]).namespace.code "
        "FROM t ORDER BY k").fetchall()]
    assert expected == ["crmid", "ecid", "phone", None, None]
    assert export._with_namespace(table).column("__ns").to_pylist() == expected


@settings(max_examples=60, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 3), st.integers(0, 2)), max_size=40),
       rows=st.permutations(range(4)).flatmap(lambda p: st.lists(st.sampled_from(p), unique=True, max_size=4)),
       chunk=st.integers(1, 8))
def test_a_partitions_events_are_cut_for_its_rows_in_any_order(events: list[tuple[str, int, int]], rows: list[int],
                                                                 chunk: int) -> None:
    """`_PartEvents` against a reference: each row (a merged profile, by position among the part's groups `a`..`d`;
    rows asked in any order, some not at all, in batches) gets its group's events ordered by (time, tie-breaker),
    NULL when it has none; events of groups with no profile (`e`, `f`) are nobody's."""
    groups = ["a", "b", "c", "d"]
    table = pa.table({"__g": [g for g, _, _ in events], "__t": [t for _, t, _ in events],
                      "__x": [x for _, _, x in events],
                      "__event": [{"i": i, "t": t} for i, (_, t, _) in enumerate(events)]},
                     schema=pa.schema([("__g", pa.string()), ("__t", pa.int64()), ("__x", pa.int64()),
                                       ("__event", pa.struct([("i", pa.int64()), ("t", pa.int64())]))]))
    cut = export._PartEvents(table, pa.array(groups))
    got: list[Any] = []
    for start in range(0, len(rows), chunk):
        batch = pa.record_batch({"__row": pa.array(rows[start:start + chunk], pa.int64())})
        got += cut.lists(batch)().to_pylist()

    def expected(row: int) -> list[dict[str, int]] | None:
        mine = sorted((t, x, i) for i, (g, t, x) in enumerate(events) if g == groups[row])
        return [{"i": i, "t": t} for t, _, i in mine] or None

    # ties on (time, tie-breaker) may come in either order: compare each list's events as a multiset, then their
    # keys in order
    assert [sorted(e["i"] for e in lst) if lst else None for lst in got] == [
        sorted(e["i"] for e in lst) if lst else None for lst in map(expected, rows)]
    assert [[(events[e["i"]][1], events[e["i"]][2]) for e in lst] if lst else None for lst in got] == [
        [(events[e["i"]][1], events[e["i"]][2]) for e in lst] if lst else None for lst in map(expected, rows)]


def test_slices_loaded_ahead_never_share_a_cursor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two slices load ahead on two threads while the current one is written. The slice two ahead is submitted
    before the current one is awaited: when the one after the current finishes first, it must not start on the
    cursor the current one still uses (DuckDB refuses a connection busy with another call)."""
    conn, plan = _crm_export(groups=60, rows=120, slices=6)
    in_use: set[int] = set()
    shared: list[int] = []
    lock = threading.Lock()
    load_part = export._load_part

    def watched(query: Any, part: ExportPart, cursor: duckdb.DuckDBPyConnection) -> Any:
        with lock:
            if id(cursor) in in_use:
                shared.append(part.slice or 0)
            in_use.add(id(cursor))
        try:
            if part.slice == 2:
                time.sleep(0.5)  # slice 3 finishes first, and slice 4 is then submitted while 2 still loads
            return load_part(query, part, cursor)
        finally:
            with lock:
                in_use.discard(id(cursor))

    monkeypatch.setattr(export, "_load_part", watched)
    written = write_parquet(conn, export_query(plan, scratch=tmp_path / "scratch"), tmp_path / "out",
                            rows_per_file=1000)
    assert written.rows == 60 and shared == []


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.binary(min_size=16, max_size=16)), max_size=20),
       upper=st.booleans(), cut=st.integers(0, 20))
def test_group_keys_are_the_bytes_their_hex_digits_spell(keys: list[bytes | None], upper: bool, cut: int) -> None:
    """`_group_keys` (numpy) against `bytes.fromhex`, in either case, NULL kept, over any chunking; other forms
    raise."""
    texts = [None if k is None else (k.hex().upper() if upper else k.hex()) for k in keys]
    chunked = pa.chunked_array([pa.array(texts[:cut], pa.string()), pa.array(texts[cut:], pa.string())])
    got = export._group_keys(chunked)
    assert got.type == pa.binary(16)
    assert got.to_pylist() == [None if t is None else bytes.fromhex(t) for t in texts]
    with pytest.raises(ValueError):
        export._group_keys(pa.chunked_array([pa.array([*texts, "g" * 32], pa.string())]))
    with pytest.raises(ValueError):
        export._group_keys(pa.chunked_array([pa.array([*texts, "ab"], pa.string())]))
