"""Drivers: readable sentences, only risk-raising groups, top_n, playbooks; risk tiers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from churnlens.features.queries import feature_list
from churnlens.settings import FeatureSettings, PlaybookSettings, TierSettings
from churnlens.training.drivers import explain, risk_tier

FEATURES = feature_list(FeatureSettings(), {"segment": "str"})
NAMES = [f.name for f in FEATURES]
PLAYBOOKS = PlaybookSettings()


def _frame(*rows: dict) -> pd.DataFrame:
    """Rows of a neutral customer (zeros, known categories) with the given overrides."""
    base = {f.name: (0.0 if f.kind == "numeric" else "x") for f in FEATURES}
    base.update(tenure_days=400.0, reached_first_value=1.0, days_to_first_value=5.0)
    return pd.DataFrame([{**base, **row} for row in rows])


def _contrib(n: int, **values: list[float] | float) -> pd.DataFrame:
    """Contributions of zero except the given features (a value per row or one for all)."""
    out = pd.DataFrame(0.0, index=range(n), columns=[*NAMES, "bias"])
    for name, v in values.items():
        out[name] = v
    return out


def _top(row: dict, feature: str) -> dict:
    return explain(_frame(row), _contrib(1, **{feature: 0.5}), FEATURES, PLAYBOOKS, 3)[0][0]


@pytest.mark.parametrize(("feature", "row", "text"), [
    ("active_days_30d", {"active_days_30d": 4.0, "active_days_prev_30d": 18.0},
     "active days in the last 30 fell from 18 to 4"),
    ("active_days_trend_30d", {"active_days_30d": 4.0, "active_days_prev_30d": 18.0},
     "active days in the last 30 fell from 18 to 4"),
    ("events_trend_30d", {"events_trend_30d": -0.62},
     "product events in the last 30 days down 62% on the 30 before"),
    ("events_30d", {"events_30d": 9.0, "events_trend_30d": 0.0},
     "9 product events in the last 30 days, unchanged on the 30 before"),
    ("tickets_high_open", {"tickets_high_open": 2.0}, "2 open high-priority tickets"),
    ("tickets_open", {"tickets_open": 1.0}, "1 open ticket"),
    ("nps_latest", {"nps_latest": 3.0, "nps_change": -5.0}, "latest NPS 3, down 5"),
    ("nps_change", {"nps_latest": 3.0, "nps_change": np.nan}, "latest NPS 3"),
    ("nps_latest", {"nps_latest": np.nan, "nps_change": np.nan}, "no NPS answer yet"),
    ("failed_payments_90d", {"failed_payments_90d": 2.0}, "2 failed payments in 90 days"),
    ("reached_first_value", {"reached_first_value": 0.0, "days_to_first_value": np.nan,
                             "tenure_days": 40.2},
     "no first value yet (report_created) after 40 days"),
    ("days_to_renewal", {"days_to_renewal": 25.4}, "renewal in 25 days"),
    ("days_since_nps", {"days_since_nps": 27.4}, "27 days since the last NPS answer"),
    ("mrr_change_90d", {"mrr_change_90d": -150.0}, "MRR fell by 150 over 90 days"),
    ("csat_180d", {"csat_180d": 2.5}, "mean CSAT over 180 days is 2.5"),
    ("csat_180d", {"csat_180d": np.nan}, "mean CSAT over 180 days is unknown"),
    ("plan", {"plan": "starter"}, "plan is starter"),
])
def test_sentences_for_known_inputs(feature, row, text):
    assert _top(row, feature)["text"] == text


def test_a_driver_carries_group_feature_value_and_playbook():
    driver = _top({"tickets_high_open": 2.0}, "tickets_high_open")
    assert driver == {"name": "support", "feature": "tickets_high_open", "value": 2.0,
                      "contribution": 0.5, "direction": "raises risk",
                      "text": "2 open high-priority tickets",
                      "playbook": PLAYBOOKS.support}


def test_missing_and_category_values_are_plain():
    assert _top({"csat_180d": np.nan}, "csat_180d")["value"] is None
    assert _top({"plan": "starter"}, "plan")["value"] == "starter"
    frame = _frame({"plan": "starter"}).astype({"plan": "category"})
    assert explain(frame, _contrib(1, plan=0.5), FEATURES, PLAYBOOKS, 1)[0][0]["value"] == "starter"


def test_group_total_and_its_largest_feature():
    contrib = _contrib(1, tickets_open=0.2, tickets_high_open=0.3, csat_180d=-0.1,
                       events_30d=0.35)
    drivers = explain(_frame({}), contrib, FEATURES, PLAYBOOKS, 3)[0]
    assert [d["name"] for d in drivers] == ["support", "usage"]
    assert drivers[0]["contribution"] == pytest.approx(0.4)
    assert drivers[0]["feature"] == "tickets_high_open"


def test_only_risk_raising_groups_and_top_n():
    contrib = _contrib(2, tickets_open=[0.4, -0.4], events_30d=[0.3, -0.3],
                       failed_payments_90d=[0.2, -0.2], nps_latest=[0.1, -0.1])
    top2, none = explain(_frame({}, {}), contrib, FEATURES, PLAYBOOKS, 2)
    assert [d["name"] for d in top2] == ["support", "usage"]
    assert none == []


def test_playbook_text_comes_from_settings():
    playbooks = PlaybookSettings(billing="Call finance today")
    contrib = _contrib(1, failed_payments_90d=0.7)
    driver = explain(_frame({"failed_payments_90d": 1.0}), contrib, FEATURES, playbooks, 1)[0][0]
    assert driver["playbook"] == "Call finance today"
    assert driver["text"] == "1 failed payment in 90 days"


@settings(max_examples=50, deadline=None)
@given(values=arrays(np.float64, (5, len(NAMES)),
                     # Multiples of 1/64: group sums are exact in any order of addition.
                     elements=st.integers(-128, 128).map(lambda k: k / 64)),
       top_n=st.integers(1, 8))
def test_drivers_are_the_largest_positive_group_totals(values, top_n):
    contrib = pd.DataFrame(values, columns=NAMES).assign(bias=-3.0)
    frame = _frame(*[{}] * 5)
    groups = {f.name: f.group for f in FEATURES}
    totals = contrib[NAMES].T.groupby(groups).sum().T
    for i, drivers in enumerate(explain(frame, contrib, FEATURES, PLAYBOOKS, top_n)):
        expected = totals.iloc[i][totals.iloc[i] > 0].sort_values(ascending=False)
        assert len(drivers) == min(top_n, len(expected))
        got = [d["contribution"] for d in drivers]
        assert got == pytest.approx(expected.iloc[:len(drivers)].tolist())
        for d in drivers:
            members = [n for n, g in groups.items() if g == d["name"]]
            assert contrib.at[i, d["feature"]] == contrib.loc[i, members].max()


def test_explain_rejects_bad_inputs():
    frame = _frame({})
    with pytest.raises(ValueError, match="frame has 1 rows but contributions has 2"):
        explain(frame, _contrib(2), FEATURES, PLAYBOOKS, 3)
    with pytest.raises(ValueError, match=r"contributions lack 1 feature column\(s\): \['mrr'\]"):
        explain(frame, _contrib(1).drop(columns=["mrr"]), FEATURES, PLAYBOOKS, 3)
    with pytest.raises(ValueError, match=r"frame lacks 1 feature column\(s\): \['seats'\]"):
        explain(frame.drop(columns=["seats"]), _contrib(1), FEATURES, PLAYBOOKS, 3)
    with pytest.raises(ValueError, match="top_n must be at least 1"):
        explain(frame, _contrib(1), FEATURES, PLAYBOOKS, 0)


def test_risk_tiers_at_the_thresholds():
    tiers = TierSettings(medium=0.1, high=0.25, critical=0.5)
    got = risk_tier([0.0, 0.0999, 0.1, 0.3, 0.5, 1.0], tiers)
    assert got.tolist() == ["low", "low", "medium", "high", "critical", "critical"]
    assert got.tolist() == [tiers.tier(p) for p in [0.0, 0.0999, 0.1, 0.3, 0.5, 1.0]]


def test_risk_tier_rejects_missing_probabilities():
    with pytest.raises(ValueError, match=r"1 of 2 probabilities are missing or outside \[0, 1\]"):
        risk_tier(np.array([0.2, np.nan]), TierSettings())
