"""Which LTV model a run keeps, measured on the run's own customers, and its baselines.

Contracts: the survival curve x revenue rate (`SurvivalRevenue`), checked at the latest
cutoff whose LTV window is observed. Purchase data (no contracts): BG/NBD + Gamma-Gamma
and a LightGBM Tweedie regression compete in a backtest that uses only what was known at
its test cutoff E, the latest cutoff whose LTV window is fully observed:

- LightGBM trains on the label windows that end by E (cutoff + horizon <= E), without the
  validation customers (a stable hash of the id), and stops early on those customers at
  V, the latest cutoff with V + horizon <= E;
- BG/NBD + Gamma-Gamma is fitted on the purchase histories of E's customers (of V's for
  the validation figures): it needs no label;
- the candidate with the higher Spearman on the validation customers is kept (within
  TIE, the smaller |total error|); both are reported on every customer at E, undiscounted
  like the realised revenue.

When no cutoff has a fully observed window of `ltv.horizon_days` (or none leaves enough
training windows before it), the backtest runs at the longest whole-month horizon at which
both candidates can be checked, and says so. The kept model is then fitted for the configured horizon with all observed
windows: BG/NBD extrapolates by design; LightGBM needs labels at that horizon, without them
BG/NBD is kept. `purchase_risk_baselines` adds BG/NBD's P(purchase) and P(alive) to the
risk table.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnlens.training.ltv import MONTH_DAYS
from churnlens.training.ltv_models import (
    PURCHASE_FEATURES,
    LtvCandidate,
    PurchaseProcess,
    RevenueRegressor,
    SurvivalRevenue,
)
from churnlens.training.metrics import classification_metrics, ltv_metrics
from churnlens.training.split import customer_hash

VALIDATION_SHARE = 0.2  # of customers, held out of LightGBM's training for the choice
MIN_TRAIN_ROWS, MIN_VALIDATION_ROWS = 200, 50
TIE = 0.005  # Spearman gap under which the smaller |total error| decides
BACKTEST_LABEL = "revenue_backtest"
PROBABILITY_FLOOR = 1e-4


@dataclass
class LtvChoice:
    """What `choose_ltv` did: the model kept (fitted for the configured horizon) and how
    it was measured: test metrics keyed test.<column>.<metric>, notes, and the kept
    model's test predictions with the realised revenue (ltv_pred, ltv_actual)."""

    model: LtvCandidate
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def summary(self) -> str:
        """One line: the model kept and its test Spearman beside BG/NBD's, when measured."""
        m = self.metrics
        line = f"{self.model.label} kept"
        if "test.ltv.spearman" in m:
            line += f"; test Spearman {m['test.ltv.spearman']:.4f}"
        if "test.bgnbd_gg.spearman" in m:
            line += f" (BG/NBD + Gamma-Gamma {m['test.bgnbd_gg.spearman']:.4f})"
        return line


def _days(months: int) -> int:
    return round(months * MONTH_DAYS)


def backtest_cutoffs(cutoffs, observed_until: pd.Timestamp | None, days: int,
                     labelled=None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(E, V) for a DAYS-long window: E the latest cutoff whose window is observed (in
    LABELLED when given, else ending by OBSERVED_UNTIL), V the latest with V + DAYS <= E."""
    span = pd.Timedelta(days=days)
    pool = sorted(pd.Timestamp(c) for c in (labelled if labelled is not None else
                  [c for c in cutoffs if pd.Timestamp(c) + span <= observed_until]))
    if not pool:
        return None
    test = pool[-1]
    earlier = [c for c in sorted(pd.Timestamp(c) for c in cutoffs) if c + span <= test]
    return (test, earlier[-1]) if earlier else None


def _observed(frame: pd.DataFrame, label: str) -> list[pd.Timestamp]:
    """Cutoffs at which every row has LABEL."""
    known = frame[label].notna().groupby(frame["cutoff"]).all()
    return list(known.index[known.to_numpy()])


def _scores(actual: pd.Series, predicted: np.ndarray) -> dict[str, float]:
    if not actual.sum() > 0:
        return {}
    return ltv_metrics(actual.to_numpy(dtype=float), predicted)


def _better(scores: dict[str, dict[str, float]]) -> str:
    """The candidate with the higher Spearman; within TIE, the smaller |total error|."""
    def spearman(name):
        value = scores[name].get("spearman", float("nan"))
        return value if np.isfinite(value) else -np.inf

    ranked = sorted(scores, key=spearman, reverse=True)
    if len(ranked) > 1 and spearman(ranked[0]) - spearman(ranked[1]) < TIE:
        return min(ranked[:2], key=lambda n: abs(scores[n].get("total_error_pct", np.inf)))
    return ranked[0]


def _backtest(frame: pd.DataFrame, features, params, label: str, days: int,
              cutoffs: tuple[pd.Timestamp, pd.Timestamp], held_out: pd.Series, seed: int):
    """Both candidates at one horizon: validation and test scores, test predictions."""
    test_cutoff, validation_cutoff = cutoffs
    test = frame[frame["cutoff"] == test_cutoff]
    at_v = frame["cutoff"] == validation_cutoff
    validation = frame[at_v & held_out]
    span = pd.Timedelta(days=days)
    train = frame[(frame["cutoff"] + span <= test_cutoff) & frame[label].notna() & ~held_out]
    predictions = {"bgnbd_gg": PurchaseProcess(days).fit(test).predict(
        test, annual_discount_rate=0.0)}
    chosen_on = {"bgnbd_gg": _scores(validation[label], PurchaseProcess(days).fit(
        frame[at_v]).predict(validation, annual_discount_rate=0.0))}
    notes = []
    if len(train) >= MIN_TRAIN_ROWS and len(validation) >= MIN_VALIDATION_ROWS:
        regressor = RevenueRegressor(features, params, days, target=label, seed=seed)
        regressor.fit(train, validation)
        predictions["lightgbm_ltv"] = regressor.predict(test, annual_discount_rate=0.0)
        chosen_on["lightgbm_ltv"] = _scores(validation[label], regressor.predict(
            validation, annual_discount_rate=0.0))
        notes.append(f"LTV backtest: LightGBM Tweedie trained on {len(train):,} rows whose "
                     f"{days}-day windows end by {test_cutoff.date()}, "
                     f"{regressor.best_iteration_} trees (early stopping on "
                     f"{len(validation):,} validation customers at {validation_cutoff.date()})")
    else:
        notes.append(f"LTV: LightGBM not a candidate: {len(train):,} training rows and "
                     f"{len(validation):,} validation customers with a {days}-day window "
                     f"before {test_cutoff.date()} (needs {MIN_TRAIN_ROWS} and "
                     f"{MIN_VALIDATION_ROWS})")
    tested = {name: _scores(test[label], p) for name, p in predictions.items()}
    return test, predictions, {k: v for k, v in chosen_on.items() if v}, tested, notes


def _final(kept: str, frame: pd.DataFrame, features, settings, held_out: pd.Series
           ) -> tuple[LtvCandidate, str]:
    """KEPT fitted for the configured horizon on everything observed; BG/NBD when LightGBM
    has no labels at that horizon. Returns the model and a note."""
    ltv = settings.ltv
    observed = _observed(frame, "revenue_ltv") if kept == "lightgbm_ltv" else []
    if observed:
        train = frame[frame["revenue_ltv"].notna() & ~held_out]
        validation = frame[(frame["cutoff"] == observed[-1]) & held_out]
        model = RevenueRegressor(features, settings.training.lightgbm, ltv.horizon_days,
                                 ltv.annual_discount_rate, seed=settings.training.seed)
        model.fit(train, validation)
        return model, (f"LTV served: LightGBM Tweedie refitted on every observed "
                       f"{ltv.horizon_days}-day window ({len(train):,} rows, "
                       f"{model.best_iteration_} trees)")
    model = PurchaseProcess(ltv.horizon_days, ltv.annual_discount_rate).fit(frame)
    why = ("" if kept == "bgnbd_gg" else f" (LightGBM did better in the backtest but no "
           f"{ltv.horizon_days}-day window is observed to train it on)")
    return model, (f"LTV served: BG/NBD + Gamma-Gamma fitted on the "
                   f"{int((frame['cutoff'] == model.cutoff_).sum()):,} customers at "
                   f"{model.cutoff_.date()}, for {ltv.horizon_days} days{why}")


def _horizon(frame: pd.DataFrame, days: int, observed_until, revenue_over,
             held_out: pd.Series):
    """(label, days, (E, V)) of the backtest, or None when no horizon can be checked.

    The configured horizon when both candidates can be measured at it, else the longest
    whole-month horizon at which they can (LightGBM needs MIN_TRAIN_ROWS training rows and
    MIN_VALIDATION_ROWS validation customers); failing both, the longest horizon at which
    BG/NBD alone can be checked.
    """
    cutoffs = sorted(frame["cutoff"].unique())
    plans = []
    configured = backtest_cutoffs(cutoffs, observed_until, days, _observed(frame, "revenue_ltv"))
    if configured is not None:
        plans.append(("revenue_ltv", days, configured))
    if revenue_over is not None and observed_until is not None:
        for months in range(max(1, round(days / MONTH_DAYS)) - 1, 0, -1):
            plan = backtest_cutoffs(cutoffs, observed_until, _days(months))
            if plan is not None:
                plans.append((BACKTEST_LABEL, _days(months), plan))

    def both_measurable(plan) -> bool:
        _, span, (test_cutoff, validation_cutoff) = plan
        train = (frame["cutoff"] + pd.Timedelta(days=span) <= test_cutoff) & ~held_out
        validation = (frame["cutoff"] == validation_cutoff) & held_out
        return train.sum() >= MIN_TRAIN_ROWS and validation.sum() >= MIN_VALIDATION_ROWS

    return next((p for p in plans if both_measurable(p)), plans[0] if plans else None)


def choose_ltv(frame: pd.DataFrame, features, survival, settings, *,
               purchase_data: bool, observed_until: pd.Timestamp | None = None,
               revenue_over=None) -> LtvChoice:
    """The run's LTV model for FRAME (a training frame with labels), and how it measured.

    survival: the fitted SurvivalModel (the contract default reads it); purchase_data:
    True for data without contracts (BG/NBD and LightGBM compete); observed_until: the end
    of the data; revenue_over: days -> revenue in [c, c + days) for FRAME's rows (NaN where
    not observed), used for a shorter backtest horizon. Returns an LtvChoice whose model
    has `backtest_` set to it. Raises the candidates' errors.
    """
    ltv = settings.ltv
    if not purchase_data or any(c not in frame.columns for c in PURCHASE_FEATURES):
        model = SurvivalRevenue(survival, ltv.horizon_days, ltv.annual_discount_rate).fit()
        choice = LtvChoice(model, *_survival_check(model, frame))
        model.backtest_ = choice
        return choice
    held_out = pd.Series(customer_hash(frame["customer_id"], settings.training.seed)
                         .to_numpy() < VALIDATION_SHARE, index=frame.index)
    plan = _horizon(frame, ltv.horizon_days, observed_until, revenue_over, held_out)
    if plan is None:
        model, note = _final("bgnbd_gg", frame, features, settings, held_out)
        choice = LtvChoice(model, notes=["LTV not checked: no cutoff leaves a backtest "
                                         "window of a month or more before the end of the "
                                         "data", note])
        model.backtest_ = choice
        return choice
    label, days, cutoffs = plan
    if label == BACKTEST_LABEL:
        frame = frame.assign(**{BACKTEST_LABEL: revenue_over(days)})
    test, predictions, validation, tested, notes = _backtest(
        frame, features, settings.training.lightgbm, label, days, cutoffs, held_out,
        settings.training.seed)
    better = _better(validation) if validation else "bgnbd_gg"
    model, served = _final(better, frame, features, settings, held_out)
    # The model column is the served model's backtest; the other candidates beside it.
    columns = {"ltv": tested[model.name], "bgnbd_gg": tested["bgnbd_gg"],
               **({} if model.name == "lightgbm_ltv" or "lightgbm_ltv" not in tested
                  else {"lightgbm_ltv": tested["lightgbm_ltv"]})}
    metrics = {f"test.{c}.{k}": float(v) for c, values in columns.items() for k, v in values.items()}
    notes += _choice_notes(better, validation, cutoffs, test, days, ltv.horizon_days)
    choice = LtvChoice(model, metrics, [*notes, served],
                       {"ltv_actual": test[label].to_numpy(dtype=float),
                        "ltv_pred": predictions[model.name]}, validation)
    model.backtest_ = choice
    return choice


def _choice_notes(better: str, validation: dict, cutoffs, test: pd.DataFrame, days: int,
                  configured: int) -> list[str]:
    test_cutoff, validation_cutoff = cutoffs
    figures = ", ".join(f"{n} {s['spearman']:.4f} (total error {s['total_error_pct']:+.1f}%)"
                        for n, s in validation.items())
    notes = [f"LTV better: {better}; validation Spearman at {validation_cutoff.date()}: {figures} "
             f"(higher Spearman wins; within {TIE}, the smaller |total error|)",
             f"LTV checked at cutoff {test_cutoff.date()} on all {len(test):,} customers with "
             f"history, undiscounted like the realised revenue, by models fitted only on what "
             f"was known then"]
    if days != configured:
        notes.append(f"LTV backtested at {days} days ({round(days / MONTH_DAYS)} months): no "
                     f"cutoff lets a {configured}-day window be checked; the LTV table's "
                     f"figures are for {days} days, the served model predicts {configured}")
    return notes


def _survival_check(model: SurvivalRevenue, frame: pd.DataFrame):
    """Metrics, notes, arrays of the survival x rate LTV at the latest observed cutoff."""
    observed = _observed(frame, "revenue_ltv") if "revenue_ltv" in frame else []
    if not observed:
        return {}, ["LTV not evaluated: no cutoff has a fully observed LTV window"], {}
    rows = frame[frame["cutoff"] == observed[-1]]
    actual = rows["revenue_ltv"].to_numpy(dtype=float)
    predicted = model.predict(rows, annual_discount_rate=0.0)
    known = ~np.isnan(predicted)
    if not known.any() or not actual[known].sum() > 0:
        return {}, ["LTV not evaluated: the source holds no revenue (MRR or paid payments) "
                    f"at cutoff {observed[-1].date()}"], {}
    metrics = {f"test.ltv.{k}": float(v) for k, v in
               _scores(rows["revenue_ltv"][known], predicted[known]).items()}
    note = (f"LTV checked against realised revenue at cutoff {observed[-1].date()} "
            f"({int(known.sum()):,} customers), the latest with a fully observed LTV window, "
            "undiscounted like the realised revenue; that cutoff lies inside the training "
            "period, so this check is optimistic")
    return metrics, [note], {"ltv_actual": actual[known], "ltv_pred": predicted[known]}


def fit_ltv(frame: pd.DataFrame, features, survival, settings, ds=None) -> LtvChoice:
    """`choose_ltv` for a training run on DS (the loaded `DataSet`; None: no backtest at a
    shorter horizon). Purchase data: DS's shape is transactions (without DS: the features
    hold the purchase process and no MRR). Returns the LtvChoice with its time taken."""
    started = time.perf_counter()
    names = {f.name for f in features}
    purchase_data = (ds.shape == "transactions" if ds is not None
                     else "mrr" not in names and set(PURCHASE_FEATURES) <= names)
    choice = choose_ltv(frame, features, survival, settings, purchase_data=purchase_data,
                        observed_until=None if ds is None else ds.observed_until,
                        revenue_over=None if ds is None else _revenue_from(ds, settings, frame))
    choice.seconds = time.perf_counter() - started
    return choice


def _revenue_from(ds, settings, frame: pd.DataFrame):
    """days -> each FRAME row's revenue in [c, c + days) from DS, as the labels count it
    (`churnlens.features.labels.build_labels`); NaN where that window is not observed."""
    def revenue_over(days: int) -> np.ndarray:
        from churnlens.features.labels import build_labels
        from churnlens.features.relations import drop
        from churnlens.features.shapes import resolve_churn
        from churnlens.features.spine import build_churn_events

        con, churn = ds.con, resolve_churn(settings.churn, ds)
        keys = frame[["customer_id", "cutoff"]].drop_duplicates()
        name = f"ltv_backtest_keys_{secrets.token_hex(6)}"
        con.register(name, keys)
        labels = None
        try:
            labels = build_labels(con, con.table(name), build_churn_events(con, churn),
                                  churn=churn, horizon_days=settings.horizon_days,
                                  ltv_horizon_days=days, observed_until=ds.observed_until)
            got = labels.project("customer_id, cutoff, revenue_ltv").df()
        finally:
            drop(con, labels)
            con.unregister(name)
        got["customer_id"] = got["customer_id"].astype(str)
        got["cutoff"] = got["cutoff"].astype(frame["cutoff"].dtype)
        merged = frame[["customer_id", "cutoff"]].astype({"customer_id": str}).merge(
            got, on=["customer_id", "cutoff"], how="left")
        return merged["revenue_ltv"].to_numpy(dtype=float)
    return revenue_over


def ltv_evaluation(model, frame: pd.DataFrame):
    """(metrics, notes, arrays) of MODEL's LTV: those of the run's choice when the model
    was fitted in this process, else the survival x rate check on FRAME."""
    choice = getattr(model.ltv_model, "backtest_", None)
    if choice is not None:
        return choice.metrics, choice.notes, choice.arrays
    return _survival_check(SurvivalRevenue(model.survival, model.ltv.horizon_days).fit(), frame)


def purchase_risk_baselines(model, test: pd.DataFrame) -> dict[str, float]:
    """BG/NBD's churn scores on the risk test rows: 1 - P(purchase within the horizon)
    (column bgnbd) and 1 - P(alive) (bgnbd_alive), BG/NBD fitted on each test cutoff's
    customers; empty unless the model's LTV is a purchase model."""
    if not getattr(model.ltv_model, "for_purchases", False):
        return {}
    p_buy, alive = np.empty(len(test)), np.empty(len(test))
    for cutoff in test["cutoff"].unique():
        at = (test["cutoff"] == cutoff).to_numpy()
        rows = test[at]
        fitted = PurchaseProcess(model.ltv.horizon_days).fit(rows)
        p_buy[at] = fitted.p_purchase_within(rows, model.horizon_days)
        alive[at] = fitted.p_alive(rows)
    y = test["churned"].astype(int).to_numpy()
    out = {}
    for column, score in (("bgnbd", 1 - p_buy), ("bgnbd_alive", 1 - alive)):
        # Clipped as the risk model's probabilities are: P(alive) is exactly 1 for every
        # customer without a repeat purchase, whose log loss would otherwise be infinite.
        clipped = np.clip(score, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        out |= {f"test.{column}.{k}": float(v)
                for k, v in classification_metrics(y, clipped).items()}
    return out
