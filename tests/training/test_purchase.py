"""BG/NBD and Gamma-Gamma: recovery of simulated parameters, Monte Carlo checks, laws, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import approx_fprime
from sklearn.exceptions import NotFittedError

from churnlens.training.purchase import BetaGeo, GammaGamma, expected_revenue
from churnlens.training.rfm import rfm_summary, simulate_bgnbd, simulate_gamma_gamma

# The published CDNOW estimates (Fader, Hardie and Lee 2005): realistic parameters to simulate.
CDNOW = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
SPEND = {"p": 6.25, "q": 3.74, "v": 15.44}


def simulate(n: int, seed: int, params=None, horizon: float = 0.0) -> pd.DataFrame:
    ages = np.random.default_rng(seed + 100).uniform(26.0, 39.0, n)
    return simulate_bgnbd(n, **(params or CDNOW), T=ages, horizon=horizon, seed=seed)


def with_params(**params) -> BetaGeo:
    """A BG/NBD with the given parameters, as if fitted (for laws over the parameter space)."""
    model = BetaGeo()
    for name, value in params.items():
        setattr(model, f"{name}_", value)
    return model


def rfm(frame: pd.DataFrame):
    return frame["frequency"], frame["recency"], frame["T"]


@pytest.fixture(scope="module")
def fitted() -> BetaGeo:
    return BetaGeo().fit(*rfm(simulate(20_000, seed=7)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bgnbd_recovers_simulated_parameters(seed):
    model = BetaGeo().fit(*rfm(simulate(20_000, seed)))
    # Within 4 standard errors (from the observed information); the bounds on the relative
    # standard errors are what 20,000 CDNOW-like customers give (about 2, 3, 8, 10 %; the
    # spread of the estimates over seeds agrees), so a broken information matrix cannot
    # widen the check.
    for name, truth in CDNOW.items():
        estimate, se = getattr(model, f"{name}_"), model.params_se_[name]
        assert abs(estimate - truth) < 4 * se, (name, estimate, se)
    relative = {name: model.params_se_[name] / getattr(model, f"{name}_") for name in CDNOW}
    assert relative["r"] < 0.03 and relative["alpha"] < 0.05
    assert relative["a"] < 0.15 and relative["b"] < 0.2
    assert model.converged_


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gamma_gamma_recovers_simulated_parameters(seed):
    x = np.random.default_rng(seed).integers(1, 12, 5_000)
    spend = simulate_gamma_gamma(x, **SPEND, seed=seed)
    model = GammaGamma().fit(x, spend["monetary_value"])
    # 4 standard errors; 5,000 repeat buyers give relative errors of about 13, 3 and 15 %
    # (the spread of the estimates over seeds agrees), bounded so they cannot balloon.
    bounds = {"p": 0.2, "q": 0.05, "v": 0.25}
    for name, truth in SPEND.items():
        estimate, se = getattr(model, f"{name}_"), model.params_se_[name]
        assert abs(estimate - truth) < 4 * se, (name, estimate, se)
        assert se / estimate < bounds[name]


def binned_difference(predicted, realised, groups) -> list[tuple[float, float]]:
    """Per group: mean of realised - predicted and its standard error."""
    out = []
    for group in np.unique(groups):
        diff = (np.asarray(realised, float) - predicted)[groups == group]
        out.append((diff.mean(), diff.std(ddof=1) / np.sqrt(diff.size)))
    return out


def history_groups(frame: pd.DataFrame) -> np.ndarray:
    """Groups by repeat purchases (0, 1, 2-3, 4+) and by how recent the last one was."""
    x_group = np.digitize(frame["frequency"], [1, 2, 4])
    late = (frame["recency"] > frame["T"] / 2).to_numpy()
    return x_group * 2 + late


@pytest.mark.parametrize("t", [4.0, 39.0, 150.0])
def test_predictions_match_monte_carlo_of_the_fitted_process(fitted, t):
    # Conditional expectations average to the realised outcome within any group of
    # histories (iterated expectations), so each group's mean gap is within 4 s.e. of 0.
    sim = simulate_bgnbd(60_000, **fitted.params_, T=np.random.default_rng(3).uniform(
        1.0, 60.0, 60_000), horizon=t, seed=11)
    groups = history_groups(sim)
    checks = {
        "expected_purchases": (fitted.expected_purchases(t, *rfm(sim)), sim["future"]),
        "p_purchase_within": (fitted.p_purchase_within(t, *rfm(sim)), sim["future"] > 0),
        "p_alive": (fitted.p_alive(*rfm(sim)), sim["alive"]),
    }
    for name, (predicted, realised) in checks.items():
        for mean, se in binned_difference(predicted, realised, groups):
            assert abs(mean) < 4 * se + 1e-12, (name, mean, se)


def test_expected_purchases_new_matches_monte_carlo(fitted):
    t = np.array([10.0, 52.0])
    for horizon, expected in zip(t, fitted.expected_purchases_new(t), strict=True):
        sim = simulate_bgnbd(100_000, **fitted.params_, T=0.0, horizon=horizon, seed=5)
        se = sim["future"].std() / np.sqrt(len(sim))
        assert abs(sim["future"].mean() - expected) < 4 * se


def test_expected_spend_matches_monte_carlo():
    x = np.random.default_rng(4).integers(1, 20, 50_000)
    spend = simulate_gamma_gamma(x, **SPEND, seed=4)
    model = GammaGamma()
    model.p_, model.q_, model.v_ = SPEND["p"], SPEND["q"], SPEND["v"]
    predicted = model.expected_spend(x, spend["monetary_value"])
    for mean, se in binned_difference(predicted, spend["mean_spend"], np.digitize(x, [2, 4, 8])):
        assert abs(mean) < 4 * se
    population = model.expected_spend([0], [np.nan])[0]
    assert population == pytest.approx(SPEND["p"] * SPEND["v"] / (SPEND["q"] - 1))


@pytest.mark.parametrize("a", [0.793, 3.0, 0.3, 1.0, 1.00005])
def test_closed_form_matches_quadrature_over_a_wide_range(a):
    # Heavy buyers and long horizons overflow the textbook hyp2f1 form; the transformed one
    # must agree with direct integration there and near a = 1, where it is 0 / 0.
    model = with_params(r=0.243, alpha=4.414, a=a, b=0.5 if a == 0.3 else 2.426)
    x, T, t = (g.ravel() for g in np.meshgrid([0.0, 1, 5, 100, 2000], [1.0, 39, 500],
                                              [0.01, 1, 39, 1e3, 1e5]))
    closed = model._purchases_if_alive(t, x, T)
    direct = [model._integral_if_alive(t_i / (model.alpha_ + T_i), x_i)
              for t_i, x_i, T_i in zip(t, x, T, strict=True)]
    np.testing.assert_allclose(closed, direct, rtol=1e-5)


def test_p_alive_is_one_without_repeat_purchases_and_drops_after_a_purchase(fitted):
    assert np.all(fitted.p_alive([0, 0, 0], [0, 0, 0], [0.0, 10.0, 1e4]) == 1.0)
    # Just after a purchase (t_x = T) only the dropout at that purchase can have happened.
    x = np.array([1.0, 5.0])
    expected = (fitted.b_ + x - 1) / (fitted.a_ + fitted.b_ + x - 1)
    np.testing.assert_allclose(fitted.p_alive(x, [20.0, 20.0], [20.0, 20.0]), expected)


params = st.fixed_dictionaries({"r": st.floats(0.05, 5), "alpha": st.floats(0.1, 50),
                                "a": st.floats(0.05, 5), "b": st.floats(0.05, 10)})


@settings(max_examples=60, deadline=None)
@given(params=params, x=st.integers(1, 200), T=st.floats(1.0, 500.0),
       recency=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
       t=st.lists(st.floats(0.0, 1000.0), min_size=2, max_size=2))
def test_monotone_laws(params, x, T, recency, t):
    model = with_params(**params)
    t_x = np.sort(recency) * T
    later = model.p_alive([x, x], t_x, [T, T])
    assert later[1] >= later[0] - 1e-12  # a more recent purchase never lowers P(alive)
    expected = model.expected_purchases(np.sort(t), x, t_x[0], T)
    buy = model.p_purchase_within(np.sort(t), x, t_x[0], T)
    assert np.all(np.diff(expected) >= -1e-9) and np.all(np.diff(buy) >= -1e-12)
    assert np.all(buy <= later[0] + 1e-12)  # buying needs being alive
    assert np.all(expected >= buy - 1e-9)  # E[Y] >= P(Y >= 1) for a count Y


@settings(max_examples=40, deadline=None)
@given(x=st.integers(1, 50), m=st.lists(st.floats(0.01, 1e4), min_size=2, max_size=2))
def test_expected_spend_rises_with_mean_spend(x, m):
    model = GammaGamma()
    model.p_, model.q_, model.v_ = SPEND["p"], SPEND["q"], SPEND["v"]
    low, high = model.expected_spend([x, x], np.sort(m))
    assert high >= low


def test_gradients_are_analytic_derivatives():
    sim = simulate(400, seed=3)
    x, t_x, T = (sim[c].to_numpy() for c in ("frequency", "recency", "T"))
    at = np.array([0.3, 5.0, 0.8, 2.0])
    grad = BetaGeo._loglik_and_grad(at, x, t_x, T)[1].sum(axis=0)
    numeric = approx_fprime(at, lambda p: BetaGeo._loglik_and_grad(p, x, t_x, T)[0].sum(), 1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4)


def test_unfitted_models_raise():
    with pytest.raises(NotFittedError, match="BetaGeo is not fitted yet; call fit first"):
        BetaGeo().p_alive([1], [1.0], [2.0])
    with pytest.raises(NotFittedError, match="GammaGamma is not fitted yet"):
        GammaGamma().expected_spend([1], [10.0])
    with pytest.raises(NotFittedError, match="BetaGeo is not fitted"):
        _ = BetaGeo().params_


def test_fit_returns_self_is_deterministic_and_pickles():
    sim = simulate(3_000, seed=9)
    model = BetaGeo()
    assert model.fit(*rfm(sim)) is model
    again = BetaGeo().fit(*rfm(sim))
    assert again.params_ == model.params_
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.expected_purchases(10, *rfm(sim)),
                                  model.expected_purchases(10, *rfm(sim)))
    gg = GammaGamma()
    x = sim.loc[sim["frequency"] > 0, "frequency"]
    m = simulate_gamma_gamma(x, **SPEND)["monetary_value"]
    assert gg.fit(x, m) is gg and GammaGamma().fit(x, m).params_ == gg.params_


@pytest.mark.parametrize(("x", "t_x", "T", "message"), [
    ([1, 2], [3.0, 1.0], [2.0, 2.0], r"1 customer\(s\) have a recency t_x outside \[0, T\] \(positions \[0\]\)"),
    ([-1], [0.0], [2.0], "frequency x that is not a whole number >= 0"),
    ([1.5], [1.0], [2.0], "not a whole number"),
    ([0], [1.0], [2.0], "x = 0 repeat purchases but recency t_x != 0"),
    ([1], [np.nan], [2.0], "t_x holds 1 missing or infinite value"),
    ([1, 2], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], "x, t_x and T have lengths 2, 3, 3"),
    ([], [], [], "x is empty"),
])
def test_bgnbd_rejects_bad_input(x, t_x, T, message):
    with pytest.raises(ValueError, match=message):
        BetaGeo().fit(x, t_x, T)


def test_gamma_gamma_and_predictions_reject_bad_input(fitted):
    with pytest.raises(ValueError, match=r"1 customer\(s\) have x < 1 repeat purchases"):
        GammaGamma().fit([0, 2], [5.0, 5.0])
    with pytest.raises(ValueError, match="mean repeat spend m <= 0"):
        GammaGamma().fit([1, 2], [5.0, -1.0])
    with pytest.raises(ValueError, match="x and m have lengths 2 and 1"):
        GammaGamma().fit([1, 2], [5.0])
    with pytest.raises(ValueError, match="t must be >= 0"):
        fitted.expected_purchases(-1.0, [1], [1.0], [2.0])


def test_expected_revenue_telescopes_and_discounts(fitted):
    sim = simulate(2_000, seed=12)
    summary = sim[["frequency", "recency", "T"]].assign(monetary_value=np.where(
        sim["frequency"] > 0, 20.0, np.nan))
    summary.attrs["unit_days"] = 7.0
    gg = GammaGamma()
    gg.p_, gg.q_, gg.v_ = SPEND["p"], SPEND["q"], SPEND["v"]
    undiscounted = expected_revenue(fitted, gg, summary, 365, 0.0)
    # Without discounting the monthly pieces add up to the whole horizon's purchases.
    whole = fitted.expected_purchases(365 / 7, *rfm(summary)) * gg.expected_spend(
        summary["frequency"], summary["monetary_value"].fillna(1.0))
    np.testing.assert_allclose(undiscounted, whole, rtol=1e-9)
    discounted = expected_revenue(fitted, gg, summary, 365, 0.1)
    assert np.all(discounted < undiscounted) and np.all(discounted > undiscounted / 1.1)


def test_expected_revenue_does_not_depend_on_the_time_unit():
    sim = simulate(5_000, seed=13)
    weeks = BetaGeo().fit(*rfm(sim))
    days = BetaGeo().fit(sim["frequency"], sim["recency"] * 7, sim["T"] * 7)
    assert days.alpha_ == pytest.approx(7 * weeks.alpha_, rel=1e-3)
    gg = GammaGamma()
    gg.p_, gg.q_, gg.v_ = SPEND["p"], SPEND["q"], SPEND["v"]
    summary = sim[["frequency", "recency", "T"]].assign(monetary_value=30.0)
    in_days = summary.assign(recency=summary["recency"] * 7, T=summary["T"] * 7)
    np.testing.assert_allclose(expected_revenue(weeks, gg, summary, 180, 0.1, unit_days=7),
                               expected_revenue(days, gg, in_days, 180, 0.1, unit_days=1),
                               rtol=1e-3)


def test_expected_revenue_rejects_bad_arguments(fitted):
    gg = GammaGamma()
    gg.p_, gg.q_, gg.v_ = SPEND["p"], SPEND["q"], SPEND["v"]
    summary = pd.DataFrame({"frequency": [1], "recency": [1.0], "T": [2.0],
                            "monetary_value": [5.0]})
    with pytest.raises(ValueError, match=r"rfm lacks column\(s\) \['monetary_value'\]"):
        expected_revenue(fitted, gg, summary.drop(columns="monetary_value"), 90, 0.1, 1)
    with pytest.raises(ValueError, match="rfm.attrs has no 'unit_days'; pass unit_days="):
        expected_revenue(fitted, gg, summary, 90, 0.1)
    with pytest.raises(ValueError, match="horizon_days must be positive, got 0"):
        expected_revenue(fitted, gg, summary, 0, 0.1, 1)
    with pytest.raises(ValueError, match=r"annual_discount_rate must be in \[0, 1\), got 1.5"):
        expected_revenue(fitted, gg, summary, 90, 1.5, 1)


CDNOW_FILE = os.environ.get("CHURNLENS_CDNOW")


@pytest.mark.skipif(not CDNOW_FILE or not Path(CDNOW_FILE).exists(),
                    reason="set CHURNLENS_CDNOW to the CDNOW summary (x, t_x, T, zbar), e.g. "
                           "lifetimes/datasets/cdnow_customers_summary_with_transactions.csv")
def test_cdnow_reproduces_the_published_estimates():
    cdnow = pd.read_csv(CDNOW_FILE)
    model = BetaGeo().fit(cdnow["x"], cdnow["t_x"], cdnow["T"])
    for name, published in CDNOW.items():  # published to 3 decimals
        assert getattr(model, f"{name}_") == pytest.approx(published, abs=2e-3)
    repeat = cdnow[cdnow["x"] > 0]
    gg = GammaGamma().fit(repeat["x"], repeat["zbar"])
    for name, published in SPEND.items():
        assert getattr(gg, f"{name}_") == pytest.approx(published, abs=1e-2)


def purchase_log() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": ["A", "A", "A", "A", "A", "B", "C"],
        "occurred_at": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 15:00", "2026-01-05 00:00",
                                       "2026-01-11 08:00", "2026-01-20 00:00", "2026-01-14 23:00",
                                       "2026-02-01 00:00"]),
        "amount": [10.0, 5.0, 20.0, 30.0, 99.0, 7.0, 3.0],
    })


def test_rfm_summary_follows_the_documented_conventions():
    summary = rfm_summary(purchase_log(), "2026-01-15")
    # A: days 1, 5 and 11 (two purchases on day 1 merged; day 20 is after the cutoff);
    # the last observed day is the 14th. B bought once; C only after the cutoff.
    assert list(summary.index) == ["A", "B"]
    assert summary.loc["A", ["frequency", "recency", "T"]].tolist() == [2, 10.0, 13.0]
    assert summary.loc["A", "monetary_value"] == 25.0  # (20 + 30) / 2: the first is no repeat
    assert summary.loc["B", ["frequency", "recency", "T"]].tolist() == [0, 0.0, 0.0]
    assert np.isnan(summary.loc["B", "monetary_value"])
    weeks = rfm_summary(purchase_log(), "2026-01-15", unit="W")
    assert weeks.loc["A", "T"] == pytest.approx(13 / 7) and weeks.attrs["unit_days"] == 7.0


def test_rfm_summary_reads_offsets_as_utc():
    log = purchase_log().assign(occurred_at=lambda f: f["occurred_at"].dt.tz_localize("UTC"))
    log.loc[5, "occurred_at"] = pd.Timestamp("2026-01-15 01:00", tz="Etc/GMT-2")  # 23:00 UTC
    summary = rfm_summary(log, pd.Timestamp("2026-01-15", tz="UTC"))
    assert summary.loc["B", "T"] == 0.0 and list(summary.index) == ["A", "B"]


@settings(max_examples=40, deadline=None)
@given(late=st.lists(st.tuples(st.sampled_from(["A", "B", "C", "D"]), st.integers(0, 400),
                               st.floats(-50, 500)), max_size=6))
def test_rfm_summary_ignores_records_at_or_after_the_cutoff(late):
    cutoff = pd.Timestamp("2026-01-15")
    extra = pd.DataFrame({"customer_id": [c for c, _, _ in late],
                          "occurred_at": [cutoff + pd.Timedelta(hours=h) for _, h, _ in late],
                          "amount": [a for _, _, a in late]})
    log = pd.concat([purchase_log(), extra], ignore_index=True) if late else purchase_log()
    pd.testing.assert_frame_equal(rfm_summary(log, cutoff), rfm_summary(purchase_log(), cutoff))


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="amount"), r"purchases lack column\(s\) \['amount'\]"),
    (lambda f: f.assign(customer_id=[None] + ["A"] * 6),
     "column 'customer_id' is empty in 1 row"),
    (lambda f: f.assign(occurred_at=["yesterday"] * 7), "column 'occurred_at' does not parse"),
    (lambda f: f.assign(amount=[np.inf] + [1.0] * 6), "column 'amount' holds 1 infinite value"),
])
@pytest.mark.filterwarnings("ignore:Could not infer format")  # pandas, on the unparseable case
def test_rfm_summary_rejects_bad_logs(change, message):
    with pytest.raises(ValueError, match=message):
        rfm_summary(change(purchase_log()), "2026-01-15")
    with pytest.raises(ValueError, match=r"unit must be one of \['D', 'W'\], got 'M'"):
        rfm_summary(purchase_log(), "2026-01-15", unit="M")


def test_bad_settings_are_rejected_and_non_convergence_warns():
    sim = simulate(500, seed=1)
    with pytest.raises(ValueError, match="penalizer must be >= 0 and max_iter a whole number"):
        BetaGeo(penalizer=-1.0).fit(*rfm(sim))
    with pytest.warns(RuntimeWarning, match="BetaGeo.fit did not converge"):
        model = BetaGeo(max_iter=1).fit(*rfm(sim))
    assert not model.converged_
