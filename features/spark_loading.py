"""Load and validate a data source with Spark: the local loader's rules, run by Spark.

`load_source_spark` reads the source folder with `spark.read` (`churnlens.features.
spark_reading`) and runs `churnlens.features.loading.validate`, the one sequence of rules
`load_source` runs, on a `SparkRunner`: each rule's DuckDB SQL is translated to Spark SQL
(sqlglot, `churnlens.features.spark_dialect.to_spark_sql`), and a change to a table is a new
definition of its temp view over the previous one (Spark's temp views are immutable). The
messages, the report and the rows kept are those of the local loader; only counts, a few
example ids and per-day counts reach the driver.

Where the engines still differ is in their own functions, not in the rules: Spark's cast
of text to a timestamp accepts '2024', '2024-01' and surrounding spaces and refuses
'2024/01/05' (DuckDB the other way round); to a number it accepts '1.5d' and refuses
'1_000'; a number that is not finite shows as 'Infinity' / 'NaN' in a message (DuckDB:
'inf' / 'nan'); CSV is read comma-separated (DuckDB detects the delimiter) and a quoted
value may not span lines.

Needs pyspark (``pip install -e .[spark]``), imported only when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd

from churnlens.features.loading import DataError, validate
from churnlens.features.reading import quote_ident
from churnlens.features.report import LoadReport
from churnlens.features.spark_reading import register_raw_spark, spark_errors
from churnlens.features.sql_runner import SqlRunner
from churnlens.settings import ChurnSettings, Settings

__all__ = ["DataError", "SparkDataSet", "SparkRunner", "load_source_spark", "spark_sql"]

# Spark type names as DuckDB names them, so `checks.cast_expr` decides the same casts.
_DUCKDB_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "float": "FLOAT", "bigint": "BIGINT",
                 "int": "INTEGER", "smallint": "SMALLINT", "tinyint": "TINYINT",
                 "boolean": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMP WITH TIME ZONE",
                 "timestamp_ntz": "TIMESTAMP"}


def _finite(node):
    """DuckDB's isfinite(x) in SQL both engines share: false for NaN (the largest value in
    both) and infinities, NULL for NULL."""
    from sqlglot import exp

    if isinstance(node, exp.Anonymous) and node.name.lower() == "isfinite":
        inf = exp.cast(exp.Literal.string("inf"), "DOUBLE")
        return exp.Paren(this=exp.LT(this=exp.Abs(this=node.expressions[0]), expression=inf))
    return node


@lru_cache(maxsize=512)
def spark_sql(sql: str) -> str:
    """The loader's DuckDB SQL as Spark SQL (the feature SQL's translation, plus isfinite)."""
    import sqlglot

    from churnlens.features.spark_dialect import to_spark_sql

    return to_spark_sql(sqlglot.parse_one(sql, read="duckdb").transform(_finite)
                        .sql(dialect="duckdb"))


class SparkRunner(SqlRunner):
    """The loader's SQL on Spark temp views: each change redefines a view over its previous
    plan (nothing is copied to the driver)."""

    engine = "Spark"

    def __init__(self, spark):
        self.spark = spark
        self.errors = spark_errors()

    def frame(self, sql: str):
        """The Spark DataFrame of the DuckDB query SQL."""
        return self.spark.sql(spark_sql(sql))

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(row) for row in self.frame(sql).collect()]

    def columns(self, relation: str) -> dict[str, str]:
        return {f.name: _DUCKDB_TYPES.get(f.dataType.simpleString(),
                                          f.dataType.simpleString().upper())
                for f in self.spark.table(relation).schema.fields}

    def counts(self, table: str, conditions: list[str]) -> list[int]:
        # One scan counts every condition without a subquery (Spark allows none inside an
        # aggregate's FILTER); a condition with one is a query of its own.
        plain = [c for c in conditions if "SELECT" not in c.upper()]
        found = dict(zip(plain, self.rows(
            "SELECT " + ", ".join(f"count(*) FILTER (WHERE {c})" for c in plain)
            + f" FROM {table}")[0], strict=True)) if plain else {}
        for condition in conditions:
            if condition not in found:
                found[condition] = self.rows(
                    f"SELECT count(*) FROM {table} WHERE {condition}")[0][0]
        return [int(found[c]) for c in conditions]

    def define(self, name: str, sql: str, *, view: bool = False) -> None:
        frame = self.frame(sql)
        if name == "load_daily":
            # The loader's one helper table, read twice: per table and day, so small; kept
            # on the driver as DuckDB keeps it in a temporary table.
            frame = self.spark.createDataFrame(frame.collect(), frame.schema)
        frame.createOrReplaceTempView(name)

    def delete(self, table: str, condition: str) -> None:
        self.define(table, f"SELECT * FROM {table} WHERE NOT ({condition})")

    def update(self, table: str, assignments: dict[str, str], condition: str) -> int:
        count = self.counts(table, [condition])[0]
        if count:
            columns = ", ".join(
                f"CASE WHEN {condition} THEN {assignments[c]} ELSE {quote_ident(c)} END "
                f"AS {quote_ident(c)}" if c in assignments else quote_ident(c)
                for c in self.spark.table(table).columns)
            self.define(table, f"SELECT {columns} FROM {table}")
        return count

    def drop(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)


@dataclass
class SparkDataSet:
    """Clean contract tables as Spark temp views, when the data end, and their shape.

    The views customers, subscriptions, events, payments, tickets and surveys hold the
    rows and types `load_source` leaves in its tables. shape, churn_observable_from: as
    `churnlens.features.loading.DataSet`.
    """

    spark: Any
    observed_until: pd.Timestamp
    attributes: dict[str, str]  # static customer attribute -> "str" | "float"
    report: LoadReport
    shape: str = "subscriptions"
    churn_observable_from: pd.Timestamp | None = None
    runner: SparkRunner | None = field(default=None, repr=False)  # the loader's SQL on spark
    files: dict[str, str] = field(default_factory=dict)  # table -> the path it was read from

    def __post_init__(self):
        if self.runner is None:
            self.runner = SparkRunner(self.spark)

    def first_signup(self) -> pd.Timestamp | None:
        """The earliest signed_up_at of the customers (None: no customer)."""
        first = self.runner.rows("SELECT min(signed_up_at) FROM customers")[0][0]
        return None if first is None else pd.Timestamp(first)


def load_source_spark(spark, source: str, observed_until: str | pd.Timestamp | None = None, *,
                      horizon_days: int = Settings.model_fields["horizon_days"].default,
                      activity: str = ChurnSettings.model_fields["activity"].default,
                      value_event: str | None = None,
                      now: pd.Timestamp | None = None) -> SparkDataSet:
    """Read the folder SOURCE with SPARK and validate it as `load_source` does.

    Args:
        spark: a SparkSession; its session time zone is set to UTC (timestamps are UTC).
        source: a folder (a local path or a URI the executors can read: hdfs://, s3a://)
            of NAME.parquet / NAME.csv files or NAME/ parquet folders.
        observed_until, horizon_days, activity, value_event, now: as `load_source`.

    Returns:
        A `SparkDataSet` whose temp views customers, subscriptions, events, payments,
        tickets and surveys hold the clean tables, with the load report.

    Raises:
        DataError: as `load_source`, with the same messages (an unreadable file names
        Spark's error instead of DuckDB's).
    """
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    report = LoadReport(source=str(source))
    found = register_raw_spark(spark, str(source), report)
    runner = SparkRunner(spark)
    checked = validate(runner, found, "files", report, observed_until,
                       horizon_days=horizon_days, activity=activity, value_event=value_event,
                       now=now)
    return SparkDataSet(spark=spark, observed_until=checked.observed_until,
                        attributes=checked.attributes, report=report, shape=checked.shape.name,
                        churn_observable_from=checked.shape.churn_observable_from,
                        runner=runner, files=found)
