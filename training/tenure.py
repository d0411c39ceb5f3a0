"""Survival on tenure: candidates whose time axis is days since signup, with delayed entry.

A customer seen from the cutoff at tenure a for d days is at risk on the tenure axis from a
(left truncation: the customers who left before a are not in the data) to a + d. Across
customers of every tenure the hazard over tenure is learned even from a short window (a
one-snapshot export followed for 31 days), and P(still a customer t days after the
cutoff) is the conditional survival S(a + t) / S(a). The reach of the data is the range of
tenures the data see (`fit_support`), so the curve of a customer with
tenure a rests on the data up to that reach minus a.

* ``weibull_tenure``: Weibull AFT on tenure (lifelines with ``entry_col``), the time-fixed
  features as covariates.
* ``discrete_tenure``: the discrete-time hazard (`churnlens.training.hazard`) with tenure at
  the start of each 30-day interval as a feature that moves with the interval instead of
  the interval index, so the hazard of the months ahead is the one learned at those
  tenures.

Features that are functions of the time axis are not fixed covariates here: tenure itself,
the lifecycle stage (set by tenure) and, for the parametric model, days to renewal (a
clock it cannot move).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.training.hazard import _CLOCKS, DiscreteHazard
from churnlens.training.survival_models import WeibullAFT, columns
from churnlens.training.survival_support import reach

TENURE = "tenure_days"
RENEWAL = "days_to_renewal"
_BY_TENURE = ("lifecycle_stage",)  # set by tenure at the cutoff: it would not move with it
_CLOCK_FEATURES = (TENURE, *_CLOCKS)
_PERIOD_BY = "billing_interval"  # the category whose levels renew on different cycles


def has_tenure(features: Sequence[Feature]) -> bool:
    """True when the features carry a numeric tenure (days since signup) to fit on."""
    return any(f.name == TENURE and f.kind == "numeric" for f in features)


def tenure_intervals(frame: pd.DataFrame, duration: np.ndarray, event: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entry tenure, duration and event of each row on the tenure axis.

    A customer at several cutoffs would count the same days at risk more than once (the
    row of one cutoff overlaps the next): each row's time is cut at the customer's next
    cutoff, an event after it censored there (the counting-process form). Raises ValueError
    when FRAME lacks tenure_days or holds missing or negative tenures.
    """
    if TENURE not in frame.columns:
        raise ValueError(f"survival on tenure needs a {TENURE} column (days from signup to "
                         "the cutoff); build the training set with the tenure feature")
    entry = frame[TENURE].to_numpy(dtype=float)
    bad = np.isnan(entry) | (entry < 0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {entry.size} rows have a missing or negative "
                         f"{TENURE}; every customer needs its signup date before the cutoff")
    d, e = np.asarray(duration, float).copy(), np.asarray(event).astype(int).copy()
    if {"customer_id", "cutoff"} <= set(frame.columns):
        ids = frame["customer_id"].astype(str).to_numpy()
        order = np.lexsort((entry, ids))
        same = ids[order][1:] == ids[order][:-1]
        room = np.diff(entry[order])
        cut = same & (d[order][:-1] > room)
        rows = order[:-1][cut]
        d[rows], e[rows] = room[cut], 0
    return entry, d, e


class _OnTenure:
    """The reach of a tenure-axis candidate: `support_tenure_days_`, the largest tenure
    that at least MIN_AT_RISK rows are seen at or beyond (`reach`); a row's curve rests on
    the data up to that tenure."""

    time_axis = "tenure"

    def fit_support(self, frame: pd.DataFrame, duration: np.ndarray) -> None:
        entry = frame[TENURE].to_numpy(dtype=float)
        self.support_tenure_days_ = reach(entry + duration)
        self.support_days_ = reach(duration)

    def supported_days(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        tenure = self.matrix(rows)[:, self.tenure_index_].astype(float)
        return np.maximum(self.support_tenure_days_ - tenure, 0.0)


class TenureWeibull(_OnTenure, WeibullAFT):
    """Weibull AFT on tenure: S(u) = exp(-(u / scale) ** shape) for tenure u, log scale
    linear in the design; P(t after the cutoff) = S(a + t) / S(a)."""

    def fit(self, frame: pd.DataFrame, features: Sequence[Feature], duration: np.ndarray,
            event: np.ndarray) -> TenureWeibull:
        entry, d, e = tenure_intervals(frame, duration, event)
        self.fit_support(frame, d)
        fixed = [f for f in features if f.name not in (*_CLOCK_FEATURES, *_BY_TENURE)]
        # lifelines weighs the penalty against the mean log-likelihood per row; in a short
        # window few rows hold a churn, so the penalty is scaled by their share to shrink
        # as much per churn as the cutoff models do (0.01 shrank a slope by 8% here).
        self._fit_design(frame, fixed, d, e, entry=entry,
                         penalizer=self.penalizer * max(float(e.mean()), 1e-3))
        self.tenure_index_ = len(self.design_.columns_)
        return self

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        return np.hstack([self.design_.transform(frame), columns(frame, [TENURE], np.float64)])

    @property
    def width_(self) -> int:
        return len(self.design_.columns_) + 1

    def _survival(self, x: np.ndarray, days: np.ndarray) -> np.ndarray:
        tenure = x[:, -1:]
        scale = np.exp(x[:, :-1] @ self.coef_ + self.intercept_)[:, None]
        # exp(-z(a + t) + z(a)): the ratio in logs, since S(a) itself underflows for old
        # accounts under a short scale.
        return np.exp((tenure / scale) ** self.shape_
                      - ((tenure + days[None, :]) / scale) ** self.shape_)


class TenureHazard(_OnTenure, DiscreteHazard):
    """The discrete-time hazard with tenure as a clock: each 30-day interval after the
    cutoff is described by the tenure at its start, so the model learns P(churn in the next
    30 days | tenure, features) from customers of every tenure in the window.

    Days to renewal count down with the intervals and start a new cycle at each renewal: a
    window shorter than a cycle never shows the value after a renewal, which the trees
    would otherwise read as the riskiest "renewal due". A cycle lasts the largest days to
    renewal seen in training for the row's billing interval (the whole period, as the
    feature runs from the period down to 0).
    """

    clocks = {**_CLOCKS, TENURE: 1}
    interval_feature = False

    def fit(self, frame: pd.DataFrame, features: Sequence[Feature], duration: np.ndarray,
            event: np.ndarray) -> TenureHazard:
        if not has_tenure(features):
            raise ValueError(f"survival on tenure needs the numeric feature {TENURE}")
        _, d, e = tenure_intervals(frame, duration, event)
        kept = [f for f in features if f.name not in _BY_TENURE]
        self.periods_ = _renewal_periods(frame, kept)
        super().fit(frame, kept, d, e)
        self.tenure_index_ = self.numeric_.index(TENURE)
        return self

    def _expand(self, x: np.ndarray, rows: np.ndarray, k: np.ndarray) -> np.ndarray:
        xs = super()._expand(x, rows, k)
        if self.periods_ is None:
            return xs
        default, by_level = self.periods_
        period = np.full(len(xs), default, dtype=np.float32)
        if by_level:
            codes = xs[:, len(self.numeric_) + list(self.levels_).index(_PERIOD_BY)]
            for level, days in by_level.items():
                period[codes == self.levels_[_PERIOD_BY].get_loc(level)] = days
        # Into (0, period]: unchanged before the renewal, a new cycle after it.
        j = self.numeric_.index(RENEWAL)
        xs[:, j] = period - np.mod(period - xs[:, j], period)
        return xs


def _renewal_periods(frame: pd.DataFrame, features: Sequence[Feature]
                     ) -> tuple[float, dict[str, float]] | None:
    """Cycle length of days to renewal: over all rows, and per billing-interval level when
    that is a feature; None when the features hold no (known) days to renewal."""
    if not any(f.name == RENEWAL and f.kind == "numeric" for f in features):
        return None
    days = frame[RENEWAL].to_numpy(dtype=float)
    known = ~np.isnan(days)
    if not known.any():
        return None
    by_level = {}
    if any(f.name == _PERIOD_BY and f.kind == "category" for f in features):
        levels = frame[_PERIOD_BY].astype(object).to_numpy()
        for level in pd.unique(levels[known & pd.notna(levels)]):
            by_level[level] = float(days[known & (levels == level)].max())
    return float(days[known].max()), by_level
