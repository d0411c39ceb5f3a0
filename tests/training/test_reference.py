"""The training reference for drift checks: bin shares that hold ties, and a PSI of zero for
the training population itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.features.queries import Feature
from churnlens.serving.stats import drift_report
from churnlens.training.reference import (
    SCORE_KEY,
    bin_counts,
    numeric_reference,
    reference_distributions,
)

FEATURES = [Feature("tickets", "numeric", "support", "tickets"),
            Feature("mrr", "numeric", "billing", "MRR"),
            Feature("plan", "category", "account", "plan")]


def _frame(n: int, seed: int, tickets_rate: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mrr = rng.lognormal(5, 1, n)
    mrr[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({"tickets": rng.poisson(tickets_rate, n).astype(float), "mrr": mrr,
                         "plan": rng.choice(["basic", "pro", "enterprise"], n, p=[.5, .3, .2])})


def test_counts_with_tied_deciles_get_their_true_shares():
    values = _frame(10_000, 0)["tickets"].to_numpy()  # ~74% zeros: deciles tie
    entry = numeric_reference(values)
    assert len(entry["edges"]) < 11
    counts = np.asarray(bin_counts(values, entry)["counts"], float)
    np.testing.assert_allclose(entry["shares"], counts / counts.sum())
    assert entry["shares"][0] == pytest.approx(np.mean(values == 0), abs=1e-12)
    assert entry["missing"] == 0


def test_missing_share_is_apart_and_all_missing_has_no_bins():
    values = _frame(10_000, 0)["mrr"].to_numpy()
    entry = numeric_reference(values)
    assert entry["missing"] == pytest.approx(np.isnan(values).mean())
    assert len(entry["edges"]) == 11 and sum(entry["shares"]) == pytest.approx(1)
    assert numeric_reference(np.full(5, np.nan)) == {"kind": "numeric", "edges": [],
                                                     "missing": 1.0}


def _histograms(frame: pd.DataFrame, scores: np.ndarray, ref: dict) -> dict:
    hist = {f.name: bin_counts(frame[f.name].to_numpy(float if f.kind == "numeric" else object),
                               ref[f.name]) for f in FEATURES}
    hist[SCORE_KEY] = bin_counts(scores, ref[SCORE_KEY])
    return {"histograms": hist}


def test_training_population_has_no_drift_and_a_shift_is_named():
    train = _frame(20_000, 1)
    scores = np.random.default_rng(2).beta(1, 8, 20_000)
    ref = reference_distributions(train, FEATURES, scores)
    same = drift_report(_histograms(train, scores, ref), ref, threshold=0.2)
    assert same["skipped"] == {} and same["over_threshold"] == []
    for entry in [*same["features"].values(), same["score"]]:
        assert entry["psi"] == pytest.approx(0, abs=1e-9)
    shifted = _frame(20_000, 3, tickets_rate=2.0)  # many more tickets
    riskier = np.random.default_rng(4).beta(2, 5, 20_000)
    drift = drift_report(_histograms(shifted, riskier, ref), ref, threshold=0.2)
    assert drift["over_threshold"] == ["churn_probability", "tickets"]
    assert drift["features"]["mrr"]["psi"] < 0.02 and drift["features"]["plan"]["psi"] < 0.02


def test_a_feature_never_known_in_training_is_skipped_with_the_reason():
    train = _frame(1_000, 5).assign(mrr=np.nan)
    ref = reference_distributions(train, FEATURES)
    assert SCORE_KEY not in ref
    report = drift_report({"histograms": {f.name: bin_counts(
        train[f.name].to_numpy(float if f.kind == "numeric" else object), ref[f.name])
        for f in FEATURES}}, ref, threshold=0.2)
    assert report["skipped"]["mrr"] == "no known value in training"
    assert "no '__score__' entry" in report["skipped"][SCORE_KEY]
