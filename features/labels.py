"""Labels for each spine row, from the window after its cutoff only.

- ``churned``: 1 when the customer churned in [c, c + horizon), 0 when not; NULL when that
  window (plus the time needed to confirm a churn) is not fully observed. Contract: the
  last subscription ended in the window. Inactivity: no activity (`churn.activity`) in it.
- ``duration_days`` and ``event``: days from c to churn, or to the end of what is observed
  (censored, event = 0), for survival models. Inactivity: to the moment a silence of
  inactivity_days is complete (`churnlens.features.spine.build_churn_events`); a customer
  already that long silent at c has churned at c (duration 0).
- ``revenue_ltv``: paid minus refunded revenue in [c, c + ltv horizon); NULL when that
  window is not fully observed.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from churnlens.features.exact_sums import exact_sum
from churnlens.features.relations import LOADED, Sources, from_item, materialise, timestamp_literal
from churnlens.features.shapes import activity_sql
from churnlens.features.spine import confirmation_lag_days
from churnlens.settings import ChurnSettings

LABEL_COLUMNS = ("churned", "event", "duration_days", "churned_at", "revenue_ltv")


def build_labels(con: duckdb.DuckDBPyConnection, spine: duckdb.DuckDBPyRelation,
                 churn_events: duckdb.DuckDBPyRelation, *, churn: ChurnSettings,
                 horizon_days: int, ltv_horizon_days: int, observed_until: pd.Timestamp,
                 sources: Sources = LOADED) -> duckdb.DuckDBPyRelation:
    """The labels of every SPINE row: customer_id, cutoff and LABEL_COLUMNS, computed once.

    spine: (customer_id, cutoff) rows; churn_events: (customer_id, churned_at) from
    `churnlens.features.spine.build_churn_events` with the same CHURN settings (concrete:
    contract or inactivity); observed_until: exclusive end of the data.
    The relation reads a temporary table (`relations.drop` removes it).
    """
    until = timestamp_literal(observed_until)
    revenue = ("CASE payment.status WHEN 'paid' THEN payment.amount "
               "WHEN 'refunded' THEN -abs(payment.amount) ELSE 0 END")
    rows = from_item(spine)
    outcome = (_contract_sql if churn.definition == "contract" else _inactivity_sql)(
        rows, from_item(churn_events), churn, horizon_days, until, sources)
    return materialise(con, f"""
        WITH outcome AS ({outcome}),
        revenue AS (
            SELECT spine.customer_id, spine.cutoff,
                   {exact_sum(revenue)} AS revenue
            FROM {rows} AS spine JOIN {sources.payments} AS payment
              ON payment.customer_id = spine.customer_id AND payment.occurred_at >= spine.cutoff
             AND payment.occurred_at < spine.cutoff + INTERVAL {ltv_horizon_days} DAY
            GROUP BY spine.customer_id, spine.cutoff)
        SELECT outcome.customer_id, outcome.cutoff, outcome.churned,
            CAST(outcome.event AS INTEGER) AS event, outcome.duration_days,
            CASE WHEN outcome.event THEN outcome.churned_at END AS churned_at,
            CASE WHEN outcome.cutoff + INTERVAL {ltv_horizon_days} DAY > {until} THEN NULL
                 ELSE coalesce(revenue.revenue, 0.0) END AS revenue_ltv
        FROM outcome LEFT JOIN revenue
          ON revenue.customer_id = outcome.customer_id AND revenue.cutoff = outcome.cutoff
    """, "labels")


def _days(start: str, end: str) -> str:
    return f"greatest(date_diff('second', {start}, {end}) / 86400.0, 0.0)"


def _contract_sql(rows: str, churns: str, churn: ChurnSettings, horizon_days: int,
                  until: str, sources: Sources) -> str:
    """(customer_id, cutoff, churned, event, duration_days, churned_at) under contracts."""
    lag = confirmation_lag_days(churn)
    return f"""
        WITH next_churn AS (
            SELECT spine.customer_id, spine.cutoff, min(churn.churned_at) AS churned_at
            FROM {rows} AS spine LEFT JOIN {churns} AS churn
              ON churn.customer_id = spine.customer_id AND churn.churned_at >= spine.cutoff
            GROUP BY spine.customer_id, spine.cutoff),
        observed AS (
            SELECT *, churned_at IS NOT NULL
                      AND churned_at + INTERVAL {lag} DAY <= {until} AS event
            FROM next_churn)
        SELECT customer_id, cutoff,
            CASE WHEN cutoff + INTERVAL {horizon_days + lag} DAY > {until} THEN NULL
                 WHEN event AND churned_at < cutoff + INTERVAL {horizon_days} DAY THEN 1
                 ELSE 0 END AS churned,
            event,
            {_days("cutoff", f"CASE WHEN event THEN churned_at ELSE {until} - INTERVAL {lag} DAY END")}
                AS duration_days,
            churned_at
        FROM observed
    """


def _inactivity_sql(rows: str, churns: str, churn: ChurnSettings, horizon_days: int,
                    until: str, sources: Sources) -> str:
    """The same columns without contracts: churned = no activity in [c, c + horizon).

    Nearest activities and churns are found with ASOF joins (one match per spine row), so
    the cost grows with the rows, not with rows times activities.
    """
    silence = f"INTERVAL {churn.inactivity_days} DAY"
    return f"""
        WITH activity AS (
            SELECT DISTINCT customer_id, activity_at
            FROM ({activity_sql(churn.activity, sources)}) AS any_activity),
        around AS (
            SELECT spine.customer_id, spine.cutoff, after.activity_at AS next_at,
                   before.activity_at AS last_at, churn.churned_at AS next_churn_at
            FROM {rows} AS spine
            ASOF LEFT JOIN activity AS after
              ON after.customer_id = spine.customer_id AND after.activity_at >= spine.cutoff
            ASOF LEFT JOIN activity AS before
              ON before.customer_id = spine.customer_id AND before.activity_at < spine.cutoff
            ASOF LEFT JOIN {churns} AS churn
              ON churn.customer_id = spine.customer_id AND churn.churned_at >= spine.cutoff),
        dated AS (
            SELECT *, CASE WHEN last_at + {silence} < cutoff THEN cutoff
                           ELSE next_churn_at END AS churned_at
            FROM around),
        observed AS (
            SELECT *, churned_at IS NOT NULL AND churned_at <= {until} AS event FROM dated)
        SELECT customer_id, cutoff,
            CASE WHEN cutoff + INTERVAL {horizon_days} DAY > {until} THEN NULL
                 WHEN next_at < cutoff + INTERVAL {horizon_days} DAY THEN 0
                 ELSE 1 END AS churned,
            event,
            {_days("cutoff", f"CASE WHEN event THEN churned_at ELSE {until} END")}
                AS duration_days,
            churned_at
        FROM observed
    """
