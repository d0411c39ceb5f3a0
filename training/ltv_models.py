"""LTV candidates: expected discounted revenue over the LTV horizon, behind one small base.

Every candidate is fitted on feature rows (`fit(train, validation=None) -> self`) and
predicts from feature rows alone (`predict(rows)`), so scoring needs nothing but the
features the risk model reads:

- `SurvivalRevenue`: the survival curve times the revenue rate (`churnlens.training.ltv`),
  the default where there are contracts;
- `PurchaseProcess`: BG/NBD purchases times Gamma-Gamma spend
  (`churnlens.training.purchase`), its recency-frequency summary read from the purchase
  features (`purchase_summary`);
- `RevenueRegressor`: LightGBM regression (Tweedie) of the realised revenue label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.settings import LightGBMSettings
from churnlens.training.fitted import not_fitted
from churnlens.training.ltv import expected_ltv, monthly_grid, monthly_revenue
from churnlens.training.purchase import BetaGeo, GammaGamma, expected_revenue

PURCHASE_FEATURES = ("repeat_purchases", "days_since_first_purchase",
                     "days_since_last_purchase", "order_value_mean")
SMALL_BATCH_ROWS = 1000  # below this one LightGBM thread predicts faster than two
BALANCE_ROWS = 100  # fewest rows at the latest training cutoff to rescale predictions to


def _require(rows: pd.DataFrame, columns, who: str) -> None:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"{who}: rows lack column(s) {missing}; build them with "
                         "churnlens.features.build (the source needs paid payments)")


def purchase_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """The BG/NBD summary of each feature row, in days, as `rfm_summary` counts it.

    frequency = repeat_purchases; recency = days_since_first_purchase -
    days_since_last_purchase; T = days_since_first_purchase - 1 (the last observed day is
    the day before the cutoff); monetary_value = order_value_mean where frequency > 0
    (NaN otherwise). Unlike `rfm_summary`, the mean order value counts the first purchase
    too: the features do not keep it apart. A row without a purchase is summarised as a
    customer whose first purchase is at the cutoff (all zeros). Returns a frame on ROWS'
    index with attrs["unit_days"] = 1. Raises ValueError naming missing columns.
    """
    _require(rows, PURCHASE_FEATURES, "purchase_summary")
    first = rows["days_since_first_purchase"].to_numpy(dtype=float)
    bought = ~np.isnan(first)
    first = np.where(bought, first, 1.0)
    last = np.where(bought, rows["days_since_last_purchase"].to_numpy(dtype=float), 1.0)
    x = np.where(bought, rows["repeat_purchases"].to_numpy(dtype=float), 0.0)
    recency = np.where(x > 0, np.round(first - last), 0.0)
    age = np.maximum(np.round(first) - 1.0, recency)
    spend = np.where(x > 0, rows["order_value_mean"].to_numpy(dtype=float), np.nan)
    out = pd.DataFrame({"frequency": x, "recency": recency, "T": age, "monetary_value": spend},
                       index=rows.index)
    out.attrs["unit_days"] = 1.0
    return out


def _codes(column: pd.Series, levels: list[str]) -> np.ndarray:
    """Index of each value among LEVELS (compared as strings), NaN if missing or unseen."""
    position = {level: float(i) for i, level in enumerate(levels)}
    if isinstance(column.dtype, pd.CategoricalDtype):  # look each category up once
        lookup = [position.get(str(c), np.nan) for c in column.cat.categories] + [np.nan]
        return np.asarray(lookup)[column.cat.codes.to_numpy()]
    return np.array([np.nan if pd.isna(v) else position.get(str(v), np.nan)
                     for v in column.to_numpy(dtype=object)], dtype=float)


def discount_factor(horizon_days: int, annual_discount_rate: float) -> float:
    """Mean discount of revenue spread evenly over the horizon's months (mid-month)."""
    grid = monthly_grid(horizon_days)
    return float(np.mean((1.0 + annual_discount_rate) ** (-grid / 365.25)))


class LtvCandidate:
    """Shared machinery: the horizon, the discount rate, the not-fitted path.

    horizon_days: the LTV horizon predicted; annual_discount_rate: in [0, 1). Subclasses
    implement `fit` and `_predict(rows, rate, monthly_survival)`.
    """

    name = "candidate"
    label = "LTV candidate"
    for_purchases = False  # a model of purchase data (no contracts)

    def __init__(self, horizon_days: int = 365, annual_discount_rate: float = 0.10):
        if horizon_days < 1 or not 0 <= annual_discount_rate < 1:
            raise ValueError(f"{type(self).__name__}: horizon_days must be >= 1 and "
                             f"annual_discount_rate in [0, 1), got {horizon_days} and "
                             f"{annual_discount_rate}")
        self.horizon_days = horizon_days
        self.annual_discount_rate = annual_discount_rate

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> LtvCandidate:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise not_fitted(f"{type(self).__name__} is not fitted yet; call fit first")

    def predict(self, rows: pd.DataFrame, *, annual_discount_rate: float | None = None,
                monthly_survival: np.ndarray | None = None) -> np.ndarray:
        """Expected revenue over the horizon per row, discounted (finite, >= 0 where known).

        annual_discount_rate: None = the candidate's own (0 compares with realised revenue,
        which is not discounted); monthly_survival: the survival curve at
        `monthly_grid(horizon_days)` when the caller has it (only `SurvivalRevenue` reads
        it). Raises NotFittedError before `fit`, ValueError for missing feature columns.
        """
        self._check_fitted()
        rate = self.annual_discount_rate if annual_discount_rate is None else annual_discount_rate
        if not 0 <= rate < 1:
            raise ValueError(f"annual_discount_rate must be in [0, 1), got {rate}")
        return self._predict(rows, rate, monthly_survival)

    def _predict(self, rows, rate, monthly_survival) -> np.ndarray:
        raise NotImplementedError

    def __getstate__(self) -> dict:
        # What a training run learned about the candidate (its backtest arrays) stays out
        # of the pickled model.
        return {k: v for k, v in self.__dict__.items() if k != "backtest_"}


class SurvivalRevenue(LtvCandidate):
    """Survival curve x revenue rate (mrr, else paid_amount_90d / 3), month by month.

    survival: a fitted `churnlens.training.survival.SurvivalModel`; `fit` checks nothing
    more is needed (the survival model is fitted on its own slice).
    """

    name = "survival_x_rate"
    label = "survival curve x revenue rate"

    def __init__(self, survival, horizon_days: int = 365, annual_discount_rate: float = 0.10):
        super().__init__(horizon_days, annual_discount_rate)
        self.survival = survival

    def fit(self, train=None, validation=None) -> SurvivalRevenue:
        """Returns self; raises NotFittedError when the survival model is not fitted."""
        if getattr(self.survival, "chosen_", None) is None:
            raise not_fitted("SurvivalRevenue needs a fitted SurvivalModel; fit it first")
        self.fitted_ = True
        return self

    def _predict(self, rows, rate, monthly_survival) -> np.ndarray:
        curve = (self.survival.survival_function(rows, monthly_grid(self.horizon_days))
                 if monthly_survival is None else monthly_survival)
        return expected_ltv(curve, monthly_revenue(rows), self.horizon_days, rate)


class PurchaseProcess(LtvCandidate):
    """BG/NBD expected purchases x Gamma-Gamma expected spend (Fader, Hardie and Lee 2005).

    Fitted on one row per customer: the rows of TRAIN's latest cutoff. penalizer: as
    `BetaGeo`. Learned: bgnbd_, spend_ (the fitted models), cutoff_ (the cutoff fitted on).
    """

    name = "bgnbd_gg"
    label = "BG/NBD + Gamma-Gamma"
    for_purchases = True

    def __init__(self, horizon_days: int = 365, annual_discount_rate: float = 0.10,
                 penalizer: float = 0.0):
        super().__init__(horizon_days, annual_discount_rate)
        self.penalizer = penalizer

    def fit(self, train: pd.DataFrame, validation=None) -> PurchaseProcess:
        """Fit on TRAIN's rows at its latest cutoff (all rows when it has no cutoff column).

        Returns self. Raises ValueError for missing columns, a customer twice at that
        cutoff, no customer with a repeat purchase, or a Gamma-Gamma fit with an infinite
        population mean spend (q <= 1).
        """
        rows = train
        if "cutoff" in train.columns:
            self.cutoff_ = train["cutoff"].max()
            rows = train[train["cutoff"] == self.cutoff_]
        if "customer_id" in rows.columns and rows["customer_id"].duplicated().any():
            raise ValueError(f"PurchaseProcess.fit: {int(rows['customer_id'].duplicated().sum())}"
                             " customer(s) appear twice at one cutoff; BG/NBD needs one row "
                             "per customer")
        summary = purchase_summary(rows)
        summary = summary[~rows["days_since_first_purchase"].isna().to_numpy()]
        repeat = (summary["frequency"] > 0) & (summary["monetary_value"] > 0)
        if not repeat.any():
            raise ValueError(f"PurchaseProcess.fit: none of {len(summary)} customers has a "
                             "repeat purchase; Gamma-Gamma spend cannot be fitted")
        self.bgnbd_ = BetaGeo(self.penalizer).fit(summary["frequency"], summary["recency"],
                                                  summary["T"])
        self.spend_ = GammaGamma(self.penalizer).fit(summary.loc[repeat, "frequency"],
                                                     summary.loc[repeat, "monetary_value"])
        if self.spend_.q_ <= 1:
            raise ValueError(f"PurchaseProcess.fit: Gamma-Gamma q = {self.spend_.q_:.3g} <= 1 "
                             "makes the mean spend of a new customer infinite; set a penalizer")
        self.fitted_ = True
        return self

    def _summary(self, rows: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        summary = purchase_summary(rows)
        # A refund can leave a mean order value <= 0; Gamma-Gamma then falls back on the
        # population mean, as for a customer without repeat purchases.
        bad = ~(summary["monetary_value"] > 0) & (summary["frequency"] > 0)
        summary.loc[bad, "monetary_value"] = self.spend_.p_ * self.spend_.v_ / (self.spend_.q_ - 1)
        return summary

    def _predict(self, rows, rate, monthly_survival) -> np.ndarray:
        return expected_revenue(self.bgnbd_, self.spend_, self._summary(rows),
                                self.horizon_days, rate)

    def p_alive(self, rows: pd.DataFrame) -> np.ndarray:
        """BG/NBD's P(still alive at the cutoff) per row (1 without repeat purchases)."""
        s = self._summary(rows)
        return self.bgnbd_.p_alive(s["frequency"], s["recency"], s["T"])

    def p_purchase_within(self, rows: pd.DataFrame, days: float) -> np.ndarray:
        """BG/NBD's P(at least one purchase in the DAYS after the cutoff) per row."""
        s = self._summary(rows)
        return self.bgnbd_.p_purchase_within(days, s["frequency"], s["recency"], s["T"])


class RevenueRegressor(LtvCandidate):
    """LightGBM regression of the realised revenue over the horizon (Tweedie, log link).

    features: the model inputs; params: LightGBM settings (rounds, leaves, rate, early
    stopping); variance_power: Tweedie's p in (1, 2); target: the label column (revenue in
    [c, c + horizon_days)). Learned: booster_, categories_, balance_, best_iteration_.
    """

    name = "lightgbm_ltv"
    label = "LightGBM Tweedie"
    for_purchases = True

    def __init__(self, features: list[Feature], params: LightGBMSettings,
                 horizon_days: int = 365, annual_discount_rate: float = 0.10, *,
                 variance_power: float = 1.3, target: str = "revenue_ltv", seed: int = 42):
        super().__init__(horizon_days, annual_discount_rate)
        if not 1 < variance_power < 2:
            raise ValueError(f"variance_power must lie in (1, 2), got {variance_power}")
        self.features, self.params = features, params
        self.variance_power, self.target, self.seed = variance_power, target, seed

    def _labelled(self, frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, np.ndarray]:
        _require(frame, [self.target, *(f.name for f in self.features)], "RevenueRegressor")
        rows = frame[frame[self.target].notna()]
        if rows.empty:
            raise ValueError(f"RevenueRegressor.fit: the {name} rows hold no {self.target} "
                             f"(of {len(frame)} rows); it needs a fully observed window")
        # Tweedie needs y >= 0: a window whose refunds exceed its purchases counts as 0.
        return rows, rows[self.target].to_numpy(dtype=float).clip(min=0.0)

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None
            ) -> RevenueRegressor:
        """Train on TRAIN's labelled rows, early-stopped on VALIDATION's; returns self.

        Raises ValueError when either has no labelled row, or names missing columns.
        """
        import lightgbm as lgb

        if validation is None:
            raise ValueError("RevenueRegressor.fit needs validation rows for early stopping")
        rows, y = self._labelled(train, "train")
        val_rows, val_y = self._labelled(validation, "validation")
        self.categories_ = {f.name: sorted(rows[f.name].dropna().astype(str).unique())
                            for f in self.features if f.kind == "category"}
        cats = [i for i, f in enumerate(self.features) if f.kind == "category"]
        dtrain = lgb.Dataset(self.encode(rows), y, categorical_feature=cats, free_raw_data=False)
        dvalid = lgb.Dataset(self.encode(val_rows), val_y, reference=dtrain)
        booster = lgb.train(self._lgb_params(), dtrain, num_boost_round=self.params.n_estimators,
                            valid_sets=[dvalid], callbacks=[lgb.early_stopping(
                                self.params.early_stopping_rounds, verbose=False)])
        self.best_iteration_ = int(booster.best_iteration or booster.num_trees())
        self.booster_ = lgb.Booster(
            model_str=booster.model_to_string(num_iteration=self.best_iteration_))
        self.balance_ = self._balance(rows, y, self.booster_.predict(dtrain.get_data(),
                                                                     num_threads=1))
        self.fitted_ = True
        return self

    @staticmethod
    def _balance(rows: pd.DataFrame, y: np.ndarray, fitted: np.ndarray) -> float:
        """The factor that makes the predictions add up to the latest training window.

        Tweedie's score weights each row by mu ** (1 - p), so for p > 1 the predictions do
        not add up to the training revenue (they fall short where revenue is heavy). They
        are rescaled to the revenue of the rows at the latest training cutoff (all rows
        when it holds fewer than BALANCE_ROWS): its customers are the closest in mix (older,
        on average) to those the model will predict for, one window later.
        """
        latest = np.ones(len(rows), dtype=bool)
        if "cutoff" in rows.columns:
            at_last = (rows["cutoff"] == rows["cutoff"].max()).to_numpy()
            latest = at_last if at_last.sum() >= BALANCE_ROWS else latest
        total = fitted[latest].sum()
        return float(y[latest].sum() / total) if total > 0 else 1.0

    def _lgb_params(self) -> dict:
        p = self.params
        return {"objective": "tweedie", "tweedie_variance_power": self.variance_power,
                "metric": "tweedie", "learning_rate": p.learning_rate,
                "num_leaves": p.num_leaves, "max_depth": p.max_depth,
                "min_data_in_leaf": p.min_child_samples, "bagging_fraction": p.subsample,
                "bagging_freq": 1 if p.subsample < 1 else 0,
                "feature_fraction": p.colsample_bytree, "lambda_l2": p.reg_lambda,
                "seed": self.seed, "deterministic": True, "force_row_wise": True,
                "num_threads": 1, "verbose": -1}

    def encode(self, rows: pd.DataFrame) -> np.ndarray:
        """ROWS as the booster's float matrix; a category is its index among the levels
        learned in fit (unseen or missing: NaN). Raises ValueError for missing columns."""
        if not hasattr(self, "categories_"):
            raise not_fitted("RevenueRegressor is not fitted yet; call fit first")
        _require(rows, [f.name for f in self.features], "RevenueRegressor")
        columns = []
        for f in self.features:
            if f.kind == "category":
                columns.append(_codes(rows[f.name], self.categories_[f.name]))
            else:
                columns.append(rows[f.name].to_numpy(dtype=float, na_value=np.nan))
        return np.column_stack(columns) if columns else np.empty((len(rows), 0))

    def _predict(self, rows, rate, monthly_survival) -> np.ndarray:
        matrix = self.encode(rows)
        threads = 1 if len(matrix) < SMALL_BATCH_ROWS else 0
        revenue = self.booster_.predict(matrix, num_threads=threads) * self.balance_
        return revenue * discount_factor(self.horizon_days, rate)
