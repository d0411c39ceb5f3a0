"""The latent process of the sample base: customers, their monthly state, and churn.

What every observed table is drawn from (the package docstring describes the model): the
calendar month grid, the customers' attributes, engagement, onboarding, open high-priority
tickets, the last NPS answer and dunning at each month start, and the monthly churn hazard.
Times are epoch seconds (int64), `NEVER` standing for "no churn"; the helpers at the end
turn arrays into the tables' columns.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from scipy.special import ndtr

DAY = 86_400
NEVER = np.int64(2**62)  # "no churn" time in seconds: later than every real time
BLOCK = 2048  # customers per threaded task (keeps the working set in cache)
# Customer mix; matrix rows are segments (smb, mid_market, enterprise).
_SEG_P = np.array([0.65, 0.25, 0.10])
_CHANNEL_P = np.array([[0.45, 0.35, 0.12, 0.08], [0.3, 0.25, 0.2, 0.25], [0.15, 0.05, 0.25, 0.55]])
_PLAN_P = np.array([[0.6, 0.3, 0.1], [0.25, 0.5, 0.25], [0.05, 0.35, 0.6]])
_ANNUAL_P = np.array([0.2, 0.55, 0.8])
_SEATS_MEDIAN = np.array([4.0, 25.0, 150.0])
_ENG_SEG, _ENG_CHANNEL = np.array([-0.1, 0.1, 0.2]), np.array([0.1, -0.2, 0.1, 0.0])
_SURVEY_P = np.array([0.3, 0.45, 0.6])  # share of customers who answer NPS surveys
_FAIL_P = np.array([0.015, 0.01, 0.005])  # invoice default with a healthy card
REFAIL = np.float32(0.45)  # default probability once the previous invoice defaulted
TICKETS = np.array([0.15, 0.35, 0.8])  # tickets per month at engagement 0
PRIORITY_P = np.array([[0.35, 0.55, 0.1], [0.3, 0.55, 0.15], [0.25, 0.55, 0.2]])
TAU = np.array([5.0, 3.5, 7.0])  # mean days to close by priority (exponential)
_PHI, _SIGMA = 0.85, 0.35  # engagement AR(1) per month
_SLOW_P, _SLOW_DELAY, _SLOW_MEAN = 0.22, 45, 365.0
_FAST_LOG_MEDIAN, _FAST_LOG_SD = np.log(5.0), 0.8
# Monthly voluntary churn hazard on the logit scale; lookup tables are indexed by state.
_B0, _B_SEG, _B_EARLY, _B_ENG = -4.8, np.array([0.3, 0.0, -0.5]), 0.4, -0.8
_T_ONB = np.array([1.3, 0.0], np.float32)  # onboarded: no, yes
_T_TICKET = np.array([0.0, 0.7, 1.4], np.float32)  # open high tickets: 0, 1, 2+
_T_NPS = np.array([0.0, 0.8, -0.4], np.float32)  # last NPS: none/passive, detractor, promoter
_OFF_CYCLE = 0.04  # annual contracts outside renewal months
INVOLUNTARY = np.array([0.0, 0.3, 0.6], np.float32)  # defaulted invoices in a row: 0, 1, 2+


@dataclass
class Grid:
    """Calendar month starts c_0..c_M (epoch seconds) and the exclusive end of the data."""

    starts: np.ndarray  # calendar month starts in epoch seconds, c_0..c_M with c_M >= end
    end: int  # exclusive end of the data, epoch seconds

    @property
    def m(self) -> int:
        return len(self.starts) - 1

    @property
    def days(self) -> np.ndarray:
        return self.starts // DAY


@dataclass
class Customers:
    """Per-customer draws (arrays of one value per customer) fixed at signup."""

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

    def take(self, i) -> Customers:
        return Customers(**{f.name: getattr(self, f.name)[i] for f in fields(self)})


@dataclass
class State:
    """Latent state at month starts ((n, M+1) arrays) and the raw emissions of the months."""

    e: np.ndarray
    e_month: np.ndarray  # (n, M): engagement driving month k (state at c_k, or at signup)
    open_high: np.ndarray
    nps: np.ndarray  # category of the last answer: 0 none/passive, 1 detractor, 2 promoter
    dun: np.ndarray
    unpaid: np.ndarray  # (n, M): the invoice of month k defaulted
    tickets: dict[str, np.ndarray]
    surveys: dict[str, np.ndarray]


def month_grid(end: pd.Timestamp, years: float) -> Grid:
    """Month starts covering ``years`` before ``end``, the last one at or after it."""
    start = end - pd.Timedelta(days=365.25 * years)
    months = pd.date_range(start.to_period("M").to_timestamp(), end, freq="MS")
    if months[-1] < end:
        months = months.append(pd.DatetimeIndex([months[-1] + pd.offsets.MonthBegin()]))
    secs = months.values.astype("datetime64[s]").astype(np.int64)
    return Grid(starts=secs, end=int(end.value // 10**9))


def pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw (column index) per row of the probability matrix ``probs``."""
    u = rng.random(probs.shape[0])
    return (u[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)


def draw_customers(n: int, grid: Grid, years: float, rng: np.random.Generator) -> Customers:
    # Signups grow 2.5x over the window: inverse CDF of a density proportional to exp(g t).
    """Signup times, segment, channel, plan, seats, contract and latent traits of N customers."""
    g, span = np.log(2.5), 365.25 * years * DAY
    t = np.sort(np.log1p(rng.random(n) * (np.exp(g) - 1)) / g)
    day = (grid.end - span + t * span) // DAY
    day = np.clip(day, grid.starts[0] // DAY, grid.end // DAY - 1).astype(np.int64)
    signup = day * DAY + rng.integers(7 * 3600, 20 * 3600, n)  # office hours, never midnight
    d64 = day.astype("datetime64[D]")
    seg = pick(rng, np.broadcast_to(_SEG_P, (n, 3)))
    channel = pick(rng, _CHANNEL_P[seg])
    annual = rng.random(n) < _ANNUAL_P[seg]
    discount = 1 - rng.random(n) * np.array([0.0, 0.15, 0.3])[seg]  # negotiated on larger deals
    slow = rng.random(n) < _SLOW_P + 0.08 * (channel == 1)  # paid signups onboard worse
    fast_days = 1 + np.floor(np.exp(_FAST_LOG_MEDIAN + _FAST_LOG_SD * rng.standard_normal(n)))
    slow_days = _SLOW_DELAY + np.floor(rng.exponential(_SLOW_MEAN, n))
    mu = _ENG_SEG[seg] + _ENG_CHANNEL[channel] - 1.0 * slow + 0.6 * rng.standard_normal(n)
    seats = _SEATS_MEDIAN[seg] * np.exp(0.6 * rng.standard_normal(n))
    fail = _FAIL_P[seg] * np.where(annual, 0.3, 1.0) * np.exp(0.5 * rng.standard_normal(n))
    return Customers(
        signup=signup, smonth=np.searchsorted(grid.starts, signup, "right") - 1,
        dom=(d64 - d64.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1,
        seg=seg, channel=channel, plan=pick(rng, _PLAN_P[seg]),
        seats=np.maximum(1, np.rint(seats)).astype(np.int64), annual=annual,
        price_factor=discount * np.where(annual, 0.85, 1.0), slow=slow,
        mu=mu.astype(np.float32), responder=rng.random(n) < _SURVEY_P[seg],
        fail=np.minimum(0.2, fail).astype(np.float32),
        fv_day=day + np.where(slow, slow_days, fast_days).astype(np.int64),
    )


def sigmoid(x):
    """The logistic function."""
    return 1 / (1 + np.exp(-x))


def ar_step(e, mu, z):
    """One month of the engagement AR(1) around mean ``mu`` with noise ``z``."""
    return mu + _PHI * (e - mu) + _SIGMA * z


def nps_score(e, z):
    """An NPS answer (0-10) at engagement ``e`` with noise ``z``."""
    return np.clip(np.rint(7.0 + 1.5 * e + 1.6 * z), 0, 10)


def nps_cat(score):
    """NPS category of a score: 0 passive, 1 detractor (<= 6), 2 promoter (>= 9)."""
    return ((score <= 6) + 2 * (score >= 9)).astype(np.int8)


def anchor(cu: Customers, i, k, grid: Grid):
    """Anchor time of customers ``i`` in month ``k``: signup day of month (clipped) and time."""
    length = grid.days[k + 1] - grid.days[k]
    return grid.starts[k] + (np.minimum(cu.dom[i], length) - 1) * DAY + cu.signup[i] % DAY


def voluntary(seg, tenure, annual, e, onboarded, open_high, nps):
    """Voluntary churn probability in a month given the state at its start (broadcasts)."""
    base = (_B0 + _B_SEG[seg] + _B_EARLY * (tenure <= 3)).astype(np.float32)
    p = sigmoid(base + _B_ENG * e + _T_ONB[onboarded.view(np.uint8)]
                 + _T_TICKET[np.minimum(open_high, 2)] + _T_NPS[nps])
    renewal = 1 - np.square(np.square(np.square(1 - p)))  # 1 - (1 - p) ** 8
    return np.where(annual, np.where(tenure % 12 == 0, renewal, _OFF_CYCLE * p), p)


def _hazard(seg, tenure, annual, e, onboarded, open_high, nps, dun):
    """Churn probability in a month: voluntary, or involuntary after defaulted invoices."""
    vol = voluntary(seg, tenure, annual, e, onboarded, open_high, nps)
    return 1 - (1 - vol) * (1 - INVOLUNTARY[np.minimum(dun, 2)])


def onboard_prob(cu: Customers, d0, d1):
    """P(first value day < d1 | not before d0), matching the draw in ``_draw_customers``."""
    a0, a1 = d0 - cu.signup // DAY - 1, d1 - cu.signup // DAY - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        sf = [np.where(a > 0, ndtr(-(np.log(np.maximum(a, 1)) - _FAST_LOG_MEDIAN)
                                   / _FAST_LOG_SD), 1.0) for a in (a0, a1)]
        fast = np.where(sf[0] > 0, 1 - sf[1] / sf[0], 1.0)
    b0, b1 = (np.maximum(a - _SLOW_DELAY + 1, 0) for a in (a0, a1))
    return np.where(cu.slow, 1 - np.exp(-(b1 - b0) / _SLOW_MEAN), fast)


def simulate_states(cu: Customers, grid: Grid, rng: np.random.Generator) -> State:
    """Engagement, dunning, NPS and open high-priority tickets at every month start."""
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
        e[live, k + 1] = ar_step(cur, cu.mu[live], rng.standard_normal(live.size, np.float32))
        owed = np.where(dun[live, k] == 0, cu.fail[live], REFAIL)
        unpaid[live, k] = rng.random(live.size, np.float32) < owed
        dun[live, k + 1] = np.where(unpaid[live, k], np.minimum(dun[live, k] + 1, 100), 0)
    nps, surveys = _simulate_surveys(cu, grid, e_month, rng)
    open_high, tickets = _simulate_tickets(cu, grid, e_month, rng)
    return State(e, e_month, open_high, nps, dun, unpaid, tickets, surveys)


def _simulate_surveys(cu, grid, e_month, rng):
    n, m = e_month.shape
    nps = np.zeros((n, m + 1), np.int8)
    cols = {"i": [], "t": [], "nps": []}
    for k in range(m):
        nps[:, k + 1] = nps[:, k]
        due = (cu.smonth < k) & ((k - cu.smonth) % 3 == 0) & cu.responder
        i = np.flatnonzero(due & (rng.random(n) < 0.8))
        score = nps_score(e_month[i, k], rng.standard_normal(i.size))
        nps[i, k + 1] = nps_cat(score)
        length = grid.starts[k + 1] - grid.starts[k]
        cols["i"].append(i)
        cols["nps"].append(score.astype(np.int64))
        cols["t"].append(grid.starts[k] + (rng.random(i.size) * length).astype(np.int64))
    return nps, {key: np.concatenate(v) for key, v in cols.items()}


def _simulate_tickets(cu, grid, e_month, rng):
    n, m = e_month.shape
    lo = np.maximum(grid.starts[None, :-1], cu.signup[:, None])  # window start in month k
    frac = np.clip((grid.starts[None, 1:] - lo) / np.diff(grid.starts)[None, :], 0, 1)
    lam = TICKETS[cu.seg][:, None] * np.exp(-0.6 * np.nan_to_num(e_month)) * frac
    count = rng.poisson(np.where(np.isnan(e_month), 0.0, lam))
    i, k = np.nonzero(count)
    i, k = np.repeat(i, count[i, k]), np.repeat(k, count[i, k])
    opened = lo[i, k] + (rng.random(i.size) * (grid.starts[k + 1] - lo[i, k])).astype(np.int64)
    prio = pick(rng, PRIORITY_P[cu.seg[i]])
    closed = opened + (rng.exponential(TAU[prio]) * DAY).astype(np.int64)
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


def draw_churn(cu, st, grid, rng):
    """Churn month (M if none) and churn time (_NEVER if none) from the monthly hazard."""
    n, m = len(cu.signup), grid.m
    tenure = np.arange(m)[None, :] - cu.smonth[:, None]
    onboarded = cu.fv_day[:, None] < grid.days[None, :m]
    h = _hazard(cu.seg[:, None], tenure, cu.annual[:, None], st.e[:, :m], onboarded,
                st.open_high[:, :m], st.nps[:, :m], st.dun[:, :m])
    hit = (tenure >= 1) & (rng.random((n, m), np.float32) < h)
    month = np.where(hit.any(axis=1), hit.argmax(axis=1), m)
    when = np.full(n, NEVER)
    churned = np.flatnonzero(month < m)
    when[churned] = anchor(cu, churned, month[churned], grid)
    late = when >= grid.end  # the last month may be partial
    month[late], when[late] = m, NEVER
    return month, when


def timestamps(secs) -> np.ndarray:
    """Epoch seconds -> datetime64[ns]; _NEVER (or later) becomes NaT."""
    secs = np.asarray(secs, dtype=np.int64)
    ns = secs * 10**9  # wraps for _NEVER, which is overwritten with NaT next
    ns[secs >= NEVER] = np.iinfo(np.int64).min
    return ns.view("datetime64[ns]")


def labels(values, idx) -> np.ndarray:
    """The labels VALUES[idx] as an object array (a pandas string column)."""
    return np.array(values, dtype=object)[idx]


def to_frame(columns: dict) -> pd.DataFrame:
    """A DataFrame of COLUMNS (name -> array), each column kept as its own block."""
    # copy=False keeps one block per column: consolidating object columns copies them.
    return pd.DataFrame(columns, copy=False)


def parallel(fn, tasks: list[tuple]) -> list:
    """``fn(*task)`` for every task, on up to 4 threads (numpy releases the GIL); in order."""
    workers = min(os.cpu_count() or 1, 4, len(tasks))
    if workers <= 1:
        return [fn(*task) for task in tasks]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, *zip(*tasks, strict=True)))
