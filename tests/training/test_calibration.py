"""Calibrators and the calibration choice: known parameters, the one-standard-error rule,
isotonic only with enough data, and no probability of exactly 0 or 1 from the risk model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import expit
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss

from churnlens.features.queries import Feature
from churnlens.settings import LightGBMSettings
from churnlens.training.calibration import (
    CALIBRATORS,
    ISOTONIC_MIN_CHURNERS,
    ISOTONIC_MIN_ROWS,
    P_MAX,
    P_MIN,
    IsotonicCalibrator,
    NoCalibration,
    PlattCalibrator,
    bounded,
    choose_calibrator,
    one_standard_error_choice,
)
from churnlens.training.risk import RiskModel


def _scenario(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores z, outcomes y and groups for a calibration slice of a known shape.

    none: z is the true log-odds; platt: z is an over-confident line of it; isotonic: the
    true probability is a step in z that no logistic curve follows.
    """
    rng = np.random.default_rng(seed)
    t = rng.normal(-2.5, 1.2, n)
    z, p = {"none": (t, expit(t)), "platt": (3 * t + 2, expit(t)),
            "isotonic": (t, np.where(t < -2.5, 0.02, 0.3))}[kind]
    return z, rng.binomial(1, p), np.arange(n)


def test_platt_recovers_a_known_slope_and_intercept():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 40_000)
    y = rng.binomial(1, expit(0.5 * z - 1))
    platt = PlattCalibrator().fit(z, y)
    assert platt.a_ == pytest.approx(0.5, abs=0.03) and platt.b_ == pytest.approx(-1, abs=0.03)
    assert platt.predict([0.0]) == pytest.approx(expit(platt.b_))


def test_isotonic_is_non_decreasing_and_flat_beyond_its_ends():
    z, y, _ = _scenario("isotonic", 5000, 1)
    iso = IsotonicCalibrator().fit(z, y)
    grid = np.linspace(z.min() - 5, z.max() + 5, 500)
    p = iso.predict(grid)
    assert (np.diff(p) >= 0).all()
    assert p[0] == iso.y_[0] and p[-1] == iso.y_[-1]
    assert iso.predict([-2.0])[0] == pytest.approx(0.3, abs=0.05)


def test_no_calibration_is_the_sigmoid_of_the_log_odds():
    z = np.array([-30.0, -1.0, 0.0, 2.0])
    np.testing.assert_allclose(NoCalibration().fit(z, [0, 1, 0, 1]).predict(z), expit(z))


@pytest.mark.parametrize("method", list(CALIBRATORS))
def test_an_unfitted_calibrator_says_so(method):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        CALIBRATORS[method]().predict([0.0])


def test_fit_rejects_bad_inputs():
    with pytest.raises(ValueError, match="got 3 scores and 2 outcomes"):
        PlattCalibrator().fit([0.0, 1.0, 2.0], [0, 1])
    with pytest.raises(ValueError, match="1 of 2 calibration scores are not finite"):
        IsotonicCalibrator().fit([0.0, np.nan], [0, 1])
    with pytest.raises(ValueError, match="outcomes must hold only 0 and 1"):
        NoCalibration().fit([0.0, 1.0], [0, 2])
    with pytest.raises(ValueError, match="all 2 outcomes are 0"):
        PlattCalibrator().fit([0.0, 1.0], [0, 0])
    with pytest.raises(ValueError, match="calibration method 'beta' is unknown"):
        choose_calibrator(*_scenario("none", 50, 0), seed=0, method="beta")


def test_bounded_never_gives_0_or_1_and_keeps_missing():
    got = bounded([0.0, 1e-9, 0.3, 1.0, np.nan])
    assert got[:4].tolist() == [P_MIN, P_MIN, 0.3, P_MAX] and np.isnan(got[4])


@pytest.mark.parametrize(("kind", "n"), [("none", 600), ("platt", 800), ("isotonic", 20_000)])
def test_each_choice_scores_no_worse_than_no_calibration(kind, n):
    z, y, groups = _scenario(kind, n, seed=3)
    calibrator, scores, _ = choose_calibrator(z, y, groups, seed=0)
    assert calibrator.method == kind
    assert scores[kind] <= scores["none"]
    print(f"{kind} slice of {n}: cross-fitted log loss {scores}")


def test_isotonic_is_tried_only_with_enough_rows_and_churners():
    z, y, groups = _scenario("isotonic", ISOTONIC_MIN_ROWS - 1, seed=4)
    assert y.sum() >= ISOTONIC_MIN_CHURNERS
    _, scores, note = choose_calibrator(z, y, groups, seed=0)
    assert set(scores) == {"none", "platt"}
    assert note.startswith(f"isotonic not tried: the calibration slice holds "
                           f"{ISOTONIC_MIN_ROWS - 1:,} rows")
    few = np.zeros(ISOTONIC_MIN_ROWS + 500, dtype=int)
    few[: ISOTONIC_MIN_CHURNERS - 1] = 1
    _, scores, _ = choose_calibrator(np.linspace(0, 1, few.size), few, np.arange(few.size), 0)
    assert "isotonic" not in scores
    enough = few.copy()
    enough[ISOTONIC_MIN_CHURNERS - 1] = 1
    _, scores, _ = choose_calibrator(np.linspace(0, 1, enough.size), enough,
                                     np.arange(enough.size), 0)
    assert "isotonic" in scores
    forced, scores, note = choose_calibrator(z, y, groups, seed=0, method="isotonic")
    assert forced.method == "isotonic" and "isotonic" in scores and note == "isotonic forced"


def test_the_one_standard_error_rule():
    none = np.random.default_rng(5).exponential(0.3, 400)
    noise = np.tile([0.1, -0.1], 200)  # mean 0; the paired difference's standard error 0.005
    small_gain = {"none": none, "platt": none - 0.001 + noise}
    assert one_standard_error_choice(small_gain)[0] == "none"
    assert "within one standard error" in one_standard_error_choice(small_gain)[1]
    assert one_standard_error_choice({"none": none, "platt": none - 0.05 + noise}) == (
        "platt", "")
    # A method worse than no calibration is never kept, even within the error of the best.
    worse = {"none": none, "platt": none + 0.002 + noise, "isotonic": none - 0.001 + noise}
    assert one_standard_error_choice(worse)[0] == "none"


FEATURES = [Feature("usage", "numeric", "usage", "usage"),
            Feature("tickets", "numeric", "support", "tickets"),
            Feature("plan", "category", "account", "plan")]


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Customers whose churn the features nearly decide: the booster's log-odds run far
    out, so isotonic regression's ends are exactly 0 and 1 before the bound."""
    rng = np.random.default_rng(seed)
    usage = rng.normal(0, 1, n)
    tickets = rng.poisson(1, n).astype(float)
    plan = rng.choice(["basic", "pro"], n)
    churned = (usage - 0.5 * tickets + rng.normal(0, 0.1, n) < -0.5).astype(float)
    return pd.DataFrame({"customer_id": [f"C{seed}-{i}" for i in range(n)], "usage": usage,
                         "tickets": tickets, "plan": plan, "churned": churned})


@pytest.fixture(scope="module")
def models() -> dict[str, RiskModel]:
    params = LightGBMSettings(n_estimators=60, learning_rate=0.3, min_child_samples=5,
                              early_stopping_rounds=60)
    train, valid, cal = _frame(1500, 0), _frame(500, 1), _frame(1500, 2)
    return {m: RiskModel(FEATURES, params, seed=1, calibration=m).fit(train, valid, cal)
            for m in CALIBRATORS}


def test_forced_methods_are_kept_and_isotonic_reaches_0_and_1_before_the_bound(models):
    assert {m: model.calibration_method_ for m, model in models.items()} == {
        m: m for m in CALIBRATORS}
    iso = models["isotonic"].calibrator_
    assert iso.y_.min() == 0.0 and iso.y_.max() == 1.0


_rows = st.lists(st.fixed_dictionaries({
    "usage": st.floats(allow_nan=True, allow_infinity=False, width=32),
    "tickets": st.one_of(st.just(np.nan), st.floats(-1e6, 1e6)),
    "plan": st.sampled_from(["basic", "pro", "enterprise", None, ""]),  # unseen and missing
}), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows)
def test_no_probability_of_exactly_0_or_1_ever_leaves_the_model(models, rows):
    frame = pd.DataFrame(rows)
    for model in models.values():
        for p in (model.predict_proba(frame), model.predict_raw(frame)):
            assert p.shape == (len(frame),)
            assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all()
            assert (p >= P_MIN).all() and (p <= P_MAX).all()


def _sample_split(shape: str, tmp_path) -> tuple:
    """Features and the split of a small sample of SHAPE, with the settings the README
    names for it (the snapshot's export date)."""
    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    from churnlens.features.sample import snapshot, transactions, write_sample
    from churnlens.settings import Settings
    from churnlens.training.split import temporal_split

    if shape == "snapshot":
        tables, overrides = snapshot.generate(8000, seed=1), {
            "horizon_days": 31, "data": {"observed_until": "2026-11-01"}}
    else:
        tables, overrides = transactions.generate(3000, seed=1), {"horizon_days": 90}
    write_sample(tables, tmp_path)
    s = Settings.model_validate(overrides)
    ds = load_source(tmp_path, s.data.observed_until, horizon_days=s.horizon_days,
                     activity=s.churn.activity)
    ff = build_training_set(ds, s)
    return ff, temporal_split(ff.frame, s.horizon_days, s.training), s


@pytest.mark.parametrize("shape", ["snapshot", "transactions"])
def test_on_each_sample_shape_the_kept_calibration_is_no_worse_than_none(shape, tmp_path):
    ff, split, s = _sample_split(shape, tmp_path)
    model = RiskModel(ff.features, s.training.lightgbm, seed=42).fit(
        split.train, split.validation, split.calibration)
    scores = model.calibration_log_loss_
    assert scores[model.calibration_method_] <= scores["none"]
    y = split.test["churned"].astype(int)
    kept = log_loss(y, model.predict_proba(split.test))
    none = log_loss(y, model.predict_raw(split.test))
    print(f"{shape}: {model.calibration_method_} kept; cross-fitted {scores}; "
          f"{model.calibration_note_}; test log loss kept {kept:.5f}, none {none:.5f}")
    assert kept <= none + 1e-12


def test_a_model_pickled_with_scikit_learn_calibrators_still_scores(models):
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    model = models["platt"]
    frame = _frame(300, 7)
    z = model.predict_logit(frame)
    y = frame["churned"].to_numpy(int)
    for old, expected in [
        (lr := LogisticRegression(C=np.inf).fit(z.reshape(-1, 1), y),
         expit(lr.coef_[0, 0] * z + lr.intercept_[0])),
        (iso := IsotonicRegression(out_of_bounds="clip").fit(z, y), iso.predict(z)),
    ]:
        state = {k: v for k, v in vars(model).items() if k != "typical_"}
        restored = RiskModel.__new__(RiskModel)
        restored.__setstate__({**state, "calibrator_": old})
        np.testing.assert_allclose(restored.predict_proba(frame), bounded(expected), atol=1e-12)
        assert restored.typical_ == {}
