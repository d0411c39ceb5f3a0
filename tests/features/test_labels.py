"""Labels come from the window after the cutoff only, with censoring where it is not observed."""

from __future__ import annotations

import pandas as pd
import pytest

from churnlens.features.build import build_training_set
from churnlens.features.loading import load_source
from churnlens.settings import ChurnSettings, Settings

T = pd.Timestamp


def _frames(extra_payments=()):
    """Customers a (a plan change, then churn) and b (stays); z churned before any cutoff,
    so the data record ends from the start and every cutoff is observable."""
    payments = [("a", T("2024-02-05"), 100.0, "paid"), ("a", T("2024-03-05"), 150.0, "paid"),
                ("a", T("2024-04-05"), 150.0, "refunded"), *extra_payments]
    return {
        "customers": pd.DataFrame({"customer_id": ["a", "b", "z"],
                                   "signed_up_at": [T("2024-01-05"), T("2024-02-10"),
                                                    T("2024-01-06")]}),
        "subscriptions": pd.DataFrame({
            "customer_id": ["a", "a", "b", "z"],
            "started_at": [T("2024-01-05"), T("2024-03-05"), T("2024-02-10"), T("2024-01-06")],
            "ended_at": [T("2024-03-05"), T("2024-06-05"), pd.NaT, T("2024-01-20")],
            "mrr": [100.0, 150.0, 1000.0, 10.0]}),
        "payments": pd.DataFrame(payments,
                                 columns=["customer_id", "occurred_at", "amount", "status"]),
    }


def _labels(frames, **overrides):
    settings = Settings(**overrides)
    ds = load_source(frames, observed_until="2024-12-01")
    ff = build_training_set(ds, settings)
    return ff.frame.set_index(["customer_id", "cutoff"])


def test_churn_within_horizon_and_censoring():
    lab = _labels(_frames())
    # a churns on 2024-06-05: within 90 days of April 1st, not of February 1st
    assert lab.loc[("a", T("2024-04-01")), "churned"] == 1
    assert lab.loc[("a", T("2024-02-01")), "churned"] == 0
    assert lab.loc[("a", T("2024-04-01")), "duration_days"] == pytest.approx(65.0)
    assert lab.loc[("a", T("2024-04-01")), "event"] == 1
    # the plan change on 2024-03-05 is not churn: the runs of subscriptions are contiguous
    assert (lab.loc["a", "churned_at"] == T("2024-06-05")).all()
    # b never churns; from September on, 90 days + 14 grace days are not observed
    assert lab.loc[("b", T("2024-08-01")), "churned"] == 0
    assert pd.isna(lab.loc[("b", T("2024-09-01")), "churned"])
    assert lab.loc[("b", T("2024-09-01")), "event"] == 0
    assert lab.loc[("b", T("2024-09-01")), "duration_days"] == pytest.approx(91 - 14)
    # a is not active after its churn, so it has no rows then
    assert ("a", T("2024-07-01")) not in lab.index


def test_revenue_window_is_after_the_cutoff_and_net_of_refunds():
    lab = _labels(_frames(), ltv={"horizon_days": 60})
    assert lab.loc[("a", T("2024-02-01")), "revenue_ltv"] == pytest.approx(100 + 150)
    assert lab.loc[("a", T("2024-03-01")), "revenue_ltv"] == pytest.approx(150 - 150)


def test_labels_ignore_records_before_the_cutoff():
    base = _labels(_frames())
    early = _labels(_frames(extra_payments=[("a", T("2024-01-20"), 999.0, "paid"),
                                            ("b", T("2024-02-15"), 5.0, "failed")]))
    cols = ["churned", "event", "duration_days", "revenue_ltv"]
    at = (slice(None), T("2024-03-01"))
    pd.testing.assert_frame_equal(base.loc[at, cols], early.loc[at, cols])


def test_grace_period_bridges_a_short_gap():
    frames = _frames()
    frames["subscriptions"].loc[1, "started_at"] = T("2024-03-15")  # 10-day gap, grace 14
    assert (_labels(frames).loc["a", "churned_at"] == T("2024-06-05")).all()
    short = _labels(frames, churn=ChurnSettings(grace_days=5))
    assert short.loc[("a", T("2024-02-01")), "churned_at"] == T("2024-03-05")


def test_inactivity_labels_look_forward_and_keep_quiet_customers():
    frames = _frames()
    frames["events"] = pd.DataFrame({"customer_id": ["a", "a", "b"],
                                     "occurred_at": [T("2024-01-10"), T("2024-01-20"),
                                                     T("2024-11-20")],
                                     "event": ["login"] * 3})
    churn = ChurnSettings(definition="inactivity", inactivity_days=45, activity="any")
    lab = _labels(frames, churn=churn)
    # a's activity: events on Jan 10 and 20, purchases on Feb 5 and Mar 5 (the refund on
    # Apr 5 is not the customer buying). a stays in the spine after going quiet.
    assert sorted(lab.loc["a"].index) == list(pd.date_range("2024-02-01", "2024-11-01",
                                                            freq="MS"))
    assert lab.loc[("a", T("2024-03-01")), "churned"] == 0  # bought on Mar 5
    assert lab.loc[("a", T("2024-04-01")), "churned"] == 1  # nothing in [Apr 1, Jun 30)
    assert lab.loc[("a", T("2024-09-01")), "churned"] == 1  # window ends Nov 30, observed
    assert pd.isna(lab.loc[("a", T("2024-10-01")), "churned"])  # ends Dec 30: not observed
    # Survival: a's 45-day silence after Mar 5 completes on Apr 19.
    assert lab.loc[("a", T("2024-03-01")), "churned_at"] == T("2024-04-19")
    assert lab.loc[("a", T("2024-03-01")), "duration_days"] == pytest.approx(49.0)
    # On Jun 1 a has been silent for more than 45 days: churned at the cutoff.
    assert lab.loc[("a", T("2024-06-01")), "duration_days"] == 0.0
    assert lab.loc[("a", T("2024-06-01")), "event"] == 1
    # b's only activity (Nov 20) and z's lack of any keep them out of every cutoff.
    assert set(lab.index.get_level_values("customer_id")) == {"a"}
    # Counting purchases only, a joins at the first cutoff after its first purchase.
    paid = _labels(frames, churn=churn.model_copy(update={"activity": "purchases"}))
    assert paid.loc["a"].index.min() == T("2024-03-01")
