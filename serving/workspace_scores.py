"""Where the workspace's scores come from: the snapshot scored in chunks, or a score file.

The workspace needs, per snapshot account, its churn probability, tier, expected LTV and
expected remaining lifetime. `score_snapshot` computes them through the scoring core
(SCORE_CHUNK rows at a time, reporting progress); `read_score_file` takes them from a
`churnlens score` file of the same model version and as-of date instead, with each
account's main driver and its playbook (a million records load in seconds; scoring them
takes minutes on two cores). `check_score_file` is the quick part of that check (the
file's metadata only), for start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnlens.serving.core import Prepared, score_arrays
from churnlens.serving.workdir import META_KEY
from churnlens.training.bundle import ChurnModel

ENV_SCORES = "CHURNLENS_SCORES"
SCORE_CHUNK = 20_000  # rows scored at once: bounds the survival model's memory, shows progress
SCORE_COLUMNS = ("churn_probability", "risk_tier", "expected_ltv", "expected_remaining_days")
_READ = ("customer_id", "as_of", "model", *SCORE_COLUMNS, "drivers")


class ScoreFileError(ValueError):
    """A score file the workspace cannot use; the message names the file and the fix."""


@dataclass
class Progress:
    """How far the workspace's build is: DONE of TOTAL accounts, at STAGE."""

    total: int
    done: int = 0
    stage: str = "scoring the snapshot"


@dataclass(frozen=True)
class Scores:
    """Per snapshot position: the score columns (SCORE_COLUMNS -> array) and, from a score
    file, each account's main driver text and playbook (Arrow string arrays, null where
    nothing raises the risk; None: drivers are computed when shown)."""

    columns: dict[str, np.ndarray]
    driver_text: pa.Array | None = None
    driver_playbook: pa.Array | None = None


def score_snapshot(model: ChurnModel, rows: Prepared,
                   progress: Progress | None = None) -> Scores:
    """`score_arrays` of every row, SCORE_CHUNK at a time (the discrete-hazard survival
    model expands each row over its time bins: a million rows at once would not fit in
    memory), counting the rows done in PROGRESS."""
    parts = []
    for start in range(0, len(rows), SCORE_CHUNK):
        chunk = rows.take(np.arange(start, min(start + SCORE_CHUNK, len(rows))))
        scored = score_arrays(model, chunk)
        parts.append({k: scored[k] for k in SCORE_COLUMNS})
        if progress is not None:
            progress.done = start + len(chunk)
    if not parts:
        scored = score_arrays(model, rows)
        parts = [{k: scored[k] for k in SCORE_COLUMNS}]
    return Scores({k: np.concatenate([p[k] for p in parts]) for k in SCORE_COLUMNS})


def check_score_file(path: str | Path, model: ChurnModel, as_of: pd.Timestamp) -> None:
    """Raise ScoreFileError unless PATH is a readable `churnlens score` file of MODEL's
    name and version and of AS_OF (from the file's metadata: milliseconds)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise ScoreFileError(f"score file {path}: cannot be read ({exc}); pass the parquet "
                             "file `churnlens score --out` wrote") from None
    if META_KEY not in metadata:
        raise ScoreFileError(f"score file {path}: not written by `churnlens score` (no "
                             f"{META_KEY.decode()!r} metadata); score the snapshot's date "
                             "with `churnlens score --as-of DATE --out FILE`")
    meta = json.loads(metadata[META_KEY])
    _check_origin(path, model, as_of, {meta["model"].get("name")},
                  {str(meta["model"].get("version"))}, {meta["as_of"]})


def check_env(model: ChurnModel, rows: Prepared) -> None:
    """`check_score_file` of the file ENV_SCORES names (nothing when unset), against the
    snapshot ROWS' date: `churnlens serve` calls it before it opens the port."""
    path = os.environ.get(ENV_SCORES)
    if path:
        check_score_file(path, model, pd.Timestamp(rows.frame["cutoff"].max()).normalize())


def _check_origin(path, model: ChurnModel, as_of: pd.Timestamp, names: set, versions: set,
                  dates: set) -> None:
    want = model.info_ref
    served = f"{want['name']} v{want['version']} as of {as_of.date()}"
    if names != {want["name"]} or versions != {str(want["version"])}:
        raise ScoreFileError(
            f"score file {path}: scored by model {sorted(map(str, names))} version(s) "
            f"{sorted(versions)}, but the server serves {served}; score with the served "
            "model (`churnlens score --model-uri ...`) or drop --scores")
    if dates != {str(as_of.date())}:
        raise ScoreFileError(
            f"score file {path}: as of {sorted(dates)}, but the snapshot is as of "
            f"{as_of.date()}; score that date (`churnlens score --as-of {as_of.date()}`) or "
            "drop --scores")


def read_score_file(path: str | Path, model: ChurnModel, ids: np.ndarray, as_of: pd.Timestamp,
                    on_read: Callable[[], None] | None = None) -> Scores:
    """The scores of the accounts IDS (snapshot order) from the score file PATH.

    Checks every record's model and as-of date (`check_score_file` reads only the
    metadata) and that each id has exactly one record; records of other accounts are left
    out. Calls ON_READ once the file is read. Raises ScoreFileError saying what differs.
    """
    try:
        table = pq.read_table(path, columns=list(_READ))
    except (OSError, pa.ArrowException) as exc:
        raise ScoreFileError(f"score file {path}: cannot be read ({exc}); pass the parquet "
                             "file `churnlens score --out` wrote") from None
    if on_read is not None:
        on_read()
    ref = table["model"]
    _check_origin(path, model, as_of, set(pc.unique(pc.struct_field(ref, "name")).to_pylist()),
                  {str(v) for v in pc.unique(pc.struct_field(ref, "version")).to_pylist()},
                  {str(d) for d in pc.unique(table["as_of"]).to_pylist()})
    index = pd.Index(table["customer_id"].to_numpy())
    if not index.is_unique:
        twice = index[index.duplicated()].unique()
        raise ScoreFileError(f"score file {path}: {len(twice):,} customer(s) have more than "
                             f"one record (e.g. {[str(i) for i in twice[:3]]}); write it again with "
                             "`churnlens score`")
    where = index.get_indexer(np.asarray(ids, dtype=object))
    missing = where < 0
    if missing.any():
        raise ScoreFileError(
            f"score file {path}: {int(missing.sum()):,} of the snapshot's {len(ids):,} "
            f"customers have no record (e.g. {[str(i) for i in ids[missing][:3]]}); score the "
            f"snapshot's source as of {as_of.date()} with `churnlens score`")
    # The first drivers before reordering: taking the nested drivers column cost seconds.
    text, playbook = _first_driver(table["drivers"])
    if len(where) == table.num_rows and (where == np.arange(len(where))).all():
        return Scores({k: table[k].to_numpy() for k in SCORE_COLUMNS}, text, playbook)
    take = pa.array(where)
    return Scores({k: table[k].take(take).to_numpy() for k in SCORE_COLUMNS},
                  text.take(take), playbook.take(take))


def _first_driver(drivers: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Each row's first (strongest) driver's text and playbook; null for no driver."""
    lists = drivers.combine_chunks()
    first = pc.list_slice(lists, 0, 1)
    flat = pc.list_flatten(first)
    slot = np.full(len(lists), -1, dtype=np.int64)
    slot[pc.list_parent_indices(first).to_numpy()] = np.arange(len(flat))
    pick = pa.array(slot, mask=slot < 0)
    return (pc.struct_field(flat, "text").take(pick),
            pc.struct_field(flat, "playbook").take(pick))
