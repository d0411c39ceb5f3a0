"""Byte-reproducible outputs: the same data and settings give files with the same sha256.

Run through the CLI, twice each: `churnlens features` (the training set) and `churnlens
score`. DuckDB aggregates in parallel and Arrow lists category levels in the order it met
them, so both would differ from run to run without exact sums and sorted levels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from churnlens.cli import main
from churnlens.features.sample import generate_sample, write_sample
from tests.fixtures_model import AS_OF

# Runs `features` and `score` twice as processes: make test, not test-fast.
pytestmark = pytest.mark.slow

# Enough customers that the events span several DuckDB row groups (122,880 rows each), so
# that several threads hold partial sums of one customer's rows.
CUSTOMERS = 3000


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_features_twice_give_the_same_file(tmp_path, monkeypatch):
    source = tmp_path / "sample"
    write_sample(generate_sample(CUSTOMERS, seed=11), source)
    monkeypatch.chdir(tmp_path)
    digests = []
    for run in (1, 2):
        out = tmp_path / f"training_set_{run}.parquet"
        assert main(["features", "--source", str(source), "--out", str(out)]) == 0
        digests.append(_sha256(out))
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_score_twice_gives_the_same_file(trained_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_env.tracking_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    digests = []
    for run in (1, 2):
        out = tmp_path / f"scores_{run}.parquet"
        assert main(["score", "--source", str(trained_env.source), "--as-of", AS_OF,
                     "--out", str(out), "--chunk-size", "700",
                     "--model-uri", trained_env.model_uri]) == 0
        digests.append(_sha256(out))
    assert digests[0] == digests[1]
