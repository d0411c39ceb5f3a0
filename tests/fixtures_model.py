"""A trained, registered model and a feature snapshot, built once per test run.

A pytest plugin (registered in tests/conftest.py) so that any test package can ask for
`trained_env`: a small sample base, one `train` into a temporary MLflow store (registered as
`churnlens@champion`), and the feature snapshot `churnlens features --as-of` would write.
Training is the expensive part (about a minute), so it happens once per run: under
pytest-xdist the first worker that asks builds it under the run's shared temporary root,
holding a file lock, and the other workers wait for it and reuse it (read only).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

SAMPLE_CUSTOMERS = 2000
SAMPLE_SEED = 7
AS_OF = "2026-10-31"


@dataclass(frozen=True)
class TrainedEnv:
    """Where the run's trained model and snapshot live (shared, read only) and where this
    process may write (its own folder: server logs, BentoML's home)."""

    root: Path
    source: Path  # the sample data source
    tracking_uri: str  # sqlite MLflow store holding the run and the registered model
    model_uri: str  # models:/churnlens@champion
    snapshot: Path  # features of every customer active AS_OF, as parquet
    local: Path  # this test process's own folder

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (a server, a benchmark) that uses this model."""
        return {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "BENTOML_HOME": str(self.local / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "CHURNLENS_MODEL_URI": self.model_uri,
            "CHURNLENS_SNAPSHOT": str(self.snapshot),
        }


def shared_root(tmp_path_factory) -> Path:
    """The temporary folder every process of this run sees: under xdist each worker's
    basetemp is <run root>/popen-gwN, so the run root is its parent."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on PATH held by this process until the block ends (released by
    the kernel if the process dies, so a crashed worker never blocks the other)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built_once(tmp_path_factory, name: str, build: Callable[[], T]) -> T:
    """BUILD() once per run, whichever worker asks first; the others load its pickle.

    name: the file stem under the run's shared root (one per thing built).
    """
    shared = shared_root(tmp_path_factory)
    path = shared / f"{name}.pickle"
    with run_lock(shared / f"{name}.lock"):
        if not path.is_file():
            partial = path.with_suffix(".partial")
            partial.write_bytes(pickle.dumps(build()))
            partial.rename(path)  # complete or absent, never half written
    return pickle.loads(path.read_bytes())


def _build(root: Path) -> dict[str, str]:
    """Sample, `train` and snapshot into ROOT; the paths and URIs, as written to ready.json."""
    from churnlens.features.build import build_snapshot
    from churnlens.features.loading import load_source
    from churnlens.features.sample import generate_sample, write_sample
    from churnlens.settings import Settings
    from churnlens.training.pipeline import train

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
    return {"source": str(source), "tracking_uri": tracking_uri, "snapshot": str(snapshot),
            "model_uri": f"models:/{settings.mlflow.model_name}@champion"}


@pytest.fixture(scope="session")
def trained_env(tmp_path_factory) -> TrainedEnv:
    """Sample base, trained and registered model, and snapshot, shared by the run's workers."""
    shared = shared_root(tmp_path_factory)
    root, ready = shared / "trained", shared / "trained" / "ready.json"
    with run_lock(shared / "trained.lock"):
        if not ready.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed half way
            root.mkdir()
            ready.write_text(json.dumps(_build(root)))
    built = json.loads(ready.read_text())
    return TrainedEnv(root, Path(built["source"]), built["tracking_uri"], built["model_uri"],
                      Path(built["snapshot"]), tmp_path_factory.mktemp("trained-local"))
