"""Labels for each spine row, from the window after its cutoff only.

- ``churned``: 1 when the customer churned in [c, c + horizon), 0 when not; NULL when that
  window (plus the time needed to confirm a churn) is not fully observed.
- ``duration_days`` and ``event``: days from c to churn, or to the end of what is observed
  (censored, event = 0), for survival models.
- ``revenue_ltv``: paid minus refunded revenue in [c, c + ltv horizon); NULL when that
  window is not fully observed.
"""

from __future__ import annotations

from churnlens.features.loading import DataSet
from churnlens.features.spine import build_churn_events, confirmation_lag_days
from churnlens.settings import ChurnSettings

LABEL_COLUMNS = ("churned", "event", "duration_days", "churned_at", "revenue_ltv")


def build_labels(
    ds: DataSet, churn: ChurnSettings, horizon_days: int, ltv_horizon_days: int
) -> None:
    """Create table `labels` (customer_id, cutoff and LABEL_COLUMNS) for every spine row."""
    build_churn_events(ds, churn)
    lag = confirmation_lag_days(churn)
    until = ds.observed_until
    ds.con.execute(f"""
        CREATE OR REPLACE TABLE labels AS
        WITH nxt AS (
            SELECT k.customer_id, k.cutoff, min(e.churned_at) AS churned_at
            FROM spine k LEFT JOIN churn_events e
              ON e.customer_id = k.customer_id AND e.churned_at >= k.cutoff
            GROUP BY 1, 2),
        obs AS (
            SELECT *, churned_at IS NOT NULL
                      AND churned_at + INTERVAL {lag} DAY <= $until AS event
            FROM nxt),
        rev AS (
            SELECT k.customer_id, k.cutoff,
                   sum(CASE p.status WHEN 'paid' THEN p.amount
                                     WHEN 'refunded' THEN -abs(p.amount) ELSE 0 END) AS revenue
            FROM spine k JOIN payments p
              ON p.customer_id = k.customer_id AND p.occurred_at >= k.cutoff
             AND p.occurred_at < k.cutoff + INTERVAL {ltv_horizon_days} DAY
            GROUP BY 1, 2)
        SELECT o.customer_id, o.cutoff,
            CASE WHEN o.cutoff + INTERVAL {horizon_days + lag} DAY > $until THEN NULL
                 WHEN o.event AND o.churned_at < o.cutoff + INTERVAL {horizon_days} DAY THEN 1
                 ELSE 0 END AS churned,
            CAST(o.event AS INTEGER) AS event,
            greatest(date_diff('second', o.cutoff, CASE WHEN o.event THEN o.churned_at
                 ELSE $until - INTERVAL {lag} DAY END) / 86400.0, 0.0) AS duration_days,
            CASE WHEN o.event THEN o.churned_at END AS churned_at,
            CASE WHEN o.cutoff + INTERVAL {ltv_horizon_days} DAY > $until THEN NULL
                 ELSE coalesce(r.revenue, 0.0) END AS revenue_ltv
        FROM obs o LEFT JOIN rev r USING (customer_id, cutoff)
    """, {"until": until})
