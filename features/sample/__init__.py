"""Synthetic B2B SaaS customer base in the churnlens data contract, with known churn risk.

``generate_sample`` simulates customers month by month (calendar month starts c_k) and emits
the observed tables plus ``truth``: the churn probability of every active customer at every
month start under the simulated process. Work is vectorised over customers (loops run over
months, or over blocks of customers spread on threads with their own seeded generators).

Latent state of a customer at a month start c, which is all the churn hazard sees:

* engagement e: AR(1) per month around a customer mean mu (segment, channel, onboarding);
* onboarded: a ``report_created`` (first value) before c. ~25% of accounts are slow
  onboarders (lower mu) who reach it after 45 + Exp(365) days; the rest after 1 + LogNormal
  (median 5) days;
* open high-priority tickets at c: tickets arrive Poisson (more with low e and in larger
  segments) and close after exponential times, so the open count is Markov;
* the last NPS answer (detractor <= 6, promoter >= 9); responders get quarterly surveys and
  answer 80% of them with a score rising with e;
* dunning: consecutive defaulted invoices (default probability is small with a healthy card,
  45% once the previous invoice defaulted).

Churn in month k is drawn from ``hazard`` of the state at c_k and takes effect at the
customer's anchor date in that month (signup day of month: the end of a monthly period, or
the anniversary of an annual contract). Monthly contracts carry the monthly voluntary hazard
p = sigmoid(logit); annual ones carry 1 - (1 - p)**8 in anniversary months and 0.04 p in the
others; defaulted invoices add involuntary churn (30% after one, 60% after two or more) in any
month. Churned customers never return. ``truth`` is the probability of a churn date inside
(c, c + horizon] given the state at c: 64 Monte Carlo paths of the state for the voluntary
part (month of c exact) and an exact recursion for the involuntary part (see ``truth._churn_prob``).

Billing: every contract is invoiced at its anchor date each month (annual contracts are
yearly commitments at a 15% discount, invoiced monthly). A defaulted invoice shows as three
failed attempts (day 0, 3, 7); 5% of the others fail once and are paid 1-5 days later; 1% of
paid invoices are later refunded (status ``refunded`` on the payment row). Seats grow or
shrink at anchor dates with probabilities driven by e (annual contracts shrink only at
renewal); each seat or plan change and each annual renewal starts a subscription row.
Events are daily rollups stamped at midnight UTC of the day (from the day after signup until
the day before churn); ticket, survey and payment times are exact.

Modules: ``process`` (the month grid, the customers and their latent monthly state, the
churn hazard), ``accounts`` (customers, subscriptions, payments), ``activity`` (events,
tickets, surveys), ``truth`` (the true churn probabilities); the one-snapshot export and the
purchase log of the other data shapes are ``snapshot`` and ``transactions``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from churnlens.features.sample.accounts import (
    customers_table,
    draw_subscriptions,
    payments_table,
    subscriptions_table,
)
from churnlens.features.sample.activity import (
    EVENT_TYPES,
    events_table,
    surveys_table,
    tickets_table,
)
from churnlens.features.sample.checks import end_date
from churnlens.features.sample.process import (
    draw_churn,
    draw_customers,
    month_grid,
    simulate_states,
)
from churnlens.features.sample.truth import truth_table

__all__ = ["EVENT_TYPES", "SAMPLE_END", "generate_sample", "write_sample"]

SAMPLE_END = pd.Timestamp("2026-11-01")


def generate_sample(n_customers: int, seed: int = 0, *, end: pd.Timestamp = SAMPLE_END,
                    years: float = 3.0, horizon_days: int = 90) -> dict[str, pd.DataFrame]:
    """Simulate a customer base and return its tables.

    Inputs: ``n_customers`` (>= 1) customers signing up over ``years`` (0.1 to 50) before
    ``end`` (midnight, exclusive end of the data, UTC); ``seed`` (int >= 0) fixes the output;
    ``horizon_days`` (>= 1) is the churn horizon of ``truth``.
    Output: {"customers", "subscriptions", "events", "payments", "tickets", "surveys",
    "truth"}, each sorted by customer_id then time, timestamps tz-naive UTC. ``truth`` has
    customer_id, cutoff, true_churn_prob and true_engagement for each customer active at each
    month start c with c + horizon_days <= end.
    Errors: ValueError naming the invalid argument.
    """
    end = _validate(n_customers, seed, end, years, horizon_days)
    rng = np.random.default_rng(seed)
    grid = month_grid(end, years)
    cu = draw_customers(n_customers, grid, years, rng)
    st = simulate_states(cu, grid, rng)
    churn_m, churn_t = draw_churn(cu, st, grid, rng)
    width = max(6, len(str(n_customers)))
    ids = np.char.add("C", np.char.zfill(np.arange(1, n_customers + 1).astype(str), width))
    ids = ids.astype(object)
    subs = draw_subscriptions(cu, st, grid, churn_m, churn_t, rng)
    return {
        "customers": customers_table(cu, ids, rng),
        "subscriptions": subscriptions_table(subs, cu, ids),
        "events": events_table(cu, st, grid, churn_t, ids, int(rng.integers(2**63))),
        "payments": payments_table(cu, st, grid, churn_m, subs, ids, rng),
        "tickets": tickets_table(st, churn_t, grid, ids, rng),
        "surveys": surveys_table(st.surveys, churn_t, grid, ids),
        "truth": truth_table(cu, st, grid, churn_m, horizon_days, ids, int(rng.integers(2**63))),
    }


SHAPES = ("subscriptions", "snapshot", "transactions")


def generate_shape(shape: str, n_customers: int, seed: int = 0, *, horizon_days: int = 90,
                   ltv_horizon_days: int = 365) -> dict[str, pd.DataFrame]:
    """Sample data of one data shape: ``subscriptions`` (the B2B SaaS history of
    ``generate_sample``), ``snapshot`` (a one-snapshot CRM export, ``snapshot.generate``) or
    ``transactions`` (a purchase log without contracts, ``transactions.generate``).

    Errors: ValueError for an unknown shape (and whatever the generator raises).
    """
    if shape == "subscriptions":
        return generate_sample(n_customers, seed=seed, horizon_days=horizon_days)
    if shape == "snapshot":
        from churnlens.features.sample import snapshot

        return snapshot.generate(n_customers, seed, horizon_days=horizon_days)
    if shape == "transactions":
        from churnlens.features.sample import transactions

        return transactions.generate(n_customers, seed, horizon_days=horizon_days,
                                     ltv_horizon_days=ltv_horizon_days)
    raise ValueError(f"unknown data shape {shape!r}; use one of {', '.join(SHAPES)}")


def write_sample(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Write each table to ``out_dir/NAME.parquet``, creating the folder.

    Contract tables (and ``truth``) already in the folder that TABLES does not hold are
    removed, so a folder never mixes two samples (a subscriptions table left over from
    another shape would change what the data are).

    Inputs: ``tables`` mapping table name to DataFrame (as from ``generate_sample``).
    Output: mapping of table name to the written path.
    Errors: ValueError if a name is not a plain file name or a value is not a DataFrame.
    """
    out_dir = Path(out_dir)
    for name, frame in tables.items():
        if not isinstance(name, str) or name in {"", ".", ".."} or Path(name).name != name:
            raise ValueError(f"table name {name!r} is not a plain file name; use e.g. 'events'")
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"table {name!r} is a {type(frame).__name__}, not a DataFrame")
    out_dir.mkdir(parents=True, exist_ok=True)
    from churnlens.features.contract import TABLES

    for stale in sorted(set(TABLES) | {"truth"}):
        for suffix in (".parquet", ".csv"):
            path = out_dir / f"{stale}{suffix}"
            if path.exists() and (stale not in tables or suffix == ".csv"):
                path.unlink()
    paths = {name: out_dir / f"{name}.parquet" for name in tables}
    for name, frame in tables.items():
        frame.to_parquet(paths[name], index=False)
    return paths


def _validate(n, seed, end, years, horizon_days) -> pd.Timestamp:
    def is_int(x):
        return isinstance(x, int | np.integer) and not isinstance(x, bool)

    if not is_int(n) or n < 1:
        raise ValueError(f"n_customers must be an integer >= 1, got {n!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not is_int(horizon_days) or horizon_days < 1:
        raise ValueError(f"horizon_days must be an integer >= 1, got {horizon_days!r}")
    if isinstance(years, bool) or not isinstance(years, int | float) or not 0.1 <= years <= 50:
        raise ValueError(f"years must be a number from 0.1 to 50, got {years!r}")
    return end_date(end, pd.NaT)
