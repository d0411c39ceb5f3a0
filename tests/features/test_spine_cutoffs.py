"""Training cutoffs: regular or given, and only those whose label windows can show a churn."""

from __future__ import annotations

import pandas as pd
import pytest

from churnlens.features.build import build_training_set
from churnlens.features.loading import load_source
from churnlens.features.sample import snapshot
from churnlens.settings import Settings

T = pd.Timestamp
EXPORT = "2026-11-01"
DEFAULTS = Settings()


@pytest.fixture(scope="module")
def export() -> dict[str, pd.DataFrame]:
    return snapshot.generate(1500, seed=4)


def _load(tables, until=None, settings: Settings = DEFAULTS):
    tables = {name: frame for name, frame in tables.items() if name != "truth"}
    return load_source(tables, until, horizon_days=settings.horizon_days,
                       activity=settings.churn.activity)


def test_a_snapshot_export_trains_only_on_its_observable_cutoff(export):
    settings = Settings(horizon_days=31, data={"observed_until": EXPORT})
    ff = build_training_set(_load(export, EXPORT, settings), settings)
    frame = ff.frame
    # Default monthly cutoffs run from 2020 on; only the export's last period can show a churn.
    assert frame["cutoff"].unique().tolist() == [T("2026-10-01")]
    assert frame["churned"].notna().all()
    assert frame["churned"].sum() == export["subscriptions"]["ended_at"].notna().sum() > 0
    # Every account of the export is a customer at its cutoff, labelled as the export says.
    truth = export["truth"].set_index("customer_id")
    assert sorted(frame["customer_id"]) == sorted(truth.index)
    dropped = [n for n in ff.notes if n.startswith("left out")]
    assert len(dropped) == 1
    assert dropped[0].startswith("left out 72 cutoff(s) (2020-10-01 to 2026-09-01): the data can "
                                 "show a churn only from 2026-10-01")
    assert any("no grace period" in n for n in ff.notes)


def test_a_snapshot_with_the_default_horizon_says_what_to_set(export):
    with pytest.raises(ValueError, match=r"no training cutoff can be labelled: .* the 90-day label "
                                         r"window .* of the first such cutoff, 2026-10-01, ends "
                                         r"on 2026-12-30; set horizon_days to at most 31"):
        build_training_set(_load(export, EXPORT), Settings())


def test_a_snapshot_without_its_export_date_says_to_set_it(export):
    # Without observed_until the data end the day after the latest signup or start, before
    # every recorded end: no churn can be seen.
    with pytest.raises(ValueError, match=r"the data can show no churn: no subscription has an "
                                         r"end .* set data.observed_until to the export date"):
        build_training_set(_load(export), Settings(horizon_days=31))


def test_given_cutoffs_are_used_as_given(export):
    settings = Settings(horizon_days=31, cutoffs={"dates": ["2026-10-01"]})
    ff = build_training_set(_load(export, EXPORT, settings), settings)
    assert ff.frame["cutoff"].unique().tolist() == [T("2026-10-01")]
    assert not [n for n in ff.notes if n.startswith("left out")]
    late = Settings(horizon_days=31, cutoffs={"dates": ["2026-10-01", "2026-11-01"]})
    with pytest.raises(ValueError, match=r"cutoffs.dates: 1 date\(s\) \(2026-11-01\) at or after "
                                         r"the end of the data \(2026-11-01"):
        build_training_set(_load(export, EXPORT, late), late)


def _history() -> dict[str, pd.DataFrame]:
    """Three customers from January 2024; the first end is recorded on 2024-05-10."""
    return {
        "customers": pd.DataFrame({"customer_id": ["a", "b", "c"],
                                   "signed_up_at": [T("2024-01-05")] * 3}),
        "subscriptions": pd.DataFrame({
            "customer_id": ["a", "b", "b", "c"],
            "started_at": [T("2024-01-05"), T("2024-01-05"), T("2024-06-01"), T("2024-01-05")],
            "ended_at": [T("2024-05-10"), T("2024-06-01"), pd.NaT, T("2024-09-15")],
            "mrr": [10.0, 10.0, 20.0, 10.0]}),
    }


def test_cutoffs_before_the_first_recorded_end_are_left_out_with_a_note():
    settings = Settings(horizon_days=60, churn={"grace_days": 0})
    ff = build_training_set(_load(_history(), "2025-01-01", settings), settings)
    # Cutoffs Feb 1 .. Dec 1: May 1 is the latest at or before the first end (May 10).
    assert ff.frame["cutoff"].min() == T("2024-05-01")
    assert ("left out 3 cutoff(s) (2024-02-01, 2024-03-01, 2024-04-01): the data can show a "
            "churn only from 2024-05-10 (the first recorded subscription end), so their label "
            "windows cannot hold one; training cutoffs start at 2024-05-01") in ff.notes
    assert ff.notes[0] == ("churn (contract, auto for subscription history): the last "
                           "subscription ends within the 60-day horizon (grace 0 days)")
    labelled = ff.frame.set_index(["customer_id", "cutoff"])["churned"]
    assert labelled[("a", T("2024-05-01"))] == 1
    assert labelled[("c", T("2024-08-01"))] == 1
