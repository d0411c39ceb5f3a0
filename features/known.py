"""The before-cutoff rule: what SQL may read of a table for the features at each cutoff.

Every feature query reads its inputs through one of two functions here, so a record at or
after a cutoff can never change that cutoff's features:

- `visible`: the rows recorded before each cutoff (all history, or a window before it);
- `latest_before`: each cutoff's last row before it, for running figures (a count or sum
  over a customer's rows up to each row, in time order), the as-of join that keeps
  all-history features linear in the data instead of rows x cutoffs.

Columns that become known later than their row (a subscription's end, a ticket's close and
csat) are masked to NULL unless they happened before the cutoff. The SQL is plain enough
for DuckDB and Spark SQL alike (`churnlens.serving.spark` translates it).
"""

from __future__ import annotations

from collections.abc import Sequence

from churnlens.features.contract import TABLES

# column -> the column whose time must be before the cutoff for it to be known
_LATER_KNOWN = {
    "subscriptions": {"ended_at": "ended_at"},
    "tickets": {"closed_at": "closed_at", "csat": "closed_at"},
}

# Rollups per customer and UTC day, read like contract tables; exact because cutoffs are
# always midnights, so a whole day is either before a cutoff or not.
DAILY_ROLLUPS = {
    # events per day (churnlens.features.event_queries.events_daily_sql), which adds a
    # quantity and a running total per chosen event type
    "events_daily": ("customer_id", "occurred_at", "quantity", "type_mask", "value_quantity"),
}


def visible(table: str, source: str, *, spine: str | None = None, cutoffs: str | None = None,
            window_days: int | None = None, extra_columns: Sequence[str] = ()) -> str:
    """SQL for the rows of TABLE known before each cutoff, with a `cutoff` column.

    table: a contract table name, or a rollup of DAILY_ROLLUPS, for its columns and time
    column; extra_columns: more columns of a rollup to carry (known with their row);
    source: where to read it (a name or a parenthesised query).
    window_days None: all history, each row once per SPINE row (customer_id, cutoff) of its
    customer with a later cutoff. window_days N: rows recorded in [cutoff - N, cutoff), once
    per row of CUTOFFS (one column `cutoff`, each cutoff once): a range join on a small side;
    for a rollup, whose rows are midnights, a hash join on the day, with a `days_before`
    column (1 for the day before the cutoff, up to N).
    Raises ValueError when the spine (all history) or the cutoffs (a window) are not given.
    """
    if table in DAILY_ROLLUPS:
        time_column, names = "occurred_at", (*DAILY_ROLLUPS[table], *extra_columns)
    else:
        time_column, names = TABLES[table].time_column, [c.name for c in TABLES[table].columns]
    keys = spine if window_days is None else cutoffs
    if keys is None:
        needed = "spine" if window_days is None else "cutoffs"
        raise ValueError(f"visible({table!r}): give {needed}= to read "
                         f"{'all history' if window_days is None else 'a window'}")
    columns = []
    for name in names:
        known_by = _LATER_KNOWN.get(table, {}).get(name)
        if known_by:
            columns.append(f"CASE WHEN record.{known_by} < known_at.cutoff "
                           f"THEN record.{name} END AS {name}")
        else:
            columns.append(f"record.{name}")
    before = f"record.{time_column} < known_at.cutoff"
    if window_days is None:
        on = f"record.customer_id = known_at.customer_id AND {before}"
    elif table in DAILY_ROLLUPS:
        # A rollup's rows are midnights, as cutoffs are: the window's rows are those on
        # one of its N days, found by equality with a small table of (cutoff, day), a hash
        # join, instead of a range join (a third of the training set's usage part).
        keys = _window_days(keys, int(window_days))
        columns.append("known_at.days_before")
        on = f"record.{time_column} = known_at.day"
    else:
        since = f"known_at.cutoff - INTERVAL {int(window_days)} DAY"
        on = f"{before} AND record.{time_column} >= {since}"
    return (f"SELECT known_at.cutoff, {', '.join(columns)} "
            f"FROM {source} AS record JOIN {keys} AS known_at ON {on}")


def _window_days(cutoffs: str, days: int) -> str:
    """A from-item of each cutoff's DAYS days before it: cutoff, day, days_before (1..DAYS)."""
    before = ", ".join(f"({n})" for n in range(1, days + 1))
    return (f"(SELECT cutoff, cutoff - INTERVAL 1 DAY * ago.n AS day, ago.n AS days_before "
            f"FROM {cutoffs} AS window_end CROSS JOIN (VALUES {before}) AS ago(n))")


def latest_before(source: str, columns: Sequence[str], *, cutoffs: str, time_column: str,
                  partition: Sequence[str] = ("customer_id",)) -> str:
    """SQL for each cutoff's last row of SOURCE before it, per PARTITION, with `cutoff`.

    source: rows with at most one row per PARTITION and TIME_COLUMN value, whose COLUMNS are
    running figures: each row's figures come from the rows up to it in time order only, so
    the last row before a cutoff says everything known then. cutoffs: one column `cutoff`,
    each cutoff once. A partition without a row before a cutoff gives no row for it.
    Returns cutoff, the partition columns, TIME_COLUMN and COLUMNS.
    """
    keys = ", ".join(partition)
    carried = ", ".join(f"record.{c}" for c in (*partition, time_column, *columns))
    return f"""
        SELECT known_at.cutoff, {carried}
        FROM (SELECT *, lead({time_column}) OVER (PARTITION BY {keys} ORDER BY {time_column})
                            AS next_at
              FROM {source} AS ordered) AS record
        JOIN {cutoffs} AS known_at ON record.{time_column} < known_at.cutoff
         AND (record.next_at IS NULL OR record.next_at >= known_at.cutoff)
    """


def days_between(start: str, end: str) -> str:
    """SQL for the whole-and-fractional days from timestamp START to timestamp END."""
    return f"(date_diff('second', {start}, {end}) / 86400.0)"


def sql_string(value: str) -> str:
    """VALUE as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def utc_day(timestamp: str) -> str:
    """SQL for the midnight (UTC) that starts the day of TIMESTAMP."""
    return f"CAST(CAST({timestamp} AS DATE) AS TIMESTAMP)"
