"""Synthetic retail purchase log without contracts, with the true purchase outlook.

Customers are acquired at their first purchase over the 3.5 years before the end E
(default 2026-11-01; acquisitions double over that span and follow the season) and buy
again, or not, under a latent process that is deliberately not BG/NBD, Pareto/NBD or
Gamma-Gamma:

* a daily Markov chain over four regimes: engaged, lapsing, dormant, gone (absorbing).
  Engaged customers lapse after a geometric stay whose mean depends on a loyalty class
  (90 / 240 / 600 days); lapsing ones re-engage or fall dormant after ~75 days; dormant
  ones wake up to lapsing (30%) or leave for good after ~300 days. The first regime after
  the first order is engaged more often for newsletter subscribers and loyal classes,
  less often for holiday-season first orders (gift buyers), and dormant often enough that
  a large share buy once only;
* purchases are Poisson given the regime: a customer rate (lognormal, median 3.5 a year,
  by category and channel) times 1 / 0.3 / 0.03 / 0.005 by regime, times a calendar season
  (November and December high, January low);
* order values are lognormal: a customer mean that correlates with the purchase rate (so
  frequency and spend are not independent), growing 12% a year of tenure, sd 0.5; a share
  of orders (1-7% by first category) is refunded 3-30 days later;
* site visits (``events``: ``visit`` and ``cart_add``) follow the regime, not the purchases:
  lapsing customers still browse, gone ones almost never do, so visits tell a dormant
  customer who may come back from one who has left, which no purchase model can see.

Tables (sorted by customer_id then time, ids C000001... in acquisition order, timestamps
tz-naive UTC): ``customers`` (customer_id, signed_up_at: account creation minutes before
the first order, acquisition_channel, country, first_order_category, newsletter yes/no),
``payments`` (customer_id, occurred_at, amount > 0, status ``paid``, or ``refunded`` on a
later row carrying the refunded order's amount), ``events`` (customer_id, occurred_at,
event, quantity 1) and ``truth``.

``truth``: one row per customer with a first order before each of the last 12 month
starts c with c + horizon <= E (the earliest ones' LTV windows lie inside the data):
cutoff, true_state (the regime on the day before c), true_p_purchase = P(an order in
[c, c + horizon)), true_churn_prob = 1 - true_p_purchase, true_p_active = P(an order or a
visit in that window, if events count as activity), true_purchases = expected orders in
it, true_revenue_ltv = expected paid minus refunded revenue in [c, c + ltv_horizon_days)
as the labels count it (refunds already decided for orders before c included). All exact:
forward recursions over the regime chain and closed forms, no Monte Carlo.

Settings to train on it: churn = no purchase in [c, c + horizon) (``churn.definition:
inactivity``), ``horizon_days: 90``, ``ltv.horizon_days: 365``, and every customer with a
first order before c in the spine, gone quiet or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnlens.features.sample.checks import check_integers, end_date

END_DATE = pd.Timestamp("2026-11-01")
HORIZON_DAYS = 90
LTV_HORIZON_DAYS = 365
HISTORY_YEARS = 3.5
TRUTH_CUTOFFS = 12

STATES = ("engaged", "lapsing", "dormant", "gone")
CHANNELS = ("organic", "paid_search", "social", "referral", "marketplace")
COUNTRIES = ("US", "GB", "DE", "FR", "CA", "AU")
CATEGORIES = ("apparel", "home", "beauty", "electronics", "books")
EVENT_TYPES = ("visit", "cart_add")

_DAY = 86_400
_YEAR = 365.25
_CHANNEL_P = np.array([0.35, 0.25, 0.2, 0.1, 0.1])
_COUNTRY_P = np.array([0.45, 0.15, 0.12, 0.08, 0.1, 0.1])
_CATEGORY_P = np.array([0.3, 0.2, 0.2, 0.12, 0.18])
_RATE_CATEGORY = np.array([0.0, -0.3, 0.35, -0.6, 0.1])
_RATE_CHANNEL = np.array([0.1, 0.0, -0.3, 0.25, -0.15])
_VALUE_CATEGORY = np.log([55.0, 75.0, 40.0, 120.0, 30.0])
_REFUND_P = np.array([0.07, 0.03, 0.02, 0.05, 0.01])
_LOYALTY_P = np.array([[0.3, 0.45, 0.25], [0.4, 0.4, 0.2], [0.55, 0.35, 0.1],
                       [0.2, 0.45, 0.35], [0.5, 0.4, 0.1]])  # rows: channels
_RATE_MEDIAN, _RATE_SD = 3.5, 0.75  # purchases a year while engaged
_VALUE_RATE, _VALUE_OWN, _VALUE_TENURE, _VALUE_SD = 0.35, 0.35, 0.12, 0.5
_MULT = np.array([1.0, 0.3, 0.03, 0.005])  # purchase rate by regime
_VISITS = np.array([0.1, 0.07, 0.012, 0.0005])  # visits a day by regime
_CART = np.array([0.3, 0.4, 0.15, 0.1])  # P(cart_add) per visit by regime
_SEASON = np.array([0.8, 0.85, 0.95, 1.0, 1.0, 0.95, 0.9, 0.95, 1.0, 1.05, 1.5, 1.6])
# Daily regime chain per loyalty class: exit probability and where an exit leads.
_STAY_DAYS = np.array([[90.0, 75.0, 300.0], [240.0, 75.0, 300.0], [600.0, 75.0, 300.0]])
_REENGAGE = np.array([0.2, 0.35, 0.55])  # lapsing -> engaged; otherwise dormant
_WAKE = 0.3  # dormant -> lapsing; otherwise gone


def _jumps() -> np.ndarray:
    """(class, from, to): where a regime leads when it ends (rows engaged, lapsing, dormant)."""
    return np.array([[[0, 1, 0, 0], [r, 0, 1 - r, 0], [0, _WAKE, 0, 1 - _WAKE]]
                     for r in _REENGAGE])


def _transitions() -> np.ndarray:
    """(class, from, to) daily transition matrices of the regime chain."""
    p = np.zeros((3, 4, 4))
    exit_p = 1 / _STAY_DAYS
    p[:, :3] = exit_p[:, :, None] * _jumps()
    p[:, :3, :3] += np.eye(3) * (1 - exit_p)[:, None, :]
    p[:, 3, 3] = 1.0
    return p


@dataclass
class _Buyers:
    acq_day: np.ndarray  # day index of the first order
    first_t: np.ndarray  # epoch seconds of the first order
    channel: np.ndarray
    category: np.ndarray
    newsletter: np.ndarray
    loyalty: np.ndarray
    rate: np.ndarray  # purchases a year while engaged
    value_mu: np.ndarray  # log order value at tenure 0, before the noise
    state0: np.ndarray  # regime on the day of the first order
    visit_w: np.ndarray  # visit propensity (multiplies the regime's visit rate)


def generate(n_customers: int, seed: int = 0, *, horizon_days: int = HORIZON_DAYS,
             end: pd.Timestamp | None = None,
             ltv_horizon_days: int = LTV_HORIZON_DAYS) -> dict[str, pd.DataFrame]:
    """Simulate the purchase log of ``n_customers`` customers up to ``end``.

    Inputs: ``n_customers`` (>= 1); ``seed`` (int >= 0) fixes the output; ``horizon_days``
    (1 to 366) is the churn window of ``truth``; ``end`` a midnight (default 2026-11-01),
    the exclusive end of the data; ``ltv_horizon_days`` (1 to 1096) the revenue window.
    Output: {"customers", "payments", "events", "truth"} as in the module docstring.
    Errors: ValueError naming the invalid argument.
    """
    end = _validate(n_customers, seed, horizon_days, end, ltv_horizon_days)
    first = (end - pd.Timedelta(days=round(HISTORY_YEARS * _YEAR))).normalize()
    n_days = (end - first).days
    origin = int(first.value // 10**9)
    season = _SEASON[pd.date_range(first, periods=n_days + ltv_horizon_days + 1).month - 1]
    rng = np.random.default_rng(seed)
    b = _draw_buyers(n_customers, season[:n_days], origin, rng)
    seg = _regimes(b, n_days, rng)
    width = max(6, len(str(n_customers)))
    ids = np.char.add("C", np.char.zfill(np.arange(1, n_customers + 1).astype(str), width))
    ids = ids.astype(object)
    pay = _purchases(b, seg, season, origin, rng)
    refund = _refunds(b, pay, origin + n_days * _DAY, rng)
    cutoffs = pd.date_range(first + pd.offsets.MonthBegin(), end - pd.Timedelta(days=horizon_days),
                            freq="MS")[-TRUTH_CUTOFFS:]
    truth = _truth(b, seg, refund, season, ((cutoffs - first).days).to_numpy(), origin,
                   horizon_days, ltv_horizon_days)
    return {
        "customers": _customers_frame(b, ids, rng),
        "payments": _payments_frame(pay, refund, ids),
        "events": _visits(b, seg, origin, ids, rng),
        "truth": _truth_frame(truth, ids, origin),
    }


def _validate(n, seed, horizon_days, end, ltv_horizon_days) -> pd.Timestamp:
    checks = [("n_customers", n, 1, None), ("seed", seed, 0, None),
              ("horizon_days", horizon_days, 1, 366),
              ("ltv_horizon_days", ltv_horizon_days, 1, 1096)]
    check_integers(checks)
    return end_date(end, END_DATE)


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw (column index) per row of the probability matrix ``probs``."""
    u = rng.random(probs.shape[0])
    return (u[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)


def _draw_buyers(n: int, season: np.ndarray, origin: int, rng) -> _Buyers:
    # Acquisitions double over the history and follow the season (inverse CDF of the days).
    n_days = season.size
    weight = np.cumsum(np.exp(np.log(2.0) * np.arange(n_days) / n_days) * season)
    acq_day = np.sort(np.searchsorted(weight, rng.random(n) * weight[-1], "right"))
    holiday = season[acq_day] > 1.2  # holiday shoppers are more often one-off gift buyers
    channel = _pick(rng, np.broadcast_to(_CHANNEL_P, (n, 5)))
    category = _pick(rng, np.broadcast_to(_CATEGORY_P, (n, 5)))
    loyalty = _pick(rng, _LOYALTY_P[channel])
    newsletter = rng.random(n) < 0.45
    z_rate, z_value = rng.standard_normal(n), rng.standard_normal(n)
    p_engaged = 1 / (1 + np.exp(0.6 - 1.0 * newsletter - 0.5 * (loyalty == 2)
                                + 0.5 * (loyalty == 0) + 0.6 * holiday))
    state0 = np.where(rng.random(n) < p_engaged, 0, np.where(rng.random(n) < 0.55, 1, 2))
    return _Buyers(
        acq_day=acq_day, first_t=origin + acq_day * _DAY + rng.integers(6 * 3600, _DAY, n),
        channel=channel, category=category, newsletter=newsletter, loyalty=loyalty,
        rate=_RATE_MEDIAN * np.exp(_RATE_CATEGORY[category] + _RATE_CHANNEL[channel]
                                   + _RATE_SD * z_rate),
        value_mu=_VALUE_CATEGORY[category] + _VALUE_RATE * z_rate + _VALUE_OWN * z_value,
        state0=state0, visit_w=np.exp(0.4 * rng.standard_normal(n)),
    )


def _regimes(b: _Buyers, n_days: int, rng) -> dict[str, np.ndarray]:
    """Regime segments (customer, state, first day, end day exclusive) up to the end."""
    jumps = _jumps()
    parts = []
    i, state, day = np.arange(b.acq_day.size), b.state0, b.acq_day
    while i.size:
        gone = state == 3
        stay = rng.geometric(1 / _STAY_DAYS[b.loyalty[i], np.minimum(state, 2)])
        stop = np.where(gone, n_days, np.minimum(day + stay, n_days))
        parts.append((i, state, day, stop))
        nxt = _pick(rng, jumps[b.loyalty[i], np.minimum(state, 2)])
        go = stop < n_days
        i, state, day = i[go], nxt[go], stop[go]
    i, state, d0, d1 = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((d0, i))
    return {"i": i[order], "state": state[order], "d0": d0[order], "d1": d1[order]}


def _purchases(b: _Buyers, seg, season, origin, rng) -> dict[str, np.ndarray]:
    """First orders, then Poisson orders per regime segment, dated by the season's CDF."""
    cum = np.r_[0.0, np.cumsum(season)]
    i, lo = seg["i"], np.maximum(seg["d0"], b.acq_day[seg["i"]] + 1)
    hi = np.maximum(seg["d1"], lo)
    count = rng.poisson(b.rate[i] * _MULT[seg["state"]] * (cum[hi] - cum[lo]) / _YEAR)
    j = np.repeat(np.arange(i.size), count)
    u = cum[lo[j]] + rng.random(j.size) * (cum[hi[j]] - cum[lo[j]])
    day = np.clip(np.searchsorted(cum, u, "right") - 1, lo[j], hi[j] - 1)
    who = np.r_[np.arange(b.acq_day.size), i[j]]
    t = np.r_[b.first_t, origin + day * _DAY + rng.integers(6 * 3600, _DAY, j.size)]
    tenure_years = (np.r_[b.acq_day, day] - b.acq_day[who]) / _YEAR
    log_value = (b.value_mu[who] + _VALUE_TENURE * tenure_years
                 + _VALUE_SD * rng.standard_normal(who.size))
    return {"i": who, "t": t, "amount": np.maximum(np.round(np.exp(log_value), 2), 0.5)}


def _refunds(b: _Buyers, pay, end_s: int, rng) -> dict[str, np.ndarray]:
    """Refunds of a share of orders, 3 to 30 whole days after the order (may lie past E)."""
    hit = rng.random(pay["i"].size) < _REFUND_P[b.category[pay["i"]]]
    t = pay["t"][hit] + rng.integers(3, 31, hit.sum()) * _DAY
    return {"i": pay["i"][hit], "t": t, "amount": pay["amount"][hit], "seen": t < end_s,
            "placed": pay["t"][hit]}


def _payments_frame(pay, refund, ids) -> pd.DataFrame:
    seen = refund["seen"]
    i = np.r_[pay["i"], refund["i"][seen]]
    t = np.r_[pay["t"], refund["t"][seen]]
    status = np.r_[np.zeros(pay["i"].size, np.int8), np.ones(seen.sum(), np.int8)]
    amount = np.r_[pay["amount"], refund["amount"][seen]]
    order = np.lexsort((status, t, i))
    return pd.DataFrame({"customer_id": ids[i[order]], "occurred_at": _ts(t[order]),
                         "amount": amount[order],
                         "status": np.array(["paid", "refunded"], dtype=object)[status[order]]})


def _visits(b: _Buyers, seg, origin, ids, rng) -> pd.DataFrame:
    """Site visits by regime (none on the first-order day), some followed by a cart_add."""
    i, state = seg["i"], seg["state"]
    lo = np.maximum(seg["d0"], b.acq_day[i] + 1)
    span = np.maximum(seg["d1"] - lo, 0)
    count = rng.poisson(_VISITS[state] * b.visit_w[i] * span)
    j = np.repeat(np.arange(i.size), count)
    t = origin + (lo[j] + (rng.random(j.size) * span[j]).astype(np.int64)) * _DAY
    t += rng.integers(6 * 3600, _DAY - 1800, j.size)
    cart = rng.random(j.size) < _CART[state[j]]
    who = np.r_[i[j], i[j][cart]]
    when = np.r_[t, t[cart] + rng.integers(60, 1500, cart.sum())]
    kind = np.r_[np.zeros(j.size, np.int8), np.ones(cart.sum(), np.int8)]
    order = np.lexsort((kind, when, who))
    return pd.DataFrame({"customer_id": ids[who[order]], "occurred_at": _ts(when[order]),
                         "event": np.array(EVENT_TYPES, dtype=object)[kind[order]],
                         "quantity": np.ones(who.size)})


def _state_on(seg, i, day) -> np.ndarray:
    """Regime of customers ``i`` on ``day`` (each on or after their first order's day)."""
    key = seg["i"] * 2**20 + seg["d0"]
    pos = np.maximum(np.searchsorted(key, i * 2**20 + day, "right") - 1, 0)
    return seg["state"][pos]


def _truth(b, seg, refund, season, cut_days, origin, horizon, ltv) -> dict[str, np.ndarray]:
    """Exact purchase outlook of every customer acquired before each cutoff day."""
    trans = _transitions()
    rows = [(np.flatnonzero(b.acq_day < d), d) for d in cut_days]
    i = np.concatenate([r for r, _ in rows])
    cut = np.concatenate([np.full(r.size, d) for r, d in rows])
    state = _state_on(seg, i, cut - 1)
    purchases, revenue = _expectations(b, trans, i, cut, state, season, horizon, ltv)
    revenue -= _pending_refunds(refund, i, cut, origin, ltv, b.acq_day.size)
    return {"i": i, "cut": cut, "state": state, "purchases": purchases, "revenue": revenue,
            "p_purchase": 1 - _p_quiet(b, trans, i, cut, state, season, horizon, False),
            "p_active": 1 - _p_quiet(b, trans, i, cut, state, season, horizon, True)}


def _expectations(b, trans, i, cut, state, season, horizon, ltv):
    """Expected orders in the horizon and net revenue of window orders in the LTV window.

    Orders are Poisson given the regimes, values independent of them given the customer:
    E[orders on day cut + k] = rate * season * (P^(k+1) @ _MULT)[regime the day before],
    E[value | order on day d] = exp(value_mu + sd^2 / 2 + growth * (d - acq_day)), and an
    order on day cut + k is refunded inside the window when its delay (3..30 days,
    uniform) is short enough. Tenure growth factors out, so sums are per (class, regime).
    """
    steps = max(horizon, ltv)
    mean_mult = np.empty((3, steps, 4))  # E[rate multiplier on day cut + k | class, regime]
    for c in range(3):
        power = np.eye(4)
        for k in range(steps):
            power = power @ trans[c]
            mean_mult[c, k] = power @ _MULT
    k = np.arange(steps)
    inside = np.clip(ltv - k[:ltv] - 3, 0, 28) / 28
    purchases, paid, refunded = (np.empty(i.size) for _ in range(3))
    for d in np.unique(cut):
        at = np.flatnonzero(cut == d)
        w = mean_mult * (season[d + k] / _YEAR)[None, :, None]  # (class, day, regime)
        grow = w[:, :ltv] * np.exp(_VALUE_TENURE * (d + k[:ltv]) / _YEAR)[None, :, None]
        cls, st = b.loyalty[i[at]], state[at]
        purchases[at] = w[:, :horizon].sum(axis=1)[cls, st]
        paid[at] = grow.sum(axis=1)[cls, st]
        refunded[at] = (grow * inside[None, :, None]).sum(axis=1)[cls, st]
    scale = b.rate[i] * np.exp(b.value_mu[i] + _VALUE_SD**2 / 2
                               - _VALUE_TENURE * b.acq_day[i] / _YEAR)
    return b.rate[i] * purchases, scale * (paid - _REFUND_P[b.category[i]] * refunded)


def _p_quiet(b, trans, i, cut, state, season, horizon, visits: bool) -> np.ndarray:
    """P(no order (and, with ``visits``, no visit) in the window), by forward recursion:
    alpha_k = (alpha_(k-1) P) * P(quiet on day k | regime).

    The chain moves only engaged <-> lapsing -> dormant -> lapsing / gone, so the product
    with P is written out on per-row coefficients (a dense (rows, 4) @ (4, 4) is 20x
    slower), and the quiet factors are computed once per run of days of equal season.
    """
    out = np.empty(i.size)
    for d in np.unique(cut):
        at = np.flatnonzero(cut == d)
        pr = {(u, v): trans[b.loyalty[i[at]], u, v] for u in range(3) for v in range(4)}
        a = [(state[at] == s).astype(float) for s in range(4)]
        rate, window = b.rate[i[at]] / _YEAR, season[d:d + horizon]
        seen = [visits * _VISITS[s] * b.visit_w[i[at]] for s in range(4)]
        starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], horizon], strict=True):
            quiet = [np.exp(-rate * window[lo] * _MULT[s] - seen[s]) for s in range(4)]
            for _ in range(hi - lo):
                a = [(a[0] * pr[0, 0] + a[1] * pr[1, 0]) * quiet[0],
                     (a[0] * pr[0, 1] + a[1] * pr[1, 1] + a[2] * pr[2, 1]) * quiet[1],
                     (a[1] * pr[1, 2] + a[2] * pr[2, 2]) * quiet[2],
                     (a[2] * pr[2, 3] + a[3]) * quiet[3]]
        out[at] = a[0] + a[1] + a[2] + a[3]
    return out


def _pending_refunds(refund, i, cut, origin, ltv, n) -> np.ndarray:
    """Refunds, already decided, of orders before the cutoff that fall in the LTV window."""
    out = np.zeros(i.size)
    for d in np.unique(cut):
        c0, at = origin + d * _DAY, np.flatnonzero(cut == d)
        hit = (refund["placed"] < c0) & (refund["t"] >= c0) & (refund["t"] < c0 + ltv * _DAY)
        owed = np.bincount(refund["i"][hit], weights=refund["amount"][hit], minlength=n)
        out[at] = owed[i[at]]
    return out


def _customers_frame(b: _Buyers, ids, rng) -> pd.DataFrame:
    n = ids.size
    signup = b.first_t - rng.integers(60, 900, n)  # account created during the checkout
    return pd.DataFrame({
        "customer_id": ids, "signed_up_at": _ts(signup),
        "acquisition_channel": np.array(CHANNELS, dtype=object)[b.channel],
        "country": np.array(COUNTRIES, dtype=object)[_pick(rng, np.broadcast_to(_COUNTRY_P,
                                                                                (n, 6)))],
        "first_order_category": np.array(CATEGORIES, dtype=object)[b.category],
        "newsletter": np.where(b.newsletter, "yes", "no").astype(object),
    })


def _truth_frame(truth, ids, origin) -> pd.DataFrame:
    order = np.lexsort((truth["cut"], truth["i"]))
    p = truth["p_purchase"][order]
    return pd.DataFrame({
        "customer_id": ids[truth["i"][order]], "cutoff": _ts(origin + truth["cut"][order] * _DAY),
        "true_state": np.array(STATES, dtype=object)[truth["state"][order]],
        "true_p_purchase": p, "true_churn_prob": 1 - p,
        "true_p_active": truth["p_active"][order],
        "true_purchases": truth["purchases"][order], "true_revenue_ltv": truth["revenue"][order],
    })


def _ts(secs) -> np.ndarray:
    return (np.asarray(secs, dtype=np.int64) * 10**9).view("datetime64[ns]")
