"""Event features: usage over windows, recency, first value, and counts per event type.

Products log events of many types, some good news and some bad (a connection added or
removed): besides totals, active days and breadth, the most frequent types get counts of
their own over each feature window, a 30-day trend and a count since signup. Which types
is decided once, from the training data (`choose_event_types`), and carried in each
feature's `event_type`, so that scoring later builds exactly the same columns whatever the
scoring data hold (a type absent there counts 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from churnlens.features.exact_sums import DECIMAL, exact_sum
from churnlens.features.known import days_between, latest_before, sql_string, utc_day, visible
from churnlens.features.relations import timestamp_literal
from churnlens.settings import FeatureSettings

if TYPE_CHECKING:  # the scoring path builds these queries' text without DuckDB
    import duckdb


def events_daily_sql(fs: FeatureSettings, events: str, event_types: Sequence[str] = (),
                     where: str | None = None, types: str | None = None) -> str:
    """Events of EVENTS per customer and day: total quantity, a bit per event type, value events.

    Event types beyond 64 share bits (their index modulo 64), so breadth is then a floor.
    Each of EVENT_TYPES (the types with features of their own, `choose_event_types`) adds
    type{i}_quantity, its quantity that day (`recency_sql` totals them since signup for many
    cutoffs; for one cutoff, `recent_days` and `recency_at_sql` need no days before the
    usage windows). where: a condition on the events' columns that keeps only some of them.
    types: a from-item whose `event` column holds the same types as EVENTS (default: EVENTS), from
    which the bits are numbered: a pass over every event less where WHERE keeps few.
    """
    per_type = "".join(f",\n {exact_sum('quantity', f'event = {sql_string(t)}')} "
                       f"AS type{i}_quantity" for i, t in enumerate(event_types))
    return f"""
        WITH type_bits AS (
            SELECT event, row_number() OVER (ORDER BY event) - 1 AS type_index
            FROM (SELECT DISTINCT event FROM {types or events}) AS event_types),
        typed AS (
            SELECT occurrence.customer_id, occurrence.event, occurrence.quantity,
                   {utc_day('occurrence.occurred_at')} AS day,
                   CAST(type_bits.type_index % 64 AS UBIGINT) AS bit
            FROM {events} AS occurrence JOIN type_bits ON type_bits.event = occurrence.event
            {f"WHERE {where}" if where else ""}),
        days AS (
            SELECT customer_id, day AS occurred_at, {exact_sum('quantity')} AS quantity,
                   bit_or(CAST(1 AS UBIGINT) << bit) AS type_mask,
                   {exact_sum('quantity', f'event = {sql_string(fs.value_event)}')}
                       AS value_quantity{per_type}
            FROM typed GROUP BY customer_id, day)
        SELECT * FROM days
    """


def usage_days(fs: FeatureSettings) -> int:
    """How many days before a cutoff `usage_sql` reads: its longest window or band edge."""
    return max(*fs.windows, 30, 60)


def recent_days(fs: FeatureSettings, cutoff: pd.Timestamp) -> str:
    """A condition on events' occurred_at keeping those `usage_sql` reads for CUTOFF (a day
    more on each side: a superset, which the daily rows' own before-cutoff rule trims)."""
    at = timestamp_literal(cutoff)
    return (f"occurred_at >= {at} - INTERVAL {usage_days(fs) + 1} DAY "
            f"AND occurred_at < {at} + INTERVAL 1 DAY")


def usage_sql(fs: FeatureSettings, daily: str, cutoffs: str, event_types: int = 0,
              ordered: bool = False) -> str:
    """Per customer and cutoff: events and active days per window, the 30 days before, breadth.

    With EVENT_TYPES chosen types in the rollup, also type{i}_{w}d per window w and
    type{i}_prev_30d: the quantity of type i. Two steps: the days of each cutoff's longest
    window are summed per age band first (the bands between the windows' edges), then the
    bands are added up per window: fewer rows reach the many filtered sums. ORDERED (DuckDB
    only: Spark would sort the whole chunk for it): the bands reach the second step in
    customer and cutoff order, which took the 100k training set's usage part from 8.1 to
    7.2-7.4 s, its sort included (hash order scatters a group's rows).
    """
    edges = sorted({*fs.windows, 30, 60})  # the last is usage_days(fs)
    band = " ".join(f"WHEN days_before <= {e} THEN {e}" for e in edges)
    types = [f"type{i}" for i in range(event_types)]
    per_band = ", ".join([
        f"{exact_sum('quantity')} AS quantity", "count(*) AS active_days",
        "bit_or(type_mask) AS type_mask", f"{exact_sum('value_quantity')} AS value_quantity",
        *(f"{exact_sum(f'{t}_quantity')} AS {t}" for t in types)])
    prev = "band > 30 AND band <= 60"
    parts = []
    for w in fs.windows:
        parts += [f"{exact_sum('quantity', f'band <= {w}')} AS events_{w}d",
                  f"sum(active_days) FILTER (WHERE band <= {w}) AS active_days_{w}d",
                  *(f"{exact_sum(t, f'band <= {w}')} AS {t}_{w}d" for t in types)]
    parts += [
        *(f"{exact_sum(t, prev)} AS {t}_prev_30d" for t in types),
        f"{exact_sum('quantity', prev)} AS events_prev_30d",
        f"sum(active_days) FILTER (WHERE {prev}) AS active_days_prev_30d",
        "bit_count(bit_or(type_mask) FILTER (WHERE band <= 30)) AS event_types_30d",
        "bit_count(bit_or(type_mask)) AS event_types_all_windows",
        f"{exact_sum('value_quantity', 'band <= 30')} AS value_events_30d",
    ]
    days = visible("events_daily", daily, cutoffs=cutoffs, window_days=edges[-1],
                   extra_columns=[f"{t}_quantity" for t in types])
    return f"""
        SELECT customer_id, cutoff, {', '.join(parts)}
        FROM (SELECT customer_id, cutoff, band, {per_band}
              FROM (SELECT *, CASE {band} END AS band FROM ({days}) AS active_day) AS banded
              GROUP BY customer_id, cutoff, band{" ORDER BY customer_id, cutoff" if ordered else ""}
              ) AS per_band
        GROUP BY customer_id, cutoff
    """


def recency_sql(daily: str, cutoffs: str, event_types: int = 0) -> str:
    """Per customer and cutoff: days since the last active day before it, and with
    EVENT_TYPES chosen types in the rollup, each type's total since signup (type{i}_total).

    The rollup's days are summed per period between cutoffs first (the days before each
    cutoff and not before the previous one), and the totals run over those periods: a
    customer's few periods instead of every active day (a running window over every day of
    the rollup took most of its time). Each period row is dated by its last day, so the last
    one before a cutoff is the cutoff's (`latest_before`). The totals are exact sums
    (`exact_sum`'s DECIMAL), run in period order and converted once.
    """
    quantities = [f"type{i}_quantity" for i in range(event_types)]
    per_period = "".join(f", sum(CAST(coalesce(day.{q}, 0) AS {DECIMAL})) AS {q}"
                         for q in quantities)
    running = "".join(f", CAST(sum({q}) OVER (PARTITION BY customer_id ORDER BY occurred_at "
                      f"ROWS UNBOUNDED PRECEDING) AS DOUBLE) AS type{i}_total"
                      for i, q in enumerate(quantities))
    totals = [f"type{i}_total" for i in range(event_types)]
    periods = f"""
        SELECT customer_id, occurred_at{running}
        FROM (SELECT day.customer_id, max(day.occurred_at) AS occurred_at{per_period}
              FROM {daily} AS day
              JOIN (SELECT active.day, min(known_at.cutoff) AS period_end
                    FROM (SELECT DISTINCT occurred_at AS day FROM {daily} AS rollup) AS active
                    JOIN {cutoffs} AS known_at ON active.day < known_at.cutoff
                    GROUP BY active.day) AS period ON period.day = day.occurred_at
              GROUP BY day.customer_id, period.period_end) AS per_period
    """
    last = latest_before(f"({periods})", totals, cutoffs=cutoffs, time_column="occurred_at")
    return f"""
        SELECT customer_id, cutoff{''.join(f', {t}' for t in totals)},
               {days_between('occurred_at', 'cutoff')} AS days_since_last_event
        FROM ({last}) AS last_active_day
    """


def event_summary_sql(events: str, cutoffs: str) -> str:
    """Per customer and event type of EVENTS, for CUTOFFS of a single cutoff: the exact sum
    (`exact_sum`) of the quantities on days before the cutoff's day (`quantity`, NULL when
    none), the last such day (`last_day`) and the first occurrence of any day (`first_at`).

    Everything `recency_at_sql` and `first_value_sql` read of the events for one cutoff, in
    one pass: a customer's few types instead of their whole history. The Spark job stages
    it once per job (`churnlens.serving.spark_stage`) instead of the events themselves."""
    day = utc_day("occurrence.occurred_at")
    before = f"{day} < known_at.cutoff"
    return f"""
        SELECT occurrence.customer_id, occurrence.event,
               {exact_sum('occurrence.quantity', before)} AS quantity,
               max({day}) FILTER (WHERE {before}) AS last_day,
               min(occurrence.occurred_at) AS first_at
        FROM {events} AS occurrence CROSS JOIN {cutoffs} AS known_at
        GROUP BY occurrence.customer_id, occurrence.event
    """


def recency_at_sql(summary: str, cutoffs: str, event_types: Sequence[str] = ()) -> str:
    """`recency_sql` for CUTOFFS of a single cutoff, from the events' SUMMARY at it
    (`event_summary_sql`) instead of a rollup of every day. The same values (days are UTC
    days), but for the totals of fractional quantities: an exact sum of the events here,
    there an exact sum of the rollup's days, each already rounded to a double, which can
    differ in the last bit (whole counts are exact in both)."""
    # One summary row per customer and type: its total is that row's (max of one value).
    totals = "".join(f", max(per_type.quantity) FILTER (WHERE per_type.event = "
                     f"{sql_string(t)}) AS type{i}_total" for i, t in enumerate(event_types))
    return f"""
        SELECT per_type.customer_id, known_at.cutoff{totals},
               {days_between('max(per_type.last_day)', 'known_at.cutoff')}
                   AS days_since_last_event
        FROM {summary} AS per_type CROSS JOIN {cutoffs} AS known_at
        WHERE per_type.last_day IS NOT NULL
        GROUP BY per_type.customer_id, known_at.cutoff
    """


def first_value_sql(fs: FeatureSettings, events: str, occurred_at: str = "occurred_at") -> str:
    """Per customer: the first value event (a per-customer minimum, known at c when < c).

    events: the events, or their summary (`event_summary_sql`) with OCCURRED_AT="first_at"."""
    return f"""
        SELECT customer_id, min({occurred_at}) AS first_value_at FROM {events}
        WHERE event = {sql_string(fs.value_event)} GROUP BY customer_id
    """


def choose_event_types(con: duckdb.DuckDBPyConnection, events: str,
                       fs: FeatureSettings) -> tuple[str, ...]:
    """The event types of EVENTS that get features of their own, most frequent first.

    At most `fs.event_types_max` types, each holding at least `fs.event_types_min_share`
    of all event rows; ties in frequency go to the alphabetically first type.
    """
    if fs.event_types_max == 0:
        return ()
    # Ordered by the count's alias: Spark SQL (churnlens.serving.spark_features runs this
    # too) allows no aggregate in the ORDER BY of a query with a window.
    rows = con.sql(f"""
        SELECT event, count(*) AS n, count(*) / sum(count(*)) OVER () AS share FROM {events}
        GROUP BY event ORDER BY n DESC, event LIMIT {int(fs.event_types_max)}
    """).fetchall()
    return tuple(event for event, _, share in rows if share >= fs.event_types_min_share)
