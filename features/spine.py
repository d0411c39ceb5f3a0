"""Cutoffs, the (customer, cutoff) spine of active customers, and churn events.

Being active at a cutoff is decided only from what was known before it: a contract
customer is active at c when a subscription started before c and had not ended by c; an
inactivity customer when they had an event or payment in the N days before c.
"""

from __future__ import annotations

import pandas as pd

from churnlens.features.loading import DataSet
from churnlens.settings import ChurnSettings, CutoffSettings

FAR_FUTURE = "TIMESTAMP '9999-12-31'"


def cutoff_dates(ds: DataSet, settings: CutoffSettings) -> list[pd.Timestamp]:
    """Regular cutoffs (month or week starts) from the first signup to the end of the data.

    Raises ValueError when the data span no full period.
    """
    first = ds.con.execute("SELECT min(signed_up_at) FROM customers").fetchall()[0][0]
    if first is None:
        raise ValueError("customers is empty: there is nobody to score")
    start = pd.Timestamp(first) + pd.Timedelta(days=settings.min_history_days)
    freq = "MS" if settings.frequency == "month" else "W-MON"
    cutoffs = list(
        pd.date_range(start.normalize(), ds.observed_until, freq=freq, inclusive="right")
    )
    cutoffs = [c for c in cutoffs if c < ds.observed_until]
    if not cutoffs:
        raise ValueError(
            f"the data span {start.date()} to {ds.observed_until.date()}, less than one "
            f"{settings.frequency}; cutoffs need more history"
        )
    return cutoffs


def set_cutoffs(ds: DataSet, cutoffs: list[pd.Timestamp]) -> None:
    """Store the cutoffs in the connection as table `cutoffs(cutoff)`.

    Cutoffs are midnights (UTC): a date, not a moment, which keeps daily rollups exact.
    """
    frame = pd.DataFrame(
        {"cutoff": pd.to_datetime(cutoffs).normalize().astype("datetime64[us]")}
    )
    ds.con.register("_cutoffs_frame", frame)
    ds.con.execute("CREATE OR REPLACE TABLE cutoffs AS SELECT DISTINCT cutoff FROM _cutoffs_frame")
    ds.con.unregister("_cutoffs_frame")


def build_spine(ds: DataSet, churn: ChurnSettings) -> int:
    """Create table `spine(customer_id, cutoff)` of customers active at each cutoff.

    Needs table `cutoffs`. Returns the number of spine rows.
    """
    if churn.definition == "contract":
        active = """
            SELECT DISTINCT s.customer_id, k.cutoff
            FROM subscriptions s JOIN cutoffs k
              ON s.started_at < k.cutoff AND (s.ended_at IS NULL OR s.ended_at >= k.cutoff)
        """
    else:
        active = f"""
            SELECT DISTINCT a.customer_id, k.cutoff
            FROM ({_activity_sql()}) a JOIN cutoffs k
              ON a.activity_at < k.cutoff AND a.activity_at >= k.cutoff - INTERVAL {churn.inactivity_days} DAY
        """
    ds.con.execute(f"""
        CREATE OR REPLACE TABLE spine AS
        SELECT a.customer_id, a.cutoff FROM ({active}) a
        JOIN customers c ON c.customer_id = a.customer_id AND c.signed_up_at < a.cutoff
        ORDER BY a.customer_id, a.cutoff
    """)
    return ds.con.execute("SELECT count(*) FROM spine").fetchall()[0][0]


def _activity_sql() -> str:
    return """
        SELECT customer_id, occurred_at AS activity_at FROM events
        UNION ALL SELECT customer_id, occurred_at AS activity_at FROM payments
    """


def build_churn_events(ds: DataSet, churn: ChurnSettings) -> None:
    """Create table `churn_events(customer_id, churned_at)`: every churn in the history.

    contract: the end of a run of subscriptions with no gap longer than grace_days.
    inactivity: the last activity before a gap of inactivity_days, plus inactivity_days.
    """
    if churn.definition == "contract":
        sql = f"""
            WITH s AS (
                SELECT customer_id, started_at, coalesce(ended_at, {FAR_FUTURE}) AS e
                FROM subscriptions),
            o AS (
                SELECT *, max(e) OVER (PARTITION BY customer_id ORDER BY started_at, e
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
                FROM s),
            g AS (
                SELECT *, sum(CASE WHEN prev_end IS NULL
                        OR started_at > prev_end + INTERVAL {churn.grace_days} DAY
                        THEN 1 ELSE 0 END)
                    OVER (PARTITION BY customer_id ORDER BY started_at, e
                          ROWS UNBOUNDED PRECEDING) AS island
                FROM o)
            SELECT customer_id, max(e) AS churned_at FROM g
            GROUP BY customer_id, island HAVING max(e) < {FAR_FUTURE}
        """
    else:
        sql = f"""
            WITH a AS (SELECT DISTINCT customer_id, activity_at FROM ({_activity_sql()})),
            n AS (SELECT customer_id, activity_at,
                    lead(activity_at) OVER (PARTITION BY customer_id ORDER BY activity_at) AS next_at FROM a)
            SELECT customer_id, activity_at + INTERVAL {churn.inactivity_days} DAY AS churned_at FROM n
            WHERE next_at IS NULL OR next_at > activity_at + INTERVAL {churn.inactivity_days} DAY
        """
    ds.con.execute(f"CREATE OR REPLACE TABLE churn_events AS {sql}")


def confirmation_lag_days(churn: ChurnSettings) -> int:
    """Days after a churn before it is known for sure (no restart within the grace)."""
    return churn.grace_days if churn.definition == "contract" else 0
