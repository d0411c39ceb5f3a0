"""Account tables of the sample base: customers, subscriptions and payments."""

from __future__ import annotations

import numpy as np

from churnlens.features.sample.process import (
    DAY,
    anchor,
    labels,
    pick,
    sigmoid,
    timestamps,
    to_frame,
)

SEGMENTS = ("smb", "mid_market", "enterprise")
PLANS = ("starter", "growth", "scale")
INDUSTRIES = ("software", "finance", "healthcare", "retail", "manufacturing", "education")
COUNTRIES = ("US", "GB", "DE", "FR", "CA", "AU")
CHANNELS = ("organic", "paid", "partner", "outbound")
_INDUSTRY_P = np.array([0.3, 0.15, 0.12, 0.15, 0.16, 0.12])
_COUNTRY_P = np.array([0.45, 0.15, 0.12, 0.08, 0.1, 0.1])
_PRICE = np.array([15.0, 35.0, 60.0])  # list price per seat and month by plan


def draw_subscriptions(cu, st, grid, churn_m, churn_t, rng):
    """Contract rows: one at signup, then one per seat/plan change and per annual renewal."""
    n = len(cu.signup)
    seats, plan = cu.seats.copy(), cu.plan.copy()
    rec = [(np.arange(n), cu.signup, seats.copy(), plan.copy())]
    for k in range(1, grid.m):
        i = np.flatnonzero((cu.smonth < k) & (churn_m > k))
        t = anchor(cu, i, k, grid)
        i, t = i[t < grid.end], t[t < grid.end]
        e, renewal = st.e[i, k], cu.annual[i] & ((k - cu.smonth[i]) % 12 == 0)
        up = rng.random(i.size) < sigmoid(-3.5 + e)
        # Annual contracts commit to their seats for the year: shrink only at renewal.
        down_p = sigmoid(-4.0 - e) * np.where(cu.annual[i], 3.0 * renewal, 1.0)
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


def customers_table(cu, ids, rng):
    """The customers table: id, signup time and the static attributes."""
    n = len(ids)
    return to_frame({
        "customer_id": ids, "signed_up_at": timestamps(cu.signup),
        "segment": labels(SEGMENTS, cu.seg),
        "industry": labels(INDUSTRIES, pick(rng, np.broadcast_to(_INDUSTRY_P, (n, 6)))),
        "country": labels(COUNTRIES, pick(rng, np.broadcast_to(_COUNTRY_P, (n, 6)))),
        "acquisition_channel": labels(CHANNELS, cu.channel),
    })


def subscriptions_table(subs, cu, ids):
    """The subscriptions table from the rows of ``draw_subscriptions``."""
    i = subs["i"]
    return to_frame({
        "customer_id": ids[i], "started_at": timestamps(subs["start"]),
        "ended_at": timestamps(subs["end"]),
        "mrr": subs["mrr"], "plan": labels(PLANS, subs["plan"]), "seats": subs["seats"],
        "billing_interval": labels(("month", "year"), cu.annual[i].astype(int)),
    })


def payments_table(cu, st, grid, churn_m, subs, ids, rng):
    """Monthly invoices at anchor dates until churn; defaults fail 3 times, some retry."""
    count = np.minimum(churn_m, grid.m) - cu.smonth
    i = np.repeat(np.arange(len(count)), count)
    k = cu.smonth[i] + np.arange(i.size) - np.repeat(np.cumsum(count) - count, count)
    t = anchor(cu, i, k, grid)
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
    when = t[j] + retry_days * DAY
    status = np.where(unpaid[j] | (soft[j] & (pos == 0)), 1,
                      np.where(rng.random(j.size) < 0.01, 2, 0))
    keep = np.flatnonzero(when < grid.end)
    j, when, status = j[keep], when[keep], status[keep]
    order = np.lexsort((when, i[j]))
    return to_frame({
        "customer_id": ids[i[j[order]]], "occurred_at": timestamps(when[order]),
        "amount": amount[j[order]], "status": labels(("paid", "failed", "refunded"), status[order]),
    })
