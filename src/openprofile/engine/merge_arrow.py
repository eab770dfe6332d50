"""The profile merge on Arrow arrays: `merge_sql`'s contract (see `openprofile.engine.merge`), for exports.

An export merges every profile, a slice of groups at a time. In SQL that is a GROUP BY with one `arg_max` per
leaf plus the map and identity-map unions joined back on `_group`: about 9 µs of CPU per fragment, most of it
in materialising and joining the intermediate relations. Here DuckDB only produces the fragment rows
(`fragment_rows_sql`: each leaf, map and the identity map as a flat column, with the precedence key's parts),
and the merge itself is vectorised numpy over them: one sort of the fragments by (group, precedence), then per
leaf the last non-NULL value of each group's run (`np.maximum.reduceat`) taken in one `take`. Maps and the
identity map are exploded into (group, key path) rows, sorted once, and folded back from offsets.

`merge_sql` stays the merge of lookups, segment jobs and previews, and the merge any other engine would
compile (there is no scale-out engine yet): this is the one step of the export plan that DuckDB does not run
as SQL, a departure from DESIGN.md's "one plan compiled to SQL" taken for speed (the export took
about 20% less time). The property test holds both merges to one reference, so they cannot drift apart.

The output has `merge_sql`'s columns, in its order, and the values it gives, including the
tie-breaks: the precedence key is compared part by part (`_sort_order`), strings by their byte order. Given a
slice's cluster members, it also lists each cluster's whole identities, as `with_cluster_identities` does on
`merge_sql`'s rows (a third of the export's time when done in SQL).
"""

from __future__ import annotations

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from openprofile.engine.merge import (
    FragmentSource,
    MergeRule,
    Slot,
    fragment_rows_sql,
    merge_slots,
    merged_structure,
)
from openprofile.engine.structure import Structure, TypeNode

__all__ = ["merge_arrow", "merge_table"]

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

IDENTITY_TYPE = pa.struct([
    pa.field("id", pa.string()),
    pa.field("namespace", pa.struct([pa.field("code", pa.string())])),
    pa.field("primary", pa.bool_()),
])


def _valid(array: pa.Array) -> Bools:
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _ranks(array: pa.Array) -> Ints:
    """Dense ranks of the values in ascending (byte) order, NULL as the empty string. The distinct values are
    ranked, not the rows (ranking a few distinct strings repeated over many rows costs far more)."""
    if len(array) == 0:
        return np.empty(0, np.int64)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = pc.fill_null(array, "")
    encoded = pc.dictionary_encode(array)
    ranks = np.asarray(pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="dense"), dtype=np.int64)
    return ranks[np.asarray(encoded.indices, dtype=np.int64)]


def _order(*keys: Ints | pa.Array) -> Ints:
    """The row order sorting by the keys, the first the most significant (strings by byte order): Arrow's
    multi-key sort, several times faster than ranking every string for `np.lexsort`."""
    table = pa.table({f"k{i}": key for i, key in enumerate(keys)})
    return np.asarray(pc.sort_indices(table, sort_keys=[(f"k{i}", "ascending") for i in range(len(keys))]),
                      dtype=np.int64)


def _sort_order(*keys: Ints | npt.NDArray[np.uint64]) -> Ints:
    """`np.lexsort`'s order for integer keys given the most significant first (ties in row order), several times
    faster: the leading keys that fit are packed into one int64 (offset by their minimum, dense-ranked when
    wide) and quicksorted; only the rows tied on those are then ordered by the other keys and their row
    numbers, with `np.lexsort`."""
    count = len(keys[0]) if keys else 0
    if count == 0:
        return np.empty(0, np.int64)
    packed, bits, used = np.zeros(count, dtype=np.int64), 0, 0
    for key in keys:
        low, high = int(key.min()), int(key.max())
        width = (high - low).bit_length()
        if bits + width <= _PACKED_BITS:
            offsets = (key - key.dtype.type(low)).astype(np.int64)
        elif bits + (count - 1).bit_length() <= _PACKED_BITS:  # its ranks may fit
            distinct, ranks = np.unique(key, return_inverse=True)
            offsets, width = ranks.astype(np.int64), (len(distinct) - 1).bit_length()
        if bits + width > _PACKED_BITS:
            break
        packed = (packed << width) | offsets
        bits, used = bits + width, used + 1
    order = np.argsort(packed).astype(np.int64)
    same = np.diff(packed[order]) == 0
    if not same.any():
        return order
    tied = np.zeros(count, dtype=bool)
    tied[1:] = same
    tied[:-1] |= same
    at = np.flatnonzero(tied)
    rows = order[at]
    runs = np.cumsum(np.concatenate([[True], ~same]))[at]
    order[at] = rows[np.lexsort([rows, *(key[rows] for key in reversed(keys[used:])), runs])]
    return order


_PACKED_BITS = 62


def _run_starts(*keys: Ints | pa.Array) -> Ints:
    """Where runs of equal keys start in rows sorted by them (numbers, or strings with NULL as '')."""
    length = len(keys[0]) if keys else 0
    if length == 0:
        return np.empty(0, np.int64)
    change = np.zeros(length, dtype=bool)
    change[0] = True
    for key in keys:
        if isinstance(key, np.ndarray):
            change[1:] |= key[1:] != key[:-1]
        else:
            key = pc.fill_null(key, "")
            change[1:] |= np.asarray(pc.not_equal(key.slice(1), key.slice(0, length - 1)), dtype=bool)
    return np.flatnonzero(change)


def _last_valid(valid_sorted: Bools, starts: Ints) -> Ints:
    """Per run, the position of its last row whose value is valid, or -1."""
    if len(starts) == 0:
        return np.empty(0, np.int64)
    positions = np.where(valid_sorted, np.arange(len(valid_sorted)), -1)
    return np.asarray(np.maximum.reduceat(positions, starts), dtype=np.int64)


def _take(array: pa.Array, indices: Ints, missing: Bools | None = None) -> pa.Array:
    """`array.take`, NULL where `missing`."""
    if missing is not None and missing.any():
        return array.take(pa.array(np.where(missing, 0, indices), mask=missing))
    return array.take(pa.array(indices, type=pa.int64()))


def _explode(array: pa.Array, rows: Ints) -> tuple[Ints, Ints]:
    """For the (valid) list or map values at `rows`: each entry's row (a position in `rows`) and its index into
    the array's raw child arrays (`keys`/`items`, `values`)."""
    offsets = np.asarray(array.offsets, dtype=np.int64)
    firsts = offsets[rows]
    lengths = offsets[rows + 1] - firsts
    parents = np.repeat(np.arange(len(rows)), lengths)
    run_firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    entries = np.repeat(firsts, lengths) + np.arange(int(lengths.sum())) - run_firsts
    return parents, entries


def _offsets(run_starts: Ints, length: int) -> pa.Array:
    return pa.array(np.append(run_starts, length).astype(np.int32))


def _scatter(values: pa.Array, groups: Ints, count: int) -> pa.Array:
    """`values[i]` for group `groups[i]`, NULL for the groups not in `groups` (one value per group)."""
    index = np.full(count, -1, dtype=np.int64)
    index[groups] = np.arange(len(groups))
    return _take(values, index, index < 0)


def _lists(values: pa.Array, groups: Ints, count: int, list_type: pa.DataType) -> pa.Array:
    """One list per group of the `values` (sorted by their group numbers `groups`); empty lists elsewhere."""
    offsets = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=count))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=list_type)


class _Fragments:
    """The fragments ordered by (group, precedence), worst first: `order` (row numbers), `starts` (where each
    group's run starts in `order`), `group` (each row's group number) and `position` (each row's place in
    `order`)."""

    def __init__(self, table: pa.Table, rule: MergeRule) -> None:
        self.table = table
        encoded = pc.dictionary_encode(table.column("_group").combine_chunks())
        codes = np.asarray(encoded.indices, dtype=np.int64)
        keys: list[Ints | npt.NDArray[np.uint64]] = [codes]
        if rule.attribute_merge == "dataSetPrecedence":
            keys.append(np.asarray(table.column("__kp"), dtype=np.int64))
        keys += [
            np.asarray(table.column("__kt"), dtype=np.int64),
            np.asarray(pc.fill_null(table.column("_ingest_ms"), 0), dtype=np.int64),
            _ranks(table.column("_dataset").combine_chunks()),
            _ranks(table.column("_batch").combine_chunks()),
            np.asarray(pc.fill_null(table.column("__kh"), 0), dtype=np.uint64),
        ]
        self.order: Ints = _sort_order(*keys)
        sorted_codes = codes[self.order]
        self.starts = _run_starts(sorted_codes)
        self.count = len(self.starts)
        group_of_code = np.zeros(len(encoded.dictionary), dtype=np.int64)
        group_of_code[sorted_codes[self.starts]] = np.arange(self.count)
        self.group: Ints = group_of_code[codes]
        self.position: Ints = np.empty(len(codes), dtype=np.int64)
        self.position[self.order] = np.arange(len(codes))
        self.keys = encoded.dictionary.take(pa.array(sorted_codes[self.starts], type=pa.int64()))

    def column(self, name: str) -> pa.Array:
        return self.table.column(name).combine_chunks()

    def winner(self, values: pa.Array) -> pa.Array:
        """Each group's value from its best fragment whose value is not NULL."""
        last = _last_valid(_valid(values)[self.order], self.starts)
        return _take(values, self.order[np.maximum(last, 0)], last < 0)

    def distinct(self, name: str) -> pa.Array:
        """Each group's sorted distinct non-NULL strings of a column ([] when none)."""
        values = self.column(name)
        rows = np.flatnonzero(_valid(values))
        ranks = _ranks(values.take(pa.array(rows, type=pa.int64())))
        groups = self.group[rows]
        order = _sort_order(groups, ranks)
        kept = order[_run_starts(groups[order], ranks[order])]
        return _lists(values.take(pa.array(rows[kept], type=pa.int64())), groups[kept], self.count,
                      pa.list_(values.type))

    def latest_ingestion(self) -> pa.Array:
        values = self.column("_ingest_ms")
        valid = _valid(values)[self.order]
        if not self.count:
            return pa.array([], pa.int64())
        numbers = np.asarray(pc.fill_null(values, 0), dtype=np.int64)[self.order]
        latest = np.maximum.reduceat(np.where(valid, numbers, np.iinfo(np.int64).min), self.starts)
        return pa.array(latest, mask=np.add.reduceat(valid.astype(np.int64), self.starts) == 0, type=pa.int64())


def _merge_map(fragments: _Fragments, values: pa.Array, depth: int) -> pa.Array:
    """Maps merged key path by key path (`depth` levels of map keys): each group's map, keys sorted, NULL when
    no entry with a non-NULL value is left."""
    rows = np.flatnonzero(_valid(values))
    groups, ranks = fragments.group[rows], fragments.position[rows]
    keys: list[pa.Array] = []
    level, types = values, [values.type]
    for number in range(depth):
        parents, entries = _explode(level, rows)
        groups, ranks = groups[parents], ranks[parents]
        keys = [k.take(pa.array(parents, type=pa.int64())) for k in keys]
        keys.append(level.keys.take(pa.array(entries, type=pa.int64())))
        level = level.items
        kept = _valid(level)[entries]
        rows = entries[kept]
        groups, ranks = groups[kept], ranks[kept]
        keys = [k.filter(pa.array(kept)) for k in keys]
        if number + 1 < depth:
            types.append(level.type)
    order = _order(groups, *keys, ranks)
    taken = pa.array(order, type=pa.int64())
    keys = [k.take(taken) for k in keys]
    ends = np.append(_run_starts(groups[order], *keys)[1:], len(order)) - 1 if len(order) else np.empty(0, np.int64)
    chosen = order[ends]
    merged: pa.Array = level.take(pa.array(rows[chosen], type=pa.int64()))
    groups = groups[chosen]
    keys = [k.take(pa.array(ends, type=pa.int64())) for k in keys]
    for number in range(depth - 1, -1, -1):
        starts = _run_starts(groups, *keys[:number])
        merged = pa.MapArray.from_arrays(_offsets(starts, len(groups)), keys[number], merged, type=types[number])
        groups = groups[starts]
        keys = [k.take(pa.array(starts, type=pa.int64())) for k in keys[:number]]
    return _scatter(merged, groups, fragments.count)


def _merge_identity_map(fragments: _Fragments, values: pa.Array) -> tuple[pa.Array, Identities]:
    """The union of the groups' identity maps (see the `merge` module docstring), and its identities."""
    rows = np.flatnonzero(_valid(values))
    parents, entries = _explode(values, rows)
    groups, ranks = fragments.group[rows][parents], fragments.position[rows][parents]
    lists = values.items
    kept = _valid(lists)[entries]
    namespaces = values.keys.take(pa.array(entries[kept], type=pa.int64()))
    groups, ranks, entries = groups[kept], ranks[kept], entries[kept]
    parents, items_at = _explode(lists, entries)
    groups, ranks = groups[parents], ranks[parents]
    namespaces = namespaces.take(pa.array(parents, type=pa.int64()))
    item_type: pa.StructType = lists.type.value_type
    fields = dict(zip([f.name for f in item_type], lists.values.flatten(), strict=True))
    ids = fields["id"].take(pa.array(items_at, type=pa.int64()))
    kept = _valid(ids) & np.asarray(pc.fill_null(pc.not_equal(ids, ""), False), dtype=bool)
    items_at, groups, ranks = items_at[kept], groups[kept], ranks[kept]
    ids, namespaces = ids.filter(pa.array(kept)), namespaces.filter(pa.array(kept))
    order = _order(groups, namespaces, ids, ranks)
    items_at, groups = items_at[order], groups[order]
    taken = pa.array(order, type=pa.int64())
    ids, namespaces = ids.take(taken), namespaces.take(taken)
    runs = _run_starts(groups, namespaces, ids)
    first = pa.array(runs, type=pa.int64())
    primary = np.zeros(len(runs), dtype=bool)
    merged_fields: list[pa.Array] = []
    for item_field in item_type:
        values_at = fields[item_field.name].take(pa.array(items_at, type=pa.int64()))
        if item_field.name == "id":
            merged_fields.append(ids.take(first))
        elif item_field.name == "primary" and pa.types.is_boolean(item_field.type):
            flags = pc.fill_null(values_at, False)
            said_true = np.asarray(flags, dtype=bool)
            said = _valid(values_at)
            any_true = np.maximum.reduceat(said_true, runs) if len(runs) else np.zeros(0, dtype=bool)
            any_said = np.maximum.reduceat(said, runs) if len(runs) else np.zeros(0, dtype=bool)
            primary = any_true.astype(bool)
            merged_fields.append(pa.array(primary, mask=~any_said.astype(bool), type=pa.bool_()))
        else:
            last = _last_valid(_valid(values_at), runs)
            merged_fields.append(_take(values_at, np.maximum(last, 0), last < 0))
    items = pa.StructArray.from_arrays(merged_fields, fields=list(item_type))
    run_groups = groups[runs]
    run_namespaces = namespaces.take(first)
    per_namespace = _run_starts(run_groups, run_namespaces)
    item_lists = pa.ListArray.from_arrays(_offsets(per_namespace, len(runs)), items, type=lists.type)
    map_groups = run_groups[per_namespace]
    per_group = _run_starts(map_groups)
    maps = pa.MapArray.from_arrays(_offsets(per_group, len(per_namespace)),
                                   run_namespaces.take(pa.array(per_namespace, type=pa.int64())), item_lists,
                                   type=values.type)
    identity_map = _scatter(maps, map_groups[per_group], fragments.count)

    return identity_map, (run_groups, pc.utf8_lower(run_namespaces), ids.take(first), primary)


Identities = tuple[Ints, pa.Array, pa.Array, Bools]
"""(group numbers, namespace codes, ids, primary flags) of a merge's identities, one per (namespace, id)."""


def _identity_lists(count: int, identities: Identities, members: pa.Table | None, keys: pa.Array) -> pa.Array:
    """`identities`: each group's distinct (namespace, id), primary when any item says so, ordered by
    (namespace, id). With `members` (the members index's (_group, ns, id), `members_relation`), every identity
    of the group's cluster instead, those its fragments do not name added as not primary, ordered by (id,
    namespace): what `openprofile.engine.export.with_cluster_identities` makes of `merge_sql`'s rows."""
    groups, namespaces, ids, primary = identities
    if members is not None:
        numbers = pc.index_in(members.column("_group"), value_set=keys)
        kept = pc.is_valid(numbers)
        groups = np.concatenate([groups, np.asarray(numbers.filter(kept), dtype=np.int64)])
        namespaces = pa.concat_arrays([namespaces.cast(pa.string()),
                                       members.column("ns").filter(kept).combine_chunks().cast(pa.string())])
        ids = pa.concat_arrays([ids.cast(pa.string()),
                                members.column("id").filter(kept).combine_chunks().cast(pa.string())])
        primary = np.concatenate([primary, np.zeros(len(groups) - len(primary), dtype=bool)])
    first, second = (ids, namespaces) if members is not None else (namespaces, ids)
    order = _order(groups, first, second, ~primary)
    taken = pa.array(order, type=pa.int64())
    distinct = order[_run_starts(groups[order], first.take(taken), second.take(taken))]
    return _identity_list_array(ids, namespaces, primary, distinct, groups[distinct], count)


def _identity_list_array(ids: pa.Array, namespaces: pa.Array, primary: Bools, picked: Ints, groups: Ints,
                         count: int) -> pa.Array:
    """The `identities` column: the identities at `picked` (ordered by their `groups`), one list per group."""
    taken = pa.array(picked, type=pa.int64())
    items = pa.StructArray.from_arrays(
        [ids.take(taken), pa.StructArray.from_arrays([namespaces.take(taken)], names=["code"]),
         pa.array(primary[picked], type=pa.bool_())],
        fields=list(IDENTITY_TYPE))
    return _lists(items, groups, count, pa.list_(IDENTITY_TYPE))


def _member_identity_lists(count: int, identities: Identities, members: pa.Table, keys: pa.Array) -> pa.Array:
    """`_identity_lists` with `members` when they cover the fragments' identities (`merge_table`'s
    `members_cover`): each group's members in their order, primary where one of its primary identities is
    that member. Only the primary identities are matched, each against its own group's few members, so no
    string is sorted or hashed per identity."""
    numbers = np.asarray(pc.fill_null(pc.index_in(members.column("_group"), value_set=keys), -1), dtype=np.int64)
    listed = np.flatnonzero(numbers >= 0)
    listed = listed[np.argsort(numbers[listed], kind="stable")]  # by group, each group's in the members' order
    listed_groups = numbers[listed]
    member_ids = members.column("id").combine_chunks().cast(pa.string())
    member_ns = members.column("ns").combine_chunks().cast(pa.string())
    groups, namespaces, ids, primary = identities
    said = np.flatnonzero(primary)
    firsts = np.searchsorted(listed_groups, groups[said])
    lengths = np.searchsorted(listed_groups, groups[said], side="right") - firsts
    owner = np.repeat(np.arange(len(said)), lengths)  # each (primary identity, member of its group) pair
    member = listed[np.repeat(firsts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))]
    owner = said[owner]
    same = np.asarray(pc.fill_null(pc.equal(ids.cast(pa.string()).take(pa.array(owner, type=pa.int64())),
                                            member_ids.take(pa.array(member, type=pa.int64()))), False), dtype=bool)
    owner, member = owner[same], member[same]  # the same id: the namespace decides
    same = pc.equal(namespaces.cast(pa.string()).take(pa.array(owner, type=pa.int64())),
                    member_ns.take(pa.array(member, type=pa.int64())))
    flags = np.zeros(members.num_rows, dtype=bool)
    flags[member[np.asarray(pc.fill_null(same, False), dtype=bool)]] = True
    return _identity_list_array(member_ids, member_ns, flags, listed, listed_groups, count)


def _struct(path: tuple[str, ...], node: TypeNode, merged: dict[tuple[str, ...], pa.Array]) -> pa.Array:
    """The merged value at `path`, structs rebuilt from their merged leaves (NULL when all of them are)."""
    if path in merged:
        return merged[path]
    assert isinstance(node, dict) and "struct" in node
    children = [_struct((*path, name), child, merged) for name, child in node["struct"].items()]
    all_null = np.ones(len(children[0]) if children else 0, dtype=bool)
    for child in children:
        all_null &= ~_valid(child)
    return pa.StructArray.from_arrays(children, names=list(node["struct"]), mask=pa.array(all_null))


def merge_table(fragments: pa.Table, structure: Structure, slots: list[Slot], rule: MergeRule, *,
                members: pa.Table | None = None, members_cover: bool = False) -> pa.Table:
    """Fragment rows (`fragment_rows_sql`'s columns) → one merged row per group, `merge_sql`'s columns; with
    `members`, `identities` lists each group's whole cluster (`_identity_lists`). `members_cover`: the members
    are grouped by _group, each group's sorted by (id, ns), and include every identity the fragments name, as
    the store's partitions do (its identity graph is made from the same records' identities), so the
    identities are the members (`_member_identity_lists`)."""
    if fragments.column("_group").null_count:
        fragments = fragments.filter(pc.is_valid(fragments.column("_group")))
    ranked = _Fragments(fragments, rule)
    merged: dict[tuple[str, ...], pa.Array] = {}
    identities: Identities = (np.empty(0, np.int64), pa.array([], pa.string()), pa.array([], pa.string()),
                              np.empty(0, dtype=bool))
    for slot in slots:
        values = ranked.column(slot.alias)
        if slot.kind == "leaf":
            merged[slot.path] = ranked.winner(values)
        elif slot.kind == "map":
            merged[slot.path] = _merge_map(ranked, values, slot.depth)
        else:
            merged[slot.path], identities = _merge_identity_map(ranked, values)
    columns: dict[str, pa.Array] = {"_group": ranked.keys}
    for name, node in structure.items():
        columns[name] = _struct((name,), node, merged)
    columns["identities"] = (_member_identity_lists(ranked.count, identities, members, ranked.keys)
                             if members is not None and members_cover
                             else _identity_lists(ranked.count, identities, members, ranked.keys))
    columns["_sources"] = ranked.distinct("_dataset")
    columns["_tags"] = ranked.distinct("_batch")
    columns["_last_modified_ms"] = ranked.latest_ingestion()
    return pa.table(columns)


def merge_arrow(conn: duckdb.DuckDBPyConnection, sources: list[FragmentSource], rule: MergeRule, *,
                where: str | None = None, members: str | None = None) -> pa.Table:
    """Merge the sources' fragments, read on `conn`, in one go (`merge_sql`'s result as an Arrow table); with
    `members` (a relation of (_group, ns, id)), identities as `with_cluster_identities` gives them."""
    structure = merged_structure(sources)
    table = conn.sql(fragment_rows_sql(sources, rule, where=where)).to_arrow_table()
    cluster = conn.sql(f"SELECT _group, ns, id FROM {members}").to_arrow_table() if members else None
    return merge_table(table, structure, merge_slots(structure), rule, members=cluster)
