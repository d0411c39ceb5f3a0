"""Metrics on tiny hand-built arrays with known answers, and their input checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.features.queries import Feature
from churnlens.training.metrics import (
    calibration_table,
    classification_metrics,
    kaplan_meier_baseline,
    lift_table,
    logistic_baseline,
    ltv_metrics,
    survival_metrics,
)


def _calibrated_toy():
    # Two groups predicted 0.2 and 0.8 whose observed churn rates are exactly 0.2 and 0.8.
    y = np.array([1, 1] + [0] * 8 + [1] * 8 + [0, 0])
    p = np.array([0.2] * 10 + [0.8] * 10)
    return y, p


def test_perfect_ranking_scores_one():
    y = np.array([0] * 90 + [1] * 10)
    p = np.linspace(0.01, 0.99, 100)
    m = classification_metrics(y, p)
    assert m["roc_auc"] == 1.0
    assert m["pr_auc"] == pytest.approx(1.0)
    assert m["top_decile_lift"] == pytest.approx(10.0)
    assert m["top_decile_capture"] == 1.0


@pytest.mark.parametrize("churners_first", [True, False])
def test_a_constant_score_has_lift_one_whatever_the_row_order(churners_first):
    y = np.array([1] * 10 + [0] * 90) if churners_first else np.array([0] * 90 + [1] * 10)
    m = classification_metrics(y, np.full(100, 0.1))
    assert m["top_decile_lift"] == pytest.approx(1.0)
    assert m["top_decile_capture"] == pytest.approx(0.1)


def test_rows_tied_at_the_cut_share_the_places_left():
    # 5 rows above the cut (2 churners), then 20 tied rows (4 churners) for 5 more places
    # of the top 10 of 100: 2 + 5 * 4/20 = 3 expected churners of the 10 in all.
    y = np.array([1, 1, 0, 0, 0] + [1] * 4 + [0] * 16 + [1] * 4 + [0] * 71)
    p = np.array([0.9] * 5 + [0.5] * 20 + [0.1] * 75)
    m = classification_metrics(y, p)
    assert m["top_decile_capture"] == pytest.approx(3 / 10)
    assert m["top_decile_lift"] == pytest.approx((3 / 10) / 0.1)
    shuffled = np.random.default_rng(0).permutation(100)
    again = classification_metrics(y[shuffled], p[shuffled])
    assert again["top_decile_lift"] == pytest.approx(m["top_decile_lift"])


def test_known_brier_log_loss_and_zero_calibration_error():
    y, p = _calibrated_toy()
    m = classification_metrics(y, p)
    assert m["brier"] == pytest.approx(0.16)
    assert m["log_loss"] == pytest.approx(-(0.2 * np.log(0.2) + 0.8 * np.log(0.8)))
    assert m["calibration_error"] == pytest.approx(0.0, abs=1e-12)


def test_calibration_error_of_a_biased_prediction():
    y, p = _calibrated_toy()
    assert classification_metrics(y, p + 0.1)["calibration_error"] == pytest.approx(0.1)


def test_calibration_and_lift_tables():
    y, p = _calibrated_toy()
    cal = calibration_table(y, p)
    assert cal["n"].tolist() == [10, 10]
    assert cal["observed"].tolist() == pytest.approx([0.2, 0.8])
    lift = lift_table(y, p)
    assert lift["bin"].tolist() == [1, 2]
    assert lift["rate"].tolist() == pytest.approx([0.8, 0.2])
    assert lift["lift"].tolist() == pytest.approx([1.6, 0.4])
    assert lift["cumulative_capture"].iloc[-1] == pytest.approx(1.0)


@pytest.mark.parametrize(("y", "p", "match"), [
    ([0, 1, 1], [0.1, 0.2], "has 2 values but the first argument has 3"),
    ([1, 1, 1], [0.1, 0.2, 0.3], "single class"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "only 0 and 1"),
    ([0, 1], [0.1, 1.2], r"probabilities in \[0, 1\]"),
    ([0, 1], [0.1, np.nan], "1 missing values of 2"),
    ([], [], "y is empty"),
])
def test_classification_errors(y, p, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p)


def _perfect_survival(durations: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return (grid[None, :] < durations[:, None]).astype(float)


def test_perfect_survival_predictions():
    d = np.arange(10.0, 410.0, 10.0)
    grid = np.arange(0.0, 405.0, 5.0)
    m = survival_metrics(d, np.ones_like(d), _perfect_survival(d, grid), grid, -d)
    assert m["concordance"] == 1.0
    assert m["integrated_brier"] == pytest.approx(0.0)
    assert m["time_auc_90"] == 1.0
    assert m["time_auc_180"] == 1.0


def test_constant_half_survival_has_brier_a_quarter_without_censoring():
    d = np.arange(10.0, 410.0, 10.0)
    grid = np.arange(0.0, 405.0, 5.0)
    m = survival_metrics(d, np.ones_like(d), np.full((d.size, grid.size), 0.5), grid,
                         np.zeros_like(d))
    assert m["integrated_brier"] == pytest.approx(0.25)
    assert m["concordance"] == 0.5
    assert m["time_auc_90"] == 0.5


def _reference_brier(d, e, s_t, t):
    """Graf et al. IPCW Brier score at t, by a direct loop over rows."""
    def g(u, left):
        out = 1.0
        for v in np.unique(d):
            if v < u or (v == u and not left):
                n_at_risk = (d >= v).sum()
                out *= 1 - ((d == v) & (e == 0)).sum() / n_at_risk
        return out
    total = 0.0
    for di, ei, si in zip(d, e, s_t, strict=True):
        if di <= t and ei == 1:
            total += si**2 / g(di, left=True)
        elif di > t:
            total += (1 - si) ** 2 / g(t, left=False)
    return total / len(d)


def test_ipcw_brier_matches_a_direct_computation_under_censoring():
    rng = np.random.default_rng(0)
    d = np.round(rng.uniform(1, 300, 60))
    e = (rng.random(60) < 0.6).astype(float)
    grid = np.array([30.0, 100.0, 180.0])
    s = np.sort(rng.uniform(0.2, 0.9, (60, 3)), axis=1)[:, ::-1]
    m = survival_metrics(d, e, s, grid, rng.random(60))
    bs = [_reference_brier(d, e, s[:, j], t) for j, t in enumerate(grid)]
    expected = (35 * (bs[0] + bs[1]) + 40 * (bs[1] + bs[2])) / 150  # trapezoid over 30-180
    assert m["integrated_brier"] == pytest.approx(expected)


def test_time_auc_is_nan_when_nobody_is_followed_that_long():
    d = np.array([10.0, 50.0, 100.0, 120.0])
    grid = np.array([0.0, 90.0, 180.0])
    m = survival_metrics(d, np.array([1, 1, 0, 0]), np.full((4, 3), 0.7), grid, -d)
    assert np.isnan(m["time_auc_180"])
    assert not np.isnan(m["time_auc_90"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"event": np.zeros(5)}, "all 5 rows are censored"),
    ({"duration": -np.ones(5)}, "5 negative values"),
    ({"surv": np.ones((5, 2))}, r"shape \(5, 2\); expected"),
    ({"grid_days": [0.0, 180.0, 90.0]}, "strictly increasing"),
    ({"risk_scores": np.ones(4)}, "risk_scores has 4 values"),
    ({"train_duration": np.ones(5)}, "both train_duration and train_event"),
])
def test_survival_metric_errors(kwargs, match):
    args = {"duration": np.arange(1.0, 6.0), "event": np.ones(5), "surv": np.ones((5, 3)),
            "grid_days": [0.0, 90.0, 180.0], "risk_scores": np.ones(5), **kwargs}
    with pytest.raises(ValueError, match=match):
        survival_metrics(**args)


def test_ltv_metrics_known_values():
    actual = np.arange(1.0, 101.0)
    perfect = ltv_metrics(actual, actual)
    assert perfect["normalized_gini"] == pytest.approx(1.0)
    assert perfect["spearman"] == pytest.approx(1.0)
    assert perfect["decile_mape"] == pytest.approx(0.0)
    assert perfect["total_error_pct"] == pytest.approx(0.0)
    assert ltv_metrics(actual, 1.1 * actual)["total_error_pct"] == pytest.approx(10.0)
    assert ltv_metrics(actual, 1.1 * actual)["decile_mape"] == pytest.approx(10.0)
    assert ltv_metrics(actual, -actual)["normalized_gini"] == pytest.approx(-1.0)


def test_ltv_metric_errors():
    with pytest.raises(ValueError, match="sum to 0"):
        ltv_metrics([0.0, 0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="predicted has 1 values"):
        ltv_metrics([1.0, 2.0], [1.0])


def test_kaplan_meier_baseline_without_censoring():
    survival = kaplan_meier_baseline([1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1])
    assert survival([0.0, 2.5, 4.0]).tolist() == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="at least one churn"):
        kaplan_meier_baseline([1.0, 2.0], [0, 0])


def _labelled_frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    churned = (rng.random(n) < 1 / (1 + np.exp(-2 * x))).astype(float)
    churned[:5] = np.nan
    return pd.DataFrame({"x": x, "plan": "a", "churned": churned})


FEATURES = [Feature("x", "numeric", "usage", "x"), Feature("plan", "category", "account", "p")]


def test_logistic_baseline_ranks_by_the_numeric_feature():
    frame = _labelled_frame()
    model = logistic_baseline(frame, FEATURES)
    p = model.predict_proba(frame)[:, 1]
    assert p.shape == (200,)
    assert np.corrcoef(p, frame["x"])[0, 1] > 0.9


def test_logistic_baseline_uses_one_hot_categories_fitted_on_train():
    rng = np.random.default_rng(2)
    plan = rng.choice(["basic", "pro", "team"], 600)
    churned = (rng.random(600) < np.where(plan == "basic", 0.6, 0.05)).astype(float)
    frame = pd.DataFrame({"x": rng.normal(size=600), "plan": plan, "churned": churned})
    frame.loc[::7, "x"] = np.nan  # imputed with the train median
    model = logistic_baseline(frame.astype({"plan": "category"}), FEATURES)
    encoder = model.named_steps["columns"].named_transformers_["category"]["one_hot"]
    assert encoder.categories_[0].tolist() == ["basic", "pro", "team"]
    test = pd.DataFrame({"x": [0.0] * 5, "plan": ["basic", "pro", "team", "galactic", None]})
    p = model.predict_proba(test)[:, 1]
    assert p[0] > 0.4 > 0.15 > p[1] and p[2] < 0.15
    # A level train never showed, and a missing one (also unseen here), get no column: the
    # same probability as each other, between the known levels'.
    assert p[3] == pytest.approx(p[4]) and p[1] < p[3] < p[0]


def test_logistic_baseline_errors():
    frame = _labelled_frame()
    with pytest.raises(ValueError, match="single class"):
        logistic_baseline(frame.assign(churned=1.0), FEATURES)
    with pytest.raises(ValueError, match=r"lacks columns \['x'\]"):
        logistic_baseline(frame.drop(columns="x"), FEATURES)
    with pytest.raises(ValueError, match=r"lacks columns \['plan'\]"):
        logistic_baseline(frame.drop(columns="plan"), FEATURES)
