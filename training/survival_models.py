"""Survival candidates: one small base class and the parametric AFT models on top of it.

A candidate states only its maths: `fit` learns from training rows, `encode` turns feature
rows into its input matrix and `_survival` gives S(days) for that matrix. The base checks
matrices, evaluates curves, gives the default area under S (the trapezoid rule on a
5-day grid) and the default reach of the data (the follow-up from the cutoff, the same
for every row); a candidate with a closed form overrides `survival_and_area`
(`churnlens.training.hazard.DiscreteHazard`), one on another time axis overrides
`fit_support` and `supported_days` (`churnlens.training.tenure`). `churnlens.training.survival.SurvivalModel`
fits, compares and keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.training.survival_support import reach

_MIN_DURATION = 0.01  # parametric likelihoods need t > 0; a churn on the cutoff day is ~0
_LEVEL_SHARE = 0.01  # category levels rarer than this in training share the all-zero "other"


def columns(frame: pd.DataFrame, names: list[str], dtype) -> np.ndarray:
    """FRAME[names] as a (rows, len(names)) array; column by column is 4x faster than
    frame[names] on the wide mixed-type frames seen in serving (one online call matters)."""
    if not names:
        return np.empty((len(frame), 0), dtype=dtype)
    return np.column_stack([frame[n].to_numpy(dtype=dtype) for n in names])


def remaining_grid(cap_days: float = 3650) -> np.ndarray:
    """Days 0, 5, ..., CAP_DAYS: the grid the default area integrates S over.

    It holds 30, 90, 180 and 365, so one curve on it also gives those survival points.
    Raises ValueError when cap_days is not a positive finite number.
    """
    if not np.isfinite(cap_days) or cap_days <= 0:
        raise ValueError(f"cap_days must be a positive number of days, got {cap_days}")
    return np.linspace(0.0, cap_days, int(np.ceil(cap_days / 5.0)) + 1)


class SurvivalCandidate:
    """Base of every survival candidate: S(t | features) for t days after the cutoff.

    seed: for any randomness in fitting; callbacks: LightGBM callbacks for candidates that
    boost (a progress bar), ignored by the others and not kept when the model is pickled.
    Subclasses implement `fit(frame, features, duration, event) -> self` (calling
    `fit_support`), `encode(frame)`, `width_` (columns of the encoded matrix) and
    `_survival(matrix, days)`.
    """

    time_axis = "cutoff"  # what S's time counts from: "cutoff" or "tenure" (signup)

    def __init__(self, seed: int = 42, callbacks: Sequence[Callable] = ()):
        self.seed = seed
        self.callbacks = callbacks

    def __getstate__(self) -> dict:
        return {**self.__dict__, "callbacks": ()}

    def fit(self, frame: pd.DataFrame, features: Sequence[Feature], duration: np.ndarray,
            event: np.ndarray) -> SurvivalCandidate:
        raise NotImplementedError

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    @property
    def width_(self) -> int:
        raise NotImplementedError

    def _survival(self, x: np.ndarray, days: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit_support(self, frame: pd.DataFrame, duration: np.ndarray) -> None:
        """Learn how far the training rows reach: `support_days_`, the longest follow-up
        from the cutoff that at least MIN_AT_RISK rows reach (`reach`)."""
        self.support_days_ = reach(duration)

    def supported_days(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Days after the cutoff up to which each row's curve rests on observed follow-up;
        S beyond them is the model's extrapolation."""
        return np.full(len(self.matrix(rows)), self.support_days_)

    def matrix(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        """ROWS as the input matrix: encoded here from a frame, or checked if given."""
        if not isinstance(rows, np.ndarray):
            return self.encode(rows)
        if rows.ndim != 2 or rows.shape[1] != self.width_:
            raise ValueError(f"an encoded matrix needs shape (rows, {self.width_}); got "
                             f"{rows.shape} (build it with SurvivalModel.encode)")
        return rows

    def survival(self, rows: pd.DataFrame | np.ndarray, days: np.ndarray) -> np.ndarray:
        """S at DAYS for each row, shape (rows, len(days))."""
        return self._survival(self.matrix(rows), days)

    def survival_and_area(self, rows: pd.DataFrame | np.ndarray, days: np.ndarray,
                          cap_days: float) -> tuple[np.ndarray, np.ndarray]:
        """S at DAYS and the area under S from 0 to CAP_DAYS, from one curve evaluation:
        the trapezoid rule on `remaining_grid(cap_days)`."""
        grid = remaining_grid(cap_days)
        curve = self.survival(rows, np.concatenate([days, grid]))
        return curve[:, :days.size], np.trapezoid(curve[:, days.size:], grid, axis=1)


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class NumericDesign:
    """A fitted numeric encoding of the features for the parametric models.

    Numeric: heavy-tailed columns (|skew| > 1 in training) go through sign(x) log1p(|x|);
    missing values get the training median plus a 0/1 indicator column (for columns that
    had missing values in training); then standardised with training moments and clipped
    to +-5 so that one extreme account cannot dominate a parametric fit. Columns constant or
    all missing in training are dropped. Category: one-hot of the levels holding >= 1% of
    training rows (fixed at fit); rarer, unseen and missing values are all zeros.
    """

    def fit(self, frame: pd.DataFrame, features: Sequence[Feature]) -> NumericDesign:
        num = [f.name for f in features if f.kind == "numeric"]
        x = frame[num].to_numpy(dtype=float)
        keep = [j for j, c in enumerate(x.T) if len(np.unique(c[~np.isnan(c)])) > 1]
        self.numeric_, x = [num[j] for j in keep], x[:, keep]
        from scipy.stats import skew  # fit only: scipy.stats costs a served model 1 s

        self.log_ = np.array([abs(skew(c[~np.isnan(c)])) > 1 for c in x.T], dtype=bool)
        z = self._log(x)
        self.median_, self.mean_ = np.nanmedian(z, axis=0), np.nanmean(z, axis=0)
        self.std_ = np.nanstd(z, axis=0)
        self.flagged_ = np.isnan(x).any(axis=0)
        self.levels_ = {}
        for f in features:
            if f.kind == "category":
                share = frame[f.name].astype(object).value_counts(normalize=True)
                self.levels_[f.name] = np.array(share[share >= _LEVEL_SHARE].index, dtype=object)
        flagged = np.array(self.numeric_, dtype=object)[self.flagged_]
        self.columns_ = [*self.numeric_, *(f"{n}__missing" for n in flagged),
                         *(f"{n}={v}" for n, lv in self.levels_.items() for v in lv)]
        return self

    def _log(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.log_, _signed_log(x), x)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The design matrix (rows, len(columns_)) for FRAME."""
        x = columns(frame, self.numeric_, np.float64)
        z = self._log(x)
        z = np.clip((np.where(np.isnan(z), self.median_, z) - self.mean_) / self.std_, -5.0, 5.0)
        parts = [z, np.isnan(x[:, self.flagged_]).astype(float)]
        for name, levels in self.levels_.items():
            values = frame[name].to_numpy(dtype=object)
            parts.append((values[:, None] == levels[None, :]).astype(float))
        return np.hstack(parts)


class ParametricAFT(SurvivalCandidate):
    """A lifelines accelerated-failure-time model on a `NumericDesign`: log scale linear in
    the design, shape constant; prediction is the closed form from the fitted coefficients.

    Subclasses name the lifelines fitter and its scale and shape parameters and give the
    curve S as a function of z = (t / scale) ** shape.
    """

    fitter: str  # the lifelines class, imported at fit (prediction is closed-form)
    scale_param: str
    shape_param: str

    def __init__(self, seed: int = 42, callbacks: Sequence[Callable] = (),
                 penalizer: float = 0.01):
        super().__init__(seed, callbacks)
        self.penalizer = penalizer

    @staticmethod
    def _curve(z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, frame: pd.DataFrame, features: Sequence[Feature], duration: np.ndarray,
            event: np.ndarray) -> ParametricAFT:
        self.fit_support(frame, duration)
        self._fit_design(frame, features, duration, event)
        return self

    def _fit_design(self, frame: pd.DataFrame, features: Sequence[Feature],
                    duration: np.ndarray, event: np.ndarray, entry: np.ndarray | None = None,
                    penalizer: float | None = None) -> None:
        """Fit the design and the lifelines model on durations (ending at ENTRY + DURATION
        with delayed entry at ENTRY when given: left truncation); PENALIZER overrides the
        one given at construction."""
        self.design_ = NumericDesign().fit(frame, features)
        data = pd.DataFrame(self.design_.transform(frame), columns=self.design_.columns_)
        data["_duration"], data["_event"] = np.maximum(duration, _MIN_DURATION), event
        if entry is not None:
            data["_entry"] = entry
            data["_duration"] += entry
        # ftol 1e-8 instead of lifelines' 1e-10 for Weibull: a third faster, and the curves
        # move by < 0.001 on sample data.
        import lifelines

        fitter = getattr(lifelines, self.fitter)(penalizer=self.penalizer if penalizer is None else penalizer)
        params = fitter.fit(data, "_duration", "_event", fit_options={"ftol": 1e-8},
                            entry_col=None if entry is None else "_entry").params_
        self.coef_ = params.loc[self.scale_param].reindex(self.design_.columns_).to_numpy()
        self.intercept_ = float(params.loc[(self.scale_param, "Intercept")])
        self.shape_ = float(np.exp(params.loc[(self.shape_param, "Intercept")]))

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        return self.design_.transform(frame)

    @property
    def width_(self) -> int:
        return len(self.design_.columns_)

    def _survival(self, x: np.ndarray, days: np.ndarray) -> np.ndarray:
        scale = np.exp(x @ self.coef_ + self.intercept_)
        return self._curve((days[None, :] / scale[:, None]) ** self.shape_)


class WeibullAFT(ParametricAFT):
    """Weibull AFT: S(t) = exp(-(t / scale) ** shape)."""

    fitter, scale_param, shape_param = "WeibullAFTFitter", "lambda_", "rho_"

    @staticmethod
    def _curve(z: np.ndarray) -> np.ndarray:
        return np.exp(-z)


class LogLogisticAFT(ParametricAFT):
    """Log-logistic AFT: S(t) = 1 / (1 + (t / scale) ** shape)."""

    fitter, scale_param, shape_param = "LogLogisticAFTFitter", "alpha_", "beta_"

    @staticmethod
    def _curve(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + z)
