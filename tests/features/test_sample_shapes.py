"""Tests of the snapshot-export and transactions sample generators: contract, determinism,
the shape's own facts, and a ground truth that is right and not trivially recoverable.

Tolerances: customers are independent given the generator's latent state, so a realised
count over n customers has variance sum_i p_i (1 - p_i) (buy / churn indicators) or
sum_i Var(r_i), estimated without bias by sum_i (r_i - E r_i)^2 (revenue, order counts). A
correct truth then lands within 4 standard errors except with probability ~6e-5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churnlens.features.loading import load_source
from churnlens.features.sample import snapshot, transactions

END = pd.Timestamp("2026-11-01")
TIME_COLUMN = {"customers": "signed_up_at", "subscriptions": "started_at",
               "payments": "occurred_at", "events": "occurred_at", "truth": "cutoff"}
GENERATORS = {"snapshot": snapshot.generate, "transactions": transactions.generate}


@pytest.fixture(scope="module")
def snap() -> dict[str, pd.DataFrame]:
    return snapshot.generate(6000, seed=3)


@pytest.fixture(scope="module")
def tx() -> dict[str, pd.DataFrame]:
    return transactions.generate(6000, seed=3)


@pytest.fixture(scope="module")
def samples(snap, tx) -> dict[str, dict[str, pd.DataFrame]]:
    return {"snapshot": snap, "transactions": tx}


def _within(realised: float, expected: float, se: float, what: str) -> None:
    print(f"{what}: realised {realised:.4f}, truth {expected:.4f}, se {se:.4f}")
    assert abs(realised - expected) <= 4 * se, what


@pytest.mark.parametrize("shape", GENERATORS)
def test_same_seed_same_tables_other_seed_other_tables(shape):
    first, again = GENERATORS[shape](400, seed=11), GENERATORS[shape](400, seed=11)
    other = GENERATORS[shape](400, seed=12)
    assert set(first) == set(again)
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert not first["customers"].equals(other["customers"])
    assert not first["truth"].equals(other["truth"])


@pytest.mark.parametrize("shape", GENERATORS)
def test_bad_arguments_are_named(shape):
    with pytest.raises(ValueError, match="n_customers must be an integer >= 1"):
        GENERATORS[shape](0)
    with pytest.raises(ValueError, match="horizon_days must be an integer from 1 to 366"):
        GENERATORS[shape](10, horizon_days=0)
    with pytest.raises(ValueError, match="end must be a midnight"):
        GENERATORS[shape](10, end="2026-11-01 12:00")


@pytest.mark.parametrize("shape", GENERATORS)
def test_tables_meet_the_contract_through_the_loader(samples, shape, tmp_path):
    tables = samples[shape]
    for name, frame in tables.items():
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
    ds = load_source(tmp_path, observed_until=END)
    contract = [name for name in tables if name != "truth"]
    for name in contract:
        assert ds.report.rows_kept[name] == len(tables[name]), name
    assert not ds.report.set_aside
    attributes = [c for c in tables["customers"] if c not in ("customer_id", "signed_up_at")]
    assert sorted(ds.attributes) == sorted(attributes)


@pytest.mark.parametrize("shape", GENERATORS)
def test_ids_order_and_timestamps(samples, shape):
    tables = samples[shape]
    ids = tables["customers"].customer_id
    assert ids.is_unique and ids.str.fullmatch(r"C\d{6}").all()
    for name, frame in tables.items():
        assert frame.customer_id.isin(ids).all(), name
        key = frame[["customer_id", TIME_COLUMN[name]]]
        assert key.equals(key.sort_values(list(key.columns), kind="stable")), name
        for col in frame.columns:
            if frame[col].dtype.kind == "M":
                assert str(frame[col].dtype) == "datetime64[ns]", (name, col)  # tz-naive
                assert not (frame[col].dropna() >= END).any(), (name, col)


def test_snapshot_is_one_export_of_the_accounts_alive_at_the_cutoff(snap):
    cust, subs, truth = snap["customers"], snap["subscriptions"], snap["truth"]
    cutoff = END - pd.Timedelta(days=snapshot.HORIZON_DAYS)
    assert subs.customer_id.is_unique and subs.customer_id.equals(cust.customer_id)
    assert (truth.cutoff == cutoff).all()
    ended = subs.ended_at.dropna()
    assert ((ended >= cutoff) & (ended < END)).all()
    alive = subs[(subs.started_at < cutoff) & (subs.ended_at.isna() | (subs.ended_at >= cutoff))]
    assert sorted(alive.customer_id) == sorted(truth.customer_id) == sorted(cust.customer_id)
    tenure = (cutoff - subs.started_at).dt.days
    assert tenure.min() < 30 and tenure.max() > 5 * 365
    assert (cust.signed_up_at <= subs.started_at).all()
    assert set(subs.billing_interval) == {"month", "year"}


def test_snapshot_churn_share_and_truth_agree(snap):
    churned = snap["subscriptions"].ended_at.notna().to_numpy()
    p = snap["truth"].true_churn_prob.to_numpy()
    assert 0.06 <= churned.mean() <= 0.15
    assert ((p > 0) & (p < 1)).all()
    _within(churned.mean(), p.mean(), np.sqrt((p * (1 - p)).sum()) / p.size, "snapshot churn")
    by_contract = pd.Series(churned).groupby(snap["customers"].contract_type.to_numpy()).mean()
    assert by_contract["month"] > 3 * by_contract["year"]  # renewals only once a year


def test_snapshot_truth_over_several_anchor_months():
    tables = snapshot.generate(3000, seed=5, horizon_days=90)  # Monte Carlo engagement paths
    churned = tables["subscriptions"].ended_at.notna().to_numpy()
    p = tables["truth"].true_churn_prob.to_numpy()
    _within(churned.mean(), p.mean(), np.sqrt((p * (1 - p)).sum()) / p.size, "90-day churn")


def test_snapshot_truth_beats_a_one_hot_logistic_regression(snap):
    cust, subs = snap["customers"], snap["subscriptions"]
    cutoff = snap["truth"].cutoff.iloc[0]
    frame = cust.drop(columns=["customer_id", "signed_up_at"]).assign(
        log_tenure=np.log1p((cutoff - subs.started_at).dt.days), log_mrr=np.log1p(subs.mrr),
        log_seats=np.log1p(subs.seats), plan=subs.plan, billing_interval=subs.billing_interval)
    categorical = [c for c in frame if frame[c].dtype == object]
    numeric = [c for c in frame if c not in categorical]
    y = subs.ended_at.notna().to_numpy()
    train = np.arange(y.size) % 2 == 0
    model = make_pipeline(ColumnTransformer([
        ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ("num", StandardScaler(), numeric)]), LogisticRegression(max_iter=2000))
    model.fit(frame[train], y[train])
    auc_lr = roc_auc_score(y[~train], model.predict_proba(frame[~train])[:, 1])
    auc_oracle = roc_auc_score(y[~train], snap["truth"].true_churn_prob[~train])
    print(f"snapshot AUC: oracle {auc_oracle:.4f}, one-hot logistic regression {auc_lr:.4f}")
    assert auc_oracle > auc_lr + 0.03


def _paid(tx) -> pd.DataFrame:
    return tx["payments"][tx["payments"].status == "paid"]


def _rfm(tx, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Frequency, recency and age from paid orders before the cutoff, per truth customer."""
    truth = tx["truth"][tx["truth"].cutoff == cutoff].set_index("customer_id")
    before = _paid(tx)[_paid(tx).occurred_at < cutoff].groupby("customer_id").occurred_at
    frame = pd.DataFrame({"orders": before.size(), "recency": (cutoff - before.max()).dt.days,
                          "age": (cutoff - before.min()).dt.days}).reindex(truth.index)
    window = _paid(tx)[(_paid(tx).occurred_at >= cutoff)
                       & (_paid(tx).occurred_at < cutoff + pd.Timedelta(days=90))]
    return frame.assign(bought=truth.index.isin(window.customer_id),
                        p_true=truth.true_p_purchase)


def test_transactions_buyers_and_spend(tx):
    paid = _paid(tx)
    orders = paid.groupby("customer_id").size()
    assert orders.index.equals(pd.Index(tx["customers"].customer_id))  # everyone bought once
    assert 0.3 <= (orders == 1).mean() <= 0.7
    repeat = orders[orders >= 2].index
    mean_value = paid.groupby("customer_id").amount.mean()
    rho, p_value = spearmanr(orders[repeat], mean_value[repeat])
    print(f"Spearman(orders, mean order value) over {repeat.size} repeat buyers: {rho:.3f}")
    assert rho > 0.05 and p_value < 1e-3  # Gamma-Gamma's independence does not hold
    refunds = tx["payments"][tx["payments"].status == "refunded"]
    assert 0 < len(refunds) < 0.1 * len(paid)
    assert (tx["payments"].amount > 0).all()
    # Each refund repays an earlier order of the same customer, for that order's amount.
    pairs = refunds.reset_index().merge(paid, on=["customer_id", "amount"],
                                        suffixes=("_refund", ""))
    earlier = pairs[pairs.occurred_at < pairs.occurred_at_refund]
    assert set(earlier["index"]) == set(refunds.index)
    assert set(tx["events"].event) == set(transactions.EVENT_TYPES)


def test_transactions_truth_rows_and_ranges(tx):
    truth, paid = tx["truth"], _paid(tx)
    cutoffs = sorted(truth.cutoff.unique())
    assert len(cutoffs) == transactions.TRUTH_CUTOFFS
    assert all(c.day == 1 and c + pd.Timedelta(days=90) <= END for c in cutoffs)
    first_order = paid.groupby("customer_id").occurred_at.min()
    for c in (cutoffs[0], cutoffs[-1]):
        expected = sorted(first_order[first_order < c].index)
        assert sorted(truth.customer_id[truth.cutoff == c]) == expected
    for col in ("true_p_purchase", "true_churn_prob", "true_p_active"):
        assert ((truth[col] > 0) & (truth[col] < 1)).all(), col
    assert (truth.true_p_active >= truth.true_p_purchase).all()
    # Jensen: P(no order) = E[exp(-L)] >= exp(-E[L]), so E[orders] >= -log(1 - p).
    bound = -np.log1p(-truth.true_p_purchase)
    assert (truth.true_purchases >= bound * (1 - 1e-4)).all()
    assert set(truth.true_state) <= set(transactions.STATES)


def test_transactions_truth_matches_what_happened(tx):
    truth, pay = tx["truth"], tx["payments"]
    c0 = truth.cutoff.min()
    assert c0 + pd.Timedelta(days=transactions.LTV_HORIZON_DAYS) <= END  # window is observed
    t0 = truth[truth.cutoff == c0].set_index("customer_id")
    frame = _rfm(tx, c0)
    p = t0.true_p_purchase.to_numpy()
    _within(frame.bought.mean(), p.mean(), np.sqrt((p * (1 - p)).sum()) / p.size,
            "share who buy in the horizon")
    window = pay[(pay.occurred_at >= c0) & (pay.occurred_at < c0 + pd.Timedelta(days=90))]
    count = window[window.status == "paid"].groupby("customer_id").size()
    count = count.reindex(t0.index, fill_value=0)
    _within(count.sum(), t0.true_purchases.sum(),
            np.sqrt(((count - t0.true_purchases) ** 2).sum()), "orders in the horizon")
    ltv = pay[(pay.occurred_at >= c0)
              & (pay.occurred_at < c0 + pd.Timedelta(days=transactions.LTV_HORIZON_DAYS))]
    net = ltv.amount.where(ltv.status == "paid", -ltv.amount).groupby(ltv.customer_id).sum()
    net = net.reindex(t0.index, fill_value=0.0)
    _within(net.sum(), t0.true_revenue_ltv.sum(),
            np.sqrt(((net - t0.true_revenue_ltv) ** 2).sum()), "net revenue in the LTV window")


def test_transactions_truth_beats_recency_frequency(tx):
    cutoffs = sorted(tx["truth"].cutoff.unique())
    train, test = _rfm(tx, cutoffs[0]), _rfm(tx, cutoffs[3])
    columns = ["orders", "recency", "age"]
    model = LogisticRegression(max_iter=1000).fit(np.log1p(train[columns]), train.bought)
    auc_rf = roc_auc_score(test.bought, model.predict_proba(np.log1p(test[columns]))[:, 1])
    auc_oracle = roc_auc_score(test.bought, test.p_true)
    print(f"transactions AUC at {cutoffs[3].date()}: oracle {auc_oracle:.4f}, "
          f"logistic regression on recency/frequency/age {auc_rf:.4f}")
    assert auc_oracle > auc_rf + 0.04
