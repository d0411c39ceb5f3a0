"""The Spark engine's base: DuckDB SQL translated for Spark, and the Spark session.

The feature queries are the DuckDB SQL of features/queries.py translated by sqlglot, with the
rewrites that keep DuckDB's results. The job itself is `churnlens.serving.spark_job`. Needs
pyspark (``pip install -e .[spark]``).
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import lru_cache

from churnlens.serving.chunks import BatchError


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
