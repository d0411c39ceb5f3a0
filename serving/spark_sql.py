"""What the Spark job reads back on its driver: small, bounded results only.

Every driver-side fetch of the Spark job goes through `small_rows`, which asks Spark for at
most LIMIT + 1 rows and refuses more: chunk counts, per-chunk statistics,
never records or features (tests/serving/test_spark_job.py checks the code for any other
collect). `SparkRunner` gives the few small DuckDB-dialect queries of `churnlens.features`
(the first sign-up of `check_as_of`, the table contents of `source_contents`, the event
types of `choose_event_types`) a Spark engine, so those rules keep one definition.
"""

from __future__ import annotations

from datetime import UTC, datetime

from churnlens.serving.chunks import BatchError

SMALL_ROWS = 10_000  # default bound of a driver-side fetch


def _naive_utc(value):
    # Arrow gives Spark timestamps in the session's zone (UTC); the features code compares
    # them with tz-naive UTC moments.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def small_rows(df, what: str, limit: int = SMALL_ROWS) -> list[dict]:
    """The rows of DF (an aggregate, or a query bounded by construction) as dicts.

    what: what the rows are, for the error. Raises BatchError when DF has more than LIMIT
    rows: nothing proportional to the base may reach the driver.
    """
    table = df.limit(limit + 1).toArrow()
    if table.num_rows > limit:
        raise BatchError(f"{what}: more than {limit:,} rows would reach the Spark driver; "
                         "this is a bug in churnlens (report it)")
    return [{k: _naive_utc(v) for k, v in row.items()} for row in table.to_pylist()]


class _Result:
    def __init__(self, rows: list[tuple]):
        self.rows = rows

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


class SparkRunner:
    """A stand-in for a DuckDB connection's `sql`/`execute` over Spark's temp views, for
    small DuckDB-dialect queries (translated by `churnlens.serving.spark.to_spark_sql`);
    results come through `small_rows`. Parameters ($name or ?) are not supported."""

    def __init__(self, spark):
        self.spark = spark

    def sql(self, query: str, params=None) -> _Result:
        from churnlens.serving.spark import to_spark_sql

        if params:
            raise BatchError("SparkRunner runs queries without parameters; inline the values")
        rows = small_rows(self.spark.sql(to_spark_sql(query)), "a query of churnlens.features")
        return _Result([tuple(r.values()) for r in rows])

    execute = sql

