"""Property test: the SQL merge and the Arrow merge each equal a plain Python reference merge on random fragment sets.

The reference below is written from the contract (the `openprofile.engine.merge` docstring), not from the SQL:
rank a group's fragments best first, then for every leaf take the first non-null value, merge maps key by
key the same way, union the identity maps.

The generator avoids one case on purpose: two fragments of one dataset in one group with the same ingestion
time *and* the same batch. Only there does the SQL fall back to its last tie-break (a hash of the record),
which a plain reference cannot reproduce; `test_merge.py` checks that case is deterministic.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from openprofile.engine.export import with_cluster_identities
from openprofile.engine.merge import (
    FragmentSource,
    MergeRule,
    fragment_rows_sql,
    merge_slots,
    merge_sql,
    merged_structure,
)
from openprofile.engine.merge_arrow import merge_arrow, merge_table
from openprofile.engine.structure import Structure, TypeNode, to_arrow_type

IDENTITY_MAP: TypeNode = {
    "map": {"list": {"struct": {"id": "VARCHAR", "primary": "BOOLEAN", "authenticatedState": "VARCHAR"}}}
}
SEGMENT_MEMBERSHIP: TypeNode = {
    "map": {"map": {"struct": {"status": "VARCHAR", "lastQualificationTime": "TIMESTAMPTZ"}}}
}
SYSTEM = [("_group", pa.string()), ("_dataset", pa.string()), ("_ingest_ms", pa.int64()), ("_batch", pa.string())]
GROUPS = ["g1", "g2"]
CON = duckdb.connect(config={"threads": 1})


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


# --------------------------------------------------------------------------------------------------
# The reference merge


def epoch_us(value: dt.datetime) -> int:
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def rank_key(fragment: dict[str, Any], rule: MergeRule) -> tuple[Any, ...]:
    """Bigger is better."""
    audit = fragment.get("extSourceSystemAudit") or {}
    custom = audit.get("lastUpdatedDate")
    effective = epoch_us(custom) if custom is not None else fragment["_ingest_ms"] * 1000
    key = (effective, fragment["_ingest_ms"], fragment["_dataset"], fragment["_batch"])
    if rule.attribute_merge == "dataSetPrecedence":
        return (-rule.order.index(fragment["_dataset"]), *key)
    return key


def first_value(values: list[Any]) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def merge_maps(maps: list[dict[str, Any]], value_node: TypeNode) -> dict[str, Any] | None:
    """Maps in rank order (best first) → key by key, recursing into maps of maps."""
    result: dict[str, Any] = {}
    for key in sorted({k for m in maps for k in m}):
        values = [m[key] for m in maps if m.get(key) is not None]
        if isinstance(value_node, dict) and "map" in value_node:
            value = merge_maps(values, value_node["map"])
        else:
            value = first_value(values)
        if value is not None:
            result[key] = value
    return result or None


def merge_value(values: list[Any], node: TypeNode) -> Any:
    """The values of one field in the ranked fragments (None where a fragment has nothing) → merged value."""
    if isinstance(node, dict) and "struct" in node:
        merged = {
            name: merge_value([v.get(name) if v is not None else None for v in values], child)
            for name, child in node["struct"].items()
        }
        return None if all(v is None for v in merged.values()) else merged
    if isinstance(node, dict) and "map" in node:
        return merge_maps([v for v in values if v is not None], node["map"])
    return first_value(values)  # scalars and whole lists


def union_identity_maps(maps: list[dict[str, Any]]) -> dict[str, Any] | None:
    result: dict[str, Any] = {}
    for namespace in sorted({ns for m in maps for ns in m}):
        by_id: dict[str, list[dict[str, Any]]] = {}
        for m in maps:
            for item in m.get(namespace) or []:
                if item.get("id"):
                    by_id.setdefault(item["id"], []).append(item)
        items = []
        for identity in sorted(by_id):
            seen = by_id[identity]
            flags = [i.get("primary") for i in seen]
            primary = True if True in flags else False if False in flags else None
            state = first_value([i.get("authenticatedState") for i in seen])
            items.append({"id": identity, "primary": primary, "authenticatedState": state})
        if items:
            result[namespace] = items
    return result or None


def reference_merge(
    fragments: list[dict[str, Any]], structure: Structure, rule: MergeRule, group: str | None
) -> dict[str, dict[str, Any]]:
    included = [
        f for f in fragments
        if f["_group"] is not None
        and (rule.attribute_merge == "timestampOrdered" or f["_dataset"] in rule.order)
        and (group is None or f["_group"] == group)
    ]
    profiles: dict[str, dict[str, Any]] = {}
    for g in sorted({f["_group"] for f in included}):
        ranked = sorted((f for f in included if f["_group"] == g), key=lambda f: rank_key(f, rule), reverse=True)
        row: dict[str, Any] = {}
        for name, node in structure.items():
            if name == "identityMap":
                row[name] = union_identity_maps([f["identityMap"] for f in ranked if f.get("identityMap")])
            else:
                row[name] = merge_value([f.get(name) for f in ranked], node)
        identities: dict[tuple[str, str], bool] = {}
        for namespace, items in (row.get("identityMap") or {}).items():
            for item in items:
                key = (namespace.lower(), item["id"])
                identities[key] = identities.get(key, False) or item["primary"] is True
        row["identities"] = [
            {"id": i, "namespace": {"code": ns}, "primary": p} for (ns, i), p in sorted(identities.items())
        ]
        row["_sources"] = sorted({f["_dataset"] for f in ranked})
        row["_tags"] = sorted({f["_batch"] for f in ranked})
        row["_last_modified_ms"] = max(f["_ingest_ms"] for f in ranked)
        profiles[g] = row
    return profiles


# --------------------------------------------------------------------------------------------------
# Random fragment sets


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None a quarter of the time (values should mostly be there, to conflict)."""
    return st.one_of(st.none(), strategy, strategy, strategy)


NAMES = st.sampled_from(["ann", "bo", "cy"])
IDENTITY_ITEMS = st.lists(
    st.fixed_dictionaries({
        "id": st.sampled_from(["i1", "i2", ""]),
        "primary": maybe(st.booleans()),
        "authenticatedState": maybe(st.sampled_from(["ambiguous", "authenticated"])),
    }),
    min_size=1, max_size=3, unique_by=lambda i: i["id"],
)
SEGMENT = maybe(st.fixed_dictionaries({
    "status": maybe(st.sampled_from(["realized", "existing", "exited"])),
    "lastQualificationTime": maybe(st.sampled_from([utc(1000), utc(2000)])),
}))


@st.composite
def dataset_structure(draw: st.DrawFn) -> Structure:
    """A random subset of a profile-like structure (nested 2 levels, a list, maps, the audit timestamp)."""
    name_fields = draw(st.lists(st.sampled_from(["first", "last"]), min_size=1, max_size=2, unique=True))
    person_fields: dict[str, TypeNode] = {"name": {"struct": {f: "VARCHAR" for f in sorted(name_fields)}}}
    if draw(st.booleans()):
        person_fields["age"] = draw(st.sampled_from(["BIGINT", "DOUBLE"]))
    candidates: dict[str, TypeNode] = {
        "identityMap": IDENTITY_MAP,
        "person": {"struct": person_fields},
        "tags": {"list": "VARCHAR"},
        "attributes": {"map": "BIGINT"},
        "segmentMembership": SEGMENT_MEMBERSHIP,
        "extSourceSystemAudit": {"struct": {"lastUpdatedDate": "TIMESTAMPTZ"}},
    }
    chosen = {k: v for k, v in candidates.items() if draw(st.sampled_from([True, True, True, False]))}
    return chosen or {"person": candidates["person"]}


def value_for(node: TypeNode, name: str) -> st.SearchStrategy[Any]:
    if node == "VARCHAR":
        return maybe(NAMES)
    if node in ("BIGINT", "DOUBLE"):
        ints = st.integers(1, 3)
        return maybe(ints if node == "BIGINT" else ints.map(float))
    if name == "identityMap":
        namespaces = st.sampled_from(["email", "ecid", "email", "ecid", "Email"])
        return maybe(st.dictionaries(namespaces, IDENTITY_ITEMS, min_size=1, max_size=2))
    if name == "segmentMembership":
        return maybe(st.dictionaries(st.sampled_from(["ups", "other"]),
                                     st.dictionaries(st.sampled_from(["s1", "s2"]), SEGMENT, max_size=2),
                                     max_size=2))
    if name == "attributes":
        return maybe(st.dictionaries(st.sampled_from(["k1", "k2", "k3"]), maybe(st.integers(1, 3)), max_size=3))
    if name == "tags":
        return maybe(st.lists(st.sampled_from(["x", "y"]), max_size=2))
    if name == "lastUpdatedDate":
        return maybe(st.sampled_from([utc(500), utc(1500), utc(2000), utc(2500)]))  # before, between, equal, after
    assert isinstance(node, dict) and "struct" in node
    return maybe(st.fixed_dictionaries({k: value_for(v, k) for k, v in node["struct"].items()}))


Scenario = tuple[list[FragmentSource], list[dict[str, Any]], MergeRule, str]
"""The sources (registered on `CON`), all their fragments as dicts, a dataSetPrecedence rule, a group."""


@st.composite
def scenario(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(2, 4))
    datasets = [f"ds{i}" for i in range(count)]
    sources: list[FragmentSource] = []
    fragments: list[dict[str, Any]] = []
    for index, dataset in enumerate(datasets):
        batch_prefix = "zyxw"[index]
        structure = draw(dataset_structure())
        record = st.fixed_dictionaries({k: value_for(v, k) for k, v in structure.items()})
        system = st.fixed_dictionaries({
            "_group": st.sampled_from([*GROUPS, None]),
            "_ingest_ms": st.sampled_from([1000, 2000]),
            # Batch ids sort in the reverse order of their datasets: the dataset and batch tie-breaks differ.
            "_batch": st.sampled_from([f"{batch_prefix}1", f"{batch_prefix}2"]),
        })
        keys = draw(st.lists(system, max_size=5,
                             unique_by=lambda s: (s["_group"], s["_ingest_ms"], s["_batch"])))
        rows = [{**key, "_dataset": dataset, **draw(record)} for key in keys]
        name = f"prop_{dataset}"
        fields = [pa.field(k, to_arrow_type(v)) for k, v in structure.items()]
        fields += [pa.field(k, t) for k, t in SYSTEM]
        CON.register(name, pa.Table.from_pylist(rows, schema=pa.schema(fields)))
        sources.append(FragmentSource(dataset, name, structure))
        fragments += rows
    order = draw(st.permutations([*datasets, "not-a-dataset"]))
    kept = draw(st.integers(0, len(order)))
    rule = MergeRule("dataSetPrecedence", tuple(order[:kept]))
    return sources, fragments, rule, draw(st.sampled_from(GROUPS))


def sql_merge(sources: list[FragmentSource], rule: MergeRule, where: str | None) -> dict[str, dict[str, Any]]:
    with warnings.catch_warnings():
        # execute() binds the query once (sql() binds it twice); the extra copy it warns about is a few rows.
        warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)
        arrow = CON.execute(merge_sql(sources, rule, where=where)).to_arrow_table()
    assert arrow is not None
    return _by_group(arrow)


def arrow_merge(sources: list[FragmentSource], rule: MergeRule, where: str | None,
                members: str | None = None) -> dict[str, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)
        return _by_group(merge_arrow(CON, sources, rule, where=where, members=members))


def _by_group(arrow: pa.Table) -> dict[str, dict[str, Any]]:
    rows = [{n: _py(r[n], arrow.schema.field(n).type) for n in arrow.column_names} for r in arrow.to_pylist()]
    return {row.pop("_group"): row for row in rows}


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


Merge = Callable[[list[FragmentSource], MergeRule, str | None], dict[str, dict[str, Any]]]


@pytest.mark.parametrize("merge", [sql_merge, arrow_merge], ids=["sql", "arrow"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_merge_equals_the_reference(merge: Merge, case: Scenario) -> None:
    """Both merges — `merge_sql` (lookups, segment jobs) and `merge_arrow` (exports) — equal the reference."""
    sources, fragments, precedence, group = case
    structure = merged_structure(sources)
    for rule in (MergeRule("timestampOrdered"), precedence):
        assert merge(sources, rule, None) == reference_merge(fragments, structure, rule, None)
        where = f"_group = '{group}'"
        assert merge(sources, rule, where) == reference_merge(fragments, structure, rule, group)


MEMBERS = st.lists(st.fixed_dictionaries({
    "_group": st.sampled_from([*GROUPS, "g3"]),  # g3: a cluster without merged fragments
    "ns": st.sampled_from(["email", "ecid", "crmid"]),
    "id": st.sampled_from(["i1", "i2", "i3"]),
}), max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), MEMBERS)
def test_arrow_merge_with_cluster_members_equals_the_sql_merge(case: Scenario, members: list[dict[str, str]]) -> None:
    """With a cluster's members, the Arrow merge lists the identities `with_cluster_identities` gives."""
    sources, _, precedence, _ = case
    CON.register("prop_members", pa.Table.from_pylist(
        members, schema=pa.schema([("_group", pa.string()), ("ns", pa.string()), ("id", pa.string())])))
    for rule in (MergeRule("timestampOrdered"), precedence):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)
            arrow = CON.execute(with_cluster_identities(merge_sql(sources, rule), "prop_members")).to_arrow_table()
        assert arrow is not None
        arrow = arrow.drop_columns(["__s"])  # with_cluster_identities' sort key, which exports do not select
        assert arrow_merge(sources, rule, None, members="prop_members") == _by_group(arrow)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), MEMBERS, st.randoms(use_true_random=False))
def test_members_that_cover_the_fragments_give_the_same_identities(
        case: Scenario, extra: list[dict[str, str]], shuffle: Any) -> None:
    """A store partition's members (`members_cover`: every identity its fragments name, each in one cluster, sorted
    by (_group, id, ns)) give the identities the general way gives."""
    sources, _, precedence, _ = case
    structure = merged_structure(sources)
    for rule in (MergeRule("timestampOrdered"), precedence):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)
            fragments = CON.execute(fragment_rows_sql(sources, rule)).to_arrow_table()
        plain = merge_table(fragments, structure, merge_slots(structure), rule)
        named = {(i["namespace"]["code"], i["id"]): g
                 for g, ids in zip(plain.column("_group").to_pylist(), plain.column("identities").to_pylist(),
                                   strict=True) for i in ids}
        # an identity is in one cluster only (the graph's premise): the generator's groups may share one
        assume(len(named) == sum(len(ids) for ids in plain.column("identities").to_pylist()))
        for member in extra:  # identities only the graph knows (events', or tombstoned records'), in any cluster
            named.setdefault((member["ns"], member["id"]), member["_group"])
        rows = [{"_group": g, "ns": ns, "id": i} for (ns, i), g in named.items()]
        shuffle.shuffle(rows)
        members = pa.Table.from_pylist(sorted(rows, key=lambda r: (r["_group"], r["id"], r["ns"])), schema=pa.schema(
            [("_group", pa.string()), ("ns", pa.string()), ("id", pa.string())]))
        general = merge_table(fragments, structure, merge_slots(structure), rule, members=members)
        covered = merge_table(fragments, structure, merge_slots(structure), rule, members=members, members_cover=True)
        assert covered.to_pylist() == general.to_pylist()
