"""`churnlens serve` imports and unpickles only what scoring needs.

Fitting needs scikit-learn, lifelines, scipy.stats, DuckDB and MLflow; a server that loads
a fitted model needs none of them, and importing them is most of its start-up time (about
4 s of CPU of 9 on this machine). These tests hold the line: run in a fresh interpreter,
the server's imports (and the unpickling of a trained model) leave them unimported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Fresh interpreters that import the whole server: make test, not test-fast.
pytestmark = pytest.mark.slow

FIT_ONLY = ("sklearn", "lifelines", "scipy.stats", "duckdb", "mlflow", "matplotlib")

PROBE = """
import json, os, pickle, sys
from churnlens.serving.startup import import_lightgbm_alone, check_snapshot_file
import_lightgbm_alone()
import churnlens.serving.service

if len(sys.argv) > 1:
    from churnlens.serving.core import score_records
    with open(sys.argv[1], "rb") as fh:
        model = pickle.load(fh)
    rows = check_snapshot_file(sys.argv[2]).to_pandas().head(5)
    assert len(score_records(model, rows)) == 5  # scored, drivers and all
print(json.dumps([m for m in json.loads(os.environ["FIT_ONLY"]) if m in sys.modules]))
"""


def imported_after(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "FIT_ONLY": json.dumps(FIT_ONLY)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_server_imports_nothing_that_only_fitting_needs():
    assert imported_after() == []


def test_a_trained_model_unpickles_without_them(trained_env, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(trained_env.tracking_uri)
    folder = mlflow.artifacts.download_artifacts(f"{trained_env.model_uri}/artifacts/bundle.pkl",
                                                 dst_path=str(tmp_path))
    assert imported_after(folder, str(trained_env.snapshot)) == []


def test_the_batch_job_reads_a_local_registry_model_without_mlflow(trained_env):
    # A version in a local SQLite store with its artifacts beside it: read in place, as
    # `churnlens serve` reads it (importing MLflow and opening its store cost seconds).
    probe = ("import json, sys\n"
             "from churnlens.serving.batch import load_model\n"
             f"model = load_model({trained_env.model_uri!r})\n"
             "print(json.dumps([model.info_ref, 'mlflow' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=300, env={**os.environ,
                                           "MLFLOW_TRACKING_URI": trained_env.tracking_uri})
    assert out.returncode == 0, out.stderr
    ref, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert ref["name"] == "churnlens" and ref["version"].isdigit() and ref["run_id"]
    assert imported is False
