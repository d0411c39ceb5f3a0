"""DuckDB SQL translated for Spark SQL (sqlglot), keeping DuckDB's results.

Every query of `churnlens.features` is written once, in DuckDB's dialect; the Spark loader
(`churnlens.features.spark_loading`) and the Spark engine (`churnlens.serving.spark`) run
their translation. Three rewrites keep DuckDB's numbers where a plain translation would
change them: `/` is floating-point, `date_diff('second')` counts second boundaries, and
bit masks are signed 64-bit. A fourth, asked for where a query sums many rows, keeps them
at less cost: the exact sums of `churnlens.features.exact_sums` add 64-bit integers
(`_exact_sum`). Importing this module is cheap (sqlglot is imported on use).
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


# An exact sum in Spark, from 64-bit integers. DuckDB casts a double x to DECIMAL(38, 9)
# as round(x * 1e9) billionths (the product in double arithmetic, rounded half away from
# zero) and adds those; here each value's billionths are the same integer, split into whole
# units and the billionths below them (both exact 64-bit integers) and summed apart, so no
# total short of 9.2e18 units overflows. Spark adds DECIMAL(38, 9) through Java's
# BigDecimal: at 1M customers the events' daily rollup took 86 s that way and about 50 s in
# integers (a sum of doubles: 47 s). The total count of billionths becomes a double as
# DuckDB's CAST of its DECIMAL sum makes it: a count up to 2**53 (a double exactly) divided by
# 1e9, a larger one as its whole units plus its remaining billionths / 1e9; in 64-bit integers
# while they fit, through DECIMAL(38, 0) otherwise. A value of 9.2e9 or more (its billionths
# past 64 bits) stops the job with Spark's CAST_OVERFLOW error (ANSI mode, which
# `churnlens.serving.spark.spark_session` keeps on). The query grows by some 1 KB a sum: on
# the few rows of a chunk's usage features (40 sums) it cost more than it saved (chunks of
# 34k customers 14-18 s with DECIMAL, 19-23 s in integers), so it is asked for per query.
_BILLIONTHS = "CAST(round({x} * 1e9) AS BIGINT)"
_TOTAL = ("CASE WHEN abs({u}) < 8000000 AND abs({b}) < 1000000000000000 "
          "THEN CAST({u} * 1000000000 + {b} AS DOUBLE) / 1e9 "
          "WHEN abs({t}) <= 9007199254740992 THEN CAST({t} AS DOUBLE) / 1e9 "
          "ELSE CAST({t} DIV 1000000000 AS DOUBLE) + CAST({t} % 1000000000 AS DOUBLE) / 1e9 "
          "END")


def _count_to_double(units: str, billionths: str) -> str:
    """A count of billionths, UNITS * 1e9 + BILLIONTHS, as the double DuckDB casts it to."""
    return _TOTAL.format(u=units, b=billionths,
                         t=f"(CAST({units} AS DECIMAL(38, 0)) * 1000000000 + {billionths})")


def _is_decimal_38_9(node) -> bool:
    from sqlglot import exp

    return (isinstance(node, exp.Cast) and node.to.this == exp.DataType.Type.DECIMAL
            and [p.name for p in node.to.expressions] == ["38", "9"])


def _exact_sum(node):
    """CAST(sum(CAST(x AS DECIMAL(38, 9))) [FILTER (WHERE c)] AS DOUBLE), `exact_sum`'s
    form, as the same double from integer sums (see _TOTAL); None for any other node."""
    import sqlglot
    from sqlglot import exp

    if not (isinstance(node, exp.Cast) and node.to.this == exp.DataType.Type.DOUBLE):
        return None
    inner, where = node.this, None
    if isinstance(inner, exp.Filter):
        inner, where = inner.this, inner.expression
    if not (isinstance(inner, exp.Sum) and _is_decimal_38_9(inner.this)):
        return None
    dialect = _spark_dialect()
    x = inner.this.this.copy().transform(_duckdb_semantics).sql(dialect=dialect)
    if where is not None:
        condition = where.copy().transform(_duckdb_semantics).sql(dialect=dialect)
        where = f" FILTER ({condition})"
    n = _BILLIONTHS.format(x=x)
    units = f"SUM(({n}) DIV 1000000000){where or ''}"
    billionths = f"SUM(({n}) % 1000000000){where or ''}"
    return exp.Paren(this=sqlglot.parse_one(_count_to_double(units, billionths), read="spark"))


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


def _with_integer_sums(node):
    exact = _exact_sum(node)
    return _duckdb_semantics(node) if exact is None else exact


def to_spark_sql(sql: str, integer_sums: bool = False) -> str:
    """SQL (DuckDB dialect) as Spark SQL with DuckDB's results; TranslationError for an
    expression that cannot keep them.

    integer_sums: the exact sums in 64-bit integers (`_exact_sum`), for queries over many
    rows (the events); elsewhere Spark's DECIMAL sums cost less than the longer query."""
    import sqlglot

    rewrite = _with_integer_sums if integer_sums else _duckdb_semantics
    tree = sqlglot.parse_one(sql, read="duckdb").transform(rewrite)
    return tree.sql(dialect=_spark_dialect())
