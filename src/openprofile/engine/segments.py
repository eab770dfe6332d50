"""Batch segmentation SQL (DuckDB): merged profiles with their events, qualified sets, and memberships.

Python only writes SQL text here; profile data never passes through it.

- `profiles_sql`: one row per profile group (`_group`): the merged profile's columns (every top-level
  column of the profile union; those no stored fragment has are typed NULLs, so any checked PQL binds),
  `identities`, `"xEvent"` (the group's events as a list of structs with every event field, by event
  time; `[]` when it has none) and `__ns` (the namespace of the primary identity). A group with events but
  no record fragment is a profile too, whose identities are those its events name.
- `qualified_sql`: the groups of a profiles table for which a compiled PQL condition holds; `inSegment`
  references are left-joined flag columns (see `InSegmentJoins`).
- `next_membership_sql`: the new membership relation from the previous one and this run's qualified sets,
  in one set-wise statement (aep-semantics.md §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openprofile.engine.pql.compile import sql_string
from openprofile.engine.structure import Structure, quote_identifier, to_duckdb_type

IDENTITIES_TYPE = 'STRUCT(id VARCHAR, namespace STRUCT(code VARCHAR), "primary" BOOLEAN)[]'
MEMBERSHIP_COLUMNS = "_group VARCHAR, segment_id VARCHAR, status VARCHAR, last_qualification TIMESTAMPTZ"
ACTIVE = ("realized", "existing")
RETENTION_DAYS = 30
_RESERVED = {"_group", "identities", "xEvent", "__ns"}


def empty_membership_sql() -> str:
    return ("SELECT CAST(NULL AS VARCHAR) AS _group, CAST(NULL AS VARCHAR) AS segment_id, "
            "CAST(NULL AS VARCHAR) AS status, CAST(NULL AS TIMESTAMPTZ) AS last_qualification LIMIT 0")


def _events_sql(relations: list[str], stored: Structure, wanted: Structure, *, with_events: bool = True) -> str:
    """Per group: its events as a list of structs (every field of `stored`, plus `wanted`'s other top-level
    fields as typed NULLs; without `with_events`, no list: an empty one is cheaper than one nobody reads)
    and the identities the events name."""
    if relations:
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {r}" for r in relations)
    else:
        union = ("SELECT CAST(NULL AS VARCHAR) AS _group, CAST(NULL AS VARCHAR) AS _identity_ns, "
                 "CAST(NULL AS VARCHAR) AS _identity_id, CAST(NULL AS BIGINT) AS _ingest_ms LIMIT 0")
        stored = {}
    items = [f"{quote_identifier(name)} := e.{quote_identifier(name)}" for name in stored]
    items += [f"{quote_identifier(name)} := CAST(NULL AS {to_duckdb_type(node)})"
              for name, node in wanted.items() if name not in stored]
    if not items:
        items = ["__none := CAST(NULL AS INTEGER)"]
    listed = f"list(struct_pack({', '.join(items)}))"  # unordered: no supported PQL form reads the order
    if not with_events:
        listed = "CAST([] AS STRUCT(__none INTEGER)[])"
    return (f"SELECT e._group, {listed} AS \"xEvent\", "
            f"list(DISTINCT {{'id': e._identity_id, 'namespace': {{'code': lower(e._identity_ns)}}, "
            f"'primary': true}}) AS __event_identities FROM ({union}) e WHERE e._group IS NOT NULL GROUP BY e._group")


def profiles_sql(merged: str | None, merged_columns: Structure, profile_union: Structure,
                 event_relations: list[str], stored_events: Structure, event_union: Structure, *,
                 with_events: bool = True) -> str:
    """See the module doc. `merged` is `merge_sql`'s SELECT (None when there is no record fragment) and
    `merged_columns` its record columns; `profile_union`/`event_union` are what PQL was checked against."""
    if merged is None:
        merged = f"SELECT CAST(NULL AS VARCHAR) AS _group, CAST([] AS {IDENTITIES_TYPE}) AS identities LIMIT 0"
        merged_columns = {}
    columns: list[str] = []
    names = [n for n in merged_columns if n not in _RESERVED]
    names += [n for n in profile_union if n not in _RESERVED and n not in merged_columns]
    for name in names:
        if name in merged_columns:
            columns.append(f"m.{quote_identifier(name)}")
        else:
            columns.append(f"CAST(NULL AS {to_duckdb_type(profile_union[name])}) AS {quote_identifier(name)}")
    identities = "coalesce(m.identities, ev.__event_identities)"
    select = ", ".join([
        "coalesce(m._group, ev._group) AS _group", *columns, f"{identities} AS identities",
        "coalesce(ev.\"xEvent\", []) AS \"xEvent\"",
        f"coalesce(list_filter({identities}, lambda i: i.\"primary\")[1], {identities}[1]).namespace.code AS __ns",
    ])
    events = _events_sql(event_relations, stored_events, event_union, with_events=with_events)
    return f"WITH m AS ({merged}), ev AS ({events}) SELECT {select} FROM m FULL OUTER JOIN ev ON m._group = ev._group"


@dataclass
class InSegmentJoins:
    """`inSegment` references of one expression: each a relation of `_group`s, left-joined as a flag column."""

    relations: dict[str, str]  # segment id → SQL relation with a `_group` column (the qualified groups)
    used: dict[str, str] = field(default_factory=dict)  # segment id → flag column

    def __call__(self, segment_id: str) -> str:
        if segment_id not in self.used:
            self.used[segment_id] = f"__in_{len(self.used)}"
        return f"coalesce({self.used[segment_id]}, FALSE)"

    def joins(self) -> str:
        parts = []
        for segment_id, flag in self.used.items():
            relation = self.relations.get(segment_id, "(SELECT CAST(NULL AS VARCHAR) AS _group LIMIT 0)")
            parts.append(f"LEFT JOIN (SELECT DISTINCT _group, TRUE AS {flag} FROM {relation}) USING (_group)")
        return " ".join(parts)


def active_members_sql(membership: str, segment_id: str) -> str:
    """The groups currently in a segment (`realized` or `existing`) according to a membership relation."""
    statuses = ", ".join(sql_string(s) for s in ACTIVE)
    return (f"(SELECT _group FROM {membership} WHERE segment_id = {sql_string(segment_id)} "
            f"AND status IN ({statuses}))")


def qualified_sql(profiles: str, condition: str, joins: InSegmentJoins) -> str:
    """The groups (with their primary namespace) of `profiles` for which `condition` (from `to_sql`) holds."""
    return f"SELECT _group, __ns FROM {profiles} {joins.joins()} WHERE {condition}"


def next_membership_sql(previous: str, qualified: str, evaluated: list[str], now_sql: str,
                        retention_days: int = RETENTION_DAYS) -> str:
    """The membership after a run, as one statement.

    `previous`: the membership relation (`MEMBERSHIP_COLUMNS`); `qualified`: (`_group`, `segment_id`) of every
    qualified profile of the segments in `evaluated`. For an evaluated segment: qualified and not active
    before → `realized` at `now`; qualified and active → `existing` (keeping the time it qualified); active
    and not qualified → `exited` at `now`; anything else keeps its row. Memberships of segments not evaluated
    stay as they were. `exited` rows older than `retention_days` are dropped."""
    ids = ", ".join(sql_string(s) for s in evaluated) or "NULL"
    active = ", ".join(sql_string(s) for s in ACTIVE)
    return f"""
        WITH __old AS (SELECT * FROM {previous} WHERE segment_id IN ({ids})),
             __q AS (SELECT DISTINCT _group, segment_id FROM {qualified}),
             __next AS (
                 SELECT coalesce(q._group, p._group) AS _group, coalesce(q.segment_id, p.segment_id) AS segment_id,
                        CASE WHEN q._group IS NOT NULL AND p.status IN ({active}) THEN 'existing'
                             WHEN q._group IS NOT NULL THEN 'realized'
                             WHEN p.status IN ({active}) THEN 'exited'
                             ELSE p.status END AS status,
                        CASE WHEN q._group IS NOT NULL AND p.status IN ({active}) THEN p.last_qualification
                             WHEN q._group IS NOT NULL OR p.status IN ({active}) THEN {now_sql}
                             ELSE p.last_qualification END AS last_qualification
                 FROM __q q FULL OUTER JOIN __old p ON p._group = q._group AND p.segment_id = q.segment_id
                 UNION ALL
                 SELECT _group, segment_id, status, last_qualification FROM {previous}
                 WHERE segment_id NOT IN ({ids})
             )
        SELECT _group, segment_id, status, CAST(last_qualification AS TIMESTAMPTZ) AS last_qualification FROM __next
        WHERE NOT (status = 'exited' AND last_qualification < {now_sql} - INTERVAL {int(retention_days)} DAY)
        ORDER BY segment_id, _group"""
