"""Each data shape end to end through the CLI: sample-data --shape S, features, train, score.

Every shape runs with the defaults plus only the settings the README names for it (section
"Data shapes"), in its own working directory with its own MLflow store, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

CUSTOMERS = 3000
# shape -> (the settings the README names for it, the as-of date to score)
SHAPES = {
    "subscriptions": ("", "2026-10-31"),
    "snapshot": ("horizon_days: 31\ndata:\n  observed_until: 2026-11-01\n", "2026-11-01"),
    "transactions": ("", "2026-11-01"),
}


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-m", "churnlens.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (f"churnlens {' '.join(args)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape_run(request, tmp_path_factory):
    shape = request.param
    settings, as_of = SHAPES[shape]
    cwd = tmp_path_factory.mktemp(f"shape-{shape}")
    (cwd / "params.yaml").write_text(settings)
    logs = {"sample": _run(cwd, "sample-data", "--shape", shape, "--customers", str(CUSTOMERS),
                           "--seed", "5")}
    logs["features"] = _run(cwd, "features")
    logs["train"] = _run(cwd, "train")
    logs["score"] = _run(cwd, "score", "--as-of", as_of, "--out", "work/scores.parquet")
    return shape, cwd, as_of, logs


def test_the_load_report_names_the_shape(shape_run):
    shape, _, _, logs = shape_run
    names = {"subscriptions": "subscription history", "snapshot": "one-snapshot export",
             "transactions": "transactions without contracts"}
    assert f"shape: {names[shape]}" in logs["features"]


def test_the_training_set_holds_only_labelled_observable_cutoffs(shape_run):
    shape, cwd, _, _ = shape_run
    frame = pd.read_parquet(cwd / "work" / "training_set.parquet")
    labelled = frame[frame["churned"].notna()]
    per_cutoff = labelled.groupby("cutoff")["churned"].agg(["size", "sum"])
    # A cutoff whose label window could not show a churn would have no churner at all.
    assert (per_cutoff["sum"] > 0).all(), per_cutoff
    if shape == "snapshot":
        assert list(per_cutoff.index) == [pd.Timestamp("2026-10-01")]


def test_every_customer_the_shape_defines_as_a_customer_is_scored(shape_run):
    shape, cwd, as_of, _ = shape_run
    scores = pd.read_parquet(cwd / "work" / "scores.parquet")
    assert scores["customer_id"].is_unique and len(scores) > 0
    assert scores["churn_probability"].between(0, 1, inclusive="neither").all()
    assert scores["expected_ltv"].notna().all() and (scores["expected_ltv"] >= 0).all()
    data = cwd / "data" / "sample"
    cutoff = pd.Timestamp(as_of)
    if shape == "transactions":
        # Everyone with history before the as-of date, gone quiet or not.
        payments = pd.read_parquet(data / "payments.parquet")
        events = pd.read_parquet(data / "events.parquet")
        seen = set(payments.loc[payments["occurred_at"] < cutoff, "customer_id"])
        seen |= set(events.loc[events["occurred_at"] < cutoff, "customer_id"])
        assert set(scores["customer_id"]) == seen
    else:
        subs = pd.read_parquet(data / "subscriptions.parquet")
        active = subs[(subs["started_at"] < cutoff)
                      & (subs["ended_at"].isna() | (subs["ended_at"] >= cutoff))]
        assert set(scores["customer_id"]) == set(active["customer_id"])


def test_revenue_at_risk_is_positive_for_every_shape(shape_run):
    # Without MRR (transactions) it comes from expected revenue: never 0 in every tier.
    _, _, _, logs = shape_run
    total = 0.0
    for line in logs["score"].splitlines():
        words = line.split()
        if len(words) == 4 and words[0] in ("low", "medium", "high", "critical"):
            total += float(words[2].replace(",", ""))
    assert total > 0, logs["score"]
