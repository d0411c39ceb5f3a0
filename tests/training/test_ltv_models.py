"""LTV candidates: the common estimator checks, the purchase summary read from features, the
LightGBM balance and discounting, and the choice on the transactions sample."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from churnlens.features.loading import load_source
from churnlens.features.queries import Feature
from churnlens.features.sample import transactions
from churnlens.settings import LightGBMSettings, Settings
from churnlens.training.ltv import MONTH_DAYS
from churnlens.training.ltv_models import (
    PurchaseProcess,
    RevenueRegressor,
    SurvivalRevenue,
    discount_factor,
    purchase_summary,
)
from churnlens.training.rfm import rfm_summary, simulate_bgnbd, simulate_gamma_gamma

FEATURES = [Feature("repeat_purchases", "numeric", "revenue", "repeats"),
            Feature("days_since_first_purchase", "numeric", "revenue", "age"),
            Feature("days_since_last_purchase", "numeric", "revenue", "recency"),
            Feature("order_value_mean", "numeric", "revenue", "spend"),
            Feature("channel", "category", "account", "channel")]
PARAMS = LightGBMSettings(n_estimators=200, early_stopping_rounds=20)


def purchase_rows(n: int, seed: int, cutoff: str = "2025-01-01",
                  horizon: int = 365) -> pd.DataFrame:
    """Feature rows of BG/NBD + Gamma-Gamma customers, with their revenue over HORIZON days
    and whether they bought nothing in it (churned)."""
    ages = np.random.default_rng(seed).uniform(30, 700, n).round()
    bg = simulate_bgnbd(n, r=0.3, alpha=40.0, a=0.7, b=3.0, T=ages, horizon=horizon, seed=seed)
    bg["recency"] = bg["recency"].round().clip(upper=bg["T"])
    bg.loc[bg["frequency"] == 0, "recency"] = 0.0
    spend = simulate_gamma_gamma(bg["frequency"], p=4.0, q=3.0, v=50.0, seed=seed)
    first = bg["T"] + 1
    return pd.DataFrame({
        "customer_id": [f"c{seed}-{i}" for i in range(n)],
        "cutoff": pd.Timestamp(cutoff),
        "repeat_purchases": bg["frequency"].astype(float),
        "days_since_first_purchase": first,
        "days_since_last_purchase": first - bg["recency"],
        "order_value_mean": spend["monetary_value"].fillna(spend["mean_spend"]),
        "channel": pd.Categorical(np.where(np.arange(n) % 3 == 0, "ads", "organic")),
        "revenue_ltv": bg["future"] * spend["mean_spend"],
        "churned": (bg["future"] == 0).astype(float),
    })


class FlatSurvival:
    """A fitted survival model stand-in: every customer stays for sure."""

    chosen_ = "flat"

    def survival_function(self, frame, days):
        return np.ones((len(frame), len(days)))


def candidates() -> dict:
    return {
        "survival_x_rate": lambda: SurvivalRevenue(FlatSurvival(), 365, 0.1),
        "bgnbd_gg": lambda: PurchaseProcess(365, 0.1),
        "lightgbm_ltv": lambda: RevenueRegressor(FEATURES, PARAMS, 365, 0.1, seed=3),
    }


@pytest.fixture(scope="module")
def frames():
    train = purchase_rows(1500, seed=1)
    train["paid_amount_90d"] = train["order_value_mean"]
    validation = purchase_rows(400, seed=2)
    validation["paid_amount_90d"] = validation["order_value_mean"]
    return train, validation


@pytest.mark.parametrize("name", list(candidates()))
def test_every_candidate_behaves_as_an_estimator(name, frames):
    train, validation = frames
    make = candidates()[name]
    with pytest.raises(NotFittedError, match="not fitted"):
        make().predict(validation)
    model = make()
    assert model.fit(train, validation) is model
    predicted = model.predict(validation)
    assert predicted.shape == (len(validation),)
    assert np.isfinite(predicted).all() and (predicted >= 0).all() and predicted.sum() > 0
    # Undiscounted is more, and a pickled model predicts the same.
    assert (model.predict(validation, annual_discount_rate=0.0) >= predicted).all()
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(validation), predicted)
    np.testing.assert_array_equal(make().fit(train, validation).predict(validation), predicted)
    with pytest.raises(ValueError, match=r"annual_discount_rate must be in \[0, 1\)"):
        model.predict(validation, annual_discount_rate=1.0)


def test_candidates_reject_bad_settings_and_missing_columns(frames):
    train, validation = frames
    with pytest.raises(ValueError, match="horizon_days must be >= 1"):
        PurchaseProcess(0)
    with pytest.raises(ValueError, match=r"variance_power must lie in \(1, 2\)"):
        RevenueRegressor(FEATURES, PARAMS, variance_power=2.0)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['order_value_mean'\]"):
        PurchaseProcess().fit(train.drop(columns="order_value_mean"))
    with pytest.raises(ValueError, match="needs validation rows for early stopping"):
        RevenueRegressor(FEATURES, PARAMS).fit(train)
    unlabelled = validation.assign(revenue_ltv=np.nan)
    with pytest.raises(ValueError, match="validation rows hold no revenue_ltv"):
        RevenueRegressor(FEATURES, PARAMS).fit(train, unlabelled)
    with pytest.raises(ValueError, match="appear twice at one cutoff"):
        PurchaseProcess().fit(pd.concat([train, train]))
    with pytest.raises(NotFittedError, match="needs a fitted SurvivalModel"):
        SurvivalRevenue(object()).fit()


def test_purchase_model_fits_the_latest_cutoff_only(frames):
    train, validation = frames
    older = purchase_rows(300, seed=5, cutoff="2024-01-01").assign(repeat_purchases=0.0)
    model = PurchaseProcess().fit(pd.concat([older, train]))
    assert model.cutoff_ == pd.Timestamp("2025-01-01")
    assert model.bgnbd_.n_customers_ == len(train)
    alone = PurchaseProcess().fit(train)
    np.testing.assert_allclose(model.predict(validation), alone.predict(validation))
    buy = model.p_purchase_within(validation, 90)
    alive = model.p_alive(validation)
    assert ((buy >= 0) & (buy <= alive) & (alive <= 1)).all()


def test_bgnbd_risk_baselines_only_for_purchase_models():
    from churnlens.settings import LtvSettings
    from churnlens.training.ltv_selection import purchase_risk_baselines

    test = pd.concat([purchase_rows(1500, seed=7, horizon=90),
                      purchase_rows(1500, seed=8, cutoff="2025-02-01", horizon=90)],
                     ignore_index=True)

    class Bundle:  # the parts of a ChurnModel the baselines read
        horizon_days, ltv = 90, LtvSettings()
        ltv_model = PurchaseProcess()

    got = purchase_risk_baselines(Bundle(), test)
    assert {k.split(".")[1] for k in got} == {"bgnbd", "bgnbd_alive"}
    # On its own simulated customers, BG/NBD ranks who buys again well, and P(purchase)
    # (which knows the horizon) better than P(alive).
    assert got["test.bgnbd.roc_auc"] > 0.75
    assert got["test.bgnbd.roc_auc"] > got["test.bgnbd_alive.roc_auc"]
    assert np.isfinite(got["test.bgnbd_alive.log_loss"])
    Bundle.ltv_model = SurvivalRevenue(FlatSurvival())
    assert purchase_risk_baselines(Bundle(), test) == {}


def test_survival_x_rate_is_the_revenue_rate_times_the_months(frames):
    _, validation = frames
    model = SurvivalRevenue(FlatSurvival(), 365, 0.1).fit()
    np.testing.assert_allclose(model.predict(validation, annual_discount_rate=0.0),
                               validation["paid_amount_90d"] / 3 * 12)
    curve = np.full((len(validation), 12), 0.5)
    np.testing.assert_allclose(model.predict(validation, monthly_survival=curve),
                               model.predict(validation) / 2)


def test_regressor_adds_up_to_the_training_revenue_and_discounts_evenly(frames):
    train, validation = frames
    model = RevenueRegressor(FEATURES, PARAMS, 365, 0.1, seed=3).fit(train, validation)
    undiscounted = model.predict(train, annual_discount_rate=0.0)
    assert undiscounted.sum() == pytest.approx(train["revenue_ltv"].clip(lower=0).sum(), rel=1e-6)
    assert model.balance_ > 1  # Tweedie with p > 1 falls short before the rescaling
    # With several cutoffs the predictions add up at the latest one.
    older = validation.assign(cutoff=pd.Timestamp("2024-06-01"), revenue_ltv=0.0)
    both = pd.concat([older, train], ignore_index=True)
    latest = RevenueRegressor(FEATURES, PARAMS, 365, 0.1, seed=3).fit(both, validation)
    assert latest.predict(train, annual_discount_rate=0.0).sum() == pytest.approx(
        train["revenue_ltv"].clip(lower=0).sum(), rel=1e-6)
    np.testing.assert_allclose(model.predict(train), undiscounted * discount_factor(365, 0.1))
    months = np.arange(12) + 0.5
    assert discount_factor(365, 0.1) == pytest.approx(np.mean(1.1 ** (-months * MONTH_DAYS
                                                                      / 365.25)))
    unseen = validation.assign(channel="never seen", repeat_purchases=np.nan)
    assert np.isfinite(model.predict(unseen)).all()


def test_purchase_summary_counts_as_rfm_summary():
    tables = transactions.generate(500, seed=11)
    tables.pop("truth")
    ds = load_source(tables, None, horizon_days=90, activity="purchases")
    from churnlens.features.build import build_snapshot

    cutoff = pd.Timestamp("2026-03-01")
    rows = build_snapshot(ds, cutoff, Settings()).frame.set_index("customer_id")
    paid = tables["payments"][tables["payments"]["status"] == "paid"]
    want = rfm_summary(paid, cutoff)
    got = purchase_summary(rows).loc[want.index]
    assert len(want) > 300
    pd.testing.assert_frame_equal(got[["frequency", "recency", "T"]],
                                  want[["frequency", "recency", "T"]].astype(float),
                                  check_names=False)
    # The mean order value counts the first purchase too; with repeats it is a mean of all.
    repeat = want["frequency"] > 0
    assert np.isnan(got.loc[~repeat, "monetary_value"]).all()
    assert (got.loc[repeat, "monetary_value"] > 0).all()


@pytest.fixture(scope="module")
def transactions_choice():
    """The LTV choice of a run on 4,000 sample customers without contracts, seed 3."""
    from churnlens.features.build import build_training_set
    from churnlens.training.ltv_selection import fit_ltv

    tables = transactions.generate(4000, seed=3)
    tables.pop("truth")
    settings = Settings()
    ds = load_source(tables, None, horizon_days=settings.horizon_days,
                     activity=settings.churn.activity)
    ff = build_training_set(ds, settings)
    return ff, fit_ltv(ff.frame, ff.features, None, settings, ds), ds


@pytest.mark.slow
def test_transactions_keep_the_better_candidate_and_beat_bgnbd(transactions_choice):
    ff, choice, _ = transactions_choice
    kept = choice.model.name
    scores = choice.validation
    assert set(scores) == {"bgnbd_gg", "lightgbm_ltv"}
    assert scores[kept]["spearman"] >= scores["bgnbd_gg"]["spearman"]
    m = choice.metrics
    print(f"LTV test: {kept} Spearman {m['test.ltv.spearman']:.4f}, total error "
          f"{m['test.ltv.total_error_pct']:+.1f}%; BG/NBD + GG {m['test.bgnbd_gg.spearman']:.4f}, "
          f"{m['test.bgnbd_gg.total_error_pct']:+.1f}%")
    assert m["test.ltv.spearman"] >= m["test.bgnbd_gg.spearman"] + 0.03
    assert abs(m["test.ltv.total_error_pct"]) <= 10
    # The served model predicts from the features of the latest cutoff alone.
    latest = ff.frame[ff.frame["cutoff"] == ff.frame["cutoff"].max()]
    served = choice.model.predict(latest[[f.name for f in ff.features]])
    assert np.isfinite(served).all() and (served >= 0).all()
    assert any("LTV better: lightgbm_ltv" in n for n in choice.notes)


@pytest.mark.slow
def test_a_horizon_longer_than_the_data_is_backtested_shorter(transactions_choice):
    from churnlens.training.ltv_selection import _revenue_from, fit_ltv

    ff, _, ds = transactions_choice
    settings = Settings(ltv={"horizon_days": 1460})
    # The backtest labels are the training labels at another horizon.
    labelled = ff.frame["revenue_ltv"].notna().to_numpy()
    again = _revenue_from(ds, settings, ff.frame)(365)
    np.testing.assert_allclose(again[labelled], ff.frame["revenue_ltv"].to_numpy()[labelled])
    assert np.isnan(again[~labelled]).all()
    # No 4-year window in 3.5 years of data: as the labels of such a run would be.
    frame = ff.frame.assign(revenue_ltv=np.nan)
    choice = fit_ltv(frame, ff.features, None, settings, ds)
    backtest = next(n for n in choice.notes if n.startswith("LTV backtested at"))
    days, months = int(backtest.split()[3]), int(backtest.split()[5].strip("("))
    assert days < 1460 and days == round(months * MONTH_DAYS)  # whole months
    assert "the served model predicts 1460" in backtest
    # Both candidates were measured; only BG/NBD can be fitted for 1460 days.
    assert set(choice.validation) == {"bgnbd_gg", "lightgbm_ltv"}
    assert choice.model.name == "bgnbd_gg" and choice.model.horizon_days == 1460
    assert choice.metrics["test.ltv.spearman"] == choice.metrics["test.bgnbd_gg.spearman"]
    assert "test.lightgbm_ltv.spearman" in choice.metrics
    short = PurchaseProcess(days).fit(frame).predict(frame.tail(200))
    assert (choice.model.predict(frame.tail(200)) > short).all()


def test_contract_data_keep_survival_x_rate_and_say_what_was_checked(frames):
    from churnlens.training.ltv_selection import choose_ltv

    train, _ = frames
    early = train.assign(cutoff=pd.Timestamp("2024-12-01"))
    frame = pd.concat([early, train.assign(revenue_ltv=np.nan)], ignore_index=True)
    choice = choose_ltv(frame, FEATURES, FlatSurvival(), Settings(), purchase_data=False)
    assert choice.model.name == "survival_x_rate" and choice.model.backtest_ is choice
    assert set(choice.metrics) == {f"test.ltv.{k}" for k in
                                   ("normalized_gini", "spearman", "decile_mape",
                                    "total_error_pct")}
    assert "2024-12-01" in choice.notes[0] and "optimistic" in choice.notes[0]
    assert len(choice.arrays["ltv_pred"]) == len(train)
    # A source without revenue columns: the LTV is unknown, not an error.
    bare = frame.drop(columns=["paid_amount_90d"])
    none = choose_ltv(bare, FEATURES, FlatSurvival(), Settings(), purchase_data=False)
    assert none.metrics == {} and none.notes[0].startswith("LTV not evaluated: the source")
    assert np.isnan(none.model.predict(bare)).all()
