"""The stage profile of `benchmarks/batch.py`: one local `score` job in this process with a
timer on each stage, and the bare risk model (LightGBM predict and pred_contrib) on the rows
of its first chunk; `stage_lines` renders it for batch.md."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AS_OF = "2026-10-01"  # the date every job of benchmarks/batch.py scores


def bare_model(model, matrix) -> dict:
    """Rows/s of the bare risk model on MATRIX: LightGBM predict (raw) and pred_contrib."""
    booster, out = model.risk.booster_, {}
    for name, kw in (("lightgbm_predict", {"raw_score": True}),
                     ("lightgbm_pred_contrib", {"pred_contrib": True})):
        t0 = time.perf_counter()
        booster.predict(matrix, **kw)
        out[name] = len(matrix) / (time.perf_counter() - t0)
    return out


def timed_into(seconds: dict[str, float], name: str, fn):
    """FN, adding the seconds of each call to SECONDS[NAME]."""
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return run


# Stages timed in the scoring thread, which scores a chunk while the job thread computes
# the next chunk's features (`serving.batch._score_chunks`): they overlap the features.
SCORING_STAGES = ("scores (risk, survival, LTV)", "drivers: explain (groups, sentences)",
                  "drivers: contributions (ShapTable)", "records (score_table)",
                  "chunk stats (drift, tiers)")
WAITING = "waiting for the scoring thread"


def profile_job(source: Path) -> dict:
    """In this process: one local `score` job with a timer on each stage, and the bare
    model on the rows of its first chunk. The job thread's stages (SCORING_STAGES excepted)
    and its wait for the scoring thread add up to the job, with the rest in 'other'."""
    import threading
    from concurrent.futures import Future

    import pyarrow.parquet as pq

    from churnlens.serving import batch, core, local
    from churnlens.settings import load_settings

    seconds: dict[str, float] = {}
    chunks: list = []

    def timed(name, fn):
        return timed_into(seconds, name, fn)

    def keep_first(fn):
        def run(model, frame):
            if not chunks:
                chunks.append((model, frame))
            return fn(model, frame)
        return run

    def job_thread_only(name, fn):
        timed_fn = timed(name, fn)

        def run(*args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                return timed_fn(*args, **kwargs)
            return fn(*args, **kwargs)
        return run

    batch.load_model = timed("load model", batch.load_model)
    batch.load_source = timed("load source", batch.load_source)
    local.compute_features = timed("features (DuckDB SQL, Arrow, pandas)", local.compute_features)
    core.score_arrays = timed("scores (risk, survival, LTV)", core.score_arrays)
    core.explain_columns = timed("drivers: explain (groups, sentences)", core.explain_columns)
    from churnlens.training.risk import RiskModel
    RiskModel.contributions = timed("drivers: contributions (ShapTable)", RiskModel.contributions)
    local.score_table = keep_first(timed("records (score_table)", local.score_table))
    batch.chunk_stats = timed("chunk stats (drift, tiers)", batch.chunk_stats)
    pq.write_table = timed("write parts", pq.write_table)
    real_result = Future.result
    Future.result = job_thread_only(WAITING, real_result)
    out = Path(tempfile.mkdtemp()) / "scores.parquet"
    job = batch.BatchJob(as_of=AS_OF, out=out, model_uri="models:/churnlens@champion",
                         chunk_size=load_settings(ROOT / "params.yaml").batch.chunk_size,
                         psi_threshold=0.2, source=str(source))
    t0 = time.perf_counter()
    try:
        result = batch.run_batch(job, load_settings(ROOT / "params.yaml"),
                                 log=lambda *_: None, progress=False)
    finally:
        Future.result = real_result
    total = time.perf_counter() - t0
    inner = ("scores (risk, survival, LTV)", "drivers: explain (groups, sentences)",
             "drivers: contributions (ShapTable)")
    seconds["records (score_table)"] -= sum(seconds.get(k, 0.0) for k in inner)
    seconds["other (spine, plan, stats, combine)"] = total - sum(
        v for k, v in seconds.items() if k not in SCORING_STAGES)
    model, frame = chunks[0]
    return {"customers": result.customers, "seconds": total, "stages": seconds,
            "bare_rows": len(frame), "bare": bare_model(model, model.risk.encode(frame)),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def stage_lines(stages: dict) -> list[str]:
    """The per-stage table of each profiled job, with the bare model beside it."""
    lines = []
    for n, prof in stages.items():
        customers, total = prof["customers"], prof["seconds"]
        lines += ["", f"Where the time goes in one local job of {int(n):,} customers "
                  f"({customers:,} scored, {total:.1f} s in process = {customers / total:,.0f} "
                  f"customers/s; median of {len(prof['runs'])} runs, load average at the end "
                  f"{', '.join(str(r['load_average'][0]) for r in prof['runs'])}). Stage rate = "
                  "scored customers / stage seconds. Bare model on the first chunk's "
                  f"{prof['runs'][0]['bare_rows']:,} rows, same runs: LightGBM predict "
                  f"{prof['bare']['lightgbm_predict']:,.0f} rows/s, pred_contrib "
                  f"{prof['bare']['lightgbm_pred_contrib']:,.0f} rows/s.", "",
                  "| stage | s | customers/s | share |", "|---|---|---|---|"]
        ordered = sorted(prof["stages"].items(), key=lambda kv: -kv[1])
        for name, s in [kv for kv in ordered if kv[0] not in SCORING_STAGES]:
            rate = f"{customers / s:,.0f}" if s > 0 else ""
            lines.append(f"| {name} | {s:.2f} | {rate} | {s / total:.0%} |")
        lines += ["", "In the scoring thread, beside the features of the next chunk (these "
                  f"overlap the stages above; what did not is '{WAITING}'):", "",
                  "| stage | s | customers/s | share of the job |", "|---|---|---|---|"]
        for name, s in [kv for kv in ordered if kv[0] in SCORING_STAGES]:
            rate = f"{customers / s:,.0f}" if s > 0 else ""
            lines.append(f"| {name} | {s:.2f} | {rate} | {s / total:.0%} |")
    return lines
