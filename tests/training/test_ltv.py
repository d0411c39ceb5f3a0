"""Expected LTV: hand-computed cases, discounting, input checks, and ranking of realised revenue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.training.ltv import (
    MONTH_DAYS,
    expected_ltv,
    ltv_from_model,
    monthly_grid,
    monthly_revenue,
)
from churnlens.training.metrics import ltv_metrics


def test_constant_survival_without_discount_is_revenue_times_months():
    ltv = expected_ltv(np.ones((2, 12)), np.array([100.0, 50.0]), 365, 0.0)
    assert ltv.tolist() == pytest.approx([1200.0, 600.0])


def test_one_month_discounted_to_its_middle():
    ltv = expected_ltv(np.ones((1, 1)), np.array([100.0]), 30, 0.10)
    assert ltv[0] == pytest.approx(100.0 * 1.1 ** (-0.5 * MONTH_DAYS / 365.25))


def test_discounting_and_churn_lower_the_value():
    s = np.linspace(1.0, 0.5, 24)[None, :]
    revenue = np.array([100.0])
    undiscounted = expected_ltv(s, revenue, 730, 0.0)
    assert expected_ltv(s, revenue, 730, 0.10) < undiscounted
    assert expected_ltv(s, revenue, 730, 0.20) < expected_ltv(s, revenue, 730, 0.10)
    assert undiscounted < expected_ltv(np.ones((1, 24)), revenue, 730, 0.0)
    assert expected_ltv(s / 2, revenue, 730, 0.0) == pytest.approx(undiscounted / 2)


def test_monthly_grid():
    assert monthly_grid(365).size == 12
    assert monthly_grid(730).size == 24
    assert monthly_grid(10).tolist() == pytest.approx([MONTH_DAYS / 2])
    with pytest.raises(ValueError, match="horizon_days must be positive"):
        monthly_grid(0)


def test_monthly_revenue_falls_back_to_payments_and_keeps_unknowns_missing():
    frame = pd.DataFrame({"mrr": [100.0, np.nan, np.nan], "paid_amount_90d": [1.0, 300.0, np.nan]})
    rev = monthly_revenue(frame)
    assert rev[:2].tolist() == [100.0, 100.0]
    assert np.isnan(rev[2])
    # A source without subscriptions (or without payments) reads the other column alone.
    only_paid = monthly_revenue(frame.drop(columns="mrr"))
    assert only_paid[:2].tolist() == [1 / 3, 100.0] and np.isnan(only_paid[2])
    assert monthly_revenue(frame.drop(columns="paid_amount_90d"))[0] == 100.0
    assert np.isnan(monthly_revenue(frame.drop(columns=["mrr", "paid_amount_90d"]))).all()


@pytest.mark.parametrize(("survival", "revenue", "rate", "match"), [
    (np.ones((2, 11)), np.ones(2), 0.1, r"expected \(rows, months\) = \(2, 12\)"),
    (np.ones((3, 12)), np.ones(2), 0.1, r"shape \(3, 12\)"),
    (np.full((2, 12), 1.5), np.ones(2), 0.1, r"probabilities in \[0, 1\]"),
    (np.ones((2, 12)), np.ones(2), 1.0, r"annual_discount_rate must be in \[0, 1\)"),
])
def test_expected_ltv_errors(survival, revenue, rate, match):
    with pytest.raises(ValueError, match=match):
        expected_ltv(survival, revenue, 365, rate)


@pytest.mark.slow  # fits the survival models on the 4,000-customer sample (23 s)
def test_expected_ltv_ranks_realised_revenue_on_sample_data(survival_sample):
    _, frame, _, _, _, model = survival_sample
    # The last two cutoffs whose 365-day revenue is observed; the model was trained only on
    # outcomes before the first of them.
    cutoffs = np.sort(frame.loc[frame["revenue_ltv"].notna(), "cutoff"].unique())[-2:]
    rows = frame[frame["cutoff"].isin(cutoffs)]
    predicted = ltv_from_model(model, rows, 365, 0.0)
    m = ltv_metrics(rows["revenue_ltv"], predicted)
    assert m["spearman"] >= 0.5
    assert m["normalized_gini"] >= 0.5
    assert abs(m["total_error_pct"]) < 25
    assert (ltv_from_model(model, rows, 365, 0.10) < predicted).all()
