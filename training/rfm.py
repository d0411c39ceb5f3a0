"""Per-customer purchase summaries (frequency, recency, age, spend) for the purchase models.

`rfm_summary` turns a purchase log into the summary `churnlens.training.purchase` fits on;
`simulate_bgnbd` and `simulate_gamma_gamma` draw such summaries from known parameters, for
tests and benchmarks.

Conventions (those of Fader, Hardie and Lee's CDNOW analyses and of the BTYD packages):
- Only purchases strictly before the cutoff count, and time is counted in whole UTC days.
  The last observed day is the day before the cutoff when the cutoff is a midnight.
- Purchases on the same day are one purchase whose amount is the day's sum: the models
  describe shopping trips, and a split basket is not a second trip.
- The first purchase starts the customer's clock and is not a repeat: frequency x is the
  number of later purchase days, recency t_x the time from the first to the last purchase
  day (0 when x = 0), age T the time from the first purchase day to the last observed day.
- monetary_value is the mean amount of the repeat purchases (the first purchase's amount
  is left out, as Gamma-Gamma expects); NaN when x = 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNITS = {"D": 1.0, "W": 7.0}


def _require(purchases: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in purchases.columns]
    if missing:
        raise ValueError(f"rfm_summary: purchases lack column(s) {missing}; "
                         f"it has {list(purchases.columns)}")
    for column in columns:
        empty = purchases[column].isna()
        if empty.any():
            raise ValueError(f"rfm_summary: column {column!r} is empty in {int(empty.sum())} "
                             f"row(s) (first at row {purchases.index[empty.to_numpy()][0]!r}); "
                             "drop those rows or fill them")


def _utc(values, what: str):
    """Naive UTC timestamps (aware ones converted, naive ones taken as UTC)."""
    try:
        converted = pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as error:
        raise ValueError(f"rfm_summary: {what} does not parse as timestamps: {error}") from None
    if isinstance(converted, pd.Timestamp):
        return converted.tz_convert(None)
    return converted.dt.tz_convert(None)


def rfm_summary(purchases: pd.DataFrame, cutoff, unit: str = "D", *,
                customer_col: str = "customer_id", time_col: str = "occurred_at",
                amount_col: str | None = "amount") -> pd.DataFrame:
    """Frequency, recency, age and mean repeat spend per customer at a cutoff.

    purchases: one row per purchase with customer_col, time_col (timestamps; naive ones are
    taken as UTC) and amount_col (None: no spend column is computed). cutoff: timestamp or
    date; records at or after it are ignored. unit: "D" (days) or "W" (weeks) for recency
    and T. Returns a frame indexed by customer id (customers with a purchase before the
    cutoff, sorted) with columns frequency, recency, T and monetary_value, and
    attrs["unit_days"] = 1 or 7. Raises ValueError for a missing column, empty values,
    unparseable timestamps, non-finite amounts or an unknown unit.
    """
    if unit not in UNITS:
        raise ValueError(f"rfm_summary: unit must be one of {sorted(UNITS)}, got {unit!r}")
    columns = [customer_col, time_col] + ([amount_col] if amount_col else [])
    _require(purchases, columns)
    times = _utc(purchases[time_col], f"column {time_col!r}")
    cutoff = _utc(cutoff, "cutoff")
    amounts = (purchases[amount_col].to_numpy(dtype=float) if amount_col
               else np.zeros(len(purchases)))
    if not np.isfinite(amounts).all():
        raise ValueError(f"rfm_summary: column {amount_col!r} holds "
                         f"{int((~np.isfinite(amounts)).sum())} infinite value(s)")
    before = (times < cutoff).to_numpy()
    days = pd.DataFrame({"customer_id": purchases[customer_col].to_numpy()[before],
                         "day": times.dt.floor("D").to_numpy()[before],
                         "amount": amounts[before]})
    daily = (days.groupby(["customer_id", "day"], sort=True)["amount"].sum().reset_index())
    per_customer = daily.groupby("customer_id", sort=True)
    first_day = per_customer["day"].min()
    first_amount = per_customer["amount"].first()
    frequency = per_customer.size() - 1
    last_observed = (cutoff - pd.Timedelta(1, "ns")).floor("D")
    unit_days = UNITS[unit]
    summary = pd.DataFrame({
        "frequency": frequency.astype(int),
        "recency": (per_customer["day"].max() - first_day).dt.days / unit_days,
        "T": (last_observed - first_day).dt.days / unit_days,
        "monetary_value": ((per_customer["amount"].sum() - first_amount)
                           / frequency.where(frequency > 0)) if amount_col else np.nan,
    })
    summary.index.name = "customer_id"
    summary.attrs["unit_days"] = unit_days
    return summary


def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, T,
                   horizon: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Draw n customers from a BG/NBD process with known parameters.

    T: age of each customer at the end of observation (scalar or n values). Each customer
    buys at rate lambda ~ Gamma(r, rate alpha) and, after each repeat purchase, drops out
    with probability p ~ Beta(a, b). Returns frequency, recency, T (observed in [0, T]),
    future (purchases in (T, T + horizon]), alive (not dropped out at T), rate and dropout
    (the drawn lambda and p). Raises ValueError for n < 1 or a non-positive parameter.
    """
    if n < 1 or min(r, alpha, a, b) <= 0:
        raise ValueError(f"simulate_bgnbd: need n >= 1 and positive parameters, got n={n}, "
                         f"r={r}, alpha={alpha}, a={a}, b={b}")
    rng = np.random.default_rng(seed)
    T = np.broadcast_to(np.asarray(T, dtype=float), (n,)).copy()
    rate, dropout = rng.gamma(r, 1.0 / alpha, n), rng.beta(a, b, n)
    end = T + horizon
    # Purchases of an immortal customer: a Poisson count with uniform times, then cut
    # after the geometric number of purchases the customer lives for.
    counts = rng.poisson(rate * end)
    owner = np.repeat(np.arange(n), counts)
    times = rng.uniform(0.0, end[owner])
    order = np.lexsort((times, owner))
    owner, times = owner[order], times[order]
    rank = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    lifetime = rng.geometric(dropout)
    kept = rank <= lifetime[owner]
    observed = kept & (times <= T[owner])
    frequency = np.bincount(owner[observed], minlength=n)
    recency = np.zeros(n)
    np.maximum.at(recency, owner[observed], times[observed])
    return pd.DataFrame({
        "frequency": frequency, "recency": recency, "T": T,
        "future": np.bincount(owner[kept & ~observed], minlength=n),
        "alive": lifetime > frequency, "rate": rate, "dropout": dropout,
    })


def simulate_gamma_gamma(frequency, p: float, q: float, v: float,
                         seed: int = 0) -> pd.DataFrame:
    """Draw the mean repeat spend of customers with the given repeat-purchase counts.

    Each customer's amounts are Gamma(p, rate nu) with nu ~ Gamma(q, rate v). Returns
    monetary_value (mean of the customer's `frequency` amounts; NaN when 0) and
    mean_spend (the customer's true expected amount p / nu). Raises ValueError for a
    negative count or a non-positive parameter.
    """
    frequency = np.asarray(frequency, dtype=float)
    if (frequency < 0).any() or min(p, q, v) <= 0:
        raise ValueError("simulate_gamma_gamma: need counts >= 0 and positive parameters")
    rng = np.random.default_rng(seed)
    nu = rng.gamma(q, 1.0 / v, frequency.size)
    # The mean of x Gamma(p, nu) amounts is Gamma(p x, x nu).
    shape = np.where(frequency > 0, p * frequency, 1.0)
    mean = rng.gamma(shape, 1.0 / (np.maximum(frequency, 1) * nu))
    return pd.DataFrame({"monetary_value": np.where(frequency > 0, mean, np.nan),
                         "mean_spend": p / nu})
