"""Revenue at risk in the batch summary: MRR x 12 with contracts, expected revenue without."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from churnlens.serving.stats import chunk_stats, merge_stats, summary_lines


def records(ids, probabilities, tiers, ltv) -> pa.Table:
    drivers = [[{"name": "days_since_last_purchase", "text": "no purchase for a while"}]] * len(ids)
    return pa.table({"customer_id": ids, "churn_probability": probabilities,
                     "risk_tier": tiers, "expected_ltv": ltv, "drivers": drivers})


IDS = ["a", "b", "c", "d"]
PROBS = [0.9, 0.6, 0.3, 0.05]
TIERS = ["critical", "critical", "high", "low"]
LTV = [1000.0, 200.0, None, 50.0]


def test_without_mrr_revenue_at_risk_is_churn_probability_times_expected_revenue():
    features = pd.DataFrame({"customer_id": IDS})
    stats = chunk_stats(features, records(IDS, PROBS, TIERS, LTV), {})
    tiers = stats["tiers"]
    assert tiers["critical"]["revenue_at_risk"] == pytest.approx(0.9 * 1000 + 0.6 * 200)
    assert tiers["high"]["revenue_at_risk"] == 0.0  # its LTV is unknown: nothing counted
    assert tiers["low"]["revenue_at_risk"] == pytest.approx(0.05 * 50)
    assert stats["valued_by"] == {"mrr": 0, "expected_revenue": 4}
    assert [a["annual_revenue"] for a in stats["top"]] == [1000.0, 200.0, 0.0, 50.0]
    # A 90-day LTV horizon is annualised.
    quarter = chunk_stats(features, records(IDS, PROBS, TIERS, LTV), {}, ltv_horizon_days=90)
    assert quarter["tiers"]["critical"]["revenue_at_risk"] == pytest.approx(
        (0.9 * 1000 + 0.6 * 200) * 365 / 90)
    header = summary_lines(merge_stats([quarter]), "USD")[0]
    assert header == ("revenue at risk = churn probability x expected revenue over the "
                      "90-day LTV horizon, annualised (x 365/90), summed over the tier")


def test_mrr_where_there_is_one_expected_revenue_elsewhere():
    features = pd.DataFrame({"customer_id": IDS, "mrr": [10.0, np.nan, 30.0, np.nan]})
    parts = [chunk_stats(features.iloc[:2], records(IDS[:2], PROBS[:2], TIERS[:2], LTV[:2]), {}),
             chunk_stats(features.iloc[2:], records(IDS[2:], PROBS[2:], TIERS[2:], LTV[2:]), {})]
    stats = merge_stats(parts)
    assert stats["tiers"]["critical"]["revenue_at_risk"] == pytest.approx(0.9 * 120 + 0.6 * 200)
    assert stats["tiers"]["high"]["revenue_at_risk"] == pytest.approx(0.3 * 360)
    assert stats["valued_by"] == {"mrr": 2, "expected_revenue": 2}
    lines = summary_lines(stats, "EUR")
    assert lines[0].startswith("revenue at risk = churn probability x MRR x 12 (2 customers), "
                               "else x expected revenue over the 365-day LTV horizon (2 without")
    assert lines[2].split()[:2] == ["critical", "2"] and lines[2].endswith("EUR")
    only_mrr = chunk_stats(features.iloc[[0, 2]], records(["a", "c"], [0.9, 0.3],
                                                          ["critical", "high"], [1.0, 1.0]), {})
    assert summary_lines(only_mrr, "EUR")[0] == ("revenue at risk = churn probability x MRR "
                                                 "x 12, summed over the tier")


@pytest.mark.slow
def test_a_transactions_scoring_has_revenue_at_risk_in_every_tier():
    from churnlens.features.build import build_snapshot, build_training_set
    from churnlens.features.loading import load_source
    from churnlens.features.sample import transactions
    from churnlens.serving.records import score_table
    from churnlens.settings import Settings
    from churnlens.training.pipeline import fit_model
    from churnlens.training.split import temporal_split

    tables = transactions.generate(2000, seed=5)
    tables.pop("truth")
    settings = Settings()
    ds = load_source(tables, None, horizon_days=settings.horizon_days,
                     activity=settings.churn.activity)
    ff = build_training_set(ds, settings)
    model = fit_model(ff, temporal_split(ff.frame, settings.horizon_days, settings.training),
                      settings, ds=ds)
    assert model.ltv_model.for_purchases
    frame = build_snapshot(ds, ds.observed_until, settings, features=model.features).frame
    assert "mrr" not in frame.columns
    stats = chunk_stats(frame, score_table(model, frame), {}, model.ltv.horizon_days)
    print({t: round(r["revenue_at_risk"]) for t, r in stats["tiers"].items()})
    assert len(stats["tiers"]) >= 3
    for tier, row in stats["tiers"].items():
        assert row["revenue_at_risk"] > 0, tier
    assert stats["valued_by"]["expected_revenue"] == len(frame)
