"""The sample's ground truth: each active customer's churn probability at each month start."""

from __future__ import annotations

import numpy as np

from churnlens.features.sample.process import (
    BLOCK,
    DAY,
    INVOLUNTARY,
    PRIORITY_P,
    REFAIL,
    TAU,
    TICKETS,
    anchor,
    ar_step,
    nps_cat,
    nps_score,
    onboard_prob,
    parallel,
    timestamps,
    to_frame,
    voluntary,
)

MC_PATHS = 64


def truth_table(cu, st, grid, churn_m, horizon_days, ids, seed):
    """True P(churn within the horizon) of the customers active at each month-start cutoff."""
    tasks = []
    for k in range(1, grid.m):
        until = grid.starts[k] + horizon_days * DAY
        if until > grid.end:
            break
        active = np.flatnonzero((cu.smonth < k) & (churn_m >= k))
        tasks += [(active[lo:lo + BLOCK], k, until) for lo in range(0, active.size, BLOCK)]

    def task(i, k, until):
        state = (st.e[i, k], cu.fv_day[i] < grid.days[k], st.open_high[i, k], st.nps[i, k],
                 st.dun[i, k])
        rng = np.random.default_rng([seed, k, int(i[0])])
        return i, np.full(i.size, grid.starts[k]), _churn_prob(cu.take(i), state, grid, k,
                                                                until, rng), state[0]

    parts = parallel(task, tasks) or [(np.zeros(0, np.int64),) * 2 + (np.zeros(0),) * 2]
    i, c, p, e = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((c, i))
    return to_frame({"customer_id": ids[i[order]], "cutoff": timestamps(c[order]),
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
    windows = [anchor(cu, slice(None), j, grid) <= until for j in months]
    paths = tuple(x[:, None] for x in state[:4])
    survive = 1.0
    for j, in_window in zip(months, windows, strict=True):
        if j > k:
            paths = _advance(cu, paths, j - 1, grid, rng)
        vol = voluntary(cu.seg[:, None], (j - cu.smonth)[:, None], cu.annual[:, None], *paths)
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
        alive *= 1 - INVOLUNTARY[None, :] * in_window[:, None]
        if step + 1 < len(windows):
            behind = alive[:, 1] + alive[:, 2]
            alive = np.stack([alive[:, 0] * (1 - fail) + behind * (1 - REFAIL),
                              alive[:, 0] * fail, behind * REFAIL], axis=1)
    return alive.sum(axis=1)


def _advance(cu, paths, j, grid, rng):
    """Latent state one month on (c_j -> c_{j+1}) per path, in law equal to the main sim."""
    e, onb, oh, nps = paths
    n, p = e.shape
    length = grid.days[j + 1] - grid.days[j]
    # Exponential times to close: open tickets survive the month with probability `stay`, and
    # new ones still open at c_{j+1} are a thinned Poisson (counted up to 2, as the hazard).
    stay = np.exp(-length / TAU[2])
    rate = (TICKETS * PRIORITY_P[:, 2])[cu.seg] * (TAU[2] / length * (1 - stay))
    mean = rate.astype(np.float32)[:, None] * np.exp(-0.6 * e)
    p0, u = np.exp(-mean), rng.random((n, p), np.float32)
    new = (u > p0).astype(np.int16) + (u > p0 * (1 + mean))
    if oh.any():
        new += rng.binomial(oh, stay).astype(np.int16)
    due = np.flatnonzero(cu.responder & ((j - cu.smonth) % 3 == 0))
    nps = nps.copy()
    answer = rng.random((due.size, p)) < 0.8
    score = nps_score(e[due], rng.standard_normal((due.size, p), np.float32))
    nps[due] = np.where(answer, nps_cat(score), nps[due])
    todo = np.flatnonzero(~onb.all(axis=1))
    onb = onb.copy()
    q = onboard_prob(cu.take(todo), grid.days[j], grid.days[j + 1])
    onb[todo] |= rng.random((todo.size, p)) < q[:, None]
    e = ar_step(e, cu.mu[:, None], rng.standard_normal((n, p), np.float32))
    return e, onb, new, nps
