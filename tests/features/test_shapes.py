"""Shapes: the load report names subscription history, snapshot or transactions, and why."""

from __future__ import annotations

import pandas as pd
import pytest

from churnlens.features.loading import load_source
from churnlens.features.sample import generate_sample, snapshot, transactions
from churnlens.features.shapes import observable_from, resolve_churn
from churnlens.settings import ChurnSettings

T = pd.Timestamp


def _customers(n: int) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)],
                         "signed_up_at": [T("2024-01-01")] * n})


def _subscriptions(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "started_at", "ended_at", "mrr"])


def test_a_history_of_subscriptions_is_the_subscriptions_shape():
    subs = _subscriptions([("c0", T("2024-01-01"), T("2024-03-01"), 10.0),
                           ("c0", T("2024-03-01"), None, 20.0),
                           ("c1", T("2024-01-01"), T("2024-02-10"), 10.0)])
    ds = load_source({"customers": _customers(2), "subscriptions": subs},
                     observed_until="2024-12-01")
    assert ds.shape == "subscriptions"
    assert ds.churn_observable_from == T("2024-02-10")
    lines = ds.report.lines()
    assert lines[1] == ("  shape: subscription history (3 subscriptions of 2 customers, up to 2 "
                        "per customer, 2 ended)")
    assert lines[2] == "  churn observable from 2024-02-10 00:00 (the first recorded subscription end)"


def test_one_row_per_customer_with_recent_ends_only_is_a_snapshot():
    ends = [T("2024-11-03"), None, T("2024-11-20")]
    subs = _subscriptions([(f"c{i}", T("2024-01-01"), end, 10.0) for i, end in enumerate(ends)])
    ds = load_source({"customers": _customers(3), "subscriptions": subs},
                     observed_until="2024-12-01", horizon_days=31)
    assert ds.shape == "snapshot"
    assert ds.churn_observable_from == T("2024-11-03")
    assert ds.report.lines()[1] == (
        "  shape: one-snapshot export (one subscription per customer; all 2 ends in the last 28 "
        "days, each a churn as recorded, with no grace period)")


def test_an_old_end_makes_one_row_per_customer_a_history():
    # One subscription each, but an end 100 days before the end of the data: ends are
    # recorded over time, not only for the last period.
    ends = [T("2024-08-23"), None, T("2024-11-20")]
    subs = _subscriptions([(f"c{i}", T("2024-01-01"), end, 10.0) for i, end in enumerate(ends)])
    ds = load_source({"customers": _customers(3), "subscriptions": subs},
                     observed_until="2024-12-01", horizon_days=31)
    assert ds.shape == "subscriptions"
    # A longer horizon widens the last period: the same data are then a snapshot.
    wide = load_source({"customers": _customers(3), "subscriptions": subs},
                       observed_until="2024-12-01", horizon_days=120)
    assert wide.shape == "snapshot"


def test_no_subscriptions_is_the_transactions_shape():
    payments = pd.DataFrame({"customer_id": ["c0", "c1", "c1"],
                             "occurred_at": [T("2024-03-01"), T("2024-02-01"), T("2024-01-15")],
                             "amount": [10.0, 20.0, 5.0],
                             "status": ["paid", "paid", "failed"]})
    events = pd.DataFrame({"customer_id": ["c0"], "occurred_at": [T("2024-01-02")],
                           "event": ["visit"]})
    frames = {"customers": _customers(2), "payments": payments, "events": events}
    ds = load_source(frames, observed_until="2024-12-01")
    assert ds.shape == "transactions"
    # A failed payment is not a purchase: the first purchase is c1's on Feb 1.
    assert ds.churn_observable_from == T("2024-02-01")
    assert ds.report.lines()[1] == ("  shape: transactions without contracts (no subscriptions: "
                                    "purchases and activity only)")
    assert "the first purchase" in ds.report.lines()[2]
    anything = load_source(frames, observed_until="2024-12-01", activity="any")
    assert anything.churn_observable_from == T("2024-01-02")
    assert observable_from(ds.con, "inactivity", 90, "any")[0] == T("2024-01-02")


def test_ends_after_the_export_are_open_and_the_report_says_so():
    subs = _subscriptions([("c0", T("2024-01-01"), T("2024-11-20"), 10.0),
                           ("c1", T("2024-01-01"), None, 10.0)])
    ds = load_source({"customers": _customers(2), "subscriptions": subs},
                     observed_until="2024-11-01")
    assert ds.churn_observable_from is None
    lines = ds.report.lines()
    assert lines[2] == ("  churn observable from never: no subscription has an end (ended_at) "
                        "before the end of the data")
    assert lines[-1] == ("  subscriptions: 1 end(s) at or after observed_until 2024-11-01 "
                         "treated as not yet known (open); if the data were exported later, "
                         "set data.observed_until to the export date")


def test_resolve_churn_follows_the_shape():
    subs = _subscriptions([("c0", T("2024-01-01"), T("2024-11-20"), 10.0),
                           ("c1", T("2024-01-01"), None, 10.0)])
    snap = load_source({"customers": _customers(2), "subscriptions": subs},
                       observed_until="2024-12-01")
    auto = resolve_churn(ChurnSettings(), snap)
    assert (auto.definition, auto.grace_days) == ("contract", 0)
    asked = resolve_churn(ChurnSettings(definition="inactivity", inactivity_days=30), snap)
    assert (asked.definition, asked.inactivity_days) == ("inactivity", 30)
    payments = pd.DataFrame({"customer_id": ["c0"], "occurred_at": [T("2024-03-01")],
                             "amount": [10.0]})
    shop = load_source({"customers": _customers(1), "payments": payments})
    assert resolve_churn(ChurnSettings(), shop).definition == "inactivity"
    assert resolve_churn(ChurnSettings(), shop).grace_days == 14
    with pytest.raises(ValueError, match="churn.definition is contract, but the source holds no "
                                         "subscriptions: set churn.definition: auto"):
        resolve_churn(ChurnSettings(definition="contract"), shop)


@pytest.mark.parametrize(("make", "horizon", "until", "shape"), [
    (lambda: generate_sample(300, seed=2), 90, None, "subscriptions"),
    (lambda: snapshot.generate(300, seed=2), 31, "2026-11-01", "snapshot"),
    (lambda: transactions.generate(300, seed=2), 90, None, "transactions"),
])
def test_each_sample_shape_is_recognised(make, horizon, until, shape):
    tables = {name: frame for name, frame in make().items() if name != "truth"}
    ds = load_source(tables, until, horizon_days=horizon)
    assert ds.shape == shape
    assert ds.churn_observable_from is not None
    assert ds.churn_observable_from < ds.observed_until
