"""Without contracts: every customer with history is in the spine; labels look forward only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.features.build import build_snapshot, build_training_set
from churnlens.features.loading import load_source
from churnlens.features.sample import transactions
from churnlens.settings import Settings

T = pd.Timestamp
END = T("2026-11-01")
SETTINGS = Settings()  # auto: inactivity on data without subscriptions
KEYS = ["customer_id", "cutoff"]


def _shop() -> dict[str, pd.DataFrame]:
    """a bought long ago and went quiet; b buys now and then; c only visits."""
    return {
        "customers": pd.DataFrame({"customer_id": ["a", "b", "c"],
                                   "signed_up_at": [T("2024-01-02")] * 3}),
        "payments": pd.DataFrame({"customer_id": ["a", "b", "b"],
                                  "occurred_at": [T("2024-01-03"), T("2024-01-10"),
                                                  T("2024-06-20")],
                                  "amount": [20.0, 30.0, 40.0]}),
        "events": pd.DataFrame({"customer_id": ["c"], "occurred_at": [T("2024-02-01")],
                                "event": ["visit"]}),
    }


def test_quiet_customers_stay_in_the_spine():
    ds = load_source(_shop(), observed_until="2024-12-01")
    june = build_snapshot(ds, "2024-06-01", SETTINGS).frame
    # a has been quiet for five months, and is still scored; c never bought.
    assert june["customer_id"].tolist() == ["a", "b"]
    visits = Settings(churn={"activity": "any"})
    assert build_snapshot(ds, "2024-06-01", visits).frame["customer_id"].tolist() == ["a", "b", "c"]


def test_small_shop_labels():
    ds = load_source(_shop(), observed_until="2024-12-01")
    lab = build_training_set(ds, SETTINGS).frame.set_index(KEYS)
    assert lab.loc[("b", T("2024-04-01")), "churned"] == 0  # buys on Jun 20, inside 90 days
    assert lab.loc[("b", T("2024-03-01")), "churned"] == 1  # [Mar 1, May 30) is quiet
    assert lab.loc[("a", T("2024-08-01")), "churned"] == 1
    assert pd.isna(lab.loc[("a", T("2024-10-01")), "churned"])  # window ends after Dec 1
    # b's 60-day silence after Jun 20 completes on Aug 19: the churn 50 days after Jul 1.
    assert lab.loc[("b", T("2024-07-01")), "churned_at"] == T("2024-08-19")
    assert lab.loc[("b", T("2024-07-01")), "duration_days"] == pytest.approx(49.0)
    # b is between silences on Apr 1 (last purchase 82 days before): churned at the cutoff.
    assert lab.loc[("b", T("2024-04-01")), "duration_days"] == 0.0
    assert lab.loc[("b", T("2024-04-01")), "event"] == 1


@pytest.fixture(scope="module")
def shop():
    tables = transactions.generate(2000, seed=1)
    ds = load_source({k: v for k, v in tables.items() if k != "truth"}, END)
    return tables, ds, build_training_set(ds, SETTINGS).frame


def _purchases(tables) -> pd.DataFrame:
    paid = tables["payments"][tables["payments"]["status"] == "paid"]
    return paid[["customer_id", "occurred_at"]].sort_values("occurred_at", ignore_index=True)


def test_every_customer_with_a_purchase_before_the_cutoff_is_in_the_spine(shop):
    tables, _, frame = shop
    first = _purchases(tables).groupby("customer_id")["occurred_at"].min()
    signed = tables["customers"].set_index("customer_id")["signed_up_at"]
    expected = pd.DataFrame([(cid, c) for c in sorted(frame["cutoff"].unique())
                             for cid in first.index[(first < c) & (signed[first.index] < c)]],
                            columns=KEYS)
    got = frame[KEYS].sort_values(KEYS, ignore_index=True)
    pd.testing.assert_frame_equal(got, expected.sort_values(KEYS, ignore_index=True),
                                  check_dtype=False)
    # And the generator's ground truth holds exactly the same customers at its cutoffs.
    truth = tables["truth"][KEYS]
    ours = frame[frame["cutoff"].isin(truth["cutoff"].unique())][KEYS]
    assert len(ours) == len(truth)
    assert set(map(tuple, ours.to_numpy())) == set(map(tuple, truth.to_numpy()))


def _recomputed(tables, frame, settings: Settings) -> pd.DataFrame:
    """The labels, recomputed in pandas from the definitions in the labels module."""
    horizon, silence = (pd.Timedelta(days=settings.horizon_days),
                        pd.Timedelta(days=settings.churn.inactivity_days))
    buys = _purchases(tables).drop_duplicates()
    rows = frame[KEYS].sort_values("cutoff", ignore_index=True)
    rows["cutoff"] = rows["cutoff"].astype("datetime64[ns]")
    nxt = pd.merge_asof(rows, buys.rename(columns={"occurred_at": "next_at"}), left_on="cutoff",
                        right_on="next_at", by="customer_id", direction="forward")
    last = pd.merge_asof(rows, buys.rename(columns={"occurred_at": "last_at"}), left_on="cutoff",
                         right_on="last_at", by="customer_id", direction="backward",
                         allow_exact_matches=False)
    buys = buys.sort_values(KEYS[:1] + ["occurred_at"], ignore_index=True)
    gap = buys.groupby("customer_id")["occurred_at"].shift(-1) - buys["occurred_at"]
    ends = buys.loc[gap.isna() | (gap > silence), ["customer_id", "occurred_at"]]
    ends = (ends.assign(churn_at=ends["occurred_at"] + silence)
            .sort_values("churn_at")[["customer_id", "churn_at"]])
    churn = pd.merge_asof(rows, ends, left_on="cutoff", right_on="churn_at", by="customer_id",
                          direction="forward")
    out = rows.copy()
    seen = out["cutoff"] + horizon <= END
    quiet = nxt["next_at"].isna() | (nxt["next_at"] >= out["cutoff"] + horizon)
    out["churned"] = np.where(seen, quiet.astype(float), np.nan)
    at = churn["churn_at"].where(~(last["last_at"] + silence < out["cutoff"]), out["cutoff"])
    at = at.where(at <= END)
    out["event"] = at.notna().astype(int)
    out["duration_days"] = (at.fillna(END) - out["cutoff"]).dt.total_seconds() / 86400
    return out.sort_values(KEYS, ignore_index=True)


def test_labels_agree_with_a_pandas_recomputation(shop):
    tables, _, frame = shop
    expected = _recomputed(tables, frame, SETTINGS)
    got = frame.sort_values(KEYS, ignore_index=True)
    pd.testing.assert_series_equal(got["churned"], expected["churned"], check_dtype=False)
    pd.testing.assert_series_equal(got["event"], expected["event"], check_dtype=False)
    np.testing.assert_allclose(got["duration_days"], expected["duration_days"], atol=1e-6)
    assert 0.3 < got["churned"].mean() < 0.95 and got["churned"].isna().any()


def test_revenue_is_paid_minus_refunded_in_the_ltv_window(shop):
    tables, _, frame = shop
    pay = tables["payments"]
    signed = np.where(pay["status"] == "paid", pay["amount"],
                      np.where(pay["status"] == "refunded", -pay["amount"].abs(), 0.0))
    pay = pay.assign(signed=signed)
    some = frame[frame["revenue_ltv"].notna()].sample(300, random_state=0)
    for row in some.itertuples():
        mine = pay[(pay["customer_id"] == row.customer_id) & (pay["occurred_at"] >= row.cutoff)
                   & (pay["occurred_at"] < row.cutoff + pd.Timedelta(days=365))]
        assert row.revenue_ltv == pytest.approx(mine["signed"].sum(), abs=1e-6)
    late = frame["cutoff"] + pd.Timedelta(days=365) > END
    assert frame.loc[late, "revenue_ltv"].isna().all()


def test_scoring_snapshot_covers_every_customer_with_history(shop):
    tables, ds, _ = shop
    as_of = T("2026-10-01")
    scored = build_snapshot(ds, as_of, SETTINGS).frame
    buys = _purchases(tables)
    with_history = set(buys.loc[buys["occurred_at"] < as_of, "customer_id"])
    assert set(scored["customer_id"]) == with_history
    recent = set(buys.loc[buys["occurred_at"] >= as_of - pd.Timedelta(days=90), "customer_id"])
    # Most of the base is quiet at any moment; they are scored too.
    assert len(with_history - recent) > len(with_history) / 2
