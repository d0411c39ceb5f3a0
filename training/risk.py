"""The risk model: LightGBM's P(churn within the horizon), calibrated on a later slice.

Categorical features are handled natively by LightGBM: their levels are learned from the
training slice and stored, so serving encodes a category exactly as training did (an unseen
level becomes missing). Some features carry monotone constraints that encode domain
knowledge (see MONOTONE); they make the directional behaviour tests hold for every row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit

from churnlens.features.queries import Feature
from churnlens.settings import LightGBMSettings
from churnlens.training.calibration import METHODS, bounded, choose_calibrator, from_sklearn

if TYPE_CHECKING:
    from churnlens.training.shap_table import ShapTable

# Domain knowledge as LightGBM monotone constraints (+1: a higher value never lowers the
# risk; -1: a higher value never raises it), all else equal, so that the directional
# behaviour tests hold for every row. Usage counts and their 30-day trends fall as a
# customer disengages: unconstrained, on the 4,000-customer sample 81 of 4,819 test rows
# got a LOWER risk when their usage collapsed to zero (local wiggles of the trees), which a
# customer-success team reads as a bug. Unresolved tickets pile up as support fails a
# customer: the unconstrained model happened to be monotone there, the constraint makes it
# so for every retrain. Cost on that sample: none (test AUC 0.832 with them, 0.831 without).
# Reaching first value never raises the risk and reaching it later never lowers it:
# unconstrained, on a 4,000-customer sample 89 of 4,819 test rows had "first value took 1
# day" as a driver (a spurious split; the generator gives the day no effect of its own) and
# got the onboarding playbook; constrained, none did (test AUC 0.8257 without, 0.8251 with).
MONOTONE = {
    "tickets_open": 1,
    "tickets_high_open": 1,
    "reached_first_value": -1,
    "days_to_first_value": 1,
    "events_7d": -1,
    "events_30d": -1,
    "events_90d": -1,
    "active_days_7d": -1,
    "active_days_30d": -1,
    "active_days_90d": -1,
    "events_trend_30d": -1,
    "active_days_trend_30d": -1,
}

# Below this many rows one thread predicts far faster than two (STACK-NOTES: about 70x for
# one row), because starting the thread pool costs more than the work.
SMALL_BATCH_ROWS = 1000
LABEL = "churned"
TREE_SHAP = ("table", "lightgbm")


class RiskModel:
    """Calibrated LightGBM classifier of churn within the horizon, scikit-learn style.

    features: the model inputs (name, kind, group, label); params: LightGBM settings from
    params.yaml; seed: for bagging, column sampling and the calibration folds; num_threads:
    training threads, fixed so that a retrain is bit-identical (one thread trained fastest
    on tens of thousands of rows on the shared 2-core machine); calibration: "auto" (the
    lowest cross-fitted log loss, see churnlens.training.calibration) or "none", "platt",
    "isotonic" to force one.
    Learned: booster_, categories_ (levels per category feature), calibrator_,
    calibration_method_ ("none" | "platt" | "isotonic"), calibration_log_loss_
    (cross-fitted log loss per method tried), calibration_note_ (why a method was not
    tried, or ''), typical_ (the typical training row's value per feature, which driver
    sentences compare with), best_iteration_, seconds_ ({"boosting", "calibration"}).
    """

    def __init__(self, features: list[Feature], params: LightGBMSettings, seed: int = 42,
                 num_threads: int = 1, calibration: str = "auto"):
        self.features = features
        self.params = params
        self.seed = seed
        self.num_threads = num_threads
        self.calibration = calibration

    # How `contributions` computes TreeSHAP: "table" (ShapTable, exact and about 8x faster
    # than pred_contrib on shallow trees; trees it cannot tabulate fall back to pred_contrib)
    # or "lightgbm" (pred_contrib for every tree). A class attribute, so that models pickled
    # before it have it too.
    tree_shap = "table"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getstate__(self) -> dict:
        # The ShapTable is derived from the booster and rebuilt on first use (a fraction of a
        # second), so pickles hold only the booster and never depend on ShapTable's layout.
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_shap_table", "shap_table_seconds_", "shap_table_note_")}

    def __setstate__(self, state: dict) -> None:
        # A model pickled before churnlens.training.calibration holds scikit-learn's own
        # calibrator and no typical values: both are carried over, so that an older
        # champion still scores (the promotion gate scores it on the new test rows).
        self.__dict__.update(state)
        if "calibrator_" in state and not hasattr(state["calibrator_"], "method"):
            self.calibrator_ = from_sklearn(state["calibrator_"])
        self.__dict__.setdefault("typical_", {})

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame,
            calibration: pd.DataFrame, callbacks: Sequence[Callable] = ()) -> RiskModel:
        """Train on TRAIN, early-stop on VALIDATION, calibrate on CALIBRATION; returns self.

        Each frame needs the feature columns and a 0/1 `churned` label (calibration also
        `customer_id`, to keep a customer's rows in one calibration fold). callbacks: extra
        LightGBM callbacks, called once per boosting round (a progress bar). Raises
        ValueError on missing columns, missing labels or a slice with a single class.
        """
        for name, part in (("train", train), ("validation", validation),
                           ("calibration", calibration)):
            _check_labels(name, part)
        if "customer_id" not in calibration.columns:
            raise ValueError("calibration frame lacks customer_id (needed for its folds)")
        if self.calibration not in ("auto", *METHODS):
            raise ValueError(f"calibration={self.calibration!r} is unknown; use 'auto' or one "
                             f"of {list(METHODS)}")
        fewest = int(calibration[LABEL].value_counts().min())
        if fewest < 4:
            raise ValueError(f"calibration slice has only {fewest} rows of its rarer class; "
                             "2-fold cross-fitted calibration needs at least 4 of each: "
                             "use more calibration cutoffs or customers")
        started = time.perf_counter()
        self.categories_ = _learn_categories(train, self.features)
        dtrain = self._dataset(train)
        dvalid = self._dataset(validation, reference=dtrain)
        self.typical_ = _typical_values(train, self.features)
        booster = lgb.train(
            self._lgb_params(), dtrain, num_boost_round=self.params.n_estimators,
            valid_sets=[dvalid], valid_names=["validation"],
            callbacks=[lgb.early_stopping(self.params.early_stopping_rounds, verbose=False),
                       *callbacks],
        )
        self.best_iteration_ = int(booster.best_iteration or booster.num_trees())
        # Keep only the trees up to the best iteration: a smaller booster is faster TreeSHAP.
        self.booster_ = lgb.Booster(
            model_str=booster.model_to_string(num_iteration=self.best_iteration_))
        boosted = time.perf_counter()
        self._calibrate(calibration)
        self.seconds_ = {"boosting": boosted - started,
                         "calibration": time.perf_counter() - boosted}
        return self

    def _lgb_params(self) -> dict:
        p = self.params
        return {
            "objective": "binary", "metric": "binary_logloss",
            "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
            "max_depth": p.max_depth, "min_data_in_leaf": p.min_child_samples,
            "bagging_fraction": p.subsample, "bagging_freq": 1 if p.subsample < 1 else 0,
            "feature_fraction": p.colsample_bytree, "lambda_l2": p.reg_lambda,
            "monotone_constraints": [MONOTONE.get(f.name, 0) for f in self.features],
            "monotone_constraints_method": "advanced",
            "deterministic": True, "force_row_wise": True, "seed": self.seed,
            "num_threads": self.num_threads, "verbosity": -1,
        }

    def _dataset(self, frame: pd.DataFrame, reference: lgb.Dataset | None = None
                 ) -> lgb.Dataset:
        cats = [f.name for f in self.features if f.kind == "category"]
        return lgb.Dataset(self.prepare(frame), label=frame[LABEL].to_numpy(float),
                           categorical_feature=cats, reference=reference, free_raw_data=True)

    def _calibrate(self, calibration: pd.DataFrame) -> None:
        z = self.predict_logit(calibration)
        y = calibration[LABEL].to_numpy(int)
        self.calibrator_, self.calibration_log_loss_, self.calibration_note_ = (
            choose_calibrator(z, y, calibration["customer_id"], self.seed, self.calibration))
        self.calibration_method_ = self.calibrator_.method
        if self.calibration_method_ == "platt" and self.calibrator_.a_ <= 0:
            # A falling Platt curve would rank customers backwards (and break monotonicity).
            raise ValueError("calibration found higher model scores churning less often: the "
                             "model does not generalise to the calibration slice; check the "
                             "features and labels")

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model matrix for FRAME: feature columns in model order, index kept.

        Numeric features become float64; category features take the levels learned in fit
        (a level not seen in training becomes NaN, which LightGBM treats as missing).
        Raises ValueError naming missing feature columns or non-numeric numeric columns.
        """
        columns = self._encode(frame)
        for f in self.features:
            if f.kind == "category":
                codes = np.nan_to_num(columns[f.name], nan=-1).astype(int)
                columns[f.name] = pd.Categorical.from_codes(codes, self.categories_[f.name])
        return pd.DataFrame(columns, index=frame.index)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """FRAME as the float matrix the booster reads: (rows, features) in model order.

        A category is its code in the learned levels (what LightGBM computes itself from
        `prepare`'s frame); floats skip LightGBM's slower pandas path. Every predict method
        also takes this matrix instead of a frame, so a caller scoring the same rows twice
        (probability and contributions) or often (a server's snapshot) encodes them once.
        Raises ValueError as `prepare`.
        """
        columns = self._encode(frame)
        return np.column_stack([columns[n] for n in self.feature_names])

    def _matrix(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        if not isinstance(rows, np.ndarray):
            return self.encode(rows)
        if not hasattr(self, "booster_"):
            raise ValueError("RiskModel is not fitted: call fit before prepare or predict")
        if rows.ndim != 2 or rows.shape[1] != len(self.features):
            raise ValueError(f"an encoded matrix needs shape (rows, {len(self.features)}); got "
                             f"{rows.shape} (build it with RiskModel.encode)")
        return rows

    def _encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        if not hasattr(self, "categories_"):
            raise ValueError("RiskModel is not fitted: call fit before prepare or predict")
        missing = [n for n in self.feature_names if n not in frame.columns]
        if missing:
            raise ValueError(f"frame lacks {len(missing)} feature column(s): {missing}")
        out = {}
        for f in self.features:
            if f.kind == "category":
                out[f.name] = _category_codes(frame[f.name], self.categories_[f.name])
                continue
            try:
                out[f.name] = frame[f.name].to_numpy(dtype="float64", na_value=np.nan)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"feature {f.name} must be numeric, got dtype "
                                 f"{frame[f.name].dtype} ({exc})") from None
        return out

    def predict_logit(self, frame: pd.DataFrame | np.ndarray, num_threads: int | None = None
                      ) -> np.ndarray:
        """Uncalibrated churn log-odds per row (the scale of `contributions`).

        frame: feature rows, or their `encode`d matrix (as for every predict method).
        """
        matrix = self._matrix(frame)
        return self.booster_.predict(matrix, raw_score=True,
                                     num_threads=_threads(len(matrix), num_threads))

    def predict_raw(self, frame: pd.DataFrame | np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """Uncalibrated P(churn within the horizon) per row: LightGBM's own, `bounded`."""
        return bounded(expit(self.predict_logit(frame, num_threads)))

    def predict_proba(self, frame: pd.DataFrame | np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """Calibrated P(churn within the horizon) per row, as a 1-d float array.

        Always strictly inside (0, 1): `bounded` into [P_MIN, P_MAX] of
        churnlens.training.calibration. num_threads: LightGBM threads; None = one thread
        under SMALL_BATCH_ROWS rows, else LightGBM's default. Raises ValueError as `prepare`.
        """
        logit = self.predict_logit(frame, num_threads)  # first: it checks the model is fitted
        return bounded(self.calibrator_.predict(logit))

    def contributions(self, frame: pd.DataFrame | np.ndarray, num_threads: int | None = None
                      ) -> pd.DataFrame:
        """TreeSHAP contributions to the raw churn log-odds, one row per input row.

        Columns: the feature names and "bias"; each row sums to `predict_logit`. Index: the
        frame's (0..n-1 for a matrix). Exactly LightGBM's `pred_contrib` (to rounding), by
        the `shap_table` lookup unless `tree_shap` is "lightgbm". num_threads as in
        `predict_proba` (None: one thread on small batches, every core on large ones).
        Raises ValueError as `prepare`, or for an unknown `tree_shap`.
        """
        matrix = self._matrix(frame)
        if self.tree_shap not in TREE_SHAP:
            raise ValueError(f"tree_shap={self.tree_shap!r} is unknown; use one of {TREE_SHAP}")
        table = self.shap_table() if self.tree_shap == "table" else None
        if table is not None:
            values = table.contributions(matrix, num_threads=num_threads)
        else:
            values = self.booster_.predict(matrix, pred_contrib=True,
                                           num_threads=_threads(len(matrix), num_threads))
        index = frame.index if isinstance(frame, pd.DataFrame) else None
        return pd.DataFrame(values, index=index, columns=[*self.feature_names, "bias"])

    def shap_table(self) -> ShapTable | None:
        """The booster's ShapTable, built on the first call and kept (not pickled).

        None when the booster cannot be tabulated at all (ShapTable refuses it): then
        `shap_table_note_` says why and `contributions` uses pred_contrib. The build time is
        in `shap_table_seconds_`. Raises ValueError when the model is not fitted.
        """
        if "_shap_table" not in self.__dict__:
            if not hasattr(self, "booster_"):
                raise ValueError("RiskModel is not fitted: call fit before contributions")
            from churnlens.training.shap_table import ShapTable  # scipy.sparse: only when used

            started = time.perf_counter()
            try:
                table, note = ShapTable.from_booster(self.booster_), ""
            except (ValueError, RuntimeError, lgb.basic.LightGBMError) as exc:
                table, note = None, f"pred_contrib for every tree: {exc}"
            # Concurrent first calls may both build: the tables are equal, either is kept.
            self.shap_table_seconds_ = time.perf_counter() - started
            self.shap_table_note_ = note
            self._shap_table = table
        return self._shap_table


def _threads(n_rows: int, num_threads: int | None) -> int:
    if num_threads is not None:
        return num_threads
    return 1 if n_rows < SMALL_BATCH_ROWS else 0  # 0: LightGBM's (OpenMP's) default


def _check_labels(name: str, frame: pd.DataFrame) -> None:
    if LABEL not in frame.columns:
        raise ValueError(f"{name} frame lacks the label column {LABEL!r}")
    y = frame[LABEL]
    if y.isna().any():
        raise ValueError(f"{name} frame has {int(y.isna().sum())} rows without a churn label "
                         f"of {len(y)}; keep labelled rows only (training.split does)")
    if not y.isin((0, 1)).all():
        raise ValueError(f"{name} frame's {LABEL} must hold only 0 and 1")
    if y.nunique() < 2:
        raise ValueError(f"{name} frame holds a single class in all {len(y)} rows; it needs "
                         "churners and non-churners")


def _learn_categories(train: pd.DataFrame, features: list[Feature]) -> dict[str, list[str]]:
    cats = {}
    for f in features:
        if f.kind == "category":
            if f.name not in train.columns:
                raise ValueError(f"train frame lacks the category feature column {f.name!r}")
            cats[f.name] = sorted(train[f.name].dropna().astype(str).unique())
    return cats


def _typical_values(train: pd.DataFrame, features: list[Feature]
                    ) -> dict[str, float | str | None]:
    """The median of each numeric feature over TRAIN and the most frequent level of each
    category (ties: the first in sorted order); None where a feature is always missing."""
    typical: dict[str, float | str | None] = {}
    for f in features:
        column = train[f.name]
        if f.kind == "category":
            counts = column.dropna().astype(str).value_counts().sort_index()
            typical[f.name] = str(counts.idxmax()) if len(counts) else None
        else:
            values = column.to_numpy(dtype="float64", na_value=np.nan)
            known = values[~np.isnan(values)]
            typical[f.name] = float(np.median(known)) if known.size else None
    return typical


def _category_codes(col: pd.Series, levels: list[str]) -> np.ndarray:
    """Index of each value in LEVELS (compared as strings) as floats; NaN if missing or unseen."""
    position = {level: float(i) for i, level in enumerate(levels)}
    if isinstance(col.dtype, pd.CategoricalDtype):
        # Look up each category once, then spread by code; code -1 (missing) takes the
        # NaN appended at the end.
        lookup = [position.get(str(c), np.nan) for c in col.cat.categories] + [np.nan]
        return np.asarray(lookup)[col.cat.codes.to_numpy()]
    return np.array([np.nan if pd.isna(v) else position.get(str(v), np.nan)
                     for v in col.to_numpy(dtype=object)], dtype=float)
