"""The Spark engine's base: DuckDB SQL translated for Spark, and the Spark session.

The feature queries are the DuckDB SQL of features/queries.py translated by sqlglot, with the
rewrites that keep DuckDB's results. The job itself is `churnlens.serving.spark_job`. Needs
pyspark (``pip install -e .[spark]``).
"""

from __future__ import annotations

import os
import shutil
import sys

from churnlens.features.spark_dialect import TranslationError
from churnlens.features.spark_dialect import to_spark_sql as translate
from churnlens.serving.chunks import BatchError

SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"


def to_spark_sql(sql: str, integer_sums: bool = False) -> str:
    """Feature SQL from DuckDB to Spark SQL (`churnlens.features.spark_dialect`, with its
    INTEGER_SUMS); BatchError for an expression that cannot keep DuckDB's result."""
    try:
        return translate(sql, integer_sums)
    except TranslationError as exc:
        raise BatchError(str(exc)) from None


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
    # ANSI mode (Spark 4's default), kept: an exact sum's overflow is an error, not a wrap.
    spark = (builder.config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.ansi.enabled", "true")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    if not local and not spark.sparkContext.getConf().contains(SHUFFLE_PARTITIONS):
        # Spark's default of 200 shuffle partitions makes every exchange 200 tasks, each
        # with its scheduling delay, for chunks of some 50,000 customers; two per core keep
        # both the cores and a retried task's share of the work busy. A value the user set
        # (spark-submit --conf, spark-defaults.conf) is kept.
        spark.conf.set(SHUFFLE_PARTITIONS, str(2 * spark.sparkContext.defaultParallelism))
    return spark


OVERFLOW = ("a quantity or amount of 9.2e9 or more: the Spark engine sums them exactly in "
            "64-bit integers of billionths, which such a value overflows; use the local engine "
            "(--engine local) or store the column in larger units")


def overflow_error(exc: Exception) -> BatchError | None:
    """The BatchError for Spark's CAST_OVERFLOW in an exact sum (see
    `churnlens.features.spark_dialect`), None for any other error."""
    text = str(exc)
    if "CAST_OVERFLOW" in text or "ARITHMETIC_OVERFLOW" in text:
        return BatchError(f"{OVERFLOW} (Spark: {text.splitlines()[0][:200]})")
    return None
