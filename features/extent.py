"""When the data end: known from the settings or the clock, not guessed from the largest date.

The end of the data (`observed_until`, exclusive) decides the cutoffs, which labels are
observable and which snapshot dates exist, so one wrong record must not move it:

1. A record dated after the load time (the clock when the data are loaded) has not
   happened yet (a scheduled payment, a typo such as 2099): it is set aside, counted per
   table with its column and a few examples.
2. With `data.observed_until`, records at or after it are set aside the same way.
3. Without it the end is inferred, ignoring a thin tail of outliers: per table, the latest
   day that holds at least MATERIAL_SHARE (5%) of that table's typical day (the median
   count over the days with records; at least one record); the end is the midnight after
   the latest such day over all tables. Three events on a later day among about 300 a day
   do not move it; they are set aside and counted. A table with one or two records a day
   (customers of a small base) cannot tell an outlier from a quiet day, so there every
   record counts: step 1 still sets aside what lies in the future, and
   `data.observed_until` settles any doubt.

The load report shows each table's own last date, so a stale table is visible.
"""

from __future__ import annotations

import pandas as pd

from churnlens.features.checks import examples, unknown_customer, values_of
from churnlens.features.contract import TABLES
from churnlens.features.reading import DataError
from churnlens.features.relations import timestamp_literal
from churnlens.features.report import LoadReport
from churnlens.features.sql_runner import SqlRunner

MATERIAL_SHARE = 0.05


def load_time() -> pd.Timestamp:
    """Now, in UTC, tz-naive like the loaded timestamps."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


def set_aside(runner: SqlRunner, report: LoadReport, table: str, condition: str, reason: str,
              column: str | None = None) -> int:
    """Remove the rows of TABLE meeting CONDITION (SQL), count them under REASON with a few
    examples (customer ids, and values of COLUMN when given); returns how many."""
    count, ids = examples(runner, table, condition)
    if not count:
        return 0
    shown = f"values {values_of(runner, table, column, condition)}; " if column else ""
    report.set_aside_rows(table, f"{reason} (e.g. {shown}customers {ids})", count)
    runner.delete(table, condition)
    return count


def profile(runner: SqlRunner, tables: list[str]) -> dict[str, pd.Timestamp]:
    """Count the records of TABLES per day into the helper table load_daily (one scan of
    each table) and return each non-empty table's latest record time."""
    daily = " UNION ALL ".join(
        f"SELECT '{name}' AS source_table, CAST({TABLES[name].time_column} AS DATE) AS day, "
        f"count(*) AS n, max({TABLES[name].time_column}) AS last_at FROM {name} "
        f"GROUP BY CAST({TABLES[name].time_column} AS DATE)"
        for name in tables)
    runner.define("load_daily", daily)
    return {name: pd.Timestamp(last) for name, last in runner.rows(
        "SELECT source_table, max(last_at) FROM load_daily GROUP BY source_table")}


def set_aside_future(runner: SqlRunner, report: LoadReport, latest: dict[str, pd.Timestamp],
                     now: pd.Timestamp) -> None:
    """Set aside the records dated after NOW (the load time) of the tables in LATEST."""
    for name, last in latest.items():
        if last > now:
            column = TABLES[name].time_column
            set_aside(runner, report, name, f"{column} > {timestamp_literal(now)}",
                      f"{column} after the load time {now:%Y-%m-%d %H:%M} UTC: not happened "
                      "yet", column)


def parse_until(explicit) -> pd.Timestamp:
    """data.observed_until as a midnight; DataError when it is not a date."""
    try:
        until = pd.Timestamp(explicit)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"data.observed_until {explicit!r} is not a date: {exc}; use YYYY-MM-DD") from None
    if pd.isna(until):
        raise DataError(f"data.observed_until {explicit!r} is not a date; use YYYY-MM-DD")
    return until.tz_localize(None).normalize()


def inferred_end(runner: SqlRunner, now: pd.Timestamp) -> tuple[pd.Timestamp, str]:
    """The end of the data when none is given (module docstring), and why, from load_daily
    (`profile`) up to the day of NOW."""
    found = runner.rows(f"""
        WITH daily AS (SELECT * FROM load_daily
                       WHERE day <= CAST({timestamp_literal(now)} AS DATE)),
        typical AS (SELECT source_table, median(n) AS typical FROM daily GROUP BY source_table)
        SELECT daily.source_table,
               max(day) FILTER (WHERE n >= greatest(1, ceil({MATERIAL_SHARE!r}
                                                             * typical.typical))),
               any_value(typical.typical)
        FROM daily JOIN typical ON daily.source_table = typical.source_table
        GROUP BY daily.source_table ORDER BY 2 DESC, 3 DESC, 1""")
    if not found:
        raise DataError("the source holds no record dated before the load time; check that the "
                        "tables have rows and their dates")
    table, last_day, typical = found[0]
    end = pd.Timestamp(last_day) + pd.Timedelta(days=1)
    return end, (f"inferred: the day after {last_day}, the last day with at least "
                 f"{MATERIAL_SHARE:.0%} of a typical day's records of a table, {typical:,.0f} "
                 f"{table}; data.observed_until sets it")


def set_aside_after(runner: SqlRunner, report: LoadReport, latest: dict[str, pd.Timestamp],
                    until: pd.Timestamp, given: bool) -> None:
    """Set aside the records at or after UNTIL of the tables in LATEST, then the rows of the
    customers set aside."""
    why = ("at or after data.observed_until" if given
           else "after the inferred end of the data (a thin tail)")
    for name, last in latest.items():
        if last >= until:
            column = TABLES[name].time_column
            set_aside(runner, report, name, f"{column} >= {timestamp_literal(until)}",
                      f"{column} {why} {until.date()}", column)
    if "customers" in report.set_aside:
        for name in latest:
            if name != "customers":
                set_aside(runner, report, name, unknown_customer(name),
                          "of a customer set aside above (signed up after the end of the data)")


def last_dates(runner: SqlRunner, report: LoadReport, latest: dict[str, pd.Timestamp]) -> dict[str, str]:
    """Each table's latest record day (YYYY-MM-DD) after the set-asides (LATEST: before them,
    from `profile`; only a table with rows set aside is read again)."""
    out = {}
    for name, last in latest.items():
        if name in report.set_aside:
            last = runner.rows(f"SELECT max({TABLES[name].time_column}) FROM {name}")[0][0]
        if last is not None:
            out[name] = f"{pd.Timestamp(last):%Y-%m-%d}"
    runner.drop("load_daily")
    return out


def check_as_of(ds, as_of, option: str = "--as-of") -> pd.Timestamp:
    """AS_OF (YYYY-MM-DD) as a midnight inside the data DS (a loaded `DataSet` or
    `SparkDataSet`), else DataError.

    A snapshot date must lie after the first signup (no one is a customer before it) and
    at most at the end of the observed data; the message names that range and OPTION.
    """
    day = pd.Timestamp(as_of)
    day = (day.tz_convert("UTC").tz_localize(None) if day.tz else day).normalize()
    first = ds.first_signup()
    if first is None:
        raise DataError("the data source holds no customer")
    end = ds.observed_until
    if day <= first or day > end:
        raise DataError(f"{option} {as_of} is outside the data, which run from the first "
                        f"signup on {first:%Y-%m-%d} to {end:%Y-%m-%d}: pick a date after "
                        f"{first:%Y-%m-%d} and at most {end:%Y-%m-%d}")
    return day
