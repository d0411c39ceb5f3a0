"""A trained, registered model and a feature snapshot, built once per test session.

A pytest plugin (registered in tests/conftest.py) so that any test package can ask for
`trained_env`: a small sample base, one `train` into a temporary MLflow store (registered as
`churnlens@champion`), and the feature snapshot `churnlens features --as-of` would write.
Training is the expensive part (about a minute), so it happens at most once per session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

SAMPLE_CUSTOMERS = 2000
SAMPLE_SEED = 7
AS_OF = "2026-10-31"


@dataclass(frozen=True)
class TrainedEnv:
    """Where the session's trained model and snapshot live."""

    root: Path
    source: Path  # the sample data source
    tracking_uri: str  # sqlite MLflow store holding the run and the registered model
    model_uri: str  # models:/churnlens@champion
    snapshot: Path  # features of every customer active AS_OF, as parquet

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (a server, a benchmark) that uses this model."""
        return {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "BENTOML_HOME": str(self.root / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "CHURNLENS_MODEL_URI": self.model_uri,
            "CHURNLENS_SNAPSHOT": str(self.snapshot),
        }


@pytest.fixture(scope="session")
def trained_env(tmp_path_factory) -> TrainedEnv:
    """Sample base, trained and registered model, and snapshot in a temporary directory."""
    from churnlens.features.build import build_snapshot
    from churnlens.features.loading import load_source
    from churnlens.features.sample import generate_sample, write_sample
    from churnlens.settings import Settings
    from churnlens.training.pipeline import train

    root = tmp_path_factory.mktemp("trained")
    source = root / "sample"
    write_sample(generate_sample(SAMPLE_CUSTOMERS, seed=SAMPLE_SEED), source)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    settings = Settings(data={"source": source}, paths={"work_dir": root / "work"})
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # MLflow puts artifacts under the directory current at creation
    mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        result = train(settings, log=lambda *_: None)
        assert result.gate.promoted, result.gate.reason
        snapshot = root / "work" / "snapshots" / f"features-{AS_OF}.parquet"
        snapshot.parent.mkdir(parents=True)
        build_snapshot(load_source(source), AS_OF, settings).frame.to_parquet(snapshot,
                                                                             index=False)
    finally:
        mp.undo()
    return TrainedEnv(root, source, tracking_uri,
                      f"models:/{settings.mlflow.model_name}@champion", snapshot)
