"""Cutoffs, the (customer, cutoff) spine of customers, and churn events.

Being a customer at a cutoff is decided only from what was known before it: under the
contract definition a customer is in the spine at c when a subscription started before c
and had not ended by c; under the inactivity definition (no contracts) when they have any
activity (`churn.activity`) before c, gone quiet or not: a quiet customer may come back.
Each step takes the relations it reads and returns a relation
(`churnlens.features.relations`). The churn settings must be concrete (contract or
inactivity): `churnlens.features.shapes.resolve_churn` makes ``auto`` so.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from churnlens.features.relations import LOADED, Sources, from_item, materialise
from churnlens.features.shapes import activity_sql
from churnlens.settings import ChurnSettings, CutoffSettings

FAR_FUTURE = "TIMESTAMP '9999-12-31'"


def first_signup(con: duckdb.DuckDBPyConnection, sources: Sources = LOADED) -> pd.Timestamp | None:
    """The earliest signed_up_at of the customers table (None when it is empty)."""
    first = con.sql(f"SELECT min(signed_up_at) FROM {sources.customers}").fetchall()[0][0]
    return None if first is None else pd.Timestamp(first)


def cutoff_dates(first: pd.Timestamp | None, observed_until: pd.Timestamp,
                 settings: CutoffSettings) -> list[pd.Timestamp]:
    """Regular cutoffs (month or week starts) from the first signup FIRST to the end of the data.

    Raises ValueError when there are no customers (FIRST is None) or the data span no full
    period.
    """
    if first is None:
        raise ValueError("customers is empty: there is nobody to score")
    start = first + pd.Timedelta(days=settings.min_history_days)
    freq = "MS" if settings.frequency == "month" else "W-MON"
    cutoffs = list(pd.date_range(start.normalize(), observed_until, freq=freq, inclusive="right"))
    cutoffs = [c for c in cutoffs if c < observed_until]
    if not cutoffs:
        raise ValueError(
            f"the data span {start.date()} to {observed_until.date()}, less than one "
            f"{settings.frequency}; cutoffs need more history"
        )
    return cutoffs


def cutoff_relation(con: duckdb.DuckDBPyConnection,
                    cutoffs: Sequence[pd.Timestamp]) -> duckdb.DuckDBPyRelation:
    """CUTOFFS as a relation of one column `cutoff`, each date once.

    Cutoffs are midnights (UTC): a date, not a moment, which keeps daily rollups exact.
    Raises ValueError when CUTOFFS is empty.
    """
    return con.sql(cutoffs_sql(cutoffs))


def cutoffs_sql(cutoffs: Sequence[pd.Timestamp]) -> str:
    """The SQL text of `cutoff_relation` (for engines other than DuckDB, e.g. Spark).

    Raises ValueError when CUTOFFS is empty.
    """
    days = sorted({pd.Timestamp(c).normalize() for c in cutoffs})
    if not days:
        raise ValueError("no cutoffs given: pass at least one date")
    values = ", ".join(f"(TIMESTAMP '{day:%Y-%m-%d}')" for day in days)
    return f"SELECT CAST(cutoff AS TIMESTAMP) AS cutoff FROM (VALUES {values}) AS given(cutoff)"


def build_spine(con: duckdb.DuckDBPyConnection, cutoffs: duckdb.DuckDBPyRelation,
                churn: ChurnSettings, sources: Sources = LOADED) -> duckdb.DuckDBPyRelation:
    """The customers at each of CUTOFFS: a relation (customer_id, cutoff), computed once.

    contract: an active subscription at the cutoff; inactivity: any activity before it.
    Rows are sorted by customer_id then cutoff, each pair once; only customers who signed up
    before the cutoff. The relation reads a temporary table (`relations.drop` removes it).
    Raises ValueError when CHURN's definition is not concrete.
    """
    return materialise(con, spine_sql(from_item(cutoffs), churn, sources)
                       + " ORDER BY customer_id, cutoff", "spine")


def spine_sql(at_cutoff: str, churn: ChurnSettings, sources: Sources = LOADED) -> str:
    """The SQL text of `build_spine` without its ORDER BY, reading the cutoffs from the
    from-item AT_CUTOFF (for engines other than DuckDB, e.g. Spark). Raises ValueError when
    CHURN's definition is not concrete."""
    _check_concrete(churn)
    if churn.definition == "contract":
        active = f"""
            SELECT DISTINCT subscription.customer_id, at_cutoff.cutoff
            FROM {sources.subscriptions} AS subscription JOIN {at_cutoff} AS at_cutoff
              ON subscription.started_at < at_cutoff.cutoff
             AND (subscription.ended_at IS NULL OR subscription.ended_at >= at_cutoff.cutoff)
        """
    else:
        active = f"""
            SELECT history.customer_id, at_cutoff.cutoff
            FROM (SELECT customer_id, min(activity_at) AS first_at
                  FROM ({activity_sql(churn.activity, sources)}) AS activity
                  GROUP BY customer_id) AS history
            JOIN {at_cutoff} AS at_cutoff ON history.first_at < at_cutoff.cutoff
        """
    return f"""
        SELECT active.customer_id, active.cutoff FROM ({active}) AS active
        JOIN {sources.customers} AS customer
          ON customer.customer_id = active.customer_id AND customer.signed_up_at < active.cutoff
    """


def _check_concrete(churn: ChurnSettings) -> None:
    if churn.definition not in ("contract", "inactivity"):
        raise ValueError(f"churn.definition {churn.definition!r} is not resolved for the data: "
                         "pass churnlens.features.shapes.resolve_churn(settings.churn, ds)")


def build_churn_events(con: duckdb.DuckDBPyConnection, churn: ChurnSettings,
                       sources: Sources = LOADED) -> duckdb.DuckDBPyRelation:
    """Every churn in the history: a relation (customer_id, churned_at), a query run when read.

    contract: the end of a run of subscriptions with no gap longer than grace_days.
    inactivity: the last activity (`churn.activity`) before a silence longer than
    inactivity_days, plus inactivity_days: the moment that silence is complete.
    Raises ValueError when CHURN's definition is not concrete.
    """
    _check_concrete(churn)
    if churn.definition == "contract":
        sql = f"""
            WITH periods AS (
                SELECT customer_id, started_at, coalesce(ended_at, {FAR_FUTURE}) AS ends_at
                FROM {sources.subscriptions}),
            ordered AS (
                SELECT *, max(ends_at) OVER (PARTITION BY customer_id ORDER BY started_at, ends_at
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS previous_end
                FROM periods),
            runs AS (
                SELECT *, sum(CASE WHEN previous_end IS NULL
                        OR started_at > previous_end + INTERVAL {churn.grace_days} DAY
                        THEN 1 ELSE 0 END)
                    OVER (PARTITION BY customer_id ORDER BY started_at, ends_at
                          ROWS UNBOUNDED PRECEDING) AS run
                FROM ordered)
            SELECT customer_id, max(ends_at) AS churned_at FROM runs
            GROUP BY customer_id, run HAVING max(ends_at) < {FAR_FUTURE}
        """
    else:
        silence = f"INTERVAL {churn.inactivity_days} DAY"
        sql = f"""
            WITH activity AS (
                SELECT DISTINCT customer_id, activity_at
                FROM ({activity_sql(churn.activity, sources)}) AS any_activity),
            following AS (
                SELECT customer_id, activity_at,
                       lead(activity_at) OVER (PARTITION BY customer_id ORDER BY activity_at)
                           AS next_at
                FROM activity)
            SELECT customer_id, activity_at + {silence} AS churned_at FROM following
            WHERE next_at IS NULL OR next_at > activity_at + {silence}
        """
    return con.sql(sql)


def confirmation_lag_days(churn: ChurnSettings) -> int:
    """Days after a churn before it is known for sure (no restart within the grace)."""
    return churn.grace_days if churn.definition == "contract" else 0
