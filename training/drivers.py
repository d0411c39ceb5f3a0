"""Readable churn drivers from TreeSHAP contributions, and risk tiers from probabilities.

Contributions of the features in one driver group (usage, support, billing, ...) are added
up; the groups that raise a customer's risk most become drivers, each told as a sentence
from the feature that contributes most in the group ("active days in the last 30 fell from
18 to 4") and paired with the playbook action for that group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.settings import DRIVER_GROUPS, PlaybookSettings, TierSettings

TIER_NAMES = np.array(["low", "medium", "high", "critical"])
# Words that lose their "s" after a count of one ("1 open ticket", "1 failed payment").
_PLURALS = ("tickets", "payments", "events", "days", "refunds", "features")


def risk_tier(probs, tiers: TierSettings) -> np.ndarray:
    """Tier name per churn probability: at or above a threshold gets that tier.

    probs: array-like of probabilities in [0, 1]. Returns an array of str ("low",
    "medium", "high", "critical"). Raises ValueError on missing or out-of-range values.
    """
    p = np.asarray(probs, dtype=float).ravel()
    bad = np.isnan(p) | (p < 0) | (p > 1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {p.size} probabilities are missing or outside "
                         f"[0, 1] (first: {p[bad][0]!r}); tiers need probabilities")
    edges = np.array([tiers.medium, tiers.high, tiers.critical])
    return TIER_NAMES[np.searchsorted(edges, p, side="right")]


class _Columns:
    """Feature values by row position, converted per column only when first asked for."""

    def __init__(self, frame: pd.DataFrame, labels: dict[str, str]):
        self.frame, self.labels, self._cache = frame, labels, {}

    def value(self, name: str, i: int) -> float | str | None:
        """A plain value: float for numbers, str for categories, None when unknown."""
        if name not in self.frame.columns:
            return None
        if name not in self._cache:
            self._cache[name] = self.frame[name].to_numpy(dtype=object)
        v = self._cache[name][i]
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return None
        return v if isinstance(v, str) else float(v)


def _num(v: float) -> str:
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def _fmt(v: float | str | None) -> str:
    if v is None:
        return "unknown"
    return v if isinstance(v, str) else _num(v)


def _generic(c: _Columns, i: int, name: str) -> str:
    # Static attributes are labelled by their column name (acquisition_channel).
    return f"{c.labels[name].replace('_', ' ')} is {_fmt(c.value(name, i))}"


def _day_count(v: float) -> str:
    n = round(v)
    return f"{n:,} day" if n == 1 else f"{n:,} days"


def _count(c: _Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    if not isinstance(v, float):
        return _generic(c, i, name)
    if name.startswith("days_"):
        v = float(round(v))  # whole days read better than 27.4
    label = c.labels[name]
    if v == 1:
        words = label.split(" ")
        k = next((j for j, w in enumerate(words) if w in _PLURALS), None)
        if k is not None:
            words[k] = words[k][:-1]
        label = " ".join(words)
    return f"{_num(v)} {label}"


def _active_days(c: _Columns, i: int, name: str) -> str:
    cur, prev = c.value("active_days_30d", i), c.value("active_days_prev_30d", i)
    if cur is None or prev is None or "active_days_30d" not in c.labels:
        return _count(c, i, name)
    label = c.labels["active_days_30d"]
    if cur == prev:
        return f"{label} steady at {_num(cur)}"
    verb = "fell" if cur < prev else "rose"
    return f"{label} {verb} from {_num(prev)} to {_num(cur)}"


def _events_trend(c: _Columns, i: int, name: str) -> str:
    trend = c.value("events_trend_30d", i)
    if trend is None or "events_30d" not in c.labels:
        return _count(c, i, name) if name != "events_trend_30d" else _generic(c, i, name)
    pct = round(abs(trend) * 100)
    change = (f"{'down' if trend < 0 else 'up'} {pct}% on the 30 before" if pct
              else "unchanged on the 30 before")
    if name == "events_30d":
        return f"{_count(c, i, name)}, {change}"  # the level is what the model used
    return f"{c.labels['events_30d']} {change}"


def _nps(c: _Columns, i: int, name: str) -> str:
    latest, change = c.value("nps_latest", i), c.value("nps_change", i)
    if latest is None:
        return "no NPS answer yet"
    if change is None or change == 0:
        return f"latest NPS {_num(latest)}"
    return f"latest NPS {_num(latest)}, {'down' if change < 0 else 'up'} {_num(abs(change))}"


def _first_value(c: _Columns, i: int, name: str) -> str:
    days = c.value("days_to_first_value", i)
    if c.value("reached_first_value", i) == 1 and days is not None:
        return f"first value took {_day_count(days)}"
    # The value event's name only reaches this module inside the label of value_events_30d.
    event = c.labels.get("value_events_30d", "").removesuffix(" events in 30 days")
    tenure = c.value("tenure_days", i)
    text = f"no first value yet ({event})" if event else "no first value yet"
    return f"{text} after {_day_count(tenure)}" if tenure is not None else text


def _renewal(c: _Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    return f"renewal in {_day_count(v)}" if isinstance(v, float) else _generic(c, i, name)


def _change(c: _Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    if not isinstance(v, float) or v == 0:
        return _generic(c, i, name)
    what = {"mrr_change_90d": "MRR", "seats_change_90d": "seats"}[name]
    return f"{what} {'fell' if v < 0 else 'rose'} by {_num(abs(v))} over 90 days"


def _tenure(c: _Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    return f"tenure of {_day_count(v)}" if isinstance(v, float) else _generic(c, i, name)


_COUNTS = ("events_7d", "events_90d", "active_days_7d", "active_days_90d", "event_types_30d",
           "event_types_all_windows", "days_since_last_event", "value_events_30d",
           "failed_payments_90d", "failed_payments_30d", "refunds_90d", "tickets_opened_90d",
           "tickets_high_90d", "tickets_open", "tickets_high_open", "days_since_nps", "seats")
_SENTENCES: dict[str, Callable[[_Columns, int, str], str]] = {
    **dict.fromkeys(_COUNTS, _count),
    **dict.fromkeys(("active_days_30d", "active_days_prev_30d", "active_days_trend_30d"),
                    _active_days),
    **dict.fromkeys(("events_30d", "events_trend_30d"), _events_trend),
    **dict.fromkeys(("nps_latest", "nps_change"), _nps),
    **dict.fromkeys(("reached_first_value", "days_to_first_value"), _first_value),
    **dict.fromkeys(("mrr_change_90d", "seats_change_90d"), _change),
    "days_to_renewal": _renewal,
    "tenure_days": _tenure,
}


def _sentence(columns: _Columns, i: int, name: str) -> str:
    # Sentences with a template (and trend pairs) where one exists, else "<label> is <value>".
    return _SENTENCES.get(name, _generic)(columns, i, name)


def _group_layout(features: list[Feature]) -> list[str]:
    unknown = sorted({f.group for f in features} - set(DRIVER_GROUPS))
    if unknown:
        raise ValueError(f"feature group(s) {unknown} are not driver groups "
                         f"{list(DRIVER_GROUPS)}; fix the feature list")
    return [g for g in DRIVER_GROUPS if any(f.group == g for f in features)]


def _check_inputs(frame: pd.DataFrame, contributions: pd.DataFrame, features: list[Feature],
                  top_n: int) -> None:
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if len(frame) != len(contributions):
        raise ValueError(f"frame has {len(frame)} rows but contributions has "
                         f"{len(contributions)}; pass contributions of the same rows")
    names = [f.name for f in features]
    for what, table in (("contributions lack", contributions), ("frame lacks", frame)):
        missing = [n for n in names if n not in table.columns]
        if missing:
            raise ValueError(f"{what} {len(missing)} feature column(s): {missing}")


def explain(frame: pd.DataFrame, contributions: pd.DataFrame, features: list[Feature],
            playbooks: PlaybookSettings, top_n: int) -> list[list[dict]]:
    """Up to TOP_N risk-raising drivers per row of FRAME.

    contributions: TreeSHAP values per feature (log-odds; rows aligned with FRAME by
    position, e.g. `RiskModel.contributions`). Each driver is a dict with name (the group),
    feature (its largest contributor), value (float, str or None), contribution (group
    total), direction ("raises risk"), text and playbook; groups with a total <= 0 are
    never drivers. Raises ValueError on misaligned inputs, missing columns, an unknown
    group or top_n < 1.
    """
    _check_inputs(frame, contributions, features, top_n)
    names = [f.name for f in features]
    groups = _group_layout(features)
    values = contributions[names].to_numpy(dtype=float)
    members = [np.array([j for j, f in enumerate(features) if f.group == g]) for g in groups]
    totals = np.column_stack([values[:, m].sum(axis=1) for m in members])
    # Per row and group, the position (in `names`) of the feature contributing most.
    top_feature = np.column_stack([m[np.argmax(values[:, m], axis=1)] for m in members])
    order = np.argsort(-totals, axis=1, kind="stable")[:, :top_n]
    columns = _Columns(frame, {f.name: f.label for f in features})
    out = []
    for i in range(len(frame)):
        drivers = []
        for g in order[i]:
            if not totals[i, g] > 0:
                break
            name = names[top_feature[i, g]]
            drivers.append({
                "name": groups[g], "feature": name, "value": columns.value(name, i),
                "contribution": float(totals[i, g]), "direction": "raises risk",
                "text": _sentence(columns, i, name), "playbook": getattr(playbooks, groups[g]),
            })
        out.append(drivers)
    return out
