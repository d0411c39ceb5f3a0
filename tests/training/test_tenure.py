"""Survival on tenure: known Weibull parameters recovered from simulated left-truncated data
with 31 days of follow-up, the laws of its curves, the time axis chosen by the follow-up,
what is flagged as extrapolated, and on the snapshot sample P(30 days) against the window by
tier and P(365 days) against a year of the same generator."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnlens.features.build import build_training_set
from churnlens.features.loading import load_source
from churnlens.features.queries import Feature
from churnlens.features.sample import snapshot
from churnlens.settings import Settings
from churnlens.training import tenure
from churnlens.training.metrics import kaplan_meier_baseline
from churnlens.training.report import render
from churnlens.training.split import temporal_split
from churnlens.training.survival import (
    CUTOFF_CANDIDATES,
    TENURE_CANDIDATES,
    SurvivalModel,
)
from churnlens.training.survival_support import horizon_metrics

SHAPE, B0, B1 = 1.3, 6.0, 0.5  # Weibull AFT on tenure: log scale = B0 + B1 x
WINDOW = 31.0
X = [Feature("x", "numeric", "account", "x"), Feature("tenure_days", "numeric", "account", "t")]


def _left_truncated(n: int, seed: int) -> pd.DataFrame:
    """Customers signed up over 1,500 days, alive at the cutoff (tenure a < lifetime), each
    followed for WINDOW days: delayed entry at a, as a one-snapshot export sees them."""
    rng = np.random.default_rng(seed)
    parts, kept = [], 0
    while kept < n:
        x, a = rng.normal(size=4 * n), rng.uniform(0, 1500, 4 * n)
        life = np.exp(B0 + B1 * x) * rng.weibull(SHAPE, 4 * n)
        alive = life > a
        parts.append(pd.DataFrame({"x": x[alive], "tenure_days": a[alive],
                                   "rest": life[alive] - a[alive]}))
        kept += int(alive.sum())
    f = pd.concat(parts).iloc[:n].reset_index(drop=True)
    return f.assign(duration_days=np.minimum(f["rest"], WINDOW),
                    event=(f["rest"] <= WINDOW).astype(int)).drop(columns="rest")


def _true_conditional(rows: pd.DataFrame, days: np.ndarray) -> np.ndarray:
    a = rows["tenure_days"].to_numpy()[:, None]
    scale = np.exp(B0 + B1 * rows["x"].to_numpy())[:, None]
    return np.exp((a / scale) ** SHAPE - ((a + days[None, :]) / scale) ** SHAPE)


@pytest.fixture(scope="module")
def window():
    return _left_truncated(10_000, seed=0), _left_truncated(3000, seed=1)


def _fit(window, *candidates: str) -> SurvivalModel:
    return SurvivalModel(X, seed=1, candidates=candidates).fit(*window)


@pytest.fixture(scope="module")
def on_tenure(window):
    return {name: _fit(window, name) for name in TENURE_CANDIDATES}


GRID = pd.DataFrame({"x": [-1.0, 0.0, 1.0, 0.0, 0.0], "tenure_days": [100.0, 100, 100, 700, 1300]})
DAYS = np.array([30.0, 90.0, 365.0])


def test_weibull_on_tenure_recovers_the_parameters_and_the_conditional_curve(on_tenure):
    model = on_tenure["weibull_tenure"].model_
    design = model.design_
    slope = model.coef_[0] / design.std_[0]  # x is standardised inside the design
    assert model.shape_ == pytest.approx(SHAPE, abs=0.1)
    assert slope == pytest.approx(B1, abs=0.06)
    assert model.intercept_ - slope * design.mean_[0] == pytest.approx(B0, abs=0.1)
    fitted = on_tenure["weibull_tenure"].survival_function(GRID, DAYS)
    assert fitted == pytest.approx(_true_conditional(GRID, DAYS), abs=0.04)


def test_discrete_hazard_on_tenure_follows_the_curve_and_its_order(on_tenure, window):
    model = on_tenure["discrete_tenure"]
    validation = window[1]
    mean = model.survival_function(validation, DAYS).mean(axis=0)
    assert mean == pytest.approx(_true_conditional(validation, DAYS).mean(axis=0), abs=0.03)
    fitted = model.survival_function(GRID.iloc[:3], DAYS)
    assert (np.diff(fitted[:, -1]) > 0).all()  # larger x, longer lives


@pytest.fixture(scope="module")
def cutoff(window):
    return _fit(window, "weibull_aft")


def test_a_cutoff_model_on_the_short_window_flags_every_horizon_beyond_it(cutoff, window,
                                                                          on_tenure):
    assert cutoff.follow_up_days_ == cutoff.supported_follow_up_days_ == WINDOW
    assert cutoff.extrapolated_share_ == {30: 0.0, 90: 1.0, 180: 1.0, 365: 1.0}
    info = cutoff.support()
    assert info["time_axis"] == "cutoff" and info["supported_tenure_days"] is None
    assert [h["extrapolates"] for h in info["horizons"]] == [False, True, True, True]
    notes = cutoff.extrapolation_notes(ltv_horizon_days=365)
    assert notes[0].startswith("P(90 days), P(180 days) and P(365 days) extrapolate: the "
                               "longest follow-up is 31 days")
    assert len(notes) == 3 and "P(30 days)" not in " ".join(notes)
    assert "LTV from the survival curve over 365 days" in notes[-1]
    assert "100% of the training rows" in notes[-1]
    # On tenure only the rows whose tenure + horizon passes the tenures seen are beyond.
    model = on_tenure["weibull_tenure"]
    reach = model.support()["supported_tenure_days"]
    train = window[0]["tenure_days"].to_numpy()
    assert 1400 < reach <= train.max() + WINDOW
    share = model.extrapolated_share_[365]
    assert share == pytest.approx(np.mean(train + 365 > reach), abs=1e-3) and 0 < share < 0.5
    np.testing.assert_allclose(model.supported_days(GRID), np.maximum(reach - GRID.tenure_days, 0),
                               rtol=1e-6)
    first, horizons, *_ = model.extrapolation_notes()
    assert first.startswith("survival on tenure: the longest follow-up is 31 days")
    assert horizons.startswith("P(30 days), P(90 days), P(180 days) and P(365 days) extrapolate "
                               "for under 1%, ")


@settings(max_examples=25, deadline=None)
@given(days=st.lists(st.floats(0, 5000), min_size=1, max_size=20), x=st.floats(-4, 4),
       age=st.floats(0, 4000))
def test_tenure_curves_are_probabilities_from_one_non_increasing(on_tenure, days, x, age):
    days = np.sort(np.array([0.0, *days]))
    row = pd.DataFrame({"x": [x], "tenure_days": [age]})
    for model in on_tenure.values():
        s = model.survival_function(row, days)
        assert ((s >= 0) & (s <= 1)).all() and s[0, 0] == pytest.approx(1.0)
        assert (np.diff(s, axis=1) <= 1e-12).all()


def test_tenure_models_pickle_and_their_areas_are_capped(on_tenure):
    for model in on_tenure.values():
        clone = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(clone.survival_at(GRID), model.survival_at(GRID))
        rest = model.expected_remaining_days(GRID)
        assert np.isfinite(rest).all() and (rest > 0).all() and (rest <= 3650).all()


def test_the_time_axis_follows_the_follow_up_and_the_features(window):
    short = window[0]
    assert SurvivalModel(X).candidates_for(short) == TENURE_CANDIDATES
    assert SurvivalModel(X[:1]).candidates_for(short) == CUTOFF_CANDIDATES  # no tenure
    long = short.assign(duration_days=short["duration_days"] * 20)
    assert SurvivalModel(X).candidates_for(long) == CUTOFF_CANDIDATES
    assert SurvivalModel(X, candidates=["weibull_tenure"]).candidates_for(long) == (
        "weibull_tenure",)


def test_a_customer_s_rows_are_cut_at_its_next_cutoff():
    frame = pd.DataFrame({"customer_id": ["a", "a", "b"], "cutoff": pd.to_datetime(
        ["2026-01-01", "2026-02-01", "2026-01-01"]), "tenure_days": [100.0, 131.0, 50.0]})
    entry, d, e = tenure.tenure_intervals(frame, np.array([40.0, 9.0, 40.0]), np.array([1, 1, 0]))
    assert entry.tolist() == [100.0, 131.0, 50.0]
    assert d.tolist() == [31.0, 9.0, 40.0] and e.tolist() == [0, 1, 0]  # a's churn counted once
    with pytest.raises(ValueError, match="1 of 3 rows have a missing or negative tenure_days"):
        tenure.tenure_intervals(frame.assign(tenure_days=[1.0, np.nan, 2.0]), d, e)
    with pytest.raises(ValueError, match="survival on tenure needs a tenure_days column"):
        tenure.tenure_intervals(frame.drop(columns="tenure_days"), d, e)


@pytest.fixture(scope="module")
def snapshot_fit():
    """The survival models of a 31-day snapshot export (8,000 accounts, seed 2) trained as
    `churnlens train` does, and 8,000 accounts of the same cutoff followed for a year."""
    tables = snapshot.generate(8000, seed=2)
    settings = Settings(horizon_days=31, data={"observed_until": snapshot.EXPORT_DATE})
    ds = load_source({k: v for k, v in tables.items() if k != "truth"},
                     settings.data.observed_until, horizon_days=31)
    ff = build_training_set(ds, settings)
    split = temporal_split(ff.frame, 31, settings.training)
    chosen = SurvivalModel(ff.features, seed=42).fit(split.survival_train, split.validation)
    old = SurvivalModel(ff.features, seed=42, candidates=CUTOFF_CANDIDATES).fit(
        split.survival_train, split.validation)
    cutoff = tables["truth"]["cutoff"].iloc[0]
    year = snapshot.generate(8000, seed=2, horizon_days=365, end=cutoff + pd.Timedelta(days=365))
    year = year["customers"].merge(year["subscriptions"], on="customer_id")
    unseen = pd.concat([split.calibration, split.test])  # rows no survival model saw
    return chosen, old, unseen, year.assign(event=year["ended_at"].notna().astype(int))


def test_snapshot_tenure_model_p30_matches_the_window_by_tier(snapshot_fit):
    model, _, test, _ = snapshot_fit
    assert model.chosen_ in TENURE_CANDIDATES and model.support()["time_axis"] == "tenure"
    p30 = model.survival_at(test)["30"].to_numpy()
    stayed = 1 - ((test["event"] == 1) & (test["duration_days"] <= 30)).to_numpy()
    tiers = pd.DataFrame({"tier": pd.qcut(p30, 4, labels=False), "p": p30, "stayed": stayed,
                          "variance": p30 * (1 - p30)})
    table = tiers.groupby("tier").agg(predicted=("p", "mean"), observed=("stayed", "mean"),
                                      rows=("p", "size"), variance=("variance", "sum"))
    # The standard error of the observed share if the predictions are right.
    table["se"] = np.sqrt(table.pop("variance")) / table.rows
    print(f"\nP(30 days) by tier, {model.chosen_}:\n{table.round(4)}")
    assert ((table.predicted - table.observed).abs() <= 3 * table.se).all()


def test_snapshot_p365_is_close_to_a_year_of_the_same_process(snapshot_fit):
    model, old, test, year = snapshot_fit
    observed = year.groupby("contract_type")["event"].agg(lambda e: 1 - e.mean())
    rows = {"observed in a year": observed}
    for name, fitted in ((f"tenure: {model.chosen_}", model), (f"cutoff: {old.chosen_}", old)):
        p365 = fitted.survival_at(test)["365"]
        rows[name] = p365.groupby(test["contract_type"], observed=True).mean()
        print(f"\n{name}: median P(365) {p365.median():.3f}, mean {p365.mean():.3f}")
    table = pd.DataFrame(rows)
    print(f"observed P(365) {1 - year['event'].mean():.3f} (8,000 accounts of the same "
          f"cutoff followed for a year)\n{table.round(3).to_string()}")
    # A year read from one month of churns: near by contract type and overall, and nearer
    # than the cutoff candidates, which extrapolate the window itself.
    errors = table.drop(columns=table.columns[0]).sub(table.iloc[:, 0], axis=0).abs()
    assert errors.iloc[:, 0].max() <= 0.18
    assert errors.iloc[:, 0].mean() < errors.iloc[:, 1].mean()
    overall = model.survival_at(test)["365"].mean() - (1 - year["event"].mean())
    assert abs(overall) <= 0.07
    assert old.extrapolated_share_[365] == 1.0 and model.extrapolated_share_[365] < 0.1


def test_the_report_marks_the_horizons_beyond_the_follow_up(cutoff, window):
    train, test = window
    km = kaplan_meier_baseline(train["duration_days"], train["event"])
    metrics = horizon_metrics(cutoff, test, km)
    assert metrics["survival.follow_up_days"] == WINDOW
    assert [metrics[f"survival.horizon_{h}.extrapolated_share"] for h in (30, 90, 180, 365)] == [
        0.0, 1.0, 1.0, 1.0]
    assert metrics["survival.horizon_30.kaplan_meier"] == pytest.approx(km([30.0])[0])
    assert np.isnan(metrics["survival.horizon_90.kaplan_meier"])  # beyond the follow-up
    page = render("t", {"test.survival.concordance": 0.7, **metrics}, [], {})
    rows = re.findall(r'<tr( class="extrapolated")?><th>(\d+) days</th><td>([^<]*)</td>'
                      r"<td>([^<]*)</td><td>([^<]*)</td>", page)
    assert [(h, bool(marked), flag) for marked, h, _, _, flag in rows] == [
        ("30", False, "no"), ("90", True, "yes"), ("180", True, "yes"), ("365", True, "yes")]
    assert rows[0][3] and not rows[1][3]  # Kaplan-Meier only inside the follow-up
    assert "longest follow-up in training is 31 days" in page
