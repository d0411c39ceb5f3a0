"""Labels for each spine row, from the window after its cutoff only.

- ``churned``: 1 when the customer churned in [c, c + horizon), 0 when not; NULL when that
  window (plus the time needed to confirm a churn) is not fully observed.
- ``duration_days`` and ``event``: days from c to churn, or to the end of what is observed
  (censored, event = 0), for survival models.
- ``revenue_ltv``: paid minus refunded revenue in [c, c + ltv horizon); NULL when that
  window is not fully observed.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from churnlens.features.relations import LOADED, Sources, from_item, materialise, timestamp_literal
from churnlens.features.spine import confirmation_lag_days
from churnlens.settings import ChurnSettings

LABEL_COLUMNS = ("churned", "event", "duration_days", "churned_at", "revenue_ltv")


def build_labels(con: duckdb.DuckDBPyConnection, spine: duckdb.DuckDBPyRelation,
                 churn_events: duckdb.DuckDBPyRelation, *, churn: ChurnSettings,
                 horizon_days: int, ltv_horizon_days: int, observed_until: pd.Timestamp,
                 sources: Sources = LOADED) -> duckdb.DuckDBPyRelation:
    """The labels of every SPINE row: customer_id, cutoff and LABEL_COLUMNS, computed once.

    spine: (customer_id, cutoff) rows; churn_events: (customer_id, churned_at) from
    `churnlens.features.spine.build_churn_events`; observed_until: exclusive end of the data.
    The relation reads a temporary table (`relations.drop` removes it).
    """
    lag = confirmation_lag_days(churn)
    until = timestamp_literal(observed_until)
    rows = from_item(spine)
    return materialise(con, f"""
        WITH next_churn AS (
            SELECT spine.customer_id, spine.cutoff, min(churn.churned_at) AS churned_at
            FROM {rows} AS spine LEFT JOIN {from_item(churn_events)} AS churn
              ON churn.customer_id = spine.customer_id AND churn.churned_at >= spine.cutoff
            GROUP BY spine.customer_id, spine.cutoff),
        observed AS (
            SELECT *, churned_at IS NOT NULL
                      AND churned_at + INTERVAL {lag} DAY <= {until} AS event
            FROM next_churn),
        revenue AS (
            SELECT spine.customer_id, spine.cutoff,
                   sum(CASE payment.status WHEN 'paid' THEN payment.amount
                        WHEN 'refunded' THEN -abs(payment.amount) ELSE 0 END) AS revenue
            FROM {rows} AS spine JOIN {sources.payments} AS payment
              ON payment.customer_id = spine.customer_id AND payment.occurred_at >= spine.cutoff
             AND payment.occurred_at < spine.cutoff + INTERVAL {ltv_horizon_days} DAY
            GROUP BY spine.customer_id, spine.cutoff)
        SELECT observed.customer_id, observed.cutoff,
            CASE WHEN observed.cutoff + INTERVAL {horizon_days + lag} DAY > {until} THEN NULL
                 WHEN observed.event
                      AND observed.churned_at < observed.cutoff + INTERVAL {horizon_days} DAY
                 THEN 1
                 ELSE 0 END AS churned,
            CAST(observed.event AS INTEGER) AS event,
            greatest(date_diff('second', observed.cutoff, CASE WHEN observed.event
                 THEN observed.churned_at ELSE {until} - INTERVAL {lag} DAY END) / 86400.0,
                 0.0) AS duration_days,
            CASE WHEN observed.event THEN observed.churned_at END AS churned_at,
            CASE WHEN observed.cutoff + INTERVAL {ltv_horizon_days} DAY > {until} THEN NULL
                 ELSE coalesce(revenue.revenue, 0.0) END AS revenue_ltv
        FROM observed LEFT JOIN revenue
          ON revenue.customer_id = observed.customer_id AND revenue.cutoff = observed.cutoff
    """, "labels")
