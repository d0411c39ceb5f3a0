"""Batch scoring: same records as the scoring core, atomic output, kill-and-resume, drift."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from churnlens.serving import batch
from churnlens.serving.batch import BatchError, BatchJob, load_model, parts_dir, run_batch
from churnlens.serving.core import score_records
from churnlens.serving.records import RECORD_SCHEMA, records_table, table_records
from churnlens.serving.stats import drift_report, psi
from churnlens.settings import Settings
from tests.fixtures_model import AS_OF, TrainedEnv

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

MODEL_URI = "models:/churnlens@champion"


@dataclass(frozen=True)
class Env:
    """The session's trained model (tests.fixtures_model) and settings reading its source."""

    trained: TrainedEnv
    settings: Settings

    def job(self, out: Path, **kw) -> BatchJob:
        args = {"as_of": AS_OF, "out": out, "model_uri": self.trained.model_uri,
                "chunk_size": 400, "psi_threshold": self.settings.batch.psi_threshold,
                "source": str(self.trained.source)}
        return BatchJob(**(args | kw))


@contextmanager
def batch_env(trained: TrainedEnv) -> Iterator[Env]:
    """MLflow pointed at the trained store for in-process loads, undone afterwards."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(trained.tracking_uri)
    try:
        yield Env(trained, Settings(data={"source": trained.source}))
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def env(trained_env: TrainedEnv) -> Iterator[Env]:
    with batch_env(trained_env) as e:
        yield e


@pytest.fixture(scope="module")
def scored(env, tmp_path_factory):
    """One uninterrupted local run with chunks of 400 customers."""
    out = tmp_path_factory.mktemp("scored") / "scores.parquet"
    return run_batch(env.job(out), env.settings, log=lambda *_: None, progress=False)


def assert_same_records(got: list[dict], want: list[dict], rel: float) -> None:
    """Equal records, floats within REL (relative) of each other."""
    assert [r["customer_id"] for r in got] == [r["customer_id"] for r in want]

    def same(a, b, where):
        if isinstance(a, float) and isinstance(b, float):
            assert math.isclose(a, b, rel_tol=rel, abs_tol=rel), f"{where}: {a} != {b}"
        elif isinstance(a, dict) and isinstance(b, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list) and isinstance(b, list):
            assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a == b, f"{where}: {a!r} != {b!r}"

    for g, w in zip(got, want, strict=True):
        same(g, w, g["customer_id"])


def test_records_equal_the_scoring_core(env, scored):
    model = load_model(MODEL_URI)
    # The snapshot `churnlens features --as-of` writes, which the endpoint scores from.
    want = score_records(model, pd.read_parquet(env.trained.snapshot))
    table = pq.read_table(scored.out)
    assert table.schema.remove_metadata() == RECORD_SCHEMA
    assert_same_records(table_records(table), want, rel=1e-12)
    assert scored.customers == len(want) and scored.chunks == math.ceil(len(want) / 400)
    champion = MlflowClient().get_model_version_by_alias("churnlens", "champion")
    refs = {tuple(m.values()) for m in table.column("model").to_pylist()}
    assert refs == {("churnlens", str(champion.version), champion.run_id)}
    assert table.column("as_of").unique().to_pylist() == [date.fromisoformat(AS_OF)]
    assert not parts_dir(scored.out).exists()


def test_summary_adds_up(scored):
    tiers = scored.stats["tiers"]
    assert sum(t["customers"] for t in tiers.values()) == scored.customers
    top = scored.stats["top"]
    assert len(top) == 10
    assert [a["churn_probability"] for a in top] == sorted(
        (a["churn_probability"] for a in top), reverse=True)
    probs = pq.read_table(scored.out, columns=["churn_probability"]).column(0).to_numpy()
    assert top[0]["churn_probability"] == probs.max()


def test_drift_file_has_psi_per_feature(env, scored):
    drift = json.loads(scored.drift_path.read_text())
    model = load_model(MODEL_URI)
    # The reference holds bin shares for every feature (ties of counts and flags included)
    # and the score's distribution on the test slice: nothing is skipped.
    assert drift["skipped"] == {}
    for f in model.features:
        entry = drift["features"][f.name]
        assert np.isfinite(entry["psi"]) and entry["psi"] >= 0, f.name
    assert np.isfinite(drift["score"]["psi"]) and drift["score"]["psi"] >= 0
    assert drift["as_of"] == AS_OF and drift["customers"] == scored.customers
    assert drift["over_threshold"] == sorted(
        n for n, e in [*drift["features"].items(), ("churn_probability", drift["score"])]
        if e["psi"] > drift["psi_threshold"])


def test_psi_is_zero_for_equal_shares_and_grows_with_shift():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    # 0.1*ln(0.6/0.5) + (-0.1)*ln(0.4/0.5)
    assert psi([0.6, 0.4], [0.5, 0.5]) == pytest.approx(0.0405465, rel=1e-5)
    assert psi([0.9, 0.1], [0.5, 0.5]) > psi([0.6, 0.4], [0.5, 0.5])


def test_drift_report_names_features_over_threshold():
    reference = {
        "x": {"kind": "numeric", "edges": [0, 1, 2], "shares": [0.5, 0.5]},
        "c": {"kind": "category", "shares": {"a": 0.5, "b": 0.5}},
        "__score__": {"kind": "numeric", "edges": [0.0, 0.5, 1.0], "shares": [0.9, 0.1]},
    }
    stats = {"histograms": {"x": {"counts": [90, 10], "missing": 0},
                            "c": {"levels": {"a": 50, "b": 50}},
                            "__score__": {"counts": [90, 10], "missing": 0}}}
    report = drift_report(stats, reference, threshold=0.2)
    assert report["over_threshold"] == ["x"]
    assert report["features"]["c"]["psi"] == 0
    assert report["score"]["psi"] == pytest.approx(0)
    assert report["skipped"] == {}


def test_unfinished_job_is_not_mixed_with_another(env, tmp_path, monkeypatch):
    out = tmp_path / "scores.parquet"
    calls = []
    real = batch.LocalEngine.features

    def crash_after_first(self, chunk):
        if calls:
            raise KeyboardInterrupt("simulated crash")
        calls.append(chunk)
        return real(self, chunk)

    # Crashes while the second chunk's features are computed and the first is scored in
    # the worker thread: the first chunk's part is still written.
    monkeypatch.setattr(batch.LocalEngine, "features", crash_after_first)
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        run_batch(env.job(out), env.settings, log=lambda *_: None, progress=False)
    assert not out.exists() and (parts_dir(out) / "part-00000.parquet").exists()
    assert not (parts_dir(out) / "part-00001.parquet").exists()
    with pytest.raises(BatchError, match="unfinished job: pass --resume"):
        run_batch(env.job(out), env.settings, log=lambda *_: None, progress=False)
    with pytest.raises(BatchError, match=rf"cannot resume: .*as-of date: '{AS_OF}' on disk, "
                                         r"'2026-09-01' now"):
        run_batch(env.job(out, as_of="2026-09-01", resume=True), env.settings,
                  log=lambda *_: None, progress=False)
    with pytest.raises(BatchError, match="chunk size: 400 on disk, 300 now"):
        run_batch(env.job(out, chunk_size=300, resume=True), env.settings,
                  log=lambda *_: None, progress=False)


def _cli(env: Env, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "churnlens.cli", "--params", str(ROOT / "params.yaml"),
            "score", "--source", str(env.trained.source), "--as-of", AS_OF, "--out", str(out),
            "--chunk-size", "100", *extra]


def test_killed_job_resumes_to_the_uninterrupted_output(env, tmp_path):
    ref = tmp_path / "ref.parquet"
    run_batch(env.job(ref, chunk_size=100), env.settings, log=lambda *_: None, progress=False)
    out = tmp_path / "scores.parquet"
    parts = parts_dir(out)
    cli_env = env.trained.env()
    proc = subprocess.Popen(_cli(env, out), cwd=tmp_path, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # A part counts once its record is written (its parquet comes first).
    while not list(parts.glob("part-*.json")):
        assert proc.poll() is None, f"score exited ({proc.returncode}) before writing a part"
        assert time.monotonic() < deadline, "no part written in 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    total = len(json.loads((parts / "manifest.json").read_text())["chunks"])
    done = len(list(parts.glob("part-*.json")))
    assert 1 <= done < total, f"killed after {done} of {total} parts: not mid-run"
    assert not out.exists()  # a reader never sees a half-written output

    resumed = subprocess.run(_cli(env, out, "--resume"), cwd=tmp_path, env=cli_env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} resumed" in resumed.stdout
    # The killed job's lock is still on disk, and recognised as stale: its process is gone.
    assert f"left by a job that no longer runs (pid {proc.pid} on " in resumed.stdout
    assert pq.read_table(out).equals(pq.read_table(ref))
    assert not parts.exists() and not out.with_name(out.name + ".tmp").exists()
    assert not out.with_name(out.name + ".lock").exists()


def test_records_round_trip_through_parquet_layout():
    record = {
        "customer_id": "C1", "as_of": "2026-10-01",
        "model": {"name": "churnlens", "version": "3", "run_id": "abc"},
        "churn_probability": 0.25, "horizon_days": 90, "risk_tier": "high",
        "lifecycle_stage": None, "survival": {"30": 0.9, "90": 0.8, "180": 0.7, "365": 0.6},
        "expected_remaining_days": 400.0, "expected_ltv": 1234.5, "currency": "USD",
        "drivers": [
            {"name": "usage", "feature": "events_30d", "value": 3.0, "contribution": 0.4,
             "direction": "raises risk", "text": "3 events", "playbook": "review"},
            {"name": "account", "feature": "plan", "value": "starter", "contribution": 0.1,
             "direction": "raises risk", "text": "plan is starter", "playbook": "plan"},
        ],
    }
    table = records_table([record])
    assert table.schema == RECORD_SCHEMA
    assert table.column("drivers").type == pa.list_(RECORD_SCHEMA.field("drivers").type.value_type)
    assert table_records(table) == [record]
