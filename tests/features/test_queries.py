"""Feature queries: only features whose inputs exist, and the full-history purchase process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.features.build import build_snapshot
from churnlens.features.catalog import Feature, SourceContents, feature_list, plan_for_source
from churnlens.features.loading import load_source
from churnlens.features.queries import feature_sql
from churnlens.settings import DRIVER_GROUPS, PlaybookSettings, Settings

T = pd.Timestamp
CONTRACT = Settings(churn={"definition": "contract"})
INACTIVITY = Settings(churn={"definition": "inactivity", "activity": "purchases"})
CUTOFF = T("2024-07-01")


def _customers(n: int = 3, signup: str = "2023-01-01") -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)],
                         "signed_up_at": [T(signup)] * n})


def _snapshot_export() -> dict[str, pd.DataFrame]:
    """A CRM export: customers and one subscription each, no billing interval, no activity."""
    starts = [T("2023-01-01"), T("2024-02-01"), T("2024-09-01")]
    return {"customers": pd.DataFrame({"customer_id": ["c0", "c1", "c2"], "signed_up_at": starts,
                                       "segment": ["smb", "mid", "smb"]}),
            "subscriptions": pd.DataFrame({
                "customer_id": ["c0", "c1", "c2"], "started_at": starts,
                "mrr": [100.0, 200.0, 50.0], "plan": ["pro", "basic", "pro"]})}


def test_a_snapshot_export_gives_only_the_features_its_columns_carry():
    ds = load_source(_snapshot_export(), observed_until="2024-12-01")
    plan = plan_for_source(ds, CONTRACT.features)
    names = [f.name for f in plan.features]
    assert names == ["tenure_days", "lifecycle_stage", "mrr", "plan", "mrr_change_90d",
                     "subscription_changes_365d", "segment"]
    reasons = dict(plan.left_out)
    assert reasons["days_to_renewal"] == "subscriptions.billing_interval not given"
    assert reasons["lifecycle_stage 'renewal'"] == "subscriptions.billing_interval not given"
    assert reasons["seats"] == "subscriptions.seats not given"
    assert reasons["tickets_open"] == "the source holds no tickets"
    assert reasons["nps_latest"] == "the source holds no surveys"
    assert reasons["events_30d"] == "the source holds no events"
    assert reasons["purchases"] == "the source holds no payments"
    assert "features left out (the source holds no tickets): tickets_opened_90d, " \
           "tickets_high_90d, tickets_open, tickets_high_open, days_to_close_180d, " \
           "csat_180d" in plan.lines()
    # c0 renews yearly on 1 January, 47 days after this cutoff: in the renewal window only
    # when the export says the contract is yearly.
    cutoff = T("2024-11-15")
    frame = build_snapshot(ds, cutoff, CONTRACT).frame
    assert list(frame.columns) == ["customer_id", "cutoff", *names]
    assert list(frame["lifecycle_stage"]) == ["adoption", "adoption", "onboarding"]
    yearly = _snapshot_export()
    yearly["subscriptions"]["billing_interval"] = "year"
    ds = load_source(yearly, observed_until="2024-12-01")
    frame = build_snapshot(ds, cutoff, CONTRACT).frame
    assert list(frame["lifecycle_stage"]) == ["renewal", "adoption", "onboarding"]
    assert frame.loc[0, "days_to_renewal"] == pytest.approx(47, abs=0.5)


def test_optional_columns_and_values_decide_what_is_built():
    frames = {
        "customers": _customers(),
        "payments": pd.DataFrame({"customer_id": ["c0", "c1"], "occurred_at": [T("2024-03-01")] * 2,
                                  "amount": [10.0, 20.0]}),  # no status: every payment paid
        "tickets": pd.DataFrame({"customer_id": ["c0"], "opened_at": [T("2024-03-02")],
                                 "priority": ["normal"]}),  # no close, no csat, never high
        "surveys": pd.DataFrame({"customer_id": ["c1"], "answered_at": [T("2024-03-03")],
                                 "score": [4.0]}),  # no NPS column
    }
    plan = plan_for_source(load_source(frames, observed_until="2024-08-01"), CONTRACT.features)
    names = {f.name for f in plan.features}
    reasons = dict(plan.left_out)
    assert {"paid_amount_90d", "purchases", "tickets_opened_90d"} <= names
    assert reasons["failed_payments_90d"] == "no payment has status 'failed'"
    assert reasons["refunds_90d"] == "no payment has status 'refunded'"
    assert reasons["tickets_high_90d"] == "no ticket has priority 'high'"
    assert reasons["tickets_open"] == "tickets.closed_at not given"
    assert reasons["csat_180d"] == "tickets.csat not given"
    assert reasons["nps_latest"] == "surveys.nps not given"
    assert reasons["mrr"] == "the source holds no subscriptions"
    assert not names & {"mrr", "days_to_renewal", "nps_latest", "tickets_open", "csat_180d"}


def test_value_features_need_the_value_event():
    frames = {"customers": _customers(),
              "events": pd.DataFrame({"customer_id": ["c0"], "occurred_at": [T("2024-03-01")],
                                      "event": ["login"]})}
    plan = plan_for_source(load_source(frames, observed_until="2024-08-01"), CONTRACT.features)
    assert dict(plan.left_out)["reached_first_value"] == (
        "no 'report_created' event in the source (features.value_event)")
    assert "events_30d" in {f.name for f in plan.features}


def _purchase_log(seed: int, customers: int = 12) -> pd.DataFrame:
    """Random payments: several a day at times, all three statuses, amounts on a wide range."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(customers):
        days = np.sort(rng.choice(500, size=rng.integers(0, 15), replace=True))
        for d in days:
            at = T("2023-06-01") + pd.Timedelta(days=int(d), hours=int(rng.integers(0, 24)))
            status = rng.choice(["paid", "paid", "paid", "failed", "refunded"])
            rows.append((f"c{i}", at, float(rng.lognormal(4, 1)), status))
    return pd.DataFrame(rows, columns=["customer_id", "occurred_at", "amount", "status"])


def _expected_purchases(payments: pd.DataFrame, customer: str, cutoff: pd.Timestamp) -> dict:
    """The purchase-process features, from their definitions (pandas, one customer)."""
    own = payments[(payments.customer_id == customer) & (payments.occurred_at < cutoff)]
    paid = own[own.status == "paid"]
    values = paid.groupby(paid.occurred_at.dt.normalize())["amount"].sum()
    n, days = len(values), values.index
    gaps = np.diff(days.values).astype("timedelta64[s]").astype(float) / 86400
    age = (cutoff - own.occurred_at).dt.days

    def amount(since: int, until: int = 0) -> float:
        return float(paid.amount[(age < since) & (age >= until)].sum())

    p90, prev = amount(90), amount(180, 90)
    recency = (cutoff - days[-1]).days if n else np.nan
    return {
        "purchases": n, "repeat_purchases": max(n - 1, 0),
        "days_since_first_purchase": (cutoff - days[0]).days if n else np.nan,
        "days_since_last_purchase": recency,
        "order_value_mean": values.mean() if n else np.nan,
        "order_value_std": values.std(ddof=1) if n >= 2 else np.nan,
        "purchase_gap_mean_days": gaps.mean() if n >= 2 else np.nan,
        "purchase_gap_std_days": gaps.std(ddof=1) if n >= 3 else np.nan,
        "recency_to_gap_ratio": recency / gaps.mean() if n >= 2 else np.nan,
        "paid_amount_90d": p90, "paid_amount_365d": amount(365),
        "paid_amount_trend_90d": (p90 - prev) / (p90 + prev) if p90 + prev > 0 else np.nan,
        "failed_payments_90d": int(((own.status == "failed") & (age < 90)).sum()),
        "failed_payments_30d": int(((own.status == "failed") & (age < 30)).sum()),
        "refunds_90d": int(((own.status == "refunded") & (age < 90)).sum()),
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_purchase_process_features_follow_their_definitions(seed):
    payments = _purchase_log(seed)
    frames = {"customers": _customers(12), "payments": payments}
    ds = load_source(frames, observed_until="2025-01-01")
    spreads = 0
    for cutoff in (T("2023-09-01"), T("2024-03-01"), T("2024-10-01")):
        frame = build_snapshot(ds, cutoff, INACTIVITY).frame.set_index("customer_id")
        spreads += int(frame["purchase_gap_std_days"].notna().sum())
        for customer, row in frame.iterrows():
            want = _expected_purchases(payments, customer, cutoff)
            got = row[list(want)].astype(float)
            np.testing.assert_allclose(got.to_numpy(), np.array(list(want.values()), float),
                                       rtol=1e-9, atol=1e-9, err_msg=f"{customer} {cutoff}")
    assert spreads >= 10  # the comparison covered customers with three purchases or more


def test_order_value_spread_of_an_unchanging_invoice_is_exactly_zero():
    days = pd.date_range("2023-01-05", periods=14, freq="MS") + pd.Timedelta(hours=3)
    payments = pd.DataFrame({"customer_id": "c0", "occurred_at": days, "amount": 1234.56})
    ds = load_source({"customers": _customers(1), "payments": payments},
                     observed_until="2024-06-01")
    row = build_snapshot(ds, T("2024-04-01"), INACTIVITY).frame.iloc[0]
    assert row["order_value_std"] == 0.0 and row["order_value_mean"] == pytest.approx(1234.56)
    span = (T("2024-03-01") - T("2023-02-01")).days  # the first to the 14th month start
    assert row["purchases"] == 14 and row["purchase_gap_mean_days"] == span / 13


def test_driver_groups_follow_the_signal():
    features = {f.name: f for f in feature_list(CONTRACT.features, {})}
    billing = sorted(n for n, f in features.items() if f.group == "billing")
    assert billing == ["failed_payments_30d", "failed_payments_90d", "refunds_90d"]
    assert {features[n].group for n in ("paid_amount_90d", "paid_amount_365d", "purchases",
                                        "days_since_last_purchase")} == {"revenue"}
    assert features["mrr"].group == "account"
    assert "revenue" in DRIVER_GROUPS and PlaybookSettings().revenue
    assert {f.group for f in features.values()} <= set(DRIVER_GROUPS)


def test_feature_sql_refuses_a_feature_it_does_not_know():
    fs = CONTRACT.features
    with pytest.raises(ValueError, match=r"feature_sql: 1 unknown feature\(s\) \['magic'\]"):
        feature_sql(fs, [Feature("magic", "numeric", "usage", "magic")], spine="s", daily="d")
    odd = Feature("type_x_14d", "numeric", "usage", "x", event_type="x", measure="14d")
    with pytest.raises(ValueError, match=r"measure '14d' is not a window of features.windows"):
        feature_sql(fs, [odd], spine="s", daily="d")


def test_an_attribute_named_like_a_feature_is_refused():
    with pytest.raises(ValueError, match=r"customers column\(s\) \['mrr'\] have the name"):
        feature_list(CONTRACT.features, {"mrr": "float"},
                     SourceContents.complete(CONTRACT.features))
