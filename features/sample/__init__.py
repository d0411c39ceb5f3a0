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

Churn in month k is drawn from ``_hazard`` of the state at c_k and takes effect at the
customer's anchor date in that month (signup day of month: the end of a monthly period, or
the anniversary of an annual contract). Monthly contracts carry the monthly voluntary hazard
p = sigmoid(logit); annual ones carry 1 - (1 - p)**8 in anniversary months and 0.04 p in the
others; defaulted invoices add involuntary churn (30% after one, 60% after two or more) in any
month. Churned customers never return. ``truth`` is the probability of a churn date inside
(c, c + horizon] given the state at c: 64 Monte Carlo paths of the state for the voluntary
part (month of c exact) and an exact recursion for the involuntary part (see ``_churn_prob``).

Billing: every contract is invoiced at its anchor date each month (annual contracts are
yearly commitments at a 15% discount, invoiced monthly). A defaulted invoice shows as three
failed attempts (day 0, 3, 7); 5% of the others fail once and are paid 1-5 days later; 1% of
paid invoices are later refunded (status ``refunded`` on the payment row). Seats grow or
shrink at anchor dates with probabilities driven by e (annual contracts shrink only at
renewal); each seat or plan change and each annual renewal starts a subscription row.
Events are daily rollups stamped at midnight UTC of the day (from the day after signup until
the day before churn); ticket, survey and payment times are exact.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr

SAMPLE_END = pd.Timestamp("2026-11-01")

EVENT_TYPES = ("login", "dashboard_viewed", "report_created", "export", "invite_sent",
               "integration_connected", "alert_configured")
SEGMENTS = ("smb", "mid_market", "enterprise")
PLANS = ("starter", "growth", "scale")
PRIORITIES = ("low", "normal", "high")
INDUSTRIES = ("software", "finance", "healthcare", "retail", "manufacturing", "education")
COUNTRIES = ("US", "GB", "DE", "FR", "CA", "AU")
CHANNELS = ("organic", "paid", "partner", "outbound")
MC_PATHS = 64

_DAY = 86_400
_NEVER = np.int64(2**62)  # "no churn" time in seconds: later than every real time
_BLOCK = 2048  # customers per threaded task (keeps the working set in cache)
# Customer mix; matrix rows are segments (smb, mid_market, enterprise).
_SEG_P = np.array([0.65, 0.25, 0.10])
_INDUSTRY_P = np.array([0.3, 0.15, 0.12, 0.15, 0.16, 0.12])
_COUNTRY_P = np.array([0.45, 0.15, 0.12, 0.08, 0.1, 0.1])
_CHANNEL_P = np.array([[0.45, 0.35, 0.12, 0.08], [0.3, 0.25, 0.2, 0.25], [0.15, 0.05, 0.25, 0.55]])
_PLAN_P = np.array([[0.6, 0.3, 0.1], [0.25, 0.5, 0.25], [0.05, 0.35, 0.6]])
_ANNUAL_P = np.array([0.2, 0.55, 0.8])
_SEATS_MEDIAN = np.array([4.0, 25.0, 150.0])
_PRICE = np.array([15.0, 35.0, 60.0])  # list price per seat and month by plan
_ENG_SEG, _ENG_CHANNEL = np.array([-0.1, 0.1, 0.2]), np.array([0.1, -0.2, 0.1, 0.0])
_SURVEY_P = np.array([0.3, 0.45, 0.6])  # share of customers who answer NPS surveys
_FAIL_P = np.array([0.015, 0.01, 0.005])  # invoice default with a healthy card
_REFAIL = np.float32(0.45)  # default probability once the previous invoice defaulted
_TICKETS = np.array([0.15, 0.35, 0.8])  # tickets per month at engagement 0
_PRIORITY_P = np.array([[0.35, 0.55, 0.1], [0.3, 0.55, 0.15], [0.25, 0.55, 0.2]])
_TAU = np.array([5.0, 3.5, 7.0])  # mean days to close by priority (exponential)
_PHI, _SIGMA = 0.85, 0.35  # engagement AR(1) per month
_SLOW_P, _SLOW_DELAY, _SLOW_MEAN = 0.22, 45, 365.0
_FAST_LOG_MEDIAN, _FAST_LOG_SD = np.log(5.0), 0.8
# Monthly voluntary churn hazard on the logit scale; lookup tables are indexed by state.
_B0, _B_SEG, _B_EARLY, _B_ENG = -4.8, np.array([0.3, 0.0, -0.5]), 0.4, -0.8
_T_ONB = np.array([1.3, 0.0], np.float32)  # onboarded: no, yes
_T_TICKET = np.array([0.0, 0.7, 1.4], np.float32)  # open high tickets: 0, 1, 2+
_T_NPS = np.array([0.0, 0.8, -0.4], np.float32)  # last NPS: none/passive, detractor, promoter
_OFF_CYCLE = 0.04  # annual contracts outside renewal months
_INVOLUNTARY = np.array([0.0, 0.3, 0.6], np.float32)  # defaulted invoices in a row: 0, 1, 2+
# Daily events: P(active day) logit, then per type (logit intercept, slope on e), extra count.
_ACTIVE_B0, _ACTIVE_ENG, _ACTIVE_SEATS, _WEEKEND = -1.3, 1.1, 0.25, 0.25
_EV_LOGIT = np.array([[np.inf, 0.0], [0.5, 1.0], [-0.8, 1.0], [-2.0, 1.0], [-3.0, 0.8],
                      [-4.0, 1.0], [-3.0, 1.2]], np.float32)
_EV_EXTRA = np.array([0.8, 1.5, 0.6, 0.3, 0.5, 0.1, 0.2], np.float32)
_REPORT = EVENT_TYPES.index("report_created")


@dataclass
class _Grid:
    starts: np.ndarray  # calendar month starts in epoch seconds, c_0..c_M with c_M >= end
    end: int  # exclusive end of the data, epoch seconds

    @property
    def m(self) -> int:
        return len(self.starts) - 1

    @property
    def days(self) -> np.ndarray:
        return self.starts // _DAY


@dataclass
class _Customers:
    signup: np.ndarray  # epoch seconds
    smonth: np.ndarray  # index of the month containing signup
    dom: np.ndarray  # signup day of month: the anchor day of periods and renewals
    seg: np.ndarray
    channel: np.ndarray
    plan: np.ndarray
    seats: np.ndarray
    annual: np.ndarray
    price_factor: np.ndarray
    slow: np.ndarray
    mu: np.ndarray
    responder: np.ndarray
    fail: np.ndarray
    fv_day: np.ndarray  # day number of the first report_created

    def take(self, i) -> _Customers:
        return _Customers(**{f.name: getattr(self, f.name)[i] for f in fields(self)})


@dataclass
class _State:
    """Latent state at month starts ((n, M+1) arrays) and the raw emissions of the months."""

    e: np.ndarray
    e_month: np.ndarray  # (n, M): engagement driving month k (state at c_k, or at signup)
    open_high: np.ndarray
    nps: np.ndarray  # category of the last answer: 0 none/passive, 1 detractor, 2 promoter
    dun: np.ndarray
    unpaid: np.ndarray  # (n, M): the invoice of month k defaulted
    tickets: dict[str, np.ndarray]
    surveys: dict[str, np.ndarray]


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
    grid = _month_grid(end, years)
    cu = _draw_customers(n_customers, grid, years, rng)
    st = _simulate_states(cu, grid, rng)
    churn_m, churn_t = _draw_churn(cu, st, grid, rng)
    width = max(6, len(str(n_customers)))
    ids = np.char.add("C", np.char.zfill(np.arange(1, n_customers + 1).astype(str), width))
    ids = ids.astype(object)
    subs = _subscriptions(cu, st, grid, churn_m, churn_t, rng)
    return {
        "customers": _customers_frame(cu, ids, rng),
        "subscriptions": _subscriptions_frame(subs, cu, ids),
        "events": _events(cu, st, grid, churn_t, ids, int(rng.integers(2**63))),
        "payments": _payments(cu, st, grid, churn_m, subs, ids, rng),
        "tickets": _tickets_frame(st, churn_t, grid, ids, rng),
        "surveys": _surveys_frame(st.surveys, churn_t, grid, ids),
        "truth": _truth(cu, st, grid, churn_m, horizon_days, ids, int(rng.integers(2**63))),
    }


def write_sample(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Write each table to ``out_dir/NAME.parquet``, creating the folder.

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
    try:
        ts = pd.Timestamp(end)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"end must be a timestamp such as '2026-11-01', got {end!r}") from exc
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts is pd.NaT or ts != ts.normalize() or not 1980 <= ts.year <= 2200:
        raise ValueError(f"end must be a midnight between 1980 and 2200 such as '2026-11-01', "
                         f"got {end!r}")
    return ts


def _month_grid(end: pd.Timestamp, years: float) -> _Grid:
    start = end - pd.Timedelta(days=365.25 * years)
    months = pd.date_range(start.to_period("M").to_timestamp(), end, freq="MS")
    if months[-1] < end:
        months = months.append(pd.DatetimeIndex([months[-1] + pd.offsets.MonthBegin()]))
    secs = months.values.astype("datetime64[s]").astype(np.int64)
    return _Grid(starts=secs, end=int(end.value // 10**9))


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw (column index) per row of the probability matrix ``probs``."""
    u = rng.random(probs.shape[0])
    return (u[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)


def _draw_customers(n: int, grid: _Grid, years: float, rng: np.random.Generator) -> _Customers:
    # Signups grow 2.5x over the window: inverse CDF of a density proportional to exp(g t).
    g, span = np.log(2.5), 365.25 * years * _DAY
    t = np.sort(np.log1p(rng.random(n) * (np.exp(g) - 1)) / g)
    day = (grid.end - span + t * span) // _DAY
    day = np.clip(day, grid.starts[0] // _DAY, grid.end // _DAY - 1).astype(np.int64)
    signup = day * _DAY + rng.integers(7 * 3600, 20 * 3600, n)  # office hours, never midnight
    d64 = day.astype("datetime64[D]")
    seg = _pick(rng, np.broadcast_to(_SEG_P, (n, 3)))
    channel = _pick(rng, _CHANNEL_P[seg])
    annual = rng.random(n) < _ANNUAL_P[seg]
    discount = 1 - rng.random(n) * np.array([0.0, 0.15, 0.3])[seg]  # negotiated on larger deals
    slow = rng.random(n) < _SLOW_P + 0.08 * (channel == 1)  # paid signups onboard worse
    fast_days = 1 + np.floor(np.exp(_FAST_LOG_MEDIAN + _FAST_LOG_SD * rng.standard_normal(n)))
    slow_days = _SLOW_DELAY + np.floor(rng.exponential(_SLOW_MEAN, n))
    mu = _ENG_SEG[seg] + _ENG_CHANNEL[channel] - 1.0 * slow + 0.6 * rng.standard_normal(n)
    seats = _SEATS_MEDIAN[seg] * np.exp(0.6 * rng.standard_normal(n))
    fail = _FAIL_P[seg] * np.where(annual, 0.3, 1.0) * np.exp(0.5 * rng.standard_normal(n))
    return _Customers(
        signup=signup, smonth=np.searchsorted(grid.starts, signup, "right") - 1,
        dom=(d64 - d64.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1,
        seg=seg, channel=channel, plan=_pick(rng, _PLAN_P[seg]),
        seats=np.maximum(1, np.rint(seats)).astype(np.int64), annual=annual,
        price_factor=discount * np.where(annual, 0.85, 1.0), slow=slow,
        mu=mu.astype(np.float32), responder=rng.random(n) < _SURVEY_P[seg],
        fail=np.minimum(0.2, fail).astype(np.float32),
        fv_day=day + np.where(slow, slow_days, fast_days).astype(np.int64),
    )


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _ar_step(e, mu, z):
    return mu + _PHI * (e - mu) + _SIGMA * z


def _nps_score(e, z):
    return np.clip(np.rint(7.0 + 1.5 * e + 1.6 * z), 0, 10)


def _nps_cat(score):
    return ((score <= 6) + 2 * (score >= 9)).astype(np.int8)


def _anchor(cu: _Customers, i, k, grid: _Grid):
    """Anchor time of customers ``i`` in month ``k``: signup day of month (clipped) and time."""
    length = grid.days[k + 1] - grid.days[k]
    return grid.starts[k] + (np.minimum(cu.dom[i], length) - 1) * _DAY + cu.signup[i] % _DAY


def _voluntary(seg, tenure, annual, e, onboarded, open_high, nps):
    """Voluntary churn probability in a month given the state at its start (broadcasts)."""
    base = (_B0 + _B_SEG[seg] + _B_EARLY * (tenure <= 3)).astype(np.float32)
    p = _sigmoid(base + _B_ENG * e + _T_ONB[onboarded.view(np.uint8)]
                 + _T_TICKET[np.minimum(open_high, 2)] + _T_NPS[nps])
    renewal = 1 - np.square(np.square(np.square(1 - p)))  # 1 - (1 - p) ** 8
    return np.where(annual, np.where(tenure % 12 == 0, renewal, _OFF_CYCLE * p), p)


def _hazard(seg, tenure, annual, e, onboarded, open_high, nps, dun):
    """Churn probability in a month: voluntary, or involuntary after defaulted invoices."""
    vol = _voluntary(seg, tenure, annual, e, onboarded, open_high, nps)
    return 1 - (1 - vol) * (1 - _INVOLUNTARY[np.minimum(dun, 2)])


def _onboard_prob(cu: _Customers, d0, d1):
    """P(first value day < d1 | not before d0), matching the draw in ``_draw_customers``."""
    a0, a1 = d0 - cu.signup // _DAY - 1, d1 - cu.signup // _DAY - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        sf = [np.where(a > 0, ndtr(-(np.log(np.maximum(a, 1)) - _FAST_LOG_MEDIAN)
                                   / _FAST_LOG_SD), 1.0) for a in (a0, a1)]
        fast = np.where(sf[0] > 0, 1 - sf[1] / sf[0], 1.0)
    b0, b1 = (np.maximum(a - _SLOW_DELAY + 1, 0) for a in (a0, a1))
    return np.where(cu.slow, 1 - np.exp(-(b1 - b0) / _SLOW_MEAN), fast)


def _simulate_states(cu: _Customers, grid: _Grid, rng: np.random.Generator) -> _State:
    n, m = len(cu.signup), grid.m
    e = np.full((n, m + 1), np.nan, np.float32)
    e_month = np.full((n, m), np.nan, np.float32)
    dun = np.zeros((n, m + 1), np.int8)
    unpaid = np.zeros((n, m), bool)
    e_signup = cu.mu + np.float32(_SIGMA / np.sqrt(1 - _PHI**2)) * rng.standard_normal(
        n, np.float32)
    for k in range(m):
        live = np.flatnonzero(cu.smonth <= k)
        cur = np.where(cu.smonth[live] == k, e_signup[live], e[live, k])
        e_month[live, k] = cur
        e[live, k + 1] = _ar_step(cur, cu.mu[live], rng.standard_normal(live.size, np.float32))
        owed = np.where(dun[live, k] == 0, cu.fail[live], _REFAIL)
        unpaid[live, k] = rng.random(live.size, np.float32) < owed
        dun[live, k + 1] = np.where(unpaid[live, k], np.minimum(dun[live, k] + 1, 100), 0)
    nps, surveys = _simulate_surveys(cu, grid, e_month, rng)
    open_high, tickets = _simulate_tickets(cu, grid, e_month, rng)
    return _State(e, e_month, open_high, nps, dun, unpaid, tickets, surveys)


def _simulate_surveys(cu, grid, e_month, rng):
    n, m = e_month.shape
    nps = np.zeros((n, m + 1), np.int8)
    cols = {"i": [], "t": [], "nps": []}
    for k in range(m):
        nps[:, k + 1] = nps[:, k]
        due = (cu.smonth < k) & ((k - cu.smonth) % 3 == 0) & cu.responder
        i = np.flatnonzero(due & (rng.random(n) < 0.8))
        score = _nps_score(e_month[i, k], rng.standard_normal(i.size))
        nps[i, k + 1] = _nps_cat(score)
        length = grid.starts[k + 1] - grid.starts[k]
        cols["i"].append(i)
        cols["nps"].append(score.astype(np.int64))
        cols["t"].append(grid.starts[k] + (rng.random(i.size) * length).astype(np.int64))
    return nps, {key: np.concatenate(v) for key, v in cols.items()}


def _simulate_tickets(cu, grid, e_month, rng):
    n, m = e_month.shape
    lo = np.maximum(grid.starts[None, :-1], cu.signup[:, None])  # window start in month k
    frac = np.clip((grid.starts[None, 1:] - lo) / np.diff(grid.starts)[None, :], 0, 1)
    lam = _TICKETS[cu.seg][:, None] * np.exp(-0.6 * np.nan_to_num(e_month)) * frac
    count = rng.poisson(np.where(np.isnan(e_month), 0.0, lam))
    i, k = np.nonzero(count)
    i, k = np.repeat(i, count[i, k]), np.repeat(k, count[i, k])
    opened = lo[i, k] + (rng.random(i.size) * (grid.starts[k + 1] - lo[i, k])).astype(np.int64)
    prio = _pick(rng, _PRIORITY_P[cu.seg[i]])
    closed = opened + (rng.exponential(_TAU[prio]) * _DAY).astype(np.int64)
    # Count high-priority tickets open at each later month start (opened < c < closed).
    open_high = np.zeros((n, m + 1), np.int16)
    hi = np.flatnonzero(prio == 2)
    nxt = k[hi] + 1
    while hi.size:
        still = grid.starts[nxt] < closed[hi]
        hi, nxt = hi[still], nxt[still]
        np.add.at(open_high, (i[hi], nxt), 1)
        keep = nxt < m
        hi, nxt = hi[keep], nxt[keep] + 1
    return open_high, {"i": i, "k": k, "opened": opened, "closed": closed, "prio": prio}


def _draw_churn(cu, st, grid, rng):
    """Churn month (M if none) and churn time (_NEVER if none) from the monthly hazard."""
    n, m = len(cu.signup), grid.m
    tenure = np.arange(m)[None, :] - cu.smonth[:, None]
    onboarded = cu.fv_day[:, None] < grid.days[None, :m]
    h = _hazard(cu.seg[:, None], tenure, cu.annual[:, None], st.e[:, :m], onboarded,
                st.open_high[:, :m], st.nps[:, :m], st.dun[:, :m])
    hit = (tenure >= 1) & (rng.random((n, m), np.float32) < h)
    month = np.where(hit.any(axis=1), hit.argmax(axis=1), m)
    when = np.full(n, _NEVER)
    churned = np.flatnonzero(month < m)
    when[churned] = _anchor(cu, churned, month[churned], grid)
    late = when >= grid.end  # the last month may be partial
    month[late], when[late] = m, _NEVER
    return month, when


def _subscriptions(cu, st, grid, churn_m, churn_t, rng):
    """Contract rows: one at signup, then one per seat/plan change and per annual renewal."""
    n = len(cu.signup)
    seats, plan = cu.seats.copy(), cu.plan.copy()
    rec = [(np.arange(n), cu.signup, seats.copy(), plan.copy())]
    for k in range(1, grid.m):
        i = np.flatnonzero((cu.smonth < k) & (churn_m > k))
        t = _anchor(cu, i, k, grid)
        i, t = i[t < grid.end], t[t < grid.end]
        e, renewal = st.e[i, k], cu.annual[i] & ((k - cu.smonth[i]) % 12 == 0)
        up = rng.random(i.size) < _sigmoid(-3.5 + e)
        # Annual contracts commit to their seats for the year: shrink only at renewal.
        down_p = _sigmoid(-4.0 - e) * np.where(cu.annual[i], 3.0 * renewal, 1.0)
        step = up.astype(np.int64) - (~up & (rng.random(i.size) < down_p))
        delta = np.maximum(1, np.rint(seats[i] * rng.uniform(0.1, 0.4, i.size))).astype(np.int64)
        new_seats = np.maximum(1, seats[i] + delta * step)
        new_plan = np.clip(plan[i] + (rng.random(i.size) < 0.15) * step, 0, 2)
        change = (new_seats != seats[i]) | (new_plan != plan[i]) | renewal
        i, t = i[change], t[change]
        seats[i], plan[i] = new_seats[change], new_plan[change]
        rec.append((i, t, seats[i].copy(), plan[i].copy()))
    i, t, s, p = (np.concatenate(x) for x in zip(*rec, strict=True))
    order = np.argsort(i, kind="stable")  # records were appended in time order
    i, t, s, p = i[order], t[order], s[order], p[order]
    last = np.r_[i[1:] != i[:-1], True]
    ended = np.where(last, churn_t[i], np.r_[t[1:], 0])
    mrr = np.round(s * _PRICE[p] * cu.price_factor[i], 2)
    return {"i": i, "start": t, "end": ended, "seats": s, "plan": p, "mrr": mrr}


def _ts(secs) -> np.ndarray:
    """Epoch seconds -> datetime64[ns]; _NEVER (or later) becomes NaT."""
    secs = np.asarray(secs, dtype=np.int64)
    ns = secs * 10**9  # wraps for _NEVER, which is overwritten with NaT next
    ns[secs >= _NEVER] = np.iinfo(np.int64).min
    return ns.view("datetime64[ns]")


def _label(values, idx) -> np.ndarray:
    return np.array(values, dtype=object)[idx]


def _customers_frame(cu, ids, rng):
    n = len(ids)
    return _frame({
        "customer_id": ids, "signed_up_at": _ts(cu.signup), "segment": _label(SEGMENTS, cu.seg),
        "industry": _label(INDUSTRIES, _pick(rng, np.broadcast_to(_INDUSTRY_P, (n, 6)))),
        "country": _label(COUNTRIES, _pick(rng, np.broadcast_to(_COUNTRY_P, (n, 6)))),
        "acquisition_channel": _label(CHANNELS, cu.channel),
    })


def _subscriptions_frame(subs, cu, ids):
    i = subs["i"]
    return _frame({
        "customer_id": ids[i], "started_at": _ts(subs["start"]), "ended_at": _ts(subs["end"]),
        "mrr": subs["mrr"], "plan": _label(PLANS, subs["plan"]), "seats": subs["seats"],
        "billing_interval": _label(("month", "year"), cu.annual[i].astype(int)),
    })


def _payments(cu, st, grid, churn_m, subs, ids, rng):
    """Monthly invoices at anchor dates until churn; defaults fail 3 times, some retry."""
    count = np.minimum(churn_m, grid.m) - cu.smonth
    i = np.repeat(np.arange(len(count)), count)
    k = cu.smonth[i] + np.arange(i.size) - np.repeat(np.cumsum(count) - count, count)
    t = _anchor(cu, i, k, grid)
    i, k, t = i[t < grid.end], k[t < grid.end], t[t < grid.end]
    # The amount is the MRR of the subscription row in force at the invoice time.
    key = subs["i"] * 2**33 + (subs["start"] - grid.starts[0])
    amount = subs["mrr"][np.searchsorted(key, i * 2**33 + (t - grid.starts[0]), "right") - 1]
    unpaid = st.unpaid[i, k]
    soft = ~unpaid & (rng.random(i.size) < 0.05)
    reps = np.where(unpaid, 3, np.where(soft, 2, 1))
    j = np.repeat(np.arange(i.size), reps)
    pos = np.arange(j.size) - np.repeat(np.cumsum(reps) - reps, reps)
    retry_days = np.where(unpaid[j], np.array([0, 3, 7])[np.minimum(pos, 2)],
                          pos * rng.integers(1, 6, j.size))
    when = t[j] + retry_days * _DAY
    status = np.where(unpaid[j] | (soft[j] & (pos == 0)), 1,
                      np.where(rng.random(j.size) < 0.01, 2, 0))
    keep = np.flatnonzero(when < grid.end)
    j, when, status = j[keep], when[keep], status[keep]
    order = np.lexsort((when, i[j]))
    return _frame({
        "customer_id": ids[i[j[order]]], "occurred_at": _ts(when[order]),
        "amount": amount[j[order]], "status": _label(("paid", "failed", "refunded"), status[order]),
    })


def _tickets_frame(st, churn_t, grid, ids, rng):
    tk = st.tickets
    keep = tk["opened"] < np.minimum(churn_t[tk["i"]], grid.end)
    i, k, opened, closed, prio = (tk[c][keep] for c in ("i", "k", "opened", "closed", "prio"))
    still_open = closed >= grid.end
    days = (closed - opened) / _DAY
    # CSAT is answered for some closed tickets and drops with time to close.
    csat = np.clip(np.rint(4.6 - 0.12 * days - 0.3 * (prio == 2) + 0.3 * st.e_month[i, k]
                           + 0.7 * rng.standard_normal(i.size)), 1, 5)
    csat = np.where(~still_open & (rng.random(i.size) < 0.45), csat, np.nan)
    order = np.lexsort((opened, i))
    return _frame({
        "customer_id": ids[i[order]], "opened_at": _ts(opened[order]),
        "closed_at": _ts(np.where(still_open, _NEVER, closed)[order]),
        "priority": _label(PRIORITIES, prio[order]), "csat": csat[order].astype(float),
    })


def _surveys_frame(sv, churn_t, grid, ids):
    keep = sv["t"] < np.minimum(churn_t[sv["i"]], grid.end)
    i, t, nps = sv["i"][keep], sv["t"][keep], sv["nps"][keep]
    order = np.lexsort((t, i))
    return _frame({"customer_id": ids[i[order]], "answered_at": _ts(t[order]),
                   "nps": nps[order].astype(np.int64)})


def _frame(columns: dict) -> pd.DataFrame:
    # copy=False keeps one block per column: consolidating object columns copies them.
    return pd.DataFrame(columns, copy=False)


def _parallel(fn, tasks: list[tuple]) -> list:
    """``fn(*task)`` for every task, on up to 4 threads (numpy releases the GIL); in order."""
    workers = min(os.cpu_count() or 1, 4, len(tasks))
    if workers <= 1:
        return [fn(*task) for task in tasks]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, *zip(*tasks, strict=True)))


def _events(cu, st, grid, churn_t, ids, seed):
    """Daily event rollups, simulated in blocks of customers, each with its own generator."""
    first = cu.signup // _DAY + 1  # whole days after the signup day
    stop = np.minimum(churn_t // _DAY, grid.end // _DAY)  # exclusive: before the churn day
    size = (_ACTIVE_B0 + _ACTIVE_SEATS * np.log(cu.seats)).astype(np.float32)

    def block(lo):
        rng = np.random.default_rng([seed, lo])
        chunks = []
        for k in range(grid.m):
            d0, d1 = grid.days[k], grid.days[k + 1]
            f, s = first[lo:lo + _BLOCK], stop[lo:lo + _BLOCK]
            i = lo + np.flatnonzero((f < d1) & (s > d0) & (f < s))
            chunks.append(_month_events(cu, st, k, d0, d1, i, first, stop, size, rng))
        ci, day, typ, qty = (np.concatenate(x) for x in zip(*chunks, strict=True))
        order = np.argsort(ci, kind="stable")  # month chunks -> customer, day, type
        return ci[order], day[order], typ[order], qty[order]

    parts = _parallel(block, [(lo,) for lo in range(0, len(cu.signup), _BLOCK)])
    ci, day, typ, qty = (np.concatenate(x) for x in zip(*parts, strict=True))
    del parts
    return _frame({"customer_id": ids[ci], "occurred_at": _ts(day * _DAY),
                   "event": _label(EVENT_TYPES, typ), "quantity": qty.astype(float)})


def _month_events(cu, st, k, d0, d1, i, first, stop, size, rng):
    """Active days of customers ``i`` in month k; engagement is interpolated across it."""
    days = np.arange(d0, d1)
    e0 = st.e_month[i, k]
    frac = ((days - d0 + 0.5) / (d1 - d0)).astype(np.float32)
    eng = e0[:, None] + (st.e[i, k + 1] - e0)[:, None] * frac
    weekday = np.where((days + 3) % 7 < 5, 1.0, _WEEKEND).astype(np.float32)  # day 0: Thursday
    p_active = weekday * _sigmoid(size[i, None] + _ACTIVE_ENG * eng)
    valid = (days >= first[i, None]) & (days < stop[i, None])
    is_fv = days == cu.fv_day[i, None]
    r, c = np.nonzero(valid & ((rng.random(eng.shape, np.float32) < p_active) | is_fv))
    ci, day, eng = i[r], days[c], eng[r, c]
    # Breadth: rarer event types need higher engagement.
    used = rng.random((ci.size, len(EVENT_TYPES)), np.float32) < _sigmoid(
        _EV_LOGIT[:, 0] + _EV_LOGIT[:, 1] * eng[:, None])
    fv_day = cu.fv_day[ci]  # no report before first value; the first-value day has one
    used[:, _REPORT] = (used[:, _REPORT] & (day >= fv_day)) | (day == fv_day)
    r, t = np.nonzero(used)
    qty = 1 + rng.poisson(_EV_EXTRA[t] * np.exp(0.3 * eng[r]))
    return ci[r].astype(np.int32), day[r].astype(np.int32), t.astype(np.int8), qty


def _truth(cu, st, grid, churn_m, horizon_days, ids, seed):
    """True P(churn within the horizon) of the customers active at each month-start cutoff."""
    tasks = []
    for k in range(1, grid.m):
        until = grid.starts[k] + horizon_days * _DAY
        if until > grid.end:
            break
        active = np.flatnonzero((cu.smonth < k) & (churn_m >= k))
        tasks += [(active[lo:lo + _BLOCK], k, until) for lo in range(0, active.size, _BLOCK)]

    def task(i, k, until):
        state = (st.e[i, k], cu.fv_day[i] < grid.days[k], st.open_high[i, k], st.nps[i, k],
                 st.dun[i, k])
        rng = np.random.default_rng([seed, k, int(i[0])])
        return i, np.full(i.size, grid.starts[k]), _churn_prob(cu.take(i), state, grid, k,
                                                                until, rng), state[0]

    parts = _parallel(task, tasks) or [(np.zeros(0, np.int64),) * 2 + (np.zeros(0),) * 2]
    i, c, p, e = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((c, i))
    return _frame({"customer_id": ids[i[order]], "cutoff": _ts(c[order]),
                   "true_churn_prob": p[order].astype(float),
                   "true_engagement": e[order].astype(float)})


def _churn_prob(cu, state, grid, k, until, rng):
    """P(churn in (c_k, until]) from the state at c_k.

    Churn never feeds back into the state and the dunning chain is independent of the rest,
    so P(no churn) = E[prod (1 - voluntary)] * E[prod (1 - involuntary)] over the months whose
    churn date is in the window: the first by Monte Carlo paths (month k exact), the second
    exactly on the three dunning states.
    """
    months = [j for j in range(k, grid.m) if grid.starts[j] < until]
    windows = [_anchor(cu, slice(None), j, grid) <= until for j in months]
    paths = tuple(x[:, None] for x in state[:4])
    survive = 1.0
    for j, in_window in zip(months, windows, strict=True):
        if j > k:
            paths = _advance(cu, paths, j - 1, grid, rng)
        vol = _voluntary(cu.seg[:, None], (j - cu.smonth)[:, None], cu.annual[:, None], *paths)
        survive = survive * (1 - vol * in_window[:, None])
        if j == k:
            paths = tuple(np.repeat(x, MC_PATHS, axis=1) for x in paths)
    survive = np.mean(survive, axis=1, dtype=np.float64)
    return 1 - survive * _dunning_survival(cu.fail.astype(float), state[4], windows)


def _dunning_survival(fail, dun, windows):
    """P(no involuntary churn in the window months), forward over dunning states 0, 1, 2+."""
    alive = np.zeros((fail.size, 3))
    alive[np.arange(fail.size), np.minimum(dun, 2)] = 1.0
    for step, in_window in enumerate(windows):
        alive *= 1 - _INVOLUNTARY[None, :] * in_window[:, None]
        if step + 1 < len(windows):
            behind = alive[:, 1] + alive[:, 2]
            alive = np.stack([alive[:, 0] * (1 - fail) + behind * (1 - _REFAIL),
                              alive[:, 0] * fail, behind * _REFAIL], axis=1)
    return alive.sum(axis=1)


def _advance(cu, paths, j, grid, rng):
    """Latent state one month on (c_j -> c_{j+1}) per path, in law equal to the main sim."""
    e, onb, oh, nps = paths
    n, p = e.shape
    length = grid.days[j + 1] - grid.days[j]
    # Exponential times to close: open tickets survive the month with probability `stay`, and
    # new ones still open at c_{j+1} are a thinned Poisson (counted up to 2, as the hazard).
    stay = np.exp(-length / _TAU[2])
    rate = (_TICKETS * _PRIORITY_P[:, 2])[cu.seg] * (_TAU[2] / length * (1 - stay))
    mean = rate.astype(np.float32)[:, None] * np.exp(-0.6 * e)
    p0, u = np.exp(-mean), rng.random((n, p), np.float32)
    new = (u > p0).astype(np.int16) + (u > p0 * (1 + mean))
    if oh.any():
        new += rng.binomial(oh, stay).astype(np.int16)
    due = np.flatnonzero(cu.responder & ((j - cu.smonth) % 3 == 0))
    nps = nps.copy()
    answer = rng.random((due.size, p)) < 0.8
    score = _nps_score(e[due], rng.standard_normal((due.size, p), np.float32))
    nps[due] = np.where(answer, _nps_cat(score), nps[due])
    todo = np.flatnonzero(~onb.all(axis=1))
    onb = onb.copy()
    q = _onboard_prob(cu.take(todo), grid.days[j], grid.days[j + 1])
    onb[todo] |= rng.random((todo.size, p)) < q[:, None]
    e = _ar_step(e, cu.mu[:, None], rng.standard_normal((n, p), np.float32))
    return e, onb, new, nps
