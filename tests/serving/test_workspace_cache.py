"""The workspace's scores of an earlier start are reused on the same model and snapshot
file, and scored again when either changes or the cached file is unusable.

Unit tests: the snapshot's scoring is replaced by a counter that returns known columns,
so no model is trained; the model is a stand-in with the reference records carry.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from churnlens.serving import workspace_app, workspace_cache
from churnlens.serving.workspace_app import Building
from churnlens.serving.workspace_scores import SCORE_COLUMNS, Scores

ROWS = 5


def model(run_id: str = "run-a", version: str = "3"):
    return SimpleNamespace(info_ref={"name": "churnlens", "version": version, "run_id": run_id})


@pytest.fixture
def scored(monkeypatch) -> list[int]:
    """Counts the snapshot scorings; each returns columns that differ by the count."""
    calls: list[int] = []

    def score_snapshot(model, rows, progress=None) -> Scores:
        calls.append(len(rows))
        base = np.arange(len(rows), dtype=float) + len(calls)
        return Scores({"churn_probability": base / 10, "expected_ltv": base * 100,
                       "expected_remaining_days": base * 30,
                       "risk_tier": np.array(["low", "medium", "high", "critical", "low"],
                                             dtype=object)[: len(rows)]})

    monkeypatch.setattr(workspace_app, "score_snapshot", score_snapshot)
    return calls


@pytest.fixture
def snapshot(tmp_path):
    path = tmp_path / "features-2026-10-31.parquet"
    path.write_bytes(b"snapshot bytes v1")
    return path


def scores_of(tmp_path, snapshot, the_model=None, rows: int = ROWS):
    return Building(the_model or model(), list(range(rows)), cache=tmp_path / "cache",
                    snapshot=str(snapshot))._scored()


def test_a_restart_reads_the_scores_instead_of_scoring(tmp_path, snapshot, scored):
    first, how_first = scores_of(tmp_path, snapshot)
    again, how_again = scores_of(tmp_path, snapshot)
    assert scored == [ROWS] and how_first == "scored (kept in the cache)"
    assert how_again.startswith("from the cache ")
    for name in SCORE_COLUMNS:
        assert again.columns[name].tolist() == first.columns[name].tolist()


@pytest.mark.parametrize("change", ["snapshot", "run", "version"])
def test_another_snapshot_file_or_model_is_scored_again(tmp_path, snapshot, scored, change):
    scores_of(tmp_path, snapshot)
    other = model()
    if change == "snapshot":
        snapshot.write_bytes(b"snapshot bytes v2")  # same name and size, other content
    else:
        other = model(run_id="run-b") if change == "run" else model(version="4")
    second, how = scores_of(tmp_path, snapshot, other)
    assert len(scored) == 2 and how == "scored (kept in the cache)"
    assert second.columns["churn_probability"][0] == pytest.approx(0.2)  # the second scoring
    assert len(list((tmp_path / "cache").glob("scores-*.npz"))) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other size"])
def test_an_unusable_cache_file_is_scored_again_and_replaced(tmp_path, snapshot, scored,
                                                             damage):
    scores_of(tmp_path, snapshot)
    (path,) = (tmp_path / "cache").glob("scores-*.npz")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file")
    rows = ROWS - 1 if damage == "other size" else ROWS
    _, how = scores_of(tmp_path, snapshot, rows=rows)
    assert len(scored) == 2 and how == "scored (kept in the cache)"
    kept = workspace_cache.load(path, rows)
    assert kept is not None and kept.columns["risk_tier"].tolist()[:2] == ["low", "medium"]


def test_only_the_newest_files_are_kept(tmp_path, snapshot, scored):
    models = [model(run_id=f"run-{n}") for n in range(workspace_cache.KEEP + 2)]
    for n, each in enumerate(models):
        scores_of(tmp_path, snapshot, each)
        # Distinct ages, oldest first (files written within a tick would tie).
        os.utime(workspace_cache.cache_path(tmp_path / "cache", each, snapshot), (n, n))
    assert len(list((tmp_path / "cache").glob("scores-*.npz"))) == workspace_cache.KEEP
    assert scores_of(tmp_path, snapshot, models[-1])[1].startswith("from the cache ")
    assert scores_of(tmp_path, snapshot, models[0])[1] == "scored (kept in the cache)"
    assert len(scored) == len(models) + 1


def test_without_a_cache_folder_the_snapshot_is_scored_every_time(snapshot, scored):
    for _ in range(2):
        _, how = Building(model(), list(range(ROWS)), snapshot=str(snapshot))._scored()
        assert how == "scored"
    assert scored == [ROWS, ROWS]
