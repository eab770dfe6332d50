"""Checks that the export's answers are right: row counts, a sample of merged profiles, segment counts, lookups.

Rows from the export (nested Parquet in the destination dataset's batch), from the pandas peer (flat leaf columns,
lists of items) and from the Spark peer (nested, maps) are brought to one canonical form (`normalize`) and compared
profile by profile, matched on `_key`, the smallest `namespace:id` of the profile's identities. This is the
checker, not the data path: it touches a few hundred rows in Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY_SQL = "list_min(list_transform(identities, lambda i: i.namespace.code || ':' || i.id))"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _files(paths: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(p) for p in paths) + "]"


def parquet_in(folder: str | Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*.parquet"))


def count_rows(files: list[str]) -> int:
    if not files:
        return 0
    with duckdb.connect() as conn:
        row = conn.execute(f"SELECT count(*) FROM read_parquet({_files(files)})").fetchone()
    return int(row[0]) if row else 0


def sample_keys(files: list[str], size: int) -> list[str]:
    """A deterministic sample of `_key`s of a peer's output (by hash order, so it spreads over the data)."""
    with duckdb.connect() as conn:
        rows = conn.execute(f"SELECT _key FROM read_parquet({_files(files)}) ORDER BY hash(_key), _key "
                            f"LIMIT {int(size)}").fetchall()
    return [str(r[0]) for r in rows]


def export_keys(files: list[str], size: int) -> list[str]:
    """A deterministic sample of the export's profile keys."""
    with duckdb.connect() as conn:
        rows = conn.execute(f"SELECT k FROM (SELECT {KEY_SQL} AS k FROM read_parquet({_files(files)})) "
                            f"ORDER BY hash(k), k LIMIT {int(size)}").fetchall()
    return [str(r[0]) for r in rows]


def rows_by_key(files: list[str], keys: list[str], *, export: bool) -> dict[str, dict[str, Any]]:
    """The rows whose `_key` is in `keys` (for the export's rows, `_key` is computed from `identities`)."""
    conn = duckdb.connect()
    conn.execute("CREATE TEMP TABLE wanted (k VARCHAR)")
    conn.executemany("INSERT INTO wanted VALUES (?)", [(k,) for k in keys])
    source = (f"(SELECT *, {KEY_SQL} AS _key FROM read_parquet({_files(files)}))" if export
              else f"read_parquet({_files(files)})")
    table = conn.sql(f"SELECT * FROM {source} WHERE _key IN (SELECT k FROM wanted)").to_arrow_table()
    conn.close()
    return {str(r["_key"]): r for r in table.to_pylist()}


# --------------------------------------------------------------------------------------------------
# One canonical form for the three shapes of a merged profile


def _scalar(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - EPOCH) // timedelta(microseconds=1)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _leaves(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for name, child in value.items():
            _leaves(f"{prefix}.{name}" if prefix else name, child, out)
    elif isinstance(value, list):
        out[prefix] = tuple(repr(normalize(v) if isinstance(v, dict) else _scalar(v)) for v in value)
    else:
        out[prefix] = _scalar(value)


def _identity_map(value: Any) -> dict[str, tuple[Any, ...]] | None:
    """`{namespace: ((id, primary, authenticatedState), ...)}` from a map (list of (key, items)) or a list of
    items carrying `ns`."""
    if not value:
        return None
    found: dict[str, list[tuple[Any, ...]]] = {}

    def add(namespace: str, item: dict[str, Any]) -> None:
        found.setdefault(namespace, []).append((item["id"], item.get("primary"), item.get("authenticatedState")))

    for entry in value:
        if isinstance(entry, tuple):
            for item in entry[1] or []:
                add(entry[0], item)
        else:
            add(entry["ns"], entry)
    return {k: tuple(sorted(v, key=repr)) for k, v in sorted(found.items())} or None


def _segments(value: Any) -> dict[str, tuple[Any, ...]] | None:
    """`{"namespace/segment": (status, lastQualificationTime)}` from a map of maps or a list of items."""
    if not value:
        return None
    found: dict[str, tuple[Any, ...]] = {}
    for entry in value:
        if isinstance(entry, tuple):
            namespace, inner = entry
            for segment, status in inner or []:
                if status is not None:
                    found[f"{namespace}/{segment}"] = (status["status"], _scalar(status["lastQualificationTime"]))
        else:
            found[f"{entry['ns']}/{entry['segment']}"] = (entry["status"], _scalar(entry["lastQualificationTime"]))
    return dict(sorted(found.items())) or None


def _identities(value: Any) -> tuple[Any, ...]:
    items = []
    for item in value or []:
        namespace = item["namespace"]["code"] if "namespace" in item else item["ns"]
        items.append((namespace, item["id"], bool(item["primary"])))
    return tuple(sorted(items))


def _events(value: Any) -> tuple[Any, ...] | None:
    if not value:
        return None
    return tuple(sorted(repr(sorted(normalize(e).items())) for e in value))


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """A merged profile (or an event) as flat `path: value` leaves, with identityMap, segmentMembership,
    identities and timeSeriesEvents in canonical forms; NULLs, `_key` and empty maps left out."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name == "_key":
            continue
        if name == "identityMap":
            out[name] = _identity_map(value)
        elif name == "segmentMembership":
            out[name] = _segments(value)
        elif name == "identities":
            out[name] = _identities(value)
        elif name == "timeSeriesEvents":
            out[name] = _events(value)
        elif "." in name and not isinstance(value, dict):
            if value is not None:
                out[name] = _scalar(value)
        else:
            _leaves(name, value, out)
    return {k: v for k, v in out.items() if v is not None}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields where two normalized profiles differ (at most 5, values cut short)."""
    found = []
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            found.append(f"{name}: {str(a.get(name))[:160]} != {str(b.get(name))[:160]}")
    return found[:5]


def compare_sample(export_files: list[str], peer_files: list[str], keys: list[str]) -> dict[str, Any]:
    """The sample's profiles in the export and in a peer's output, compared field by field."""
    ours = rows_by_key(export_files, keys, export=True)
    theirs = rows_by_key(peer_files, keys, export=False)
    wrong: list[dict[str, Any]] = []
    for key in keys:
        if key not in ours or key not in theirs:
            wrong.append({"key": key, "missing_in": "export" if key not in ours else "peer"})
            continue
        diff = differences(normalize(ours[key]), normalize(theirs[key]))
        if diff:
            wrong.append({"key": key, "diff": diff})
    return {"checked": len(keys), "wrong": len(wrong), "wrong_sample": wrong[:3]}


# --------------------------------------------------------------------------------------------------
# Segment counts: the segment conditions written again in SQL, over the checked merged profiles and the events


def segment_expectations(profile_files: list[str], clusters: str, event_files: list[str],
                         segments: list[dict[str, Any]], max_cluster_size: int) -> dict[str, Any]:
    """Expected `segmentedProfileCounter` per segment name, and the number of profiles segmentation sees.

    Profiles are the export's merged rows (keyed by `_key`) plus every cluster that has only events; a
    profile's event figures come from the event files joined to `clusters` (node → `_key`, size: a peer's
    identity graph) on each event's primary identity."""
    conn = duckdb.connect()
    conn.execute(f"CREATE TEMP VIEW p AS SELECT *, {KEY_SQL} AS _key FROM read_parquet({_files(profile_files)})")
    conn.execute(f"CREATE TEMP VIEW c AS SELECT node, _key, size FROM read_parquet({_quote(clusters)})")
    primary = ("list_sort(list_filter(flatten(list_transform(map_entries(identityMap), lambda e: list_transform("
               "e.value, lambda i: {'np': NOT coalesce(i.\"primary\", false), 'ns': lower(e.key), 'id': i.id}))), "
               "lambda x: coalesce(x.id, '') <> ''))[1]")
    stats = ["count(*) AS n"]  # event_sql: an aggregate over a profile's events
    stats += [f"({s['event_sql']}) AS e{n}" for n, s in enumerate(segments) if s.get("event_sql")]
    # An event's primary identity absent from the graph (seen only alone) is a cluster of its own.
    conn.execute(f"""CREATE TEMP TABLE ev AS
        SELECT coalesce(c._key, e.__node) AS _key, {', '.join(stats)}
        FROM (SELECT *, {primary}.ns || ':' || {primary}.id AS __node FROM read_parquet({_files(event_files)})) e
        LEFT JOIN c ON c.node = e.__node
        WHERE coalesce(c.size, 1) <= {int(max_cluster_size)}
        GROUP BY ALL""")
    conn.execute("CREATE TEMP TABLE everyone AS SELECT _key FROM p UNION SELECT _key FROM ev")
    counts: dict[str, int] = {}
    for number, segment in enumerate(segments):
        conditions = []
        if segment.get("profile_sql"):
            conditions.append(f"coalesce(({segment['profile_sql']}), false)")
        if segment.get("event_sql"):
            conditions.append(f"coalesce(ev.e{number}, false)")
        row = conn.execute(f"SELECT count(*) FROM everyone LEFT JOIN p USING (_key) LEFT JOIN ev USING (_key) "
                           f"WHERE {' AND '.join(conditions)}").fetchone()
        counts[segment["name"]] = int(row[0]) if row else 0
    total_row = conn.execute("SELECT count(*) FROM everyone").fetchone()
    conn.close()
    return {"counts": counts, "total_profiles": int(total_row[0]) if total_row else 0}


# --------------------------------------------------------------------------------------------------
# Lookups: Profile Access answers against the checked export rows


def _plain(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Struct leaves that are strings or numbers (times render differently in JSON and are left out)."""
    if isinstance(value, dict):
        for name, child in value.items():
            if not prefix and name in ("identityMap", "segmentMembership", "identities", "timeSeriesEvents"):
                continue
            _plain(f"{prefix}.{name}" if prefix else name, child, out)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        out[prefix] = value


def compare_lookup(exported: dict[str, Any], entity: dict[str, Any]) -> list[str]:
    """An exported profile's string and number leaves against a lookup's entity."""
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    _plain("", {k: v for k, v in exported.items() if k != "_key"}, ours)
    _plain("", entity, theirs)
    return differences(ours, {k: v for k, v in theirs.items() if k in ours or not isinstance(v, str)})
