"""The export's floor and its peers, each run as its own process so that its CPU time and peak memory are its own.

    python bench/peers.py {floor|pandas|spark} {profiles|events|segment} SPEC.json RESULT.json

`SPEC.json` names the lake files the server ingested and how they were ingested (see `Spec`); the peer computes,
from those files alone, what the export computes — or, for the floor, only reads and writes them — and writes
its rows as Parquet under `{spec.out}/{peer}-{task}/`, then `RESULT.json`: rows, wall and CPU seconds of the work,
and the process's peak RSS (for Spark, the JVM's too).

Tasks, as the three exports of `run.py`:

- `profiles`: every merged profile (pdg: the connected components of the identity graph, whose links are any two
  identities in one record or event; timestampOrdered: per leaf, the value of the fragment with the latest
  effective time — `extSourceSystemAudit.lastUpdatedDate`, else the batch's ingestion time — then ingestion time,
  dataset id, batch id; maps key by key; `identityMap` the union; `identities` every identity of the cluster,
  primary when a fragment marks it so); clusters of more than `max_cluster_size` identities are left out;
- `events`: the same, each profile with its events (`timeSeriesEvents`, by event time);
- `segment`: the profiles whose merged `segmentMembership` has one of the filter's segments in one of its statuses.

The floor reads the record files (and, for `events`, the event files) with DuckDB and writes them back unmerged.

Peers' output rows carry `_key`, the smallest `namespace:id` of the profile's identities (namespace lower-cased),
which is how `verify.py` matches them with the export's rows.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("profiles", "events", "segment")
PEERS = ("floor", "pandas", "spark")


@dataclass(frozen=True)
class Source:
    """One ingested batch: its dataset, batch id, ingestion time (ms, the store's `_ingest_ms`) and lake files."""

    dataset: str
    batch: str
    ingest_ms: int
    files: list[str]


@dataclass
class Spec:
    records: list[Source]
    events: list[Source]
    segments: list[dict[str, Any]]  # the export's filter.segments: {segmentId, segmentNs, status}
    out: str
    threads: int = 2
    max_cluster_size: int = 50
    spark_memory: str = "8g"
    spark_partitions: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Spec:
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Spec:
        raw = dict(raw)
        raw["records"] = [Source(**s) for s in raw["records"]]
        raw["events"] = [Source(**s) for s in raw["events"]]
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    def statuses(self) -> dict[str, tuple[str, list[str]]]:
        return {s["segmentId"]: (str(s.get("segmentNs", "ups")).lower(), list(s.get("status") or
                                                                            ["realized", "existing"]))
                for s in self.segments}


def _self_peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The floor: read the data once, write it back unmerged


def run_floor(spec: Spec, task: str, out: Path) -> tuple[int, Callable[[], None]]:
    import duckdb

    files = [f for s in spec.records for f in s.files]
    if task == "events":
        files += [f for s in spec.events for f in s.files]
    out.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect()
    conn.execute(f"SET threads = {int(spec.threads)}")
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    target = str(out).replace("'", "''")
    conn.execute(f"COPY (SELECT * FROM read_parquet([{listed}], union_by_name = true)) TO '{target}' "
                 "(FORMAT parquet, COMPRESSION zstd, PER_THREAD_OUTPUT true)")
    row = conn.execute(f"SELECT count(*) FROM read_parquet('{target}/*.parquet')").fetchone()
    conn.close()
    return (int(row[0]) if row else 0), lambda: None


# --------------------------------------------------------------------------------------------------
# pandas: the merge a data engineer would write by hand (pyarrow reads the nested columns and writes the lists)


def run_pandas(spec: Spec, task: str, out: Path) -> tuple[int, Callable[[], None]]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    arrow = pd.ArrowDtype

    def flatten_structs(table: pa.Table) -> pa.Table:
        while any(pa.types.is_struct(f.type) for f in table.schema):
            table = table.flatten()
        return table

    def item_counts(column: pa.ChunkedArray) -> Any:
        """The number of identityMap items of each row."""
        idm = pa.concat_arrays(column.chunks) if column.num_chunks != 1 else column.chunk(0)
        offsets = idm.offsets.to_numpy()
        entry_row = np.repeat(np.arange(len(idm)), np.diff(offsets))
        lengths = pc.list_value_length(idm.items.slice(offsets[0], offsets[-1] - offsets[0])).fill_null(0)
        return np.bincount(entry_row, weights=lengths.to_numpy(), minlength=len(idm))

    def identity_items(column: pa.ChunkedArray, first_row: int, rows: Any = None) -> pd.DataFrame:
        """One row per identityMap item: row (`first_row` + the row's position, or + `rows[position]`), ns (as
        written), id, primary, authenticatedState."""
        idm = pa.concat_arrays(column.chunks) if column.num_chunks != 1 else column.chunk(0)
        offsets = idm.offsets.to_numpy()
        entry_row = np.repeat(np.arange(len(idm)), np.diff(offsets))
        if rows is not None:
            entry_row = rows[entry_row]
        keys = idm.keys.slice(offsets[0], offsets[-1] - offsets[0])
        lists = idm.items.slice(offsets[0], offsets[-1] - offsets[0])
        item_entry = pc.list_parent_indices(lists).to_numpy()
        items = pc.list_flatten(lists)
        frame = pd.DataFrame({
            "row": entry_row[item_entry] + first_row,
            "ns": keys.take(pa.array(item_entry)).to_pandas(types_mapper=arrow),
            "id": items.field("id").to_pandas(types_mapper=arrow),
        })
        for name in ("primary", "authenticatedState"):
            if items.type.get_field_index(name) >= 0:
                frame[name] = items.field(name).to_pandas(types_mapper=arrow)
        return frame[frame["id"].notna() & (frame["id"] != "")]

    # Records: one frame of flattened leaves for every fragment, plus their identity and segment items.
    leaves: list[pd.DataFrame] = []
    items: list[pd.DataFrame] = []
    segments: list[pd.DataFrame] = []
    row = 0
    for source in spec.records:
        table = pq.read_table(source.files)
        n = table.num_rows
        maps = [f.name for f in table.schema if pa.types.is_map(f.type)]
        flat = flatten_structs(table.drop_columns(maps)).to_pandas(types_mapper=arrow)
        flat["_row"] = np.arange(row, row + n)
        flat["_dataset"], flat["_batch"], flat["_ingest_ms"] = source.dataset, source.batch, source.ingest_ms
        leaves.append(flat)
        items.append(identity_items(table.column("identityMap"), row))
        if "segmentMembership" in maps:
            outer = pa.concat_arrays(table.column("segmentMembership").chunks)
            o_off = outer.offsets.to_numpy()
            o_row = np.repeat(np.arange(n), np.diff(o_off)) + row
            inner = outer.items.slice(o_off[0], o_off[-1] - o_off[0])
            i_off = inner.offsets.to_numpy()
            i_entry = np.repeat(np.arange(len(inner)), np.diff(i_off))
            values = inner.items.slice(i_off[0], i_off[-1] - i_off[0])
            segments.append(pd.DataFrame({
                "row": o_row[i_entry],
                "ns": outer.keys.slice(o_off[0], o_off[-1] - o_off[0]).take(pa.array(i_entry)).to_pandas(
                    types_mapper=arrow),
                "segment": inner.keys.slice(i_off[0], i_off[-1] - i_off[0]).to_pandas(types_mapper=arrow),
                "status": values.field("status").to_pandas(types_mapper=arrow),
                "lastQualificationTime": values.field("lastQualificationTime").to_pandas(types_mapper=arrow),
            }))
        row += n
    fragments = pd.concat(leaves, ignore_index=True)
    record_items = pd.concat(items, ignore_index=True)
    # Events link identities only when they carry two or more: the others add nothing to the graph (an identity
    # seen only alone is a cluster of its own, which has no record fragment).
    event_frames, event_rows = [], 0
    for source in spec.events:  # events are numbered after the records, in source order
        column = pq.read_table(source.files, columns=["identityMap"]).column("identityMap")
        linking = np.flatnonzero(item_counts(column) >= 2)
        event_frames.append(identity_items(column.take(pa.array(linking)), row + event_rows, linking))
        event_rows += len(column)
    event_items = pd.concat(event_frames or [record_items.iloc[:0]], ignore_index=True)

    # The identity graph: nodes numbered in key order, so the smallest number is the smallest key.
    everything = pd.concat([record_items[["row", "ns", "id"]], event_items[["row", "ns", "id"]]], ignore_index=True)
    node_keys = everything["ns"].str.lower() + ":" + everything["id"]
    codes, uniques = pd.factorize(node_keys, sort=True)
    everything["node"] = codes
    first = everything.groupby("row")["node"].transform("min").to_numpy()
    a, b = first, codes
    label = np.arange(len(uniques))
    while True:  # min-label propagation along the links, with pointer jumping
        smallest = np.minimum(label[a], label[b])
        proposed = pd.Series(np.concatenate([smallest, smallest])).groupby(np.concatenate([a, b])).min()
        new = label.copy()
        new[proposed.index.to_numpy()] = np.minimum(new[proposed.index.to_numpy()], proposed.to_numpy())
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    size = np.bincount(label, minlength=len(uniques))

    # Each record's primary identity (marked primary, else the first by namespace then id) and its cluster.
    record_items["node"] = codes[: len(record_items)]
    record_items["nslower"] = record_items["ns"].str.lower()
    primary = record_items.assign(notprimary=~record_items["primary"].fillna(False).astype(bool)).sort_values(
        ["row", "notprimary", "nslower", "id"]).drop_duplicates("row")
    fragments = fragments.merge(primary[["row", "node"]].rename(columns={"row": "_row"}), on="_row")
    # A newer record for the same (dataset, primary identity) replaces the older one.
    fragments = fragments.drop_duplicates(["_dataset", "node"], keep="last")
    fragments["_cluster"] = label[fragments["node"].to_numpy()]
    fragments = fragments[size[fragments["_cluster"].to_numpy()] <= spec.max_cluster_size]
    audit = "extSourceSystemAudit.lastUpdatedDate"
    ingest_us = fragments["_ingest_ms"].astype("int64") * 1000
    if audit in fragments:
        updated = fragments[audit].astype(arrow(pa.timestamp("us", tz="UTC"))).astype("int64[pyarrow]")
        fragments["_effective"] = updated.fillna(ingest_us).astype("int64")
    else:
        fragments["_effective"] = ingest_us
    order = ["_cluster", "_effective", "_ingest_ms", "_dataset", "_batch"]
    fragments = fragments.sort_values(order)
    keys = fragments[["_row", *order]]

    # Per leaf, the value of the latest fragment that has one.
    leaf_columns = [c for c in fragments.columns if not c.startswith("_") and c != "node"]
    merged = fragments.groupby("_cluster", sort=True)[leaf_columns].last()
    clusters = merged.index.to_numpy()

    # segmentMembership, key by key; identityMap, the union; identities, the whole cluster.
    def by_fragment(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.merge(keys.rename(columns={"_row": "row"}), on="row").sort_values(order)

    membership = (by_fragment(pd.concat(segments, ignore_index=True)) if segments else None)
    if membership is not None:
        membership = membership.drop_duplicates(["_cluster", "ns", "segment"], keep="last").sort_values(
            ["_cluster", "ns", "segment"])
    union = by_fragment(record_items)
    union = union.groupby(["_cluster", "ns", "id"], sort=True).agg(
        primary=("primary", "max"), authenticatedState=("authenticatedState", "last")).reset_index()
    marked = union.assign(nslower=union["ns"].str.lower()).groupby(["_cluster", "nslower", "id"])["primary"].max()
    members = pd.DataFrame({"_cluster": label, "key": uniques})
    members = members[np.isin(members["_cluster"].to_numpy(), clusters)]
    members[["nslower", "id"]] = members["key"].str.split(":", n=1, expand=True)
    members = members.merge(marked.rename("primary").reset_index(), on=["_cluster", "nslower", "id"], how="left")
    members["primary"] = members["primary"].fillna(False).astype(bool)
    members = members.sort_values(["_cluster", "id", "nslower"])

    keep = np.ones(len(clusters), dtype=bool)
    if task == "segment":
        wanted = spec.statuses()
        assert membership is not None, "no segmentMembership to filter on"
        hit = np.zeros(len(membership), dtype=bool)
        for segment_id, (namespace, statuses) in wanted.items():
            hit |= ((membership["ns"].str.lower() == namespace) & (membership["segment"] == segment_id)
                    & membership["status"].isin(statuses)).to_numpy()
        keep = np.isin(clusters, membership.loc[hit, "_cluster"].unique())

    def lists(frame: pd.DataFrame, columns: dict[str, str]) -> pa.Array:
        """The frame's rows (sorted by `_cluster`) as one list of structs per exported cluster."""
        counts = frame.groupby("_cluster").size().reindex(clusters, fill_value=0).to_numpy()
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values = pa.StructArray.from_arrays([pa.array(frame[c], from_pandas=True) for c in columns.values()],
                                            names=list(columns))
        return pa.LargeListArray.from_arrays(pa.array(offsets), values, mask=pa.array(counts == 0))

    columns: dict[str, pa.Array] = {"_key": pa.array(uniques[clusters])}
    for name in leaf_columns:
        columns[name] = pa.array(merged[name], from_pandas=True)
    if membership is not None:
        columns["segmentMembership"] = lists(membership, {"ns": "ns", "segment": "segment", "status": "status",
                                                          "lastQualificationTime": "lastQualificationTime"})
    columns["identityMap"] = lists(union, {"ns": "ns", "id": "id", "primary": "primary",
                                           "authenticatedState": "authenticatedState"})
    columns["identities"] = lists(members, {"ns": "nslower", "id": "id", "primary": "primary"})
    if task == "events":
        events = pa.concat_tables([pq.read_table(s.files) for s in spec.events], promote_options="default")
        # Each event belongs to the cluster of its primary identity (marked primary, else the first by namespace
        # then id); events whose primary identity is in no profile's cluster are left out.
        every = identity_items(events.column("identityMap"), row)
        marked = every["primary"].fillna(False).astype(bool)
        primary_rows = every[marked].drop_duplicates("row")
        unmarked = every[~every["row"].isin(primary_rows["row"])]
        unmarked = unmarked.assign(nslower=unmarked["ns"].str.lower()).sort_values(["row", "nslower", "id"])
        event_primary = pd.concat([primary_rows, unmarked.drop_duplicates("row")], ignore_index=True)
        node = pd.Index(uniques).get_indexer(event_primary["ns"].str.lower() + ":" + event_primary["id"])
        event_primary = event_primary.assign(node=node)[node >= 0]
        del every, marked, primary_rows, unmarked
        placed = pd.DataFrame({"row": np.arange(events.num_rows) + row,
                               "_id": events.column("_id").to_pandas(types_mapper=arrow),
                               "timestamp": events.column("timestamp").to_pandas(types_mapper=arrow)})
        placed = placed.merge(event_primary[["row", "node"]], on="row").drop_duplicates("_id")
        placed["_cluster"] = label[placed["node"].to_numpy()]
        placed = placed[np.isin(placed["_cluster"].to_numpy(), clusters)].sort_values(
            ["_cluster", "timestamp", "_id"])
        counts = placed.groupby("_cluster").size().reindex(clusters, fill_value=0).to_numpy()
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        taken = events.take(pa.array(placed["row"].to_numpy() - row))
        del events
        values = taken.to_struct_array().combine_chunks()
        del taken
        columns["timeSeriesEvents"] = pa.LargeListArray.from_arrays(pa.array(offsets), values,
                                                                    mask=pa.array(counts == 0))
    table = pa.table(columns).filter(pa.array(keep))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-0.parquet", compression="zstd")

    def write_clusters() -> None:  # the identity graph, for checking segment counts (not timed)
        pq.write_table(pa.table({"node": pa.array(uniques), "_key": pa.array(uniques[label]),
                                 "size": pa.array(size[label])}), Path(spec.out) / "pandas-clusters.parquet")

    return int(table.num_rows), write_clusters


# --------------------------------------------------------------------------------------------------
# Spark: the same export in PySpark, local mode on the same cores


def _spark_session(spec: Spec) -> Any:
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(f"local[{int(spec.threads)}]").appName("openprofile-bench")
            .config("spark.driver.memory", spec.spark_memory)
            .config("spark.sql.shuffle.partitions", str(spec.spark_partitions))
            .config("spark.default.parallelism", str(spec.spark_partitions))
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.local.dir", str(Path(spec.out) / "spark-tmp"))
            .config("spark.driver.extraJavaOptions", "-XX:+UseParallelGC")
            .getOrCreate())


def run_spark(spark: Any, spec: Spec, task: str, out: Path) -> tuple[int, Callable[[], None]]:
    from pyspark.sql import DataFrame, Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def identity_keys(column: str = "identityMap") -> Any:
        """The row's identities as `namespace:id` (namespace lower-cased), empty ids left out."""
        return F.filter(F.flatten(F.transform(F.map_entries(F.col(column)), lambda e: F.transform(
            F.coalesce(e["value"], F.array()), lambda i: F.concat(F.lower(e["key"]), F.lit(":"), i["id"])))),
            lambda k: ~k.endswith(":") & k.isNotNull())

    def primary_key(column: str = "identityMap") -> Any:
        """The row's primary identity: marked primary, else the first by namespace then id."""
        ranked = F.flatten(F.transform(F.map_entries(F.col(column)), lambda e: F.transform(
            F.coalesce(e["value"], F.array()), lambda i: F.struct(
                (~F.coalesce(i["primary"], F.lit(False))).alias("np"), F.lower(e["key"]).alias("ns"),
                i["id"].alias("id")))))
        ranked = F.filter(ranked, lambda x: x["id"].isNotNull() & (x["id"] != ""))
        best = F.array_min(ranked)
        return F.concat(best["ns"], F.lit(":"), best["id"])

    def read(sources: list[Any], columns: list[str] | None = None) -> Any:
        frames = []
        for source in sources:
            frame = spark.read.parquet(*source.files)
            if columns is not None:
                frame = frame.select(*columns)
            frames.append(frame.withColumn("_dataset", F.lit(source.dataset)).withColumn("_batch", F.lit(
                source.batch)).withColumn("_ingest_ms", F.lit(source.ingest_ms).cast("long")))
        result = frames[0]
        for frame in frames[1:]:
            result = result.unionByName(frame, allowMissingColumns=True)
        return result

    records = read(spec.records).withColumn("_rid", F.monotonically_increasing_id())
    event_ids = read(spec.events, ["identityMap"]) if spec.events else None

    # The identity graph: star links from each row's smallest identity, then min-label propagation.
    def links(frame: DataFrame, least: int) -> DataFrame:
        keyed = frame.select(identity_keys().alias("k")).where(F.size("k") >= least)
        return keyed.select(F.array_min("k").alias("a"), F.explode("k").alias("b"))

    edges = links(records, 1)
    if event_ids is not None:  # an event with one identity links nothing (alone, it is a cluster without records)
        edges = edges.unionByName(links(event_ids, 2))
    edges = edges.distinct().localCheckpoint()
    labels = edges.select(F.col("b").alias("node")).union(edges.select(F.col("a").alias("node"))).distinct() \
        .withColumn("label", F.col("node")).localCheckpoint()
    while True:
        la, lb = labels.alias("la"), labels.alias("lb")
        joined = edges.join(la, F.col("a") == F.col("la.node")).join(lb, F.col("b") == F.col("lb.node")) \
            .select("a", "b", F.least(F.col("la.label"), F.col("lb.label")).alias("m"))
        proposed = joined.select(F.col("a").alias("node"), "m").union(joined.select(F.col("b").alias("node"), "m")) \
            .groupBy("node").agg(F.min("m").alias("m"))
        step = labels.join(proposed, "node", "left").select(
            "node", F.least(F.col("label"), F.coalesce(F.col("m"), F.col("label"))).alias("label"))
        jumped = step.alias("s").join(step.alias("t"), F.col("s.label") == F.col("t.node"), "left").select(
            F.col("s.node").alias("node"), F.least(F.col("s.label"), F.coalesce(F.col("t.label"), F.col("s.label")))
            .alias("label")).localCheckpoint()
        changed = jumped.alias("n").join(labels.alias("o"), "node").where(F.col("n.label") != F.col("o.label")).count()
        labels = jumped
        if changed == 0:
            break
    sizes = labels.groupBy("label").agg(F.count("*").alias("size"))
    graph = labels.join(sizes, "label").localCheckpoint()
    labels = graph.where(F.col("size") <= spec.max_cluster_size).select("node", F.col("label").alias("_cluster"))

    # Fragments: each record under its primary identity's cluster; a newer record of a key replaces the older.
    fragments = records.withColumn("_node", primary_key()).join(labels.withColumnRenamed("node", "_node"), "_node")
    newest = Window.partitionBy("_dataset", "_node").orderBy(F.col("_ingest_ms").desc(), F.col("_rid").desc())
    fragments = fragments.withColumn("_n", F.row_number().over(newest)).where("_n = 1").drop("_n")
    effective = F.coalesce(F.unix_micros(F.col("extSourceSystemAudit.lastUpdatedDate")), F.col("_ingest_ms") * 1000)
    fragments = fragments.withColumn("_prec", F.struct(effective.alias("t"), F.col("_ingest_ms").alias("i"),
                                                       F.col("_dataset").alias("d"), F.col("_batch").alias("b")))
    fragments = fragments.localCheckpoint()

    def winner(value: Any) -> Any:
        return F.max_by(value, F.when(value.isNotNull(), F.col("_prec")))

    schema = fragments.schema
    aggregates: list[Any] = []
    rebuild: list[Any] = []

    def leaves(path: list[str], data_type: Any) -> tuple[Any, list[Any]]:
        """The merged value at `path` rebuilt from its leaves, and the aliases of those leaves."""
        if isinstance(data_type, T.StructType):
            parts, under = [], []
            for child in data_type.fields:
                expr, refs = leaves([*path, child.name], child.dataType)
                parts.append(expr.alias(child.name))
                under += refs
            all_null: Any = None
            for ref in under:
                all_null = ref.isNull() if all_null is None else all_null & ref.isNull()
            return F.when(all_null, F.lit(None)).otherwise(F.struct(*parts)), under
        alias = "__" + "__".join(path)
        source = F.col(path[0])
        for name in path[1:]:
            source = source.getField(name)
        aggregates.append(winner(source).alias(alias))
        return F.col(alias), [F.col(alias)]

    maps = {"identityMap", "segmentMembership"}
    for column in schema.fields:
        if column.name.startswith("_") or column.name in maps:
            continue
        expr, _ = leaves([column.name], column.dataType)
        rebuild.append(expr.alias(column.name))
    merged = fragments.groupBy("_cluster").agg(*aggregates).select("_cluster", *rebuild)

    # segmentMembership: key by key (namespace, segment), the latest fragment's value.
    if "segmentMembership" in schema.fieldNames():
        seg = fragments.select("_cluster", "_prec", F.explode("segmentMembership").alias("ns", "inner")) \
            .select("_cluster", "_prec", "ns", F.explode("inner").alias("segment", "v")).where(F.col("v").isNotNull())
        seg = seg.groupBy("_cluster", "ns", "segment").agg(F.max_by("v", "_prec").alias("v"))
        seg = seg.groupBy("_cluster", "ns").agg(F.map_from_entries(F.collect_list(F.struct("segment", "v")))
                                                .alias("m")).groupBy("_cluster").agg(
            F.map_from_entries(F.collect_list(F.struct("ns", "m"))).alias("segmentMembership"))
        merged = merged.join(seg, "_cluster", "left")

    # identityMap: the union of the fragments' items, per (namespace, id); identities: the whole cluster.
    items = fragments.select("_cluster", "_prec", F.explode("identityMap").alias("ns", "list")) \
        .select("_cluster", "_prec", "ns", F.explode("list").alias("item")) \
        .where(F.col("item.id").isNotNull() & (F.col("item.id") != ""))
    union = items.groupBy("_cluster", "ns", F.col("item.id").alias("id")).agg(
        F.max("item.primary").alias("primary"),
        winner(F.col("item.authenticatedState")).alias("authenticatedState"))
    identity_map = union.groupBy("_cluster", "ns").agg(F.array_sort(F.collect_list(F.struct(
        "id", "primary", "authenticatedState"))).alias("l")).groupBy("_cluster").agg(
        F.map_from_entries(F.collect_list(F.struct("ns", "l"))).alias("identityMap"))
    marked = union.where(F.col("primary")).select("_cluster", F.concat(F.lower("ns"), F.lit(":"), F.col("id"))
                                                  .alias("node")).distinct().withColumn("p", F.lit(True))
    profiles = merged.select("_cluster")
    identities = labels.join(profiles, "_cluster").join(marked, ["_cluster", "node"], "left").select(
        "_cluster", F.struct(F.split("node", ":", 2)[1].alias("id"),
                             F.struct(F.split("node", ":", 2)[0].alias("code")).alias("namespace"),
                             F.coalesce("p", F.lit(False)).alias("primary")).alias("i")) \
        .groupBy("_cluster").agg(F.sort_array(F.collect_list("i")).alias("identities"))
    result = merged.join(identity_map, "_cluster", "left").join(identities, "_cluster", "left")

    if task == "segment":
        def member(segment_id: str, namespace: str, statuses: list[str]) -> Any:
            return F.exists(F.map_entries("segmentMembership"), lambda e: (F.lower(e["key"]) == namespace)
                            & e["value"][segment_id]["status"].isin(statuses))

        condition: Any = None
        for segment_id, (namespace, statuses) in spec.statuses().items():
            hit = member(segment_id, namespace, statuses)
            condition = hit if condition is None else condition | hit
        result = result.where(F.coalesce(condition, F.lit(False)))
    if task == "events" and spec.events:
        events = read(spec.events).drop("_dataset", "_batch", "_ingest_ms").dropDuplicates(["_id"])
        columns = events.columns
        events = events.withColumn("_node", primary_key()).join(labels.withColumnRenamed("node", "_node"), "_node")
        def by_time(left: Any, right: Any) -> Any:
            return (F.when(left["__t"] < right["__t"], -1).when(left["__t"] > right["__t"], 1)
                    .when(left["__i"] < right["__i"], -1).when(left["__i"] > right["__i"], 1).otherwise(0))

        lists = events.groupBy("_cluster").agg(F.array_sort(F.collect_list(F.struct(
            F.col("timestamp").alias("__t"), F.col("_id").alias("__i"), F.struct(*columns).alias("e"))), by_time)
            .alias("l"))
        lists = lists.select("_cluster", F.transform("l", lambda x: x["e"]).alias("timeSeriesEvents"))
        result = result.join(lists, "_cluster", "left")
    key = F.array_min(F.transform("identities", lambda i: F.concat(i["namespace"]["code"], F.lit(":"), i["id"])))
    result = result.withColumn("_key", key).drop("_cluster")
    result.write.mode("overwrite").option("compression", "zstd").parquet(str(out))

    def write_clusters() -> None:  # the identity graph, for checking segment counts (not timed)
        graph.select("node", F.col("label").alias("_key"), "size").coalesce(1).write.mode("overwrite").parquet(
            str(Path(spec.out) / "spark-clusters"))

    return int(spark.read.parquet(str(out)).count()), write_clusters


# --------------------------------------------------------------------------------------------------


def main() -> None:
    peer, task, spec_path, result_path = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    if peer not in PEERS or task not in TASKS:
        raise SystemExit(f"usage: peers.py {{{'|'.join(PEERS)}}} {{{'|'.join(TASKS)}}} SPEC RESULT")
    spec = Spec.load(spec_path)
    out = Path(spec.out) / f"{peer}-{task}"
    _rmtree(out)
    result: dict[str, Any] = {"peer": peer, "task": task}
    spark = None
    jvm = None
    if peer == "spark":
        started = time.perf_counter()
        spark = _spark_session(spec)
        spark.sparkContext.setLogLevel("ERROR")
        spark.range(1).count()  # the JVM and its first job are warm
        jvm = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        result["session_start_s"] = time.perf_counter() - started
    jvm_cpu0 = _proc_cpu(jvm) if jvm else 0.0
    cpu0 = time.process_time()
    started = time.perf_counter()
    if peer == "floor":
        rows, after = run_floor(spec, task, out)
    elif peer == "pandas":
        rows, after = run_pandas(spec, task, out)
    else:
        rows, after = run_spark(spark, spec, task, out)
    result["wall_s"] = time.perf_counter() - started
    result["cpu_s"] = time.process_time() - cpu0
    result["peak_rss_mib"] = _self_peak_mib()
    result["rows"] = rows
    if jvm:
        result["jvm_cpu_s"] = _proc_cpu(jvm) - jvm_cpu0
        result["jvm_peak_rss_mib"] = _proc_peak(jvm)
        result["driver_peak_rss_mib"] = result["peak_rss_mib"]
        result["cpu_s"] += result["jvm_cpu_s"]
        result["peak_rss_mib"] += result["jvm_peak_rss_mib"]
    result["out"] = str(out)
    if task == "profiles":
        after()
    if spark is not None:
        spark.stop()
    result_path.write_text(json.dumps(result, indent=1))


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_peak(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    main()
