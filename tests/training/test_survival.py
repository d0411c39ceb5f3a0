"""The survival model: known curves recovered from simulated censored Weibull data, the laws
every curve obeys, input checks, and skill on the sample data (out of time)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from churnlens.features.queries import Feature
from churnlens.training import hazard
from churnlens.training.metrics import kaplan_meier_baseline, survival_metrics
from churnlens.training.survival import SurvivalModel

X = [Feature("x", "numeric", "account", "x")]
SHAPE, B0, B1 = 1.3, 5.5, 0.5  # Weibull AFT: log scale = B0 + B1 x, shape SHAPE


def _weibull_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = np.exp(B0 + B1 * x) * rng.weibull(SHAPE, size=n)
    c = rng.uniform(0, 900, size=n)
    return pd.DataFrame({"x": x, "duration_days": np.minimum(t, c), "event": (t <= c).astype(int)})


def _true_survival(x: np.ndarray, days: np.ndarray) -> np.ndarray:
    return np.exp(-((days[None, :] / np.exp(B0 + B1 * x)[:, None]) ** SHAPE))


def _fit_simulated(*candidates: str) -> SurvivalModel:
    return SurvivalModel(X, seed=1, candidates=candidates).fit(
        _weibull_frame(4000, seed=0), _weibull_frame(2000, seed=1))


@pytest.fixture(scope="module")
def simulated() -> SurvivalModel:
    return _fit_simulated("weibull_aft", "discrete_lgbm")


@pytest.fixture(scope="module")
def weibull() -> SurvivalModel:
    return _fit_simulated("weibull_aft")


@pytest.fixture(scope="module")
def discrete() -> SurvivalModel:
    return _fit_simulated("discrete_lgbm")


GRID_X = pd.DataFrame({"x": [-1.0, 0.0, 1.0]})
DAYS = np.array([90.0, 365.0])


def test_weibull_aft_recovers_the_simulated_parameters_and_curve(weibull):
    aft = weibull.model_
    assert aft.shape_ == pytest.approx(SHAPE, abs=0.08)
    # x is standardised inside the design: the coefficient per unit of x is coef / std.
    assert aft.coef_[0] / aft.design_.std_[0] == pytest.approx(B1, abs=0.06)
    fitted = weibull.survival_function(GRID_X, DAYS)
    assert fitted == pytest.approx(_true_survival(GRID_X["x"].to_numpy(), DAYS), abs=0.03)


def test_discrete_hazard_model_approximates_the_curve_and_its_order(discrete):
    fitted = discrete.survival_function(GRID_X, DAYS)
    assert fitted == pytest.approx(_true_survival(GRID_X["x"].to_numpy(), DAYS), abs=0.06)
    assert (np.diff(fitted, axis=0) > 0).all()  # larger x, larger scale: longer lives


def test_the_better_scoring_candidate_is_kept(simulated):
    assert set(simulated.scores_) == {"weibull_aft", "discrete_lgbm"}
    for score in simulated.scores_.values():
        assert 0 < score["ibs"] < 0.25 and 0.5 < score["concordance"] <= 1
    best = min(s["ibs"] for s in simulated.scores_.values())
    assert simulated.scores_[simulated.chosen_]["ibs"] <= best + 5e-4


@settings(max_examples=25, deadline=None)
@given(days=st.lists(st.floats(0, 5000), min_size=1, max_size=30),
       x=st.floats(-4, 4))
def test_curves_are_probabilities_non_increasing_in_days(weibull, discrete, days, x):
    days = np.sort(np.array(days))
    for model in (weibull, discrete):
        s = model.survival_function(pd.DataFrame({"x": [x]}), days)
        assert s.shape == (1, days.size)
        assert ((s >= 0) & (s <= 1)).all()
        assert (np.diff(s, axis=1) <= 1e-12).all()


def test_expected_remaining_days_is_finite_positive_and_capped(weibull, discrete):
    for model in (weibull, discrete):
        rest = model.expected_remaining_days(GRID_X)
        assert np.isfinite(rest).all() and (rest > 0).all() and (rest <= 3650).all()
        assert (np.diff(rest) > 0).all()
        assert (model.expected_remaining_days(GRID_X, cap_days=365) < rest).all()
    # the area under the true curve up to 3650 days, for x = 0
    grid = np.linspace(0, 3650, 7301)
    true = np.trapezoid(_true_survival(np.array([0.0]), grid)[0], grid)
    assert weibull.expected_remaining_days(GRID_X)[1] == pytest.approx(true, rel=0.05)


@pytest.mark.parametrize("cap_days", [3650.0, 365.0, 100.0, 17.5])
def test_discrete_remaining_days_is_the_exact_area_under_its_curve(discrete, cap_days):
    # The closed form per interval against the trapezoid rule on an ever finer grid: the
    # gap shrinks with the square of the step, as it must if the closed form is the limit.
    exact = discrete.expected_remaining_days(GRID_X, cap_days=cap_days)
    gaps = []
    for step in (2.5, 0.25):
        grid = np.linspace(0.0, cap_days, int(round(cap_days / step)) + 1)
        trap = np.trapezoid(discrete.survival_function(GRID_X, grid), grid, axis=1)
        gaps.append(np.abs(trap - exact).max())
    assert gaps[1] < 2e-3 and gaps[1] <= gaps[0] / 50 + 1e-9


def test_survival_and_remaining_give_the_curve_with_the_area(weibull, discrete):
    grid = np.linspace(0.0, 400.0, 1601)
    for model in (weibull, discrete):
        s, rest = model.survival_and_remaining(GRID_X, DAYS, cap_days=400)
        np.testing.assert_allclose(s, model.survival_function(GRID_X, DAYS), rtol=0, atol=1e-12)
        area = np.trapezoid(model.survival_function(GRID_X, grid), grid, axis=1)
        np.testing.assert_allclose(rest, area, rtol=1e-3)


def test_survival_at_columns_and_pickle_round_trip(discrete):
    table = discrete.survival_at(GRID_X.set_index(pd.Index([7, 8, 9])))
    assert table.columns.tolist() == ["30", "90", "180", "365"]
    assert table.index.tolist() == [7, 8, 9]
    clone = pickle.loads(pickle.dumps(discrete))
    np.testing.assert_array_equal(clone.survival_at(GRID_X), discrete.survival_at(GRID_X))


def test_person_periods_label_churn_and_weight_partial_exposure(monkeypatch):
    d, e = np.array([45.0, 45.0, 400.0, 0.0]), np.array([1, 0, 1, 0])
    rows, k, y, w = hazard._person_periods(d, e, np.random.default_rng(0))
    table = pd.DataFrame({"row": rows, "k": k, "y": y, "w": w})
    assert table[table.row == 0][["k", "y", "w"]].to_numpy().tolist() == [[0, 0, 1], [1, 1, 1]]
    assert table[table.row == 1][["k", "y", "w"]].to_numpy().tolist() == [[0, 0, 1], [1, 0, 0.5]]
    assert (table[table.row == 2]["y"] == 0).all() and len(table[table.row == 2]) == 12
    assert 3 not in set(rows)  # censored on the cutoff day: no exposure at all
    monkeypatch.setattr(hazard, "MAX_PERSON_PERIODS", 1000)
    many = np.full(1000, 400.0)
    rows, *_ = hazard._person_periods(many, np.zeros(1000), np.random.default_rng(0))
    assert 800 < len(rows) < 1200 and len(rows) % 12 == 0  # whole rows kept or dropped


@pytest.mark.parametrize(("change", "match"), [
    (lambda f: f.assign(event=0), "train: all 4000 rows are censored"),
    (lambda f: f.assign(duration_days=f["duration_days"] - 1000), "negative duration_days"),
    (lambda f: f.drop(columns="event"), r"train frame lacks column\(s\) \['event'\]"),
    (lambda f: f.drop(columns="x"), r"train frame lacks 1 feature column\(s\): \['x'\]"),
    (lambda f: f.assign(event=np.nan), "4000 of 4000 rows have a missing"),
])
def test_fit_rejects_bad_targets(change, match):
    with pytest.raises(ValueError, match=match):
        SurvivalModel(X).fit(change(_weibull_frame(4000, 0)), _weibull_frame(100, 1))


def test_other_misuse_is_rejected(weibull):
    with pytest.raises(ValueError, match="unknown or no candidates"):
        SurvivalModel(X, candidates=("cox",)).fit(_weibull_frame(50, 0), _weibull_frame(50, 1))
    with pytest.raises(NotFittedError, match="call fit"):
        SurvivalModel(X).survival_at(GRID_X)
    with pytest.raises(ValueError, match="finite days >= 0"):
        weibull.survival_function(GRID_X, [-1.0])
    with pytest.raises(ValueError, match="cap_days must be a positive"):
        weibull.expected_remaining_days(GRID_X, cap_days=0)


@pytest.mark.slow  # fits the survival models on the 4,000-customer sample (23 s)
def test_sample_data_concordance_and_brier_beat_the_baseline(survival_sample):
    *_, train, _, test, model = survival_sample
    grid = np.arange(0.0, 366.0, 5.0)
    s = model.survival_function(test, grid)
    m = survival_metrics(test["duration_days"], test["event"], s, grid,
                         -np.trapezoid(s, grid, axis=1))
    km = np.tile(kaplan_meier_baseline(train["duration_days"], train["event"])(grid),
                 (len(test), 1))
    baseline = survival_metrics(test["duration_days"], test["event"], km, grid, np.zeros(len(test)))
    assert m["concordance"] >= 0.70
    assert m["time_auc_90"] >= 0.72
    assert m["integrated_brier"] < baseline["integrated_brier"]


@pytest.mark.slow  # fits the survival models on the 4,000-customer sample (23 s)
def test_scores_do_not_depend_on_the_customer_id_or_unseen_levels(survival_sample):
    *_, test, model = survival_sample
    rows = test.iloc[:50]
    base = model.survival_at(rows)
    renamed = rows.assign(customer_id="someone-else")
    pd.testing.assert_frame_equal(model.survival_at(renamed), base)
    unseen = rows.assign(plan="a-new-plan", segment=None)
    assert np.isfinite(model.survival_at(unseen).to_numpy()).all()
