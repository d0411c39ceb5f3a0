"""Time to churn from a cutoff, for customers who are customers at that cutoff.

`SurvivalModel` fits the candidate models on training rows and keeps the one that predicts
better on a validation slice: lower IPCW integrated Brier score over 30-365 days, with the
concordance as the tie-break. Every candidate is a `SurvivalCandidate`
(`churnlens.training.survival_models`), so the model never asks which one it holds:

* ``weibull_aft`` / ``loglogistic_aft``: lifelines parametric AFT on a compact numeric
  design (`churnlens.training.survival_models`).
* ``discrete_lgbm``: a discrete-time hazard model, LightGBM on person-period rows
  (`churnlens.training.hazard`).
* ``weibull_tenure`` / ``discrete_tenure``: the same two kinds on tenure with delayed entry
  at the tenure at the cutoff (`churnlens.training.tenure`).

Which candidates compete (`SurvivalModel.candidates_for`): when fewer than `MIN_AT_RISK`
training rows are followed from the cutoff for the largest survival horizon (365 days)
and the features carry tenure, the tenure candidates, since a curve on time since the
cutoff would be extrapolated from the window alone; otherwise the cutoff candidates. The
model keeps how far its data reach and says which figures extrapolate beyond them
(`SurvivalModel.support`, `SurvivalModel.extrapolation_notes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.training.fitted import not_fitted
from churnlens.training.hazard import DiscreteHazard
from churnlens.training.ltv import monthly_grid
from churnlens.training.survival_models import (
    LogLogisticAFT,
    SurvivalCandidate,
    WeibullAFT,
    remaining_grid,
)
from churnlens.training.survival_support import (
    HORIZONS,
    MIN_AT_RISK,
    extrapolation_notes,
    reach,
    support_summary,
)
from churnlens.training.tenure import TenureHazard, TenureWeibull, has_tenure

CANDIDATES: dict[str, type[SurvivalCandidate]] = {
    "weibull_aft": WeibullAFT, "loglogistic_aft": LogLogisticAFT, "discrete_lgbm": DiscreteHazard,
    "weibull_tenure": TenureWeibull, "discrete_tenure": TenureHazard,
}
CUTOFF_CANDIDATES = ("weibull_aft", "discrete_lgbm")
TENURE_CANDIDATES = ("discrete_tenure", "weibull_tenure")
_IBS_TIE = 5e-4  # IBS values closer than this tie (~1% of the IBS on sample data)
_EVAL_GRID = np.arange(0.0, 366.0, 5.0)


def check_survival_target(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Durations and events of FRAME as arrays; ValueError naming what is wrong and where."""
    missing = [c for c in ("duration_days", "event") if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} frame lacks column(s) {missing}; survival models need "
                         "duration_days and event (see churnlens.features.labels)")
    d = frame["duration_days"].to_numpy(dtype=float)
    e = frame["event"].to_numpy(dtype=float)
    if d.size == 0:
        raise ValueError(f"{name} frame has no rows")
    bad = np.isnan(d) | np.isnan(e)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} of {d.size} rows have a missing "
                         "duration_days or event; drop or fix them first")
    if (d < 0).any():
        raise ValueError(f"{name}: {int((d < 0).sum())} of {d.size} rows have negative "
                         f"duration_days (min {d.min():.3g}); durations count days from the "
                         "cutoff to churn or censoring")
    if not np.isin(e, (0, 1)).all():
        raise ValueError(f"{name}: event must be 0 (censored) or 1 (churn observed)")
    if e.sum() == 0:
        raise ValueError(f"{name}: all {d.size} rows are censored; a survival model needs "
                         "observed churn (extend the follow-up or the history)")
    return d, e.astype(int)


def _check_features(frame: pd.DataFrame, features: Sequence[Feature], name: str) -> None:
    missing = [f.name for f in features if f.name not in frame.columns]
    if missing:
        raise ValueError(f"{name} frame lacks {len(missing)} feature column(s): {missing[:10]}")


def _choose(scores: dict[str, dict[str, float]]) -> str:
    """Lowest IBS; among candidates within _IBS_TIE of it, highest concordance."""
    ibs = {n: s["ibs"] for n, s in scores.items() if np.isfinite(s["ibs"])}
    pool = [n for n in ibs if ibs[n] <= min(ibs.values()) + _IBS_TIE] if ibs else list(scores)
    return max(pool, key=lambda n: scores[n]["concordance"])


class SurvivalModel:
    """Probability of still being a customer t days after the cutoff, per row.

    features: the model inputs (`churnlens.features.queries.Feature`); seed: for LightGBM and
    subsampling; candidates: names from CANDIDATES to fit and compare, None = by the
    follow-up of the training rows (`candidates_for`).

    Learned attributes: ``scores_`` ({candidate: {"ibs", "concordance"}} on the validation
    slice), ``chosen_`` (the candidate kept), ``model_`` (its fitted estimator),
    ``follow_up_days_`` (the longest duration in training), ``supported_follow_up_days_``
    (the longest with at least MIN_AT_RISK customers at risk) and ``extrapolated_share_``
    ({horizon: share of training rows whose P(horizon) lies beyond the model's support}).
    """

    def __init__(self, features: list[Feature], seed: int = 42,
                 candidates: Sequence[str] | None = None):
        self.features = features
        self.seed = seed
        self.candidates = candidates

    def candidates_for(self, train: pd.DataFrame) -> tuple[str, ...]:
        """The candidates `fit` compares on TRAIN: the ones given, else TENURE_CANDIDATES
        when fewer than MIN_AT_RISK rows are followed for the largest horizon (365 days)
        and the features carry tenure, else CUTOFF_CANDIDATES. Raises the errors of
        `check_survival_target`."""
        if self.candidates is not None:
            return tuple(self.candidates)
        d, _ = check_survival_target(train, "train")
        short = reach(d) < HORIZONS[-1]
        return TENURE_CANDIDATES if short and has_tenure(self.features) else CUTOFF_CANDIDATES

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame,
            callbacks: Sequence[Callable] = (),
            on_candidate: Callable[[str, dict[str, float]], None] | None = None
            ) -> SurvivalModel:
        """Fit every candidate on TRAIN and keep the best on VALIDATION.

        Both frames need the feature columns, duration_days and event (1 churn observed,
        0 censored); censor TRAIN at the start of VALIDATION so that no later outcome leaks
        in. callbacks: LightGBM callbacks for the candidates that boost (a progress bar);
        on_candidate(name, scores): called after each candidate with its validation scores
        and fit time ("ibs", "concordance", "seconds"). Raises ValueError for unknown
        candidates, missing columns, missing or negative durations, or a frame whose rows
        are all censored.
        """
        names = None if self.candidates is None else list(self.candidates)
        unknown = [c for c in names or () if c not in CANDIDATES]
        if unknown or names == []:
            raise ValueError(f"unknown or no candidates {names}; "
                             f"choose from {tuple(CANDIDATES)}")
        for name, frame in (("train", train), ("validation", validation)):
            _check_features(frame, self.features, name)
        d, e = check_survival_target(train, "train")
        vd, ve = check_survival_target(validation, "validation")
        from churnlens.training.metrics import survival_metrics  # sklearn, lifelines: fit only

        fitted, self.scores_ = {}, {}
        for name in self.candidates_for(train):
            start = time.perf_counter()
            candidate = CANDIDATES[name](seed=self.seed, callbacks=callbacks)
            fitted[name] = candidate.fit(train, self.features, d, e)
            surv = fitted[name].survival(validation, _EVAL_GRID)
            risk = -np.trapezoid(surv, _EVAL_GRID, axis=1)
            m = survival_metrics(vd, ve, surv, _EVAL_GRID, risk)
            self.scores_[name] = {"ibs": m["integrated_brier"], "concordance": m["concordance"]}
            if on_candidate is not None:
                on_candidate(name, {**self.scores_[name],
                                    "seconds": time.perf_counter() - start})
        self.chosen_ = _choose(self.scores_)
        self.model_ = fitted[self.chosen_]
        self.follow_up_days_ = float(d.max())
        self.supported_follow_up_days_ = reach(d)
        # Sorted, so that the share of rows beyond any day is one search (`_share_beyond`).
        self.train_support_ = np.sort(self.model_.supported_days(train)).astype(np.float32)
        self.extrapolated_share_ = {h: self._share_beyond(h) for h in HORIZONS}
        return self

    def _share_beyond(self, days: float) -> float:
        """Share of the training rows whose support ends before DAYS after the cutoff."""
        support = self.train_support_
        return float(np.searchsorted(support, days, side="left") / support.size)

    def supported_days(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Days after the cutoff up to which each row's curve rests on the training data
        (the follow-up, or for survival on tenure the tenures seen at risk less the row's
        tenure); figures beyond are extrapolated. Raises NotFittedError before `fit`."""
        self._check_fitted()
        if not isinstance(frame, np.ndarray):
            _check_features(frame, self.features, "scored")
        return self.model_.supported_days(frame)

    def support(self) -> dict:
        """How far the training data reach, for /model_info: time_axis ("cutoff" or
        "tenure"), follow_up_days, supported_follow_up_days, supported_tenure_days (None on
        the cutoff axis) and per horizon in HORIZONS its extrapolated_share (of the training
        rows) and extrapolates (true for most of them). Raises NotFittedError before fit."""
        self._check_fitted()
        return support_summary(self.model_.time_axis, self.follow_up_days_,
                               self.supported_follow_up_days_,
                               getattr(self.model_, "support_tenure_days_", None),
                               self.extrapolated_share_)

    def extrapolation_notes(self, ltv_horizon_days: int | None = None,
                            cap_days: float = 3650) -> list[str]:
        """The run's notes: the time axis in use and why, each P(horizon) that extrapolates
        beyond the data (for what share of the training rows), the remaining lifetime up
        to CAP_DAYS and the LTV months (when LTV_HORIZON_DAYS is given). Raises
        NotFittedError before `fit`."""
        self._check_fitted()
        ltv = (None if ltv_horizon_days is None
               else self._share_beyond(monthly_grid(ltv_horizon_days)[-1]))
        return extrapolation_notes(self.support(), self._share_beyond(cap_days), cap_days, ltv,
                                   ltv_horizon_days)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """FRAME as the chosen model's input matrix; `survival_function` takes it instead of
        the frame, so rows scored often (a server's snapshot) are encoded once.

        Raises NotFittedError before `fit`, ValueError for missing feature columns.
        """
        self._check_fitted()
        _check_features(frame, self.features, "scored")
        return self.model_.encode(frame)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise not_fitted("SurvivalModel is not fitted yet; call fit(train, validation)")

    def survival_function(self, frame: pd.DataFrame | np.ndarray, days: Sequence[float]
                          ) -> np.ndarray:
        """S(days) for each row of FRAME: array (rows, len(days)) in [0, 1], non-increasing.

        frame: feature rows, or their `encode`d matrix. Raises NotFittedError before `fit`,
        ValueError for negative or non-finite days, missing feature columns or a matrix of
        the wrong width.
        """
        self._check_fitted()
        t = _check_days(days)
        if not isinstance(frame, np.ndarray):
            _check_features(frame, self.features, "scored")
        return np.clip(self.model_.survival(frame, t), 0.0, 1.0)

    def survival_at(self, frame: pd.DataFrame) -> pd.DataFrame:
        """P(still a customer) at 30, 90, 180 and 365 days: columns "30", "90", "180", "365"."""
        s = self.survival_function(frame, HORIZONS)
        return pd.DataFrame(s, columns=[str(h) for h in HORIZONS], index=frame.index)

    def survival_and_remaining(self, frame: pd.DataFrame | np.ndarray, days: Sequence[float],
                               cap_days: float = 3650) -> tuple[np.ndarray, np.ndarray]:
        """`survival_function(frame, days)` and `expected_remaining_days(frame, cap_days)`
        from one prediction of the model (scoring needs both)."""
        self._check_fitted()
        t = _check_days(days)
        if not np.isfinite(cap_days) or cap_days <= 0:
            raise ValueError(f"cap_days must be a positive number of days, got {cap_days}")
        if not isinstance(frame, np.ndarray):
            _check_features(frame, self.features, "scored")
        s, area = self.model_.survival_and_area(frame, t, cap_days)
        return np.clip(s, 0.0, 1.0), area

    def expected_remaining_days(self, frame: pd.DataFrame | np.ndarray, cap_days: float = 3650
                                ) -> np.ndarray:
        """Restricted mean remaining lifetime: the area under S from 0 to CAP_DAYS, per row.

        Exact for the discrete-hazard model (S decays exponentially within each interval),
        the trapezoid rule on a 5-day grid for the parametric ones. Raises ValueError when
        cap_days is not a positive finite number.
        """
        return self.survival_and_remaining(frame, [0.0], cap_days)[1]


def _check_days(days: Sequence[float]) -> np.ndarray:
    t = np.asarray(days, dtype=float).ravel()
    if t.size == 0 or not np.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"days must be a non-empty sequence of finite days >= 0, got {days}")
    return t


__all__ = ["CANDIDATES", "MIN_AT_RISK", "SurvivalModel", "check_survival_target",
           "remaining_grid"]
