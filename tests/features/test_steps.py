"""The feature steps pass relations: they read what they are given and leave nothing behind."""

from __future__ import annotations

import pandas as pd
import pytest

from churnlens.features.build import build_snapshot, build_training_set, compute_features
from churnlens.features.catalog import plan_for_source
from churnlens.features.loading import load_source
from churnlens.features.queries import visible
from churnlens.features.relations import LOADED, Sources, drop, from_item
from churnlens.features.spine import build_spine, cutoff_relation
from churnlens.settings import Settings

T = pd.Timestamp
SETTINGS = Settings(churn={"definition": "contract"})  # build_spine needs it concrete


def _frames() -> dict[str, pd.DataFrame]:
    return {
        "customers": pd.DataFrame({"customer_id": ["a", "b", "c"],
                                   "signed_up_at": [T("2024-01-05"), T("2024-02-10"),
                                                    T("2024-03-01")]}),
        "subscriptions": pd.DataFrame({
            "customer_id": ["a", "b", "c"],
            "started_at": [T("2024-01-05"), T("2024-02-10"), T("2024-03-01")],
            "ended_at": [pd.NaT, T("2024-07-20"), pd.NaT],
            "mrr": [100.0, 250.0, 40.0]}),
        "events": pd.DataFrame({
            "customer_id": ["a", "a", "b", "c", "c"],
            "occurred_at": [T("2024-05-02"), T("2024-05-20"), T("2024-05-03"),
                            T("2024-04-11"), T("2024-05-30")],
            "event": ["login", "report_created", "login", "export", "login"]}),
        "payments": pd.DataFrame({
            "customer_id": ["a", "b", "b"],
            "occurred_at": [T("2024-05-05"), T("2024-05-10"), T("2024-05-11")],
            "amount": [100.0, 250.0, 250.0], "status": ["paid", "failed", "paid"]}),
    }


def _tables(con) -> list[str]:
    return sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())


def test_features_read_the_sources_they_are_given():
    ds = load_source(_frames(), observed_until="2024-12-01")
    spine = build_spine(ds.con, cutoff_relation(ds.con, [T("2024-06-01")]), SETTINGS.churn)
    full = compute_features(ds.con, spine, SETTINGS.features, ds.attributes)
    assert list(full["customer_id"]) == ["a", "b", "c"]
    # Only customer b's rows, through restricted sources and spine: b's features exactly.
    only_b = "customer_id = 'b'"
    one = compute_features(ds.con, spine.filter(only_b), SETTINGS.features, ds.attributes,
                           sources=LOADED.where(only_b))
    pd.testing.assert_frame_equal(one.astype(object),
                                  full[full["customer_id"] == "b"].reset_index(drop=True)
                                  .astype(object))
    assert one.loc[0, "failed_payments_90d"] == 1 and one.loc[0, "events_30d"] == 1
    # Sources that hold no rows give a customer no activity, whatever the loaded tables hold.
    nothing = Sources(events=f"(SELECT * FROM {LOADED.events} AS e WHERE false)",
                      payments=f"(SELECT * FROM {LOADED.payments} AS p WHERE false)")
    quiet = compute_features(ds.con, spine, SETTINGS.features, ds.attributes, sources=nothing)
    assert (quiet["events_90d"] == 0).all() and (quiet["failed_payments_90d"] == 0).all()
    assert (quiet["mrr"] == full["mrr"]).all()
    drop(ds.con, spine)


def test_spine_uses_the_cutoffs_it_is_given():
    ds = load_source(_frames(), observed_until="2024-12-01")
    cutoffs = cutoff_relation(ds.con, [T("2024-08-01"), T("2024-02-01"), T("2024-08-01")])
    spine = build_spine(ds.con, cutoffs, SETTINGS.churn)
    rows = ds.con.sql(f"SELECT customer_id, cutoff FROM {from_item(spine)} AS s").fetchall()
    # b ended on 2024-07-20; c signed up after February's cutoff.
    assert rows == [("a", T("2024-02-01")), ("a", T("2024-08-01")), ("c", T("2024-08-01"))]
    with pytest.raises(ValueError, match="no cutoffs given"):
        cutoff_relation(ds.con, [])


def test_builds_leave_no_tables_behind():
    ds = load_source(_frames(), observed_until="2024-12-01")
    loaded = _tables(ds.con)
    assert len(build_training_set(ds, SETTINGS).frame) > 0
    assert len(build_snapshot(ds, "2024-06-01", SETTINGS).frame) == 3
    assert _tables(ds.con) == loaded


def test_drop_refuses_what_materialise_did_not_make():
    ds = load_source(_frames(), observed_until="2024-12-01")
    with pytest.raises(ValueError, match="relation 'customers' is not a temporary table"):
        drop(ds.con, ds.con.table("customers"))
    assert "customers" in _tables(ds.con)


def test_visible_asks_for_the_rows_it_joins_through():
    with pytest.raises(ValueError, match=r"visible\('payments'\): give spine= to read all"):
        visible("payments", "payments", cutoffs="cutoffs")
    with pytest.raises(ValueError, match=r"visible\('payments'\): give cutoffs= to read a win"):
        visible("payments", "payments", spine="spine", window_days=30)


def test_one_cutoff_features_equal_those_built_for_many_cutoffs():
    # One cutoff reads only recent days and the events themselves; many read the running
    # totals of a rollup of every day: the same values, also for fractional quantities.
    from churnlens.features.sample import generate_sample

    tables = generate_sample(300, seed=5)
    tables.pop("truth")
    events = tables["events"]
    events["quantity"] = 1.0 + (events.index.to_numpy() % 7) / 10  # 1.0, 1.1, ..., 1.6
    ds = load_source(tables)
    features = plan_for_source(ds, SETTINGS.features).features
    assert any(f.measure == "since_signup" for f in features)  # read from the type totals
    cutoffs = [T("2025-03-01"), T("2025-06-01")]

    def build(dates):
        spine = build_spine(ds.con, cutoff_relation(ds.con, dates), SETTINGS.churn)
        return compute_features(ds.con, spine, SETTINGS.features, ds.attributes,
                                features=features)

    many, one = build(cutoffs), build(cutoffs[1:])
    at_second = many[many["cutoff"] == cutoffs[1]].reset_index(drop=True)
    assert len(one) == len(at_second) > 100
    # Totals since signup of fractional quantities: an exact sum for one cutoff, a running
    # sum of doubles for many, which may differ in the last bit.
    totals = [f.name for f in features if f.measure == "since_signup"]
    pd.testing.assert_frame_equal(one.drop(columns=totals), at_second.drop(columns=totals),
                                  check_exact=True, check_categorical=False)
    pd.testing.assert_frame_equal(one[totals], at_second[totals], check_exact=False,
                                  rtol=1e-15, atol=0)
    assert (one["events_30d"] % 1 != 0).any()  # fractional sums were compared
