"""Events by type: which types get features, what they count, and that scoring builds them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnlens.features.build import build_snapshot
from churnlens.features.catalog import plan_for_source
from churnlens.features.event_queries import choose_event_types
from churnlens.features.loading import load_source
from churnlens.settings import Settings

T = pd.Timestamp
CUTOFF = T("2024-07-01")
SETTINGS = Settings(churn={"definition": "contract"})


def _source(events: pd.DataFrame, n: int) -> dict[str, pd.DataFrame]:
    ids = [f"c{i:05d}" for i in range(n)]
    return {
        "customers": pd.DataFrame({"customer_id": ids, "signed_up_at": T("2023-01-01")}),
        "subscriptions": pd.DataFrame({"customer_id": ids, "started_at": T("2023-01-01"),
                                       "mrr": 100.0}),
        "events": events,
    }


def _events(counts: dict[str, list[int]], day: int = -10) -> pd.DataFrame:
    """COUNTS[type][i] events of that type for customer i, DAY days from the cutoff."""
    rows = [(f"c{i:05d}", CUTOFF + pd.Timedelta(days=day, hours=1), event)
            for event, per_customer in counts.items()
            for i, k in enumerate(per_customer) for _ in range(k)]
    return pd.DataFrame(rows, columns=["customer_id", "occurred_at", "event"])


def test_types_are_chosen_by_share_at_most_the_setting():
    events = _events({"a": [50], "b": [30], "c": [15], "d": [4], "e": [1]})
    ds = load_source(_source(events, 1), observed_until="2024-08-01")

    def chosen(**fs) -> tuple[str, ...]:
        return choose_event_types(ds.con, "events", Settings(features=fs).features)

    assert chosen() == ("a", "b", "c", "d")  # e holds 1% of the events, under 2%
    assert chosen(event_types_max=2) == ("a", "b")
    assert chosen(event_types_min_share=0.2) == ("a", "b")
    assert chosen(event_types_max=0) == ()


def test_per_type_counts_windows_trend_and_since_signup():
    rows = [("c00000", CUTOFF - pd.Timedelta(days=d), event) for d, event in [
        (1, "connection added"), (5, "connection added"), (20, "connection added"),
        (45, "connection added"), (200, "connection added"), (2, "removed"), (40, "removed")]]
    rows.append(("c00000", CUTOFF, "removed"))  # at the cutoff: never counted
    events = pd.DataFrame(rows, columns=["customer_id", "occurred_at", "event"])
    ds = load_source(_source(events, 1), observed_until="2024-08-01")
    ff = build_snapshot(ds, CUTOFF, SETTINGS)
    row = ff.frame.iloc[0]
    added = {f.measure: row[f.name] for f in ff.features if f.event_type == "connection added"}
    assert added == {"7d": 2.0, "30d": 3.0, "90d": 4.0, "trend_30d": (3 + 1) / (1 + 1) - 1,
                     "since_signup": 5.0}
    assert row["type_removed_7d"] == 1.0 and row["type_removed_since_signup"] == 2.0
    labels = {f.name: f.label for f in ff.features}
    assert labels["type_connection_added_30d"] == (
        "number of 'connection added' events in the last 30 days")


def test_scoring_builds_the_training_columns_whatever_the_scoring_data_hold():
    training = _events({"login": [5, 3], "connection_removed": [1, 2]})
    trained = build_snapshot(load_source(_source(training, 2), observed_until="2024-08-01"),
                             CUTOFF, SETTINGS)
    # Later data without that type, and with a new one the model never saw.
    later = _events({"login": [2, 2], "brand_new": [9, 9]})
    ds = load_source(_source(later, 2), observed_until="2024-08-01")
    assert "type_brand_new_30d" in {f.name for f in plan_for_source(ds, SETTINGS.features).features}
    scored = build_snapshot(ds, CUTOFF, SETTINGS, trained.features)
    assert list(scored.frame.columns) == list(trained.frame.columns)
    assert (scored.frame["type_connection_removed_90d"] == 0).all()
    assert list(scored.frame["type_login_30d"]) == [2.0, 2.0]


def _rare_type_base(n: int, seed: int) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """Customers whose churn follows only how often they removed a connection (3% of events).

    Every customer uses all four types with a usage level of their own; the number of
    'connection_removed' events in the 30 days before the cutoff sets the churn odds, and
    nothing else does. Returns the source and the churn outcome per customer.
    """
    rng = np.random.default_rng(seed)
    level = rng.lognormal(0.0, 0.5, n)
    counts = {"page_view": rng.poisson(40 * level), "click": rng.poisson(20 * level),
              "edit": rng.poisson(6 * level), "connection_removed": 1 + rng.poisson(1.2, n)}
    ids = np.array([f"c{i:05d}" for i in range(n)])
    parts = []
    for event, per_customer in counts.items():
        days = rng.integers(1, 30, size=per_customer.sum())
        parts.append(pd.DataFrame({
            "customer_id": np.repeat(ids, per_customer),
            "occurred_at": CUTOFF - pd.to_timedelta(days, unit="D") - pd.Timedelta(hours=2),
            "event": event}))
    events = pd.concat(parts, ignore_index=True)
    churned = rng.random(n) < 1 / (1 + np.exp(-(-3.0 + 1.0 * counts["connection_removed"])))
    return _source(events, n), churned


def _auc(train: pd.DataFrame, test: pd.DataFrame, y_train, y_test, columns) -> float:
    from lightgbm import LGBMClassifier
    from sklearn.metrics import roc_auc_score

    model = LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=7, verbose=-1,
                           deterministic=True, force_row_wise=True, seed=1, n_jobs=1)
    model.fit(train[columns], y_train)
    return roc_auc_score(y_test, model.predict_proba(test[columns])[:, 1])


def test_one_rare_event_type_that_drives_churn_gets_a_feature_that_finds_it():
    source, churned = _rare_type_base(3000, seed=5)
    shares = source["events"]["event"].value_counts(normalize=True)
    assert 0.02 < shares["connection_removed"] < 0.05  # rare-looking, still above the floor
    ff = build_snapshot(load_source(source, observed_until="2024-08-01"), CUTOFF, SETTINGS)
    assert "type_connection_removed_30d" in ff.feature_names
    frame = ff.frame.set_index("customer_id").loc[[f"c{i:05d}" for i in range(len(churned))]]
    numeric = [f.name for f in ff.features if f.kind == "numeric"]
    totals = [n for n in numeric if not n.startswith("type_")]
    half = len(frame) // 2
    train, test = frame.iloc[:half], frame.iloc[half:]
    with_types = _auc(train, test, churned[:half], churned[half:], numeric)
    without = _auc(train, test, churned[:half], churned[half:], totals)
    assert with_types > without + 0.15, (with_types, without)
    assert with_types > 0.7
