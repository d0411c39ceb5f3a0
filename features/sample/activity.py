"""Activity tables of the sample base: daily events, support tickets and NPS surveys."""

from __future__ import annotations

import numpy as np

from churnlens.features.sample.process import (
    BLOCK,
    DAY,
    NEVER,
    labels,
    parallel,
    sigmoid,
    timestamps,
    to_frame,
)

EVENT_TYPES = ("login", "dashboard_viewed", "report_created", "export", "invite_sent",
               "integration_connected", "alert_configured")
PRIORITIES = ("low", "normal", "high")
# Daily events: P(active day) logit, then per type (logit intercept, slope on e), extra count.
_ACTIVE_B0, _ACTIVE_ENG, _ACTIVE_SEATS, _WEEKEND = -1.3, 1.1, 0.25, 0.25
_EV_LOGIT = np.array([[np.inf, 0.0], [0.5, 1.0], [-0.8, 1.0], [-2.0, 1.0], [-3.0, 0.8],
                      [-4.0, 1.0], [-3.0, 1.2]], np.float32)
_EV_EXTRA = np.array([0.8, 1.5, 0.6, 0.3, 0.5, 0.1, 0.2], np.float32)
_REPORT = EVENT_TYPES.index("report_created")


def tickets_table(st, churn_t, grid, ids, rng):
    """The tickets table: tickets opened before churn, closed times, priority, CSAT."""
    tk = st.tickets
    keep = tk["opened"] < np.minimum(churn_t[tk["i"]], grid.end)
    i, k, opened, closed, prio = (tk[c][keep] for c in ("i", "k", "opened", "closed", "prio"))
    still_open = closed >= grid.end
    days = (closed - opened) / DAY
    # CSAT is answered for some closed tickets and drops with time to close.
    csat = np.clip(np.rint(4.6 - 0.12 * days - 0.3 * (prio == 2) + 0.3 * st.e_month[i, k]
                           + 0.7 * rng.standard_normal(i.size)), 1, 5)
    csat = np.where(~still_open & (rng.random(i.size) < 0.45), csat, np.nan)
    order = np.lexsort((opened, i))
    return to_frame({
        "customer_id": ids[i[order]], "opened_at": timestamps(opened[order]),
        "closed_at": timestamps(np.where(still_open, NEVER, closed)[order]),
        "priority": labels(PRIORITIES, prio[order]), "csat": csat[order].astype(float),
    })


def surveys_table(sv, churn_t, grid, ids):
    """The surveys table: NPS answers given before churn."""
    keep = sv["t"] < np.minimum(churn_t[sv["i"]], grid.end)
    i, t, nps = sv["i"][keep], sv["t"][keep], sv["nps"][keep]
    order = np.lexsort((t, i))
    return to_frame({"customer_id": ids[i[order]], "answered_at": timestamps(t[order]),
                   "nps": nps[order].astype(np.int64)})


def events_table(cu, st, grid, churn_t, ids, seed):
    """Daily event rollups, simulated in blocks of customers, each with its own generator."""
    first = cu.signup // DAY + 1  # whole days after the signup day
    stop = np.minimum(churn_t // DAY, grid.end // DAY)  # exclusive: before the churn day
    size = (_ACTIVE_B0 + _ACTIVE_SEATS * np.log(cu.seats)).astype(np.float32)

    def block(lo):
        rng = np.random.default_rng([seed, lo])
        chunks = []
        for k in range(grid.m):
            d0, d1 = grid.days[k], grid.days[k + 1]
            f, s = first[lo:lo + BLOCK], stop[lo:lo + BLOCK]
            i = lo + np.flatnonzero((f < d1) & (s > d0) & (f < s))
            chunks.append(_month_events(cu, st, k, d0, d1, i, first, stop, size, rng))
        ci, day, typ, qty = (np.concatenate(x) for x in zip(*chunks, strict=True))
        order = np.argsort(ci, kind="stable")  # month chunks -> customer, day, type
        return ci[order], day[order], typ[order], qty[order]

    parts = parallel(block, [(lo,) for lo in range(0, len(cu.signup), BLOCK)])
    ci, day, typ, qty = (np.concatenate(x) for x in zip(*parts, strict=True))
    del parts
    return to_frame({"customer_id": ids[ci], "occurred_at": timestamps(day * DAY),
                   "event": labels(EVENT_TYPES, typ), "quantity": qty.astype(float)})


def _month_events(cu, st, k, d0, d1, i, first, stop, size, rng):
    """Active days of customers ``i`` in month k; engagement is interpolated across it."""
    days = np.arange(d0, d1)
    e0 = st.e_month[i, k]
    frac = ((days - d0 + 0.5) / (d1 - d0)).astype(np.float32)
    eng = e0[:, None] + (st.e[i, k + 1] - e0)[:, None] * frac
    weekday = np.where((days + 3) % 7 < 5, 1.0, _WEEKEND).astype(np.float32)  # day 0: Thursday
    p_active = weekday * sigmoid(size[i, None] + _ACTIVE_ENG * eng)
    valid = (days >= first[i, None]) & (days < stop[i, None])
    is_fv = days == cu.fv_day[i, None]
    r, c = np.nonzero(valid & ((rng.random(eng.shape, np.float32) < p_active) | is_fv))
    ci, day, eng = i[r], days[c], eng[r, c]
    # Breadth: rarer event types need higher engagement.
    used = rng.random((ci.size, len(EVENT_TYPES)), np.float32) < sigmoid(
        _EV_LOGIT[:, 0] + _EV_LOGIT[:, 1] * eng[:, None])
    fv_day = cu.fv_day[ci]  # no report before first value; the first-value day has one
    used[:, _REPORT] = (used[:, _REPORT] & (day >= fv_day)) | (day == fv_day)
    r, t = np.nonzero(used)
    qty = 1 + rng.poisson(_EV_EXTRA[t] * np.exp(0.3 * eng[r]))
    return ci[r].astype(np.int32), day[r].astype(np.int32), t.astype(np.int8), qty
