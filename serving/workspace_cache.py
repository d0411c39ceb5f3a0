"""A disk cache of the workspace's scores: a restart on the same model and snapshot reads
them instead of scoring the whole snapshot again (about 4 s of both cores per 100,000
accounts, minutes for a million).

The key is the model's name, version and run id, the SHA-256 of the snapshot file's bytes
and the cache's format: another model version or run, or a rewritten snapshot, misses. A
file is a numpy .npz (read without pickle), written under a temporary name and renamed, so
a crash leaves no half-written entry; one that does not load or does not fit the snapshot
is scored again and replaced. The newest KEEP files are kept, older ones removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from churnlens.serving.workspace_scores import SCORE_COLUMNS, Scores
from churnlens.training.bundle import ChurnModel

FORMAT = 1  # bump when what a file holds changes: older files then miss
KEEP = 4  # cache files kept (about 6 MB per 100,000 accounts)
BLOCK = 2**20  # bytes hashed at a time
logger = logging.getLogger("bentoml.churnlens")


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of the bytes of the file at PATH."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def cache_path(folder: Path, model: ChurnModel, snapshot: str | Path) -> Path:
    """Where the scores of MODEL on the snapshot file SNAPSHOT are kept in FOLDER."""
    key = json.dumps({"format": FORMAT, "model": model.info_ref, "columns": SCORE_COLUMNS,
                      "snapshot": file_digest(snapshot)}, sort_keys=True, default=str)
    return Path(folder) / f"scores-{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"


def load(path: Path, rows: int) -> Scores | None:
    """The scores kept at PATH, or None when there are none that fit ROWS accounts."""
    try:
        with np.load(path, allow_pickle=False) as data:
            columns = {name: data[name] for name in SCORE_COLUMNS}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("workspace: cached scores %s unusable (%s); scoring again", path, exc)
        return None
    if any(len(values) != rows for values in columns.values()):
        logger.warning("workspace: cached scores %s are not of %d accounts; scoring again",
                       path, rows)
        return None
    return Scores(columns)


def save(path: Path, scores: Scores) -> None:
    """Keep SCORES at PATH (atomically) and remove all but the newest KEEP files. A cache
    that cannot be written is logged, not fatal: the workspace has its scores already."""
    arrays = {name: np.asarray(scores.columns[name]) for name in SCORE_COLUMNS}
    arrays["risk_tier"] = arrays["risk_tier"].astype(str)  # object arrays would need pickle
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        logger.warning("workspace: scores not cached in %s (%s)", path.parent, exc)
        return
    _prune(path.parent)


def _prune(folder: Path) -> None:
    files = sorted(folder.glob("scores-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP:]:
        old.unlink(missing_ok=True)
