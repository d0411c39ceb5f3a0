"""`churnlens features --as-of DATE --engine spark`: the feature snapshot computed on Spark.

The same steps as `churnlens.features.build.build_snapshot`, on Spark: the sources read and
validated by `churnlens.features.spark_loading.load_source_spark`, the feature plan of what
the source holds (`churnlens.features.catalog.plan_for_source`, its few small queries run by
`churnlens.serving.spark_sql.SparkRunner`), the spine and the feature SQL translated. The rows
are written by the executors as a parquet dataset sorted by customer_id (range-partitioned,
so the part files read back in order), under ``OUT.tmp`` and renamed to OUT; an existing OUT
needs ``--overwrite``. Nothing but counts reaches the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from churnlens.features.catalog import event_types_of, plan_for_source
from churnlens.features.event_queries import recent_days
from churnlens.features.extent import check_as_of
from churnlens.features.queries import events_daily_sql, feature_sql
from churnlens.features.report import LoadReport
from churnlens.features.shapes import resolve_churn
from churnlens.serving.chunks import BatchError
from churnlens.serving.spark import to_spark_sql
from churnlens.serving.spark_files import Files, sibling
from churnlens.serving.spark_sql import SparkRunner, small_rows
from churnlens.serving.spark_stage import spine_frame
from churnlens.settings import Settings

ROWS_PER_FILE = 200_000  # about 100 MB of features per part file


@dataclass(frozen=True)
class _Contents:
    """What `plan_for_source` reads of a data set, with Spark answering its queries."""

    con: SparkRunner
    attributes: dict[str, str]
    report: LoadReport


@dataclass(frozen=True)
class Snapshot:
    out: str
    customers: int
    first: str
    last: str
    notes: list[str]


def feature_frame(ds, as_of: pd.Timestamp, settings: Settings):
    """The Spark DataFrame of the snapshot's rows and the plan's notes: customer_id, cutoff
    and the features (numeric ones as double, as `compute_features` gives them)."""
    spark, fs = ds.spark, settings.features
    plan = plan_for_source(_Contents(SparkRunner(spark), ds.attributes, ds.report), fs)
    spine_frame(spark, as_of, resolve_churn(settings.churn, ds)) \
        .createOrReplaceTempView("snapshot_spine")
    spark.sql(to_spark_sql(events_daily_sql(
        fs, "events", event_types_of(plan.features),
        where=recent_days(fs, as_of)))).createOrReplaceTempView("snapshot_daily")
    frame = spark.sql(to_spark_sql(feature_sql(fs, plan.features, spine="snapshot_spine",
                                               daily="snapshot_daily", one_cutoff=True)))
    columns = ["customer_id", "cutoff"] + [
        f"CAST(`{f.name}` AS DOUBLE) AS `{f.name}`" if f.kind == "numeric" else f"`{f.name}`"
        for f in plan.features]
    return frame.selectExpr(*columns), plan.lines()


def spark_snapshot(spark, source: str, as_of: str, settings: Settings, out: str, *,
                   overwrite: bool = False, log=print) -> Snapshot:
    """Write the feature snapshot of every customer active on AS_OF to the dataset OUT.

    Raises BatchError when OUT exists without OVERWRITE or nobody is active; DataError for
    bad data (as `load_source`).
    """
    from churnlens.features.spark_loading import load_source_spark

    files = Files(spark)
    if files.exists(out) and not overwrite:
        raise BatchError(f"{out} exists: pass --overwrite to replace it (or another --out)")
    ds = load_source_spark(spark, source, settings.data.observed_until,
                           horizon_days=settings.horizon_days, activity=settings.churn.activity,
                           value_event=settings.features.value_event)
    for line in ds.report.lines():
        log(line)
    day = check_as_of(ds, as_of)
    frame, notes = feature_frame(ds, day, settings)
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    tmp = sibling(out, ".tmp")
    files.delete(tmp)
    spine = spark.table("snapshot_spine")
    total = small_rows(spine.selectExpr("count(*) AS n"), "the spine's size")[0]["n"]
    if total == 0:
        raise BatchError(f"no customer is active on {as_of}; pick a later date")
    parts = max(1, -(-total // ROWS_PER_FILE))
    frame.repartitionByRange(parts, "customer_id").sortWithinPartitions("customer_id") \
        .write.parquet(tmp)
    found = small_rows(spark.read.parquet(tmp).selectExpr(
        "count(*) AS n", "min(customer_id) AS first", "max(customer_id) AS last"),
        "the snapshot's size")[0]
    files.replace(tmp, out)
    return Snapshot(out, int(found["n"]), found["first"], found["last"], notes)
