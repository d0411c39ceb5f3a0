"""DuckDB SQL translated for Spark SQL (sqlglot), keeping DuckDB's results.

Every query of `churnlens.features` is written once, in DuckDB's dialect; the Spark loader
(`churnlens.features.spark_loading`) and the Spark engine (`churnlens.serving.spark`) run
their translation. Three rewrites keep DuckDB's numbers where a plain translation would
change them: `/` is floating-point, `date_diff('second')` counts second boundaries, and
bit masks are signed 64-bit. Importing this module is cheap (sqlglot is imported on use).
"""

from __future__ import annotations

from functools import lru_cache


class TranslationError(ValueError):
    """A DuckDB expression that has no exact Spark translation here."""


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
            raise TranslationError(f"date_diff('{unit.lower()}', ...) has no exact Spark "
                                   "translation here; use 'second' or 'microsecond' in "
                                   "features/queries.py")
    return node


def to_spark_sql(sql: str) -> str:
    """SQL (DuckDB dialect) as Spark SQL with DuckDB's results; TranslationError for an
    expression that cannot keep them."""
    import sqlglot

    tree = sqlglot.parse_one(sql, read="duckdb").transform(_duckdb_semantics)
    return tree.sql(dialect=_spark_dialect())
