"""The serving benchmark's report, and the bare model beside it (same rows, no HTTP).

For the model the server loaded and customers of its snapshot: LightGBM `predict` (raw
score) and `pred_contrib` (TreeSHAP) of the risk model on the encoded rows, and churnlens'
scoring core (`score_records` with drivers) in process, on one row (one thread, as the
server scores a lone call) and on 100 rows (a page). Medians of repeated calls.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

TARGETS = {"ready_s": 5.0, "single_c8_p99_ms": 25.0, "single_c8_rps": 500.0,
           "page100_customers_per_s": 10000.0, "soak_memory_growth_pct": 10.0, "soak_failed": 0}


def summarise(name: str, result: dict, page: int, concurrency: int) -> dict:
    import numpy as np

    lat = np.asarray(result["latencies"]) * 1000
    calls = len(lat)
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99)) if calls else (0,) * 3
    rps = calls / result["seconds"]
    return {"scenario": name, "concurrency": concurrency, "customers_per_call": max(page, 1),
            "calls": calls, "failed": result["failed"], "errors": result["errors"],
            "seconds": round(result["seconds"], 1), "calls_per_s": round(rps, 1),
            "customers_per_s": round(rps * max(page, 1), 1),
            "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1),
            "peak_rss_mb": round(max(m for _, m in result["memory"]) / 2**20, 1),
            "client_cpu_ms_per_call": round(1000 * result.get("client_cpu_s", 0)
                                            / max(1, result.get("total_calls", calls)), 2)}


def soak_figures(result: dict, warmup_s: float) -> dict:
    """Memory growth after warm-up: median RSS of the last minute vs the first after it."""
    import numpy as np

    mem = [(t, m) for t, m in result["memory"] if t >= warmup_s]
    window = max(1, min(60, len(mem) // 4))
    seconds = len(mem) and mem[-1][0] - mem[0][0]
    base = float(np.median([m for _, m in mem[:window]]))
    end = float(np.median([m for _, m in mem[-window:]]))
    return {"warmup_s": warmup_s, "measured_s": round(seconds, 1),
            "rss_after_warmup_mb": round(base / 2**20, 1), "rss_end_mb": round(end / 2**20, 1),
            "rss_max_mb": round(max(m for _, m in mem) / 2**20, 1),
            "memory_growth_pct": round(100 * (end - base) / base, 2),
            "rss_timeline_mb": [(t, round(m / 2**20, 1)) for t, m in result["memory"][::10]]}


def _median_s(fn, repeats: int) -> float:
    fn()  # warm: first calls build caches (ShapTable, encodings)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_model(model_uri: str, snapshot: Path, tracking_uri: str) -> dict:
    """ms per call of predict, pred_contrib and score_records on 1 and 100 rows."""
    import pandas as pd

    from churnlens.serving.core import prepare, score_records
    from churnlens.training.tracking import load_bundle

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    model = load_bundle(model_uri)
    frame = pd.read_parquet(snapshot).head(2000)
    frame["customer_id"] = frame["customer_id"].astype(str)
    prepared = prepare(model, frame)
    booster = model.risk.booster_
    out = {"load_avg": [round(x, 2) for x in os.getloadavg()], "rows": {}}
    for rows, threads, repeats in ((1, 1, 300), (100, 1, 60), (100, None, 60)):
        key = f"{rows} row{'s' * (rows > 1)}, {'1 thread' if threads else 'default threads'}"
        out["rows"][key] = _figures(booster, model, prepared.take(list(range(rows))), threads,
                                    repeats, score_records)
    return out


def _figures(booster, model, picked, threads: int | None, repeats: int, score_records) -> dict:
    kw = {} if threads is None else {"num_threads": threads}
    figures = {
        "predict_ms": _median_s(lambda: booster.predict(picked.risk, raw_score=True, **kw),
                                repeats),
        "pred_contrib_ms": _median_s(lambda: booster.predict(picked.risk, pred_contrib=True,
                                                             **kw), repeats),
        "core_ms": _median_s(lambda: score_records(model, picked, num_threads=threads),
                             repeats // 3),
    }
    return {k: round(v * 1000, 3) for k, v in figures.items()}


def bare_lines(bare: dict) -> list[str]:
    """The bare-model table for the markdown report."""
    lines = ["", f"Bare model, same run (load average {bare['load_avg']}): ms per call, medians.",
             "", "| rows | LightGBM predict | LightGBM pred_contrib | churnlens core with "
             "drivers (in process) |", "|---|---|---|---|"]
    for key, r in bare["rows"].items():
        lines.append(f"| {key} | {r['predict_ms']} | {r['pred_contrib_ms']} | {r['core_ms']} |")
    return lines


def verdicts(report: dict) -> dict:
    """Each target: the run's value, the required value, and whether it is met."""
    rows, soak = report["scenarios"], report.get("soak")
    by = {r["scenario"]: r for r in rows}
    c8, page = by.get("single c=8"), max((r for r in rows if r["customers_per_call"] == 100),
                                         key=lambda r: r["customers_per_s"], default=None)
    out = {"ready_s": (report["ready_s"], report["ready_s"] < TARGETS["ready_s"])}
    if report.get("ready_bytecode_s") is not None:
        out["ready_s (bytecode cached)"] = (report["ready_bytecode_s"],
                                            report["ready_bytecode_s"] < TARGETS["ready_s"])
    if c8:
        out["single_c8_p99_ms"] = (c8["p99_ms"], c8["p99_ms"] < TARGETS["single_c8_p99_ms"])
        out["single_c8_rps"] = (c8["calls_per_s"], c8["calls_per_s"] >= TARGETS["single_c8_rps"])
    if page:
        out["page100_customers_per_s"] = (page["customers_per_s"], page["customers_per_s"]
                                          >= TARGETS["page100_customers_per_s"])
    if soak:
        out["soak_memory_growth_pct"] = (soak["memory_growth_pct"], soak["memory_growth_pct"]
                                         <= TARGETS["soak_memory_growth_pct"])
        out["soak_failed"] = (soak["failed"], soak["failed"] == 0)
    return {k: {"value": v, "target": TARGETS[k.split(" ")[0]], "met": ok}
            for k, (v, ok) in out.items()}


def stage_lines(report: dict) -> list[str]:
    """Each endpoint target beside the ceilings of its stages, same run: the HTTP stack
    alone (GET /livez, no scoring), the scoring core in process, the bare model."""
    by = {r["scenario"]: r for r in report["scenarios"]}
    bare = (report.get("bare") or {}).get("rows", {})
    one, hundred = bare.get("1 row, 1 thread"), bare.get("100 rows, 1 thread")
    floor = by.get("HTTP floor: GET /livez c=8")
    lines = ["", "Where the endpoint targets are held (ceilings of each stage, same run; "
                 "a stage cannot go faster than its ceiling):", "",
             "| target | measured | HTTP stack alone (GET /livez c=8) | scoring core in process "
             "| bare LightGBM predict + pred_contrib |", "|---|---|---|---|---|"]
    if by.get("single c=8") and floor and one:
        lines.append(f"| single c=8, 500 calls/s | {by['single c=8']['calls_per_s']} calls/s "
                     f"(merged {by['single c=8'].get('mean_batch')} customers a batch) | "
                     f"{floor['calls_per_s']} calls/s (p99 {floor['p99_ms']} ms) | "
                     f"{round(1000 / one['core_ms'])} calls/s (1 row: {one['core_ms']} ms) | "
                     f"{round(1000 / (one['predict_ms'] + one['pred_contrib_ms']))} calls/s |")
    page = max((r for r in report["scenarios"] if r["customers_per_call"] == 100),
               key=lambda r: r["customers_per_s"], default=None)
    if page and hundred:
        lines.append(f"| pages of 100, 10,000 customers/s | {page['customers_per_s']} "
                     "customers/s | - | "
                     f"{round(100_000 / hundred['core_ms'])} customers/s "
                     f"(100 rows: {hundred['core_ms']} ms) | "
                     f"{round(100_000 / (hundred['predict_ms'] + hundred['pred_contrib_ms']))} "
                     "customers/s |")
    return lines


def markdown(report: dict) -> str:
    starts = report["starts"]
    lines = ["# Serving benchmark", "",
             f"{report['machine']['cpus']} CPUs, load average at start "
             f"{report['machine']['load_at_start']}; Python {report['machine']['python']}; "
             f"model {report['model']}; {report['snapshot_customers']:,} customers in the "
             f"snapshot.", "",
             f"Start to ready (`churnlens serve` launched to /readyz 200), {len(starts)} starts: "
             f"median {report['ready_s']} s, each {[s['ready_s'] for s in starts]} s, load "
             f"average at each start {[s['load_avg'][0] for s in starts]}; Python bytecode "
             f"{report['bytecode']} (every import compiled from source when it is not "
             "installed and may not be written).", *_bytecode_starts(report),
             "Where the last start's time went, as the server logged it:", "",
             f"    {starts[-1]['log']}", "",
             f"The workspace (scored in a background thread after /readyz) was built "
             f"{report['workspace_after_ready_s']} s after ready; the scenarios start then.", "",
             "| scenario | clients | customers/call | calls | failed | calls/s | customers/s "
             "| p50 ms | p95 ms | p99 ms | server RSS peak MB | client CPU ms/call | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["scenarios"]:
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['customers_per_call']} | "
                     f"{r['calls']} | {r['failed']} | {r['calls_per_s']} | "
                     f"{r['customers_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
                     f"{r['peak_rss_mb']} | {r.get('client_cpu_ms_per_call', '')} | "
                     f"{r.get('load_avg', '')} |")
    lines += ["", f"Peak server memory over the run: {report['peak_rss_mb']} MB."]
    if report.get("bare"):
        lines += bare_lines(report["bare"])
    soak = report.get("soak")
    if soak:
        lines += ["", f"Soak: {soak['rate']} calls/s for {soak['measured_s']} s after "
                      f"{soak['warmup_s']} s of warm-up: {soak['calls']} calls, "
                      f"{soak['failed']} failed, p99 {soak['p99_ms']} ms; server RSS "
                      f"{soak['rss_after_warmup_mb']} MB after warm-up, {soak['rss_end_mb']} MB "
                      f"at the end (growth {soak['memory_growth_pct']}%), max "
                      f"{soak['rss_max_mb']} MB."]
    lines += stage_lines(report)
    lines += ["", "Reading it: a start's time is the server's own steps above plus BentoML's app "
                  "start-up (the workspace is scored after /readyz, in the background); "
                  "a call's time is the core's (bare-model table: the core with drivers against "
                  "LightGBM alone on the same rows) plus HTTP. The load generator runs on the "
                  "same cores (client CPU per call in the table)."]
    lines += ["", "| target | value | required | met |", "|---|---|---|---|"]
    for name, v in report["targets"].items():
        lines.append(f"| {name} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def _bytecode_starts(report: dict) -> list[str]:
    cached = report.get("starts_bytecode")
    if not cached:
        return [""]
    return ["", f"With the bytecode cached (`--pycache-prefix`: PYTHONPYCACHEPREFIX, filled by "
                f"one start not counted), {len(cached)} starts: median "
                f"{report['ready_bytecode_s']} s, each {[s['ready_s'] for s in cached]} s, load "
                f"average at each start {[s['load_avg'][0] for s in cached]}; the last "
                f"logged:", "", f"    {cached[-1]['log']}", ""]
