"""The Spark engine of the batch job: the feature SQL on Spark, scoring in mapInPandas.

The feature queries are the DuckDB SQL of features/queries.py translated by sqlglot, with the
rewrites that keep DuckDB's results; the scoring core runs inside `mapInPandas` with the
model broadcast. Needs pyspark (``pip install -e .[spark]``).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from churnlens.features.catalog import event_types_of
from churnlens.features.contract import TABLES
from churnlens.features.loading import DataSet
from churnlens.features.queries import events_daily_sql, feature_sql
from churnlens.features.relations import LOADED, from_item
from churnlens.serving.chunks import BatchError, Chunk
from churnlens.serving.core import score_records
from churnlens.serving.records import RECORD_SCHEMA, record_row
from churnlens.settings import Settings
from churnlens.training.bundle import ChurnModel


@lru_cache(maxsize=1)
def _spark_dialect():
    from sqlglot.dialects.spark import Spark

    class SparkNestedCtes(Spark):
        """Spark 3+ accepts WITH inside subqueries; sqlglot's Spark (from Hive) hoists them
        to the top, where the inner names of the feature SQL's parts could clash."""

        class Generator(Spark.Generator):
            EXPRESSIONS_WITHOUT_NESTED_CTES: set = set()

    return SparkNestedCtes


def _duckdb_semantics(node):
    """Rewrite one DuckDB expression whose Spark translation would change its result."""
    from sqlglot import exp

    if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.UBIGINT:
        # Bit masks: a signed 64-bit long holds the same bits (Spark has no unsigned types).
        return exp.DataType.build("BIGINT")
    if isinstance(node, exp.Div):
        # DuckDB's `/` is floating-point; Spark would use DECIMAL for 86400.0 and round.
        # Changed in place: a returned new node would not have its children rewritten.
        node.set("this", exp.cast(node.this, "DOUBLE"))
        return node
    if isinstance(node, exp.DateDiff):
        unit = node.unit.name.upper() if node.unit else "DAY"
        if unit == "SECOND":
            # DuckDB counts second boundaries crossed (floor b - floor a); Spark's datediff
            # truncates the difference. unix_seconds floors, which is DuckDB's count.
            def secs(e):
                return exp.func("unix_seconds", exp.cast(e, "TIMESTAMP"))
            return exp.Paren(this=exp.Sub(this=secs(node.this), expression=secs(node.expression)))
        if unit != "MICROSECOND":
            raise BatchError(f"date_diff('{unit.lower()}', ...) has no exact Spark translation "
                             "here; use 'second' or 'microsecond' in features/queries.py")
    return node


def to_spark_sql(sql: str) -> str:
    """Translate feature SQL from DuckDB to Spark SQL (sqlglot), keeping DuckDB's results."""
    import sqlglot

    tree = sqlglot.parse_one(sql, read="duckdb").transform(_duckdb_semantics)
    return tree.sql(dialect=_spark_dialect())


def java_missing() -> str | None:
    """Why Spark cannot start a JVM here (no `java` on PATH, no JAVA_HOME), or None."""
    if shutil.which("java") or os.environ.get("JAVA_HOME"):
        return None
    return "Spark needs Java 17: no `java` on PATH and JAVA_HOME is not set"


def spark_session(master: str | None):
    """A Spark session: local mode on 127.0.0.1 without UI by default, UTC in any case.

    Raises BatchError when there is no Java to run Spark with.
    """
    missing = java_missing()
    if missing:
        raise BatchError(f"the spark engine cannot start: {missing}; install a JDK 17 "
                         "(e.g. apt-get install openjdk-17-jre-headless) or use the local engine")
    from pyspark.sql import SparkSession

    local = master is None or master.startswith("local")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need this venv
    builder = SparkSession.builder.appName("churnlens-score")
    if master:
        builder = builder.master(master)
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (builder.config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.shuffle.partitions", "4"))
    spark = (builder.config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _numeric_columns(frame: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    # The typing compute_features applies: ids as str, numeric features as float64.
    frame["customer_id"] = frame["customer_id"].astype(str)
    for name in numeric:
        frame[name] = frame[name].astype("float64")
    return frame


class SparkEngine:
    """Features as Spark SQL over the loaded tables, scored by mapInPandas.

    The cleaned DuckDB tables (validated by features.loading) and the spine are exported
    once to parquet, sorted by customer id so a chunk's range filter skips row groups; Spark
    reads them as views of the names the feature SQL is built with.
    """

    name = "spark"

    def __init__(self, ds: DataSet, settings: Settings, model: ChurnModel,
                 spine: duckdb.DuckDBPyRelation, master: str | None = None, spark=None):
        self.model, self.settings = model, settings
        self.owns_session = spark is None
        self.spark = spark or spark_session(master)
        self.tmp = Path(tempfile.mkdtemp(prefix="churnlens-spark-"))
        self.sql = to_spark_sql(feature_sql(settings.features, model.features, spine="spine",
                                            daily="events_daily", sources=LOADED))
        exported = {t: LOADED.of(t) for t in TABLES} | {"spine": from_item(spine)}
        for name, source in exported.items():
            path = self.tmp / f"{name}.parquet"
            ds.con.execute(f"COPY (SELECT * FROM {source} AS whole ORDER BY customer_id) "
                           f"TO '{path}' (FORMAT parquet)")
            self.spark.read.parquet(str(path)).createOrReplaceTempView(f"{name}__all")
            self.spark.table(f"{name}__all").createOrReplaceTempView(name)
        daily = self.spark.sql(to_spark_sql(events_daily_sql(
            settings.features, LOADED.events, event_types_of(model.features))))
        (daily.repartitionByRange(4, "customer_id").sortWithinPartitions("customer_id")
         .write.parquet(str(self.tmp / "events_daily")))
        daily = self.spark.read.parquet(str(self.tmp / "events_daily"))
        daily.createOrReplaceTempView("events_daily__all")
        daily.createOrReplaceTempView("events_daily")
        self.model_bytes = self.spark.sparkContext.broadcast(pickle.dumps(model))
        # The feature SQL builds the model's features only: mrr is among them when the
        # source has subscriptions (serving.stats values by expected revenue otherwise).
        self.carried = [f.name for f in model.features]

    def _output_schema(self):
        from pyspark.sql.pandas.types import from_arrow_schema

        kinds = {f.name: f.kind for f in self.model.features}
        extra = [pa.field(f"_f_{n}", pa.string() if kinds.get(n) == "category" else pa.float64())
                 for n in self.carried]
        return from_arrow_schema(pa.schema([*RECORD_SCHEMA, *extra]))

    def score(self, chunk: Chunk) -> tuple[pa.Table, pd.DataFrame]:
        from pyspark.sql import functions as F

        for name in (*TABLES, "spine", "events_daily"):
            (self.spark.table(f"{name}__all")
             .where(F.col("customer_id").between(chunk.first, chunk.last))
             .createOrReplaceTempView(name))
        frame = self.spark.sql(self.sql)
        tasks = self.spark.sparkContext.defaultParallelism
        scored = frame.repartition(tasks).mapInPandas(
            _score_partition(self.model_bytes, self.carried, self.model), self._output_schema())
        table = scored.toArrow().sort_by("customer_id")
        records = table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
        features = table.select([f"_f_{n}" for n in self.carried]).to_pandas()
        features.columns = self.carried
        features.insert(0, "customer_id", records.column("customer_id").to_pandas())
        return records, features

    def close(self) -> None:
        if self.owns_session:
            self.spark.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _score_partition(model_bytes, carried: list[str], model: ChurnModel):
    numeric = [f.name for f in model.features if f.kind == "numeric"]
    numeric += [n for n in carried if n not in {f.name for f in model.features}]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Loaded once per task from the broadcast bytes, not once per batch.
        m: ChurnModel = pickle.loads(model_bytes.value)
        for frame in batches:
            if frame.empty:
                continue
            frame = _numeric_columns(frame, numeric)
            rows = pd.DataFrame([record_row(r) for r in score_records(m, frame, num_threads=1)],
                                columns=RECORD_SCHEMA.names)
            for n in carried:
                rows[f"_f_{n}"] = frame[n].to_numpy()
            yield rows

    return run
