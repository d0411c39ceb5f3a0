"""Synthetic one-snapshot CRM export, with the true churn risk of every account.

A CRM exported at date E (default 2026-11-01) holds one row per account that was a customer
at the cutoff c = E - horizon (default 31 days: c = 2026-10-01), with its attributes, its
subscription and, for the accounts that churned in [c, E), the end date. Accounts that
churned before c are not in the export, so every account's tenure is a survivor's tenure.

Latent process. Accounts start over the six years before c (signups grow 4x over that
span); all churn happens at an account's monthly anchor date (the day of month it started).
The probability of churning at the anchor of month k is 1 - exp(-exp(log h)), where log h
sums, without any link to a logistic or tree model of the exported columns:

* contract x tenure: month-to-month accounts carry log(0.35 + 1.6 exp(-tenure / 4 months))
  (new accounts churn most); yearly contracts churn mainly at each anniversary and two-year
  contracts at every second one (first renewal worst), with a small off-cycle hazard;
* usage: engagement e, an AR(1) per month (phi 0.85) around an account mean that ramps up
  after the start, enters as 1.8 sigmoid(-2 (e + 0.3)) (low usage raises risk, then
  saturates), 1.5x at renewals;
* price sensitivity: a sharp threshold once the price per seat (mrr / seats) exceeds 1.2x
  the reference of its segment and plan, strongest in smb;
* small firms (< 10 employees) fail more; premium support protects larger accounts only;
  card payers on monthly contracts lapse more; paid-channel accounts are frailer;
* an unobserved frailty per account (normal on the log scale, sd 0.6), which also makes the
  survivors of long tenures the robust ones;
* a smooth cap on log h at 1, so no account is certain to leave (P <= 0.93 a month).

Tables (sorted by customer_id, ids C000001... in signup order, timestamps tz-naive UTC):

* ``customers``: customer_id, signed_up_at, segment, industry, country,
  acquisition_channel, contract_type (month / year / two_year), payment_method,
  support_plan, employees, logins_prev_month (logins in the 30 days before c) and
  tickets_prev_90d (support tickets in the 90 days before c). Usage columns are taken
  before the cutoff on purpose: the export holds no post-outcome column (a "logins in the
  last 30 days" as of E would show a churner's absence, i.e. the label).
* ``subscriptions``: one row per account: customer_id, started_at, ended_at (set only for
  the churners of [c, E), null otherwise), mrr, plan, seats, billing_interval (month for
  month-to-month, year for yearly and two-year contracts; two-year ones renew at every
  second anniversary, which only contract_type tells).
* ``truth``: customer_id, cutoff (= c), true_churn_prob: the probability under the latent
  process of a churn in [c, c + horizon) given all the generator knows at c, frailty
  included; exact when the window holds one anchor month, else Monte Carlo over 200
  engagement paths. Base churn at the default horizon is about 9%.

Settings to train on it: ``horizon_days`` equal to the export's horizon (31 by default),
``data.observed_until`` = E, and ``churn.grace_days: 0`` (an export shows no restarts); the
single cutoff c is a month start when E - horizon is one, else name it in
``cutoffs.dates``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from churnlens.features.sample.checks import check_integers, end_date

EXPORT_DATE = pd.Timestamp("2026-11-01")
HORIZON_DAYS = 31
HISTORY_YEARS = 6.0
MC_PATHS = 200

SEGMENTS = ("smb", "mid_market", "enterprise")
INDUSTRIES = ("software", "finance", "healthcare", "retail", "manufacturing", "education")
COUNTRIES = ("US", "GB", "DE", "FR", "CA", "AU")
CHANNELS = ("organic", "paid", "partner", "outbound")
CONTRACTS = ("month", "year", "two_year")
PAYMENT_METHODS = ("card", "invoice", "bank_transfer")
SUPPORT_PLANS = ("basic", "standard", "premium")
PLANS = ("starter", "growth", "scale")

_DAY = 86_400
_NEVER = np.int64(2**62)
_BLOCK = 8192
# Account mix; matrix rows are segments (smb, mid_market, enterprise).
_SEG_P = np.array([0.7, 0.22, 0.08])
_INDUSTRY_P = np.array([0.3, 0.15, 0.12, 0.15, 0.16, 0.12])
_COUNTRY_P = np.array([0.45, 0.15, 0.12, 0.08, 0.1, 0.1])
_CHANNEL_P = np.array([[0.45, 0.35, 0.12, 0.08], [0.3, 0.25, 0.2, 0.25], [0.15, 0.05, 0.25, 0.55]])
_CONTRACT_P = np.array([[0.85, 0.13, 0.02], [0.4, 0.45, 0.15], [0.1, 0.6, 0.3]])
_PAYMENT_P = np.array([[0.85, 0.05, 0.1], [0.4, 0.35, 0.25], [0.05, 0.7, 0.25]])
_SUPPORT_P = np.array([[0.7, 0.25, 0.05], [0.35, 0.45, 0.2], [0.1, 0.4, 0.5]])
_PLAN_P = np.array([[0.6, 0.3, 0.1], [0.25, 0.5, 0.25], [0.05, 0.35, 0.6]])
_TRIAL_P = np.array([0.4, 0.15, 0.0])  # self-serve trial of 14 days before the subscription
_SEATS_MEDIAN, _EMPLOYEES_MEDIAN = np.array([4.0, 25.0, 150.0]), np.array([18.0, 220.0, 3000.0])
_PRICE = np.array([15.0, 35.0, 60.0])  # list price per seat and month by plan
_SEG_REF = np.array([1.0, 0.9, 0.75])  # share of list price a segment typically pays
_CONTRACT_DISCOUNT = np.array([1.0, 0.9, 0.82])
_LEGACY_P, _LEGACY = 0.18, 1.32  # accounts left on list price or after a price rise
_MU_SEG, _MU_CHANNEL = np.array([-0.1, 0.1, 0.25]), np.array([0.1, -0.25, 0.1, 0.0])
_PHI, _SIGMA, _RAMP = 0.85, 0.35, 0.8
# Log hazard at an anchor date: intercepts by contract state, then effects.
_B_MONTH, _B_RENEW, _B_FIRST_RENEWAL, _B_OFF = -2.4, -2.0, 0.35, -6.0
_USAGE, _USAGE_RENEWAL, _LOG_H_CAP = 1.8, 1.5, 1.0
_PRICE_EFFECT, _PRICE_KNEE, _PRICE_WIDTH = np.array([1.4, 0.9, 0.4]), 1.2, 0.04
_SMALL_FIRM, _PREMIUM, _CARD_MONTHLY = 0.55, -0.45, 0.25
_FRAILTY_SD, _FRAILTY_CHANNEL = 0.6, np.array([0.0, 0.35, -0.25, 0.1])
_FRAILTY_INDUSTRY = np.array([0.0, -0.1, -0.15, 0.2, 0.0, 0.1])


@dataclass
class _Accounts:
    signup: np.ndarray  # epoch seconds
    start: np.ndarray  # subscription start, epoch seconds
    smonth: np.ndarray  # index of the grid month holding the start
    dom: np.ndarray  # anchor day of month
    seg: np.ndarray
    industry: np.ndarray
    country: np.ndarray
    channel: np.ndarray
    contract: np.ndarray
    payment: np.ndarray
    support: np.ndarray
    plan: np.ndarray
    seats: np.ndarray
    employees: np.ndarray
    mrr: np.ndarray
    mu: np.ndarray
    static: np.ndarray  # time-invariant part of the log hazard, frailty included

    def take(self, i) -> _Accounts:
        return _Accounts(**{f.name: getattr(self, f.name)[i] for f in fields(self)})


def generate(n_customers: int, seed: int = 0, *, horizon_days: int = HORIZON_DAYS,
             end: pd.Timestamp | None = None) -> dict[str, pd.DataFrame]:
    """Simulate a CRM export of ``n_customers`` accounts taken at ``end``.

    Inputs: ``n_customers`` (>= 1) accounts alive at the cutoff ``end - horizon_days``;
    ``seed`` (int >= 0) fixes the output; ``horizon_days`` (1 to 366) is the last period,
    whose churners carry an ``ended_at``; ``end`` is the export date, a midnight (default
    2026-11-01), the exclusive end of the data.
    Output: {"customers", "subscriptions", "truth"} as described in the module docstring.
    Errors: ValueError naming the invalid argument.
    """
    end = _validate(n_customers, seed, horizon_days, end)
    cutoff = _secs(end - pd.Timedelta(days=horizon_days))
    starts = _month_grid(end - pd.Timedelta(days=horizon_days + 365.25 * HISTORY_YEARS), end)
    rng = np.random.default_rng(seed)
    draw = int(n_customers * 5.0) + 50  # about 23% of signups are still customers at c
    while True:  # signups until enough accounts survive to the cutoff (once, nearly always)
        acc = _draw_accounts(draw, starts, cutoff, rng)
        churn_t, e_prev, e_cut = _simulate(acc, starts, cutoff, _secs(end), rng)
        alive = np.flatnonzero((churn_t >= cutoff) & (acc.start < cutoff))
        if alive.size >= n_customers:
            break
        draw = int(draw * 1.3 * n_customers / max(alive.size, 1)) + 50
    keep = np.sort(rng.choice(alive, n_customers, replace=False))
    acc, churn_t, e_prev, e_cut = acc.take(keep), churn_t[keep], e_prev[keep], e_cut[keep]
    width = max(6, len(str(n_customers)))
    ids = np.char.add("C", np.char.zfill(np.arange(1, n_customers + 1).astype(str), width))
    ids = ids.astype(object)
    prob = _churn_prob(acc, e_cut, starts, cutoff, _secs(end), rng)
    return {
        "customers": _customers_frame(acc, ids, e_prev, e_cut, cutoff, rng),
        "subscriptions": pd.DataFrame({
            "customer_id": ids, "started_at": _ts(acc.start), "ended_at": _ts(churn_t),
            "mrr": acc.mrr, "plan": _label(PLANS, acc.plan), "seats": acc.seats,
            "billing_interval": _label(("month", "year", "year"), acc.contract)}),
        "truth": pd.DataFrame({"customer_id": ids, "cutoff": _ts(np.full(n_customers, cutoff)),
                               "true_churn_prob": prob}),
    }


def _validate(n, seed, horizon_days, end) -> pd.Timestamp:
    checks = [("n_customers", n, 1, None), ("seed", seed, 0, None),
              ("horizon_days", horizon_days, 1, 366)]
    check_integers(checks)
    return end_date(end, EXPORT_DATE)


def _secs(ts: pd.Timestamp) -> int:
    return int(ts.value // 10**9)


def _month_grid(first: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """Calendar month starts (epoch seconds) from the month of ``first`` to one >= ``end``."""
    months = pd.date_range(first.to_period("M").to_timestamp(), end + pd.offsets.MonthBegin(),
                           freq="MS")
    return months.values.astype("datetime64[s]").astype(np.int64)


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw (column index) per row of the probability matrix ``probs``."""
    u = rng.random(probs.shape[0])
    return (u[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)


def _draw_accounts(n: int, starts: np.ndarray, cutoff: int, rng) -> _Accounts:
    span = cutoff - starts[0]
    g = np.log(4.0)  # signups grow 4x over the history: inverse CDF of exp(g t)
    frac = np.sort(np.log1p(rng.random(n) * (np.exp(g) - 1)) / g)
    signup = starts[0] + (frac * span // _DAY).astype(np.int64) * _DAY
    signup += rng.integers(8 * 3600, 19 * 3600, n)
    seg = _pick(rng, np.broadcast_to(_SEG_P, (n, 3)))
    start = signup + np.where(rng.random(n) < _TRIAL_P[seg], 14 * _DAY, 3600)
    d64 = (start // _DAY).astype("datetime64[D]")
    channel, industry = _pick(rng, _CHANNEL_P[seg]), _pick(rng, np.broadcast_to(_INDUSTRY_P, (n, 6)))
    contract, plan = _pick(rng, _CONTRACT_P[seg]), _pick(rng, _PLAN_P[seg])
    payment, support = _pick(rng, _PAYMENT_P[seg]), _pick(rng, _SUPPORT_P[seg])
    employees = np.maximum(1, np.rint(_EMPLOYEES_MEDIAN[seg] * np.exp(0.9 * rng.standard_normal(n))))
    seats = np.minimum(employees, np.maximum(1, np.rint(_SEATS_MEDIAN[seg]
                                                        * np.exp(0.6 * rng.standard_normal(n)))))
    legacy = np.where(rng.random(n) < _LEGACY_P, _LEGACY, 1.0)
    ratio = _CONTRACT_DISCOUNT[contract] * legacy * np.exp(0.1 * rng.standard_normal(n))
    per_seat = _PRICE[plan] * _SEG_REF[seg] * ratio
    knee = 1 / (1 + np.exp(-(ratio - _PRICE_KNEE) / _PRICE_WIDTH))
    static = (_FRAILTY_SD * rng.standard_normal(n) + _FRAILTY_CHANNEL[channel]
              + _FRAILTY_INDUSTRY[industry] + _PRICE_EFFECT[seg] * knee
              + _SMALL_FIRM * (employees < 10) + _PREMIUM * ((support == 2) & (seg > 0))
              + _CARD_MONTHLY * ((payment == 0) & (contract == 0)))
    return _Accounts(
        signup=signup, start=start, smonth=np.searchsorted(starts, start, "right") - 1,
        dom=(d64 - d64.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1,
        seg=seg, industry=industry, country=_pick(rng, np.broadcast_to(_COUNTRY_P, (n, 6))),
        channel=channel, contract=contract, payment=payment, support=support, plan=plan,
        seats=seats.astype(np.int64), employees=employees.astype(np.int64),
        mrr=np.round(seats * per_seat, 2),
        mu=_MU_SEG[seg] + _MU_CHANNEL[channel] + 0.5 * rng.standard_normal(n), static=static,
    )


def _anchor(dom: np.ndarray, start: np.ndarray, k: int, starts: np.ndarray) -> np.ndarray:
    """Anchor time in grid month ``k`` of accounts with these anchor days and start times."""
    length = (starts[k + 1] - starts[k]) // _DAY
    return starts[k] + (np.minimum(dom, length) - 1) * _DAY + start % _DAY


def _anchor_prob(contract, static, tenure, e):
    """P(churn at a monthly anchor) for tenure in months (>= 1) and engagement e (broadcasts)."""
    usage = _USAGE / (1 + np.exp(2.0 * (e + 0.3)))  # low usage raises risk, then saturates
    renewal = ((contract == 1) & (tenure % 12 == 0)) | ((contract == 2) & (tenure % 24 == 0))
    log_h = np.where(
        contract == 0, _B_MONTH + np.log(0.35 + 1.6 * np.exp(-tenure / 4.0)) + usage,
        np.where(renewal, _B_RENEW + _B_FIRST_RENEWAL * (tenure <= 24) + _USAGE_RENEWAL * usage,
                 _B_OFF + usage)) + static
    # A smooth cap: no account is certain to leave (P at most 1 - exp(-e) = 0.93).
    log_h = _LOG_H_CAP - np.logaddexp(0.0, _LOG_H_CAP - log_h)
    return -np.expm1(-np.exp(log_h))


def _ar_step(e, mu, rng):
    return mu + _PHI * (e - mu) + _SIGMA * rng.standard_normal(e.shape)


def _simulate(acc: _Accounts, starts: np.ndarray, cutoff: int, end: int, rng):
    """Churn time of every account (_NEVER if none before ``end``) and engagement at c.

    Returns (churn_t, e_prev, e_cut): engagement of the month before the cutoff's month and
    of the cutoff's month (the state known at c).
    """
    n, k_cut = acc.start.size, np.searchsorted(starts, cutoff, "right") - 1
    churn_t = np.full(n, _NEVER)
    e = acc.mu - _RAMP + 0.4 * rng.standard_normal(n)
    e_prev, e_cut = np.full(n, np.nan), np.full(n, np.nan)
    for k in range(int(acc.smonth.min()), int(np.searchsorted(starts, end, "left"))):
        if k == k_cut - 1:
            e_prev = np.where(acc.smonth <= k, e, np.nan)
        if k == k_cut:
            e_cut = e.copy()
        # Only accounts that have started and not churned move; the others' state is unused.
        live = np.flatnonzero((acc.smonth <= k) & (churn_t == _NEVER))
        tenure = k - acc.smonth[live]
        anchor = _anchor(acc.dom[live], acc.start[live], k, starts)
        p = _anchor_prob(acc.contract[live], acc.static[live], tenure, e[live])
        hit = (tenure >= 1) & (anchor < end) & (rng.random(live.size) < p)
        churn_t[live[hit]] = anchor[hit]
        e[live] = _ar_step(e[live], acc.mu[live], rng)
    return churn_t, e_prev, e_cut


def _churn_prob(acc, e_cut, starts, cutoff, end, rng) -> np.ndarray:
    """P(churn at an anchor in [cutoff, end)) from the state at the cutoff.

    The cutoff month's engagement is known; later months' engagement is averaged over
    MC_PATHS simulated AR(1) paths (no paths needed when one month holds the window).
    """
    k_cut = np.searchsorted(starts, cutoff, "right") - 1
    months = range(k_cut, int(np.searchsorted(starts, end, "left")))
    out = np.empty(acc.start.size)
    for lo in range(0, acc.start.size, _BLOCK):
        part = acc.take(slice(lo, lo + _BLOCK))
        e, survive = e_cut[lo:lo + _BLOCK, None], 1.0
        for k in months:
            if k > k_cut:
                e = _ar_step(np.broadcast_to(e, (e.shape[0], MC_PATHS)), part.mu[:, None], rng)
            anchor = _anchor(part.dom, part.start, k, starts)
            tenure = k - part.smonth
            inside = (tenure >= 1) & (anchor >= cutoff) & (anchor < end)
            p = _anchor_prob(part.contract[:, None], part.static[:, None], tenure[:, None], e)
            survive = survive * (1 - p * inside[:, None])
        out[lo:lo + _BLOCK] = 1 - np.mean(survive, axis=1)
    return out


def _customers_frame(acc, ids, e_prev, e_cut, cutoff, rng) -> pd.DataFrame:
    """Attributes; usage counts are emitted from engagement before the cutoff only."""
    e_before = np.where(np.isnan(e_prev), e_cut, e_prev)
    days_in = (cutoff - acc.start) / _DAY
    logins = rng.poisson(6.0 * acc.seats ** 0.8 * np.exp(0.9 * e_before)
                         * np.clip(days_in / 30, 0, 1))
    tickets = rng.poisson(0.25 * acc.seats ** 0.3 * np.exp(-0.6 * e_before)
                          * 3 * np.clip(days_in / 90, 0, 1))
    return pd.DataFrame({
        "customer_id": ids, "signed_up_at": _ts(acc.signup),
        "segment": _label(SEGMENTS, acc.seg), "industry": _label(INDUSTRIES, acc.industry),
        "country": _label(COUNTRIES, acc.country),
        "acquisition_channel": _label(CHANNELS, acc.channel),
        "contract_type": _label(CONTRACTS, acc.contract),
        "payment_method": _label(PAYMENT_METHODS, acc.payment),
        "support_plan": _label(SUPPORT_PLANS, acc.support), "employees": acc.employees,
        "logins_prev_month": logins.astype(np.int64), "tickets_prev_90d": tickets.astype(np.int64),
    })


def _ts(secs) -> np.ndarray:
    """Epoch seconds -> datetime64[ns]; _NEVER becomes NaT."""
    secs = np.asarray(secs, dtype=np.int64)
    ns = np.where(secs >= _NEVER, np.iinfo(np.int64).min, np.minimum(secs, _NEVER // 10**9) * 10**9)
    return ns.view("datetime64[ns]")


def _label(values, idx) -> np.ndarray:
    return np.array(values, dtype=object)[idx]
