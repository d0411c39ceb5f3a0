"""Time to churn from a cutoff, for customers who are customers at that cutoff.

`SurvivalModel` fits the candidate models on training rows and keeps the one that predicts
better on a validation slice: lower IPCW integrated Brier score over 30-365 days, with the
concordance as the tie-break. Candidates share one small interface (`fit(frame, d, e)`,
`survival(frame, days)`):

* ``weibull_aft`` / ``loglogistic_aft``: lifelines parametric AFT on a compact numeric
  design (`NumericDesign`); prediction is the closed form from the fitted coefficients.
* ``discrete_lgbm``: a discrete-time hazard model, LightGBM on person-period rows (one per
  30-day interval at risk, up to 12), the interval index a feature. Beyond 360 days the
  survival curve continues with a constant monthly hazard (`_tail_hazard`).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
from lifelines import LogLogisticAFTFitter, WeibullAFTFitter
from scipy.stats import skew
from sklearn.exceptions import NotFittedError

from churnlens.features.queries import Feature
from churnlens.training.metrics import survival_metrics

CANDIDATES = ("weibull_aft", "loglogistic_aft", "discrete_lgbm")
INTERVAL_DAYS = 30.0
N_INTERVALS = 12
MAX_PERSON_PERIODS = 2_000_000
_IBS_TIE = 5e-4  # IBS values closer than this tie (~1% of the IBS on sample data)
_EVAL_GRID = np.arange(0.0, 366.0, 5.0)
_SMALL_PREDICT_ROWS = 12_000  # person-period rows (1,000 customers) predicted on one thread
_MIN_DURATION = 0.01  # parametric likelihoods need t > 0; a churn on the cutoff day is ~0
_LEVEL_SHARE = 0.01  # category levels rarer than this in training share the all-zero "other"
# Features that count down with calendar time; each person-period row gets the value at the
# start of its interval, so the hazard model can place an annual renewal in the right month.
_CLOCKS = {"days_to_renewal": -1}


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


def _columns(frame: pd.DataFrame, names: list[str], dtype) -> np.ndarray:
    """FRAME[names] as a (rows, len(names)) array; column by column is 4x faster than
    frame[names] on the wide mixed-type frames seen in serving (one online call matters)."""
    if not names:
        return np.empty((len(frame), 0), dtype=dtype)
    return np.column_stack([frame[n].to_numpy(dtype=dtype) for n in names])


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
        x = _columns(frame, self.numeric_, np.float64)
        z = self._log(x)
        z = np.clip((np.where(np.isnan(z), self.median_, z) - self.mean_) / self.std_, -5.0, 5.0)
        parts = [z, np.isnan(x[:, self.flagged_]).astype(float)]
        for name, levels in self.levels_.items():
            values = frame[name].to_numpy(dtype=object)
            parts.append((values[:, None] == levels[None, :]).astype(float))
        return np.hstack(parts)


class _ParametricAFT:
    """lifelines Weibull or log-logistic AFT: log scale linear in the design, shape constant."""

    _SPEC = {"weibull_aft": (WeibullAFTFitter, "lambda_", "rho_"),
             "loglogistic_aft": (LogLogisticAFTFitter, "alpha_", "beta_")}

    def __init__(self, kind: str, penalizer: float = 0.01):
        self.kind, self.penalizer = kind, penalizer

    def fit(self, frame: pd.DataFrame, features, d: np.ndarray, e: np.ndarray) -> _ParametricAFT:
        fitter_cls, scale, shape = self._SPEC[self.kind]
        self.design_ = NumericDesign().fit(frame, features)
        data = pd.DataFrame(self.design_.transform(frame), columns=self.design_.columns_)
        data["_duration"], data["_event"] = np.maximum(d, _MIN_DURATION), e
        # ftol 1e-8 instead of lifelines' 1e-10 for Weibull: a third faster, and the curves
        # move by < 0.001 on sample data.
        fitter = fitter_cls(penalizer=self.penalizer)
        params = fitter.fit(data, "_duration", "_event", fit_options={"ftol": 1e-8}).params_
        self.coef_ = params.loc[scale].reindex(self.design_.columns_).to_numpy()
        self.intercept_ = float(params.loc[(scale, "Intercept")])
        self.shape_ = float(np.exp(params.loc[(shape, "Intercept")]))
        return self

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        return self.design_.transform(frame)

    def survival(self, rows: pd.DataFrame | np.ndarray, days: np.ndarray) -> np.ndarray:
        x = _encoded(self, rows, len(self.design_.columns_))
        scale = np.exp(x @ self.coef_ + self.intercept_)
        z = (days[None, :] / scale[:, None]) ** self.shape_
        return np.exp(-z) if self.kind == "weibull_aft" else 1.0 / (1.0 + z)


def _person_periods(d: np.ndarray, e: np.ndarray, rng: np.random.Generator):
    """Row index, interval, label and exposure weight of each person-period at risk.

    A row censored inside an interval counts that interval with its observed fraction as
    weight (actuarial exposure). Above MAX_PERSON_PERIODS, whole rows are subsampled.
    """
    starts = INTERVAL_DAYS * np.arange(N_INTERVALS)
    at_risk = (d[:, None] > starts) | (starts == 0)
    churn = at_risk & (e[:, None] == 1) & (d[:, None] <= starts + INTERVAL_DAYS)
    weight = np.where(churn, 1.0, np.clip((d[:, None] - starts) / INTERVAL_DAYS, 0.0, 1.0))
    keep = at_risk & (weight > 0)
    total = int(keep.sum())
    if total > MAX_PERSON_PERIODS:
        keep &= (rng.random(d.size) < MAX_PERSON_PERIODS / total)[:, None]
    rows, k = np.nonzero(keep)
    return rows, k, churn[rows, k].astype(float), weight[rows, k]


class _DiscreteHazard:
    """LightGBM of P(churn in interval k | customer at its start), one row per interval."""

    def __init__(self, seed: int):
        self.seed = seed

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        cols = [_columns(frame, self.numeric_, np.float32)]
        for name, levels in self.levels_.items():
            codes = levels.get_indexer(frame[name].to_numpy(dtype=object))
            cols.append(np.where(codes < 0, np.nan, codes).astype(np.float32)[:, None])
        return np.hstack(cols)

    def _expand(self, x: np.ndarray, rows: np.ndarray, k: np.ndarray) -> np.ndarray:
        xs = x[rows]
        for j, sign in self.clocks_:
            xs[:, j] += sign * INTERVAL_DAYS * k
        return np.hstack([xs, k[:, None].astype(np.float32)])

    def fit(self, frame: pd.DataFrame, features, d: np.ndarray, e: np.ndarray) -> _DiscreteHazard:
        rng = np.random.default_rng(self.seed)
        self.numeric_ = [f.name for f in features if f.kind == "numeric"]
        # Category codes fixed at fit; unseen or missing levels are LightGBM's missing value.
        self.levels_ = {f.name: pd.Index(frame[f.name].astype(object).dropna().unique())
                        for f in features if f.kind == "category"}
        self.clocks_ = [(j, _CLOCKS[n]) for j, n in enumerate(self.numeric_) if n in _CLOCKS]
        x = self.encode(frame)
        rows, k, y, w = _person_periods(d, e, rng)
        # Early stopping on 20% of customers held out of the training rows (not the
        # validation slice, which must stay unseen to compare the candidates fairly).
        ids = frame["customer_id"].to_numpy() if "customer_id" in frame else np.arange(len(d))
        # By position in the sorted ids: np.isin on string ids took 275 s for 480k rows.
        uniq, inverse = np.unique(ids, return_inverse=True)
        chosen = np.zeros(len(uniq), dtype=bool)
        chosen[rng.choice(len(uniq), size=max(1, len(uniq) // 5), replace=False)] = True
        held = chosen[inverse.ravel()][rows]
        cat = list(range(len(self.numeric_), len(self.numeric_) + len(self.levels_)))
        names = [*self.numeric_, *self.levels_, "interval"]
        sets = [lgb.Dataset(self._expand(x, rows[m], k[m]), y[m], weight=w[m], feature_name=names,
                            categorical_feature=cat) for m in (~held, held)]
        # One thread: person-period sets this size gain little from more, and OpenMP
        # spin-waits make a busy shared machine 5x slower (measured 3.5 s vs 16-22 s).
        params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15,
                  "min_data_in_leaf": 200, "feature_fraction": 0.8, "bagging_fraction": 0.8,
                  "bagging_freq": 1, "lambda_l2": 1.0, "seed": self.seed, "deterministic": True,
                  "num_threads": 1, "verbose": -1}
        self.booster_ = lgb.train(params, sets[0], num_boost_round=1000, valid_sets=[sets[1]],
                                  callbacks=[lgb.early_stopping(50, verbose=False)])
        return self

    def hazards(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Hazard of each row in each of the N_INTERVALS intervals, shape (rows, N_INTERVALS)."""
        x = _encoded(self, rows, len(self.numeric_) + len(self.levels_))
        rows = np.repeat(np.arange(len(x)), N_INTERVALS)
        k = np.tile(np.arange(N_INTERVALS), len(x))
        # One thread for an online page of rows: OpenMP start-up costs more than the trees
        # (measured 1.8 ms against 8 ms for 100 rows); LightGBM's default for batches
        # (10,000 rows: 30,000 rows/s on one thread, about twice that on two).
        threads = 1 if len(rows) < _SMALL_PREDICT_ROWS else 0
        h = self.booster_.predict(self._expand(x, rows, k), num_threads=threads)
        return np.clip(h.reshape(len(x), N_INTERVALS), 1e-6, 1 - 1e-6)

    def _log_curve(self, rows: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log S per interval: its change over each interval (the tail's last) and its
        value at each interval's start, both (rows, N_INTERVALS + 1)."""
        h = self.hazards(rows)
        step = np.log1p(-np.hstack([h, _tail_hazard(h)[:, None]]))
        start = np.hstack([np.zeros((len(h), 1)), np.cumsum(step[:, :-1], axis=1)])
        return step, start

    def survival(self, rows: pd.DataFrame | np.ndarray, days: np.ndarray) -> np.ndarray:
        return _interpolate(*self._log_curve(rows), days)

    def survival_and_area(self, rows: pd.DataFrame | np.ndarray, days: np.ndarray,
                          cap_days: float) -> tuple[np.ndarray, np.ndarray]:
        """S at DAYS and the exact area under S from 0 to CAP_DAYS, from one prediction.

        Within an interval S decays exponentially, so each interval's area is closed form:
        on a batch this replaced a (rows, 731) curve integrated on a 5-day grid, which cost
        twice the hazard model itself.
        """
        step, start = self._log_curve(rows)
        lengths = np.clip(cap_days - INTERVAL_DAYS * np.arange(N_INTERVALS + 1), 0.0, None)
        lengths[:-1] = np.minimum(lengths[:-1], INTERVAL_DAYS)
        rate = step / INTERVAL_DAYS  # log S per day, < 0 (hazards are clipped above 0)
        area = np.exp(start) * np.expm1(rate * lengths) / rate
        return _interpolate(step, start, days), area.sum(axis=1)


def _interpolate(step: np.ndarray, start: np.ndarray, days: np.ndarray) -> np.ndarray:
    """S at DAYS from log S per interval (`_DiscreteHazard._log_curve`)."""
    k = np.minimum(days // INTERVAL_DAYS, N_INTERVALS).astype(int)
    frac = (days - k * INTERVAL_DAYS) / INTERVAL_DAYS
    # exp(start + frac * step) in place: on a batch's grid the temporaries cost more than
    # the arithmetic.
    out = step[:, k]
    out *= frac[None, :]
    out += start[:, k]
    return np.exp(out, out=out)


def _encoded(candidate, rows: pd.DataFrame | np.ndarray, width: int) -> np.ndarray:
    """ROWS as CANDIDATE's input matrix: encoded here from a frame, or checked if given."""
    if not isinstance(rows, np.ndarray):
        return candidate.encode(rows)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(f"an encoded matrix needs shape (rows, {width}); got {rows.shape} "
                         "(build it with SurvivalModel.encode)")
    return rows


def _tail_hazard(h: np.ndarray) -> np.ndarray:
    """Constant hazard per interval after the last one: the mean over the fitted year.

    The last fitted interval alone can hold an annual contract's renewal spike (the model
    sees days to renewal), and repeating that every month would empty the curve; the
    geometric mean over a whole year counts one renewal per year. On sample data it also
    gave lower Brier scores at 450-720 days than the last interval's hazard.
    """
    return 1.0 - np.exp(np.log1p(-h).mean(axis=1))


def _make(name: str, seed: int):
    return _DiscreteHazard(seed) if name == "discrete_lgbm" else _ParametricAFT(name)


def _choose(scores: dict[str, dict[str, float]]) -> str:
    """Lowest IBS; among candidates within _IBS_TIE of it, highest concordance."""
    ibs = {n: s["ibs"] for n, s in scores.items() if np.isfinite(s["ibs"])}
    pool = [n for n in ibs if ibs[n] <= min(ibs.values()) + _IBS_TIE] if ibs else list(scores)
    return max(pool, key=lambda n: scores[n]["concordance"])


class SurvivalModel:
    """Probability of still being a customer t days after the cutoff, per row.

    features: the model inputs (`churnlens.features.queries.Feature`); seed: for LightGBM and
    subsampling; candidates: names from CANDIDATES to fit and compare.

    Learned attributes: ``scores_`` ({candidate: {"ibs", "concordance"}} on the validation
    slice), ``chosen_`` (the candidate kept) and ``model_`` (its fitted estimator).
    """

    def __init__(self, features: list[Feature], seed: int = 42,
                 candidates: Sequence[str] = ("weibull_aft", "discrete_lgbm")):
        self.features = features
        self.seed = seed
        self.candidates = candidates

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame) -> SurvivalModel:
        """Fit every candidate on TRAIN and keep the best on VALIDATION.

        Both frames need the feature columns, duration_days and event (1 churn observed,
        0 censored); censor TRAIN at the start of VALIDATION so that no later outcome leaks
        in. Raises ValueError for unknown candidates, missing columns, missing or negative
        durations, or a frame whose rows are all censored.
        """
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates:
            raise ValueError(f"unknown or no candidates {list(self.candidates)}; "
                             f"choose from {CANDIDATES}")
        for name, frame in (("train", train), ("validation", validation)):
            _check_features(frame, self.features, name)
        d, e = check_survival_target(train, "train")
        vd, ve = check_survival_target(validation, "validation")
        fitted, self.scores_ = {}, {}
        for name in self.candidates:
            fitted[name] = _make(name, self.seed).fit(train, self.features, d, e)
            surv = fitted[name].survival(validation, _EVAL_GRID)
            risk = -np.trapezoid(surv, _EVAL_GRID, axis=1)
            m = survival_metrics(vd, ve, surv, _EVAL_GRID, risk)
            self.scores_[name] = {"ibs": m["integrated_brier"], "concordance": m["concordance"]}
        self.chosen_ = _choose(self.scores_)
        self.model_ = fitted[self.chosen_]
        return self

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
            raise NotFittedError("SurvivalModel is not fitted yet; call fit(train, validation)")

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
        s = self.survival_function(frame, [30, 90, 180, 365])
        return pd.DataFrame(s, columns=["30", "90", "180", "365"], index=frame.index)

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
        if isinstance(self.model_, _DiscreteHazard):
            s, area = self.model_.survival_and_area(frame, t, cap_days)
        else:  # the parametric curves: the trapezoid rule on a 5-day grid
            grid = remaining_grid(cap_days)
            curve = self.model_.survival(frame, np.concatenate([t, grid]))
            s, area = curve[:, :t.size], np.trapezoid(curve[:, t.size:], grid, axis=1)
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


def remaining_grid(cap_days: float = 3650) -> np.ndarray:
    """Days 0, 5, ..., CAP_DAYS: the grid `expected_remaining_days` integrates S over.

    It holds 30, 90, 180 and 365, so one curve on it also gives `survival_at`'s columns.
    Raises ValueError when cap_days is not a positive finite number.
    """
    if not np.isfinite(cap_days) or cap_days <= 0:
        raise ValueError(f"cap_days must be a positive number of days, got {cap_days}")
    return np.linspace(0.0, cap_days, int(np.ceil(cap_days / 5.0)) + 1)
