"""The Spark job's spine, its chunks, and the sources staged partitioned by chunk.

A customer's chunk is ``pmod(xxhash64(customer_id), N)`` with N = ceil(customers /
chunk size): the same data give the same chunks, and a chunk is found from its ids alone.
The validated sources (the temp views of `churnlens.features.spark_loading`) are staged
once, each table restricted to the spine's customers and written as parquet partitioned by
chunk; the events, the largest table by far, are staged only as what the features of one
date read of them: those of the usage windows' days and the summary per customer and event
type (`event_summary_sql`). A chunk's scoring task then reads only its own
partition of each (`wave_input`). The staging folder is under ``batch.spark.staging``
(any path every executor can reach), by default ``OUT.staging`` beside the output.
"""

from __future__ import annotations

import math

import pandas as pd

from churnlens.features.contract import TABLES
from churnlens.features.event_queries import event_summary_sql, recent_days
from churnlens.features.relations import Sources, timestamp_literal
from churnlens.features.spine import cutoffs_sql, spine_sql
from churnlens.serving.chunks import BatchError, Chunk
from churnlens.serving.spark import to_spark_sql
from churnlens.serving.spark_files import is_local, join
from churnlens.serving.spark_sql import small_rows
from churnlens.settings import ChurnSettings, FeatureSettings

CHUNK_VIEWS = Sources(**{t: f"chunk_{t}" for t in TABLES})  # a chunk's contract tables
CHUNK_SPINE = "chunk_spine"
CHUNK_SUMMARY = "chunk_event_summary"  # `feature_sql(..., summary=CHUNK_SUMMARY)`
STAGED_TABLES = tuple(t for t in TABLES if t != "events")  # the events: the recent ones
# Each staged name and the view a chunk's feature query reads it as.
STAGED_VIEWS = {t: CHUNK_VIEWS.of(t) for t in STAGED_TABLES} | {
    "spine": CHUNK_SPINE, "events_recent": CHUNK_VIEWS.events, "event_summary": CHUNK_SUMMARY}


def chunk_of(n: int) -> str:
    """The Spark SQL expression of a row's chunk among N."""
    return f"pmod(xxhash64(customer_id), {int(n)})"


def spine_frame(spark, as_of: pd.Timestamp, churn: ChurnSettings):
    """The customers active at AS_OF (`churnlens.features.spine.spine_sql` on Spark)."""
    return spark.sql(to_spark_sql(spine_sql(f"({cutoffs_sql([as_of])})", churn)))


def stage_spine(spine, chunk_size: int, staging: str):
    """Write SPINE with its chunk column to STAGING/spine; return (staged frame, chunks),
    (None, []) when nobody is active (the caller names the date).

    Raises BatchError when the chunks do not add up to the spine (a null customer_id).
    """
    from pyspark.sql import functions as F

    spark = spine.sparkSession
    total = small_rows(spine.selectExpr("count(*) AS n"), "the spine's size")[0]["n"]
    if total == 0:
        return None, []
    n = max(1, math.ceil(total / chunk_size))
    path = join(staging, "spine")
    spine.selectExpr("*", f"{chunk_of(n)} AS chunk").write.partitionBy("chunk").parquet(path)
    staged = spark.read.parquet(path)
    rows = small_rows(staged.groupBy("chunk").agg(
        F.count("*").alias("count"), F.min("customer_id").alias("first"),
        F.max("customer_id").alias("last"),
        F.sum(F.xxhash64("customer_id").cast("decimal(38,0)")).alias("digest")),
        "the chunks' counts", limit=n)
    chunks = sorted((Chunk(int(r["chunk"]), r["first"], r["last"], int(r["count"]),
                           str(r["digest"])) for r in rows), key=lambda c: c.index)
    if sum(c.count for c in chunks) != total:
        raise BatchError(f"the spine has {total:,} customers but its chunks "
                         f"{sum(c.count for c in chunks):,}: is a customer_id null?")
    return staged, chunks


def stage_sources(staged_spine, fs: FeatureSettings, staging: str,
                  as_of: pd.Timestamp) -> tuple[dict, list[str]]:
    """Write each contract table but the events (the spine's customers only), the events
    the usage windows of AS_OF read (``events_recent``) and the events' summary at AS_OF to
    STAGING/<name>, partitioned by chunk. Each task rolls its chunk's recent events up per
    day itself, as the local engine does per chunk (`build_events_daily`); recency and the
    first value event come from the summary (`feature_sql(..., one_cutoff=True,
    summary=...)`). Returns the schema of each staged name (with the spine's), for
    `wave_input`, and the event types of the spine's customers, which number the rollup's
    type bits."""
    spark = staged_spine.sparkSession
    ids = staged_spine.select("customer_id", "chunk")
    schemas = {"spine": staged_spine.schema}

    def write(name: str, rows) -> None:
        schemas[name] = rows.schema
        rows.write.partitionBy("chunk").parquet(join(staging, name))

    for table in STAGED_TABLES:
        write(table, spark.table(table).join(ids, "customer_id", "inner"))
    # Per customer and type, with exact sums in integers (every event passes through it):
    # aggregated over every customer's events first, then joined to the spine's, so the join
    # meets a row per customer and type, not every event.
    spark.sql(to_spark_sql(f"SELECT {timestamp_literal(as_of)} AS cutoff")) \
        .createOrReplaceTempView("staged_cutoff")
    write("event_summary", spark.sql(to_spark_sql(event_summary_sql("events", "staged_cutoff"),
                                                  integer_sums=True))
          .join(ids, "customer_id", "inner"))
    # The recent events as they are (a sixth of them here): Spark's rollup of them, with a
    # pair of integer sums per type, took 82 s of the 1M job on the two-worker cluster.
    write("events_recent", spark.sql(to_spark_sql(
        f"SELECT * FROM events WHERE {recent_days(fs, as_of)}"))
        .join(ids, "customer_id", "inner"))
    types = [r["event"] for r in small_rows(
        read_staged(spark, staging, "event_summary", schemas["event_summary"])
        .select("event").distinct(), "the event types")]
    return schemas, sorted(t for t in types if t is not None)


def read_staged(spark, staging: str, name: str, schema):
    """STAGING/NAME with its chunk column, read with SCHEMA: an empty table wrote no file
    Spark could take a schema from."""
    return spark.read.schema(schema).parquet(join(staging, name))


def wave_input(spark, staging: str, chunks: list[Chunk], schemas: dict):
    """The input of a wave's scoring tasks and its layout (`spark_score.score_task`).

    With STAGING on a file system every executor mounts at the same path (a local path, as
    `is_local` says: a shared mount on a cluster), one row per chunk, each in a partition of
    its own: the task reads its chunk's staged files itself (`spark_score.StagedFiles`);
    delivered by Spark, the 2.5 million wide rows of a 47,000-customer chunk took 7.5 s of
    each task's 13 on the two-worker cluster. Elsewhere (hdfs://, s3a://...), the staged rows
    themselves (`wave_frame`).
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    from churnlens.serving.spark_score import StagedFiles

    if not is_local(staging):
        return wave_frame(spark, staging, chunks, schemas)
    arrow = {view: (name, to_arrow_schema(schemas[name]).remove(
        schemas[name].fieldNames().index("chunk"))) for name, view in STAGED_VIEWS.items()}
    rows = spark.sparkContext.parallelize([(c.index,) for c in chunks], len(chunks)) \
        .toDF("chunk int")
    return rows, StagedFiles(staging, arrow)


def wave_frame(spark, staging: str, chunks: list[Chunk], schemas: dict):
    """The staged rows of CHUNKS as one frame with a partition per chunk, and its layout.

    Every staged name's rows of a chunk (spine, tables, recent events, summary) in one wide frame:
    a column ``_name`` (the staged name's index in LAYOUT), ``chunk``, ``customer_id``, and
    each other column of each name as ``_<index>_<position>`` (null in other names' rows).
    Each chunk's union is coalesced into one partition (no shuffle: its files are read by
    one task), and the chunks' unions are put side by side, so a task of ``mapInArrow``
    over the frame meets exactly one chunk. LAYOUT: [(view name, [(wide column, column)])]
    for `churnlens.serving.spark_score.chunk_tables`. schemas: `stage_sources`' schemas.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    layout, parts = [], []
    for i, (name, view) in enumerate(STAGED_VIEWS.items()):
        columns = [f.name for f in schemas[name].fields if f.name not in ("chunk", "customer_id")]
        layout.append((view, [(f"_{i}_{j}", c) for j, c in enumerate(columns)]))
        parts.append((i, name, columns))

    def one(chunk: Chunk):
        frames = [read_staged(spark, staging, name, schemas[name])
                  .where(f"chunk = {chunk.index}")
                  .select(F.lit(i).cast("int").alias("_name"), "chunk", "customer_id",
                          *[F.col(f"`{c}`").alias(f"_{i}_{j}") for j, c in enumerate(columns)])
                  for i, name, columns in parts]
        return reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), frames) \
            .coalesce(1)

    return reduce(lambda a, b: a.union(b), [one(c) for c in chunks]), layout
