"""Which of the three data shapes a loaded source has, and from when it can show a churn.

- ``subscriptions``: contract periods over time, whose recorded ends show churns as they
  happen (the history of a subscription business).
- ``snapshot``: a one-snapshot export (e.g. a CRM's accounts at an export date): at most
  one subscription per customer, and every recorded end lies in the last period before the
  end of the data. Only the churners of that period are in it; earlier churners are gone.
- ``transactions``: no subscriptions: purchases (payments) and/or events only; churn is a
  customer going quiet.

`recognise_shape` names the shape with a one-line reason; `resolve_churn` makes
``churn.definition: auto`` concrete for a shape; `observable_from` is the first moment the
data can show a churn under a definition, which decides the cutoffs a training set may use
(`churnlens.features.cutoffs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from churnlens.features.relations import LOADED, Sources
from churnlens.features.sql_runner import SqlRunner, runner_of
from churnlens.settings import ChurnSettings

if TYPE_CHECKING:
    from churnlens.features.loading import DataSet

SHAPES = ("subscriptions", "snapshot", "transactions")
SHAPE_NAMES = {"subscriptions": "subscription history", "snapshot": "one-snapshot export",
               "transactions": "transactions without contracts"}
# A snapshot's ends all lie within this many days of its end (or the horizon, if longer):
# one period of churners, with room for a month of 31 days and a late export.
SNAPSHOT_WINDOW_DAYS = 62


@dataclass(frozen=True)
class Shape:
    """The shape of a loaded source, from when it shows a churn, and why (one line each)."""

    name: str  # one of SHAPES
    reason: str
    churn_observable_from: pd.Timestamp | None
    observable_reason: str

    def lines(self) -> list[str]:
        """The two lines of the load report."""
        since = ("never: " if self.churn_observable_from is None
                 else f"{self.churn_observable_from:%Y-%m-%d %H:%M} (")
        close = "" if self.churn_observable_from is None else ")"
        return [f"shape: {SHAPE_NAMES[self.name]} ({self.reason})",
                f"churn observable from {since}{self.observable_reason}{close}"]


def activity_sql(activity: str, sources: Sources = LOADED) -> str:
    """SQL of (customer_id, activity_at): paid purchases, or (ANY) events and paid purchases.

    Failed payments and refund rows are not a customer buying, so they never count.
    """
    purchases = (f"SELECT customer_id, occurred_at AS activity_at FROM {sources.payments} "
                 "AS payment WHERE payment.status = 'paid'")
    if activity == "purchases":
        return purchases
    return (f"SELECT customer_id, occurred_at AS activity_at FROM {sources.events} AS event "
            f"UNION ALL {purchases}")


def recognise_shape(con: SqlRunner | duckdb.DuckDBPyConnection, observed_until: pd.Timestamp,
                    *, horizon_days: int, activity: str) -> Shape:
    """The shape of the contract tables on CON, a runner or a DuckDB connection (see the
    module docstring).

    horizon_days: the churn horizon (widens the snapshot window); activity: "purchases" |
    "any", as `churn.activity` (what the first activity of transactions data is).
    """
    runner = runner_of(con)
    subs, customers, most, ends, first_end = runner.rows("""
        SELECT count(*), count(DISTINCT customer_id), coalesce(max(per_customer), 0),
               count(ended_at), min(ended_at)
        FROM (SELECT *, count(*) OVER (PARTITION BY customer_id) AS per_customer
              FROM subscriptions) AS subscription
    """)[0]
    if subs == 0:
        name, reason = "transactions", "no subscriptions: purchases and activity only"
        return Shape(name, reason, *observable_from(runner, "inactivity", horizon_days,
                                                     activity))
    window = max(horizon_days, SNAPSHOT_WINDOW_DAYS)
    first_end = None if first_end is None else pd.Timestamp(first_end)
    if most == 1 and (first_end is None
                      or first_end >= observed_until - pd.Timedelta(days=window)):
        name = "snapshot"
        if first_end is None:
            reason = f"one subscription per customer, {customers:,} customers, no end recorded"
        else:
            span = math.ceil((observed_until - first_end) / pd.Timedelta(days=1))
            reason = (f"one subscription per customer; all {ends:,} ends in the last {span} "
                      "days, each a churn as recorded, with no grace period")
    else:
        name = "subscriptions"
        reason = (f"{subs:,} subscriptions of {customers:,} customers, up to {most} per "
                  f"customer, {ends:,} ended")
    return Shape(name, reason, *observable_from(runner, "contract", horizon_days, activity))


def observable_from(con: SqlRunner | duckdb.DuckDBPyConnection, definition: str,
                    horizon_days: int, activity: str) -> tuple[pd.Timestamp | None, str]:
    """The first moment the data on CON (a runner or a DuckDB connection) can show a churn
    under DEFINITION, and why.

    contract: the first recorded subscription end. inactivity: the first activity: from
    then on a window [c, c + horizon) can show "no activity" for the customers with history
    before c (the first such silence completes a horizon later, but a cutoff's label
    window is the silence itself, so cutoffs after the first activity are all observable).
    None when the data hold no end (no activity). HORIZON_DAYS names the label in the reason.
    """
    runner = runner_of(con)
    if definition == "contract":
        first = runner.rows("SELECT min(ended_at) FROM subscriptions")[0][0]
        if first is None:
            return None, "no subscription has an end (ended_at) before the end of the data"
        return pd.Timestamp(first), "the first recorded subscription end"
    what = "purchase" if activity == "purchases" else "activity"
    first = runner.rows(f"SELECT min(activity_at) FROM ({activity_sql(activity)}) AS activity"
                        )[0][0]
    if first is None:
        return None, (f"no {what} is recorded (churn.activity: {activity}"
                      f"{', paid payments only' if activity == 'purchases' else ''})")
    return (pd.Timestamp(first),
            f"the first {what}: from then on a cutoff's 'no {what} in [c, c + {horizon_days} "
            "days)' window can be seen")


def resolve_churn(churn: ChurnSettings, ds: DataSet) -> ChurnSettings:
    """CHURN with its definition made concrete for the loaded source DS (by its shape).

    auto: contract when the source has subscriptions (subscriptions, snapshot), inactivity
    for transactions. A snapshot's recorded ends are its churns (nothing after the export
    can confirm or undo one), so its grace_days become 0. Raises ValueError when contract
    is asked of a source without subscriptions.
    """
    shape = ds.shape
    if shape not in SHAPES:
        raise ValueError(f"unknown data shape {shape!r}; expected one of {', '.join(SHAPES)}")
    definition = churn.definition
    if definition == "auto":
        definition = "inactivity" if shape == "transactions" else "contract"
    if definition == "contract" and shape == "transactions":
        raise ValueError("churn.definition is contract, but the source holds no subscriptions: "
                         "set churn.definition: auto (or inactivity) to define churn as no "
                         "purchase or activity in the horizon")
    grace = 0 if shape == "snapshot" else churn.grace_days
    return churn.model_copy(update={"definition": definition, "grace_days": grace})
