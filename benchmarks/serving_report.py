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


def verdicts(rows: list[dict], soak: dict | None, ready_s: float) -> dict:
    by = {r["scenario"]: r for r in rows}
    c8, page = by.get("single c=8"), max((r for r in rows if r["customers_per_call"] == 100),
                                         key=lambda r: r["customers_per_s"], default=None)
    out = {"ready_s": (ready_s, ready_s < TARGETS["ready_s"])}
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
    return {k: {"value": v, "target": TARGETS[k], "met": ok} for k, (v, ok) in out.items()}


def markdown(report: dict) -> str:
    starts = report["starts"]
    lines = ["# Serving benchmark", "",
             f"{report['machine']['cpus']} CPUs, load average at start "
             f"{report['machine']['load_at_start']}; Python {report['machine']['python']}; "
             f"model {report['model']}; {report['snapshot_customers']:,} customers in the "
             f"snapshot.", "",
             f"Start to ready (`churnlens serve` launched to /readyz 200), {len(starts)} starts: "
             f"median {report['ready_s']} s, each {[s['ready_s'] for s in starts]} s, load "
             f"average at each start {[s['load_avg'][0] for s in starts]}. Where the last "
             "start's time went, as the server logged it:", "",
             f"    {starts[-1]['log']}", "",
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
    lines += ["", "Reading it: a start's time is the server's own steps above plus BentoML's app "
                  "start-up (the workspace scores the whole snapshot before /readyz answers); "
                  "a call's time is the core's (bare-model table: the core with drivers against "
                  "LightGBM alone on the same rows) plus HTTP. The load generator runs on the "
                  "same cores (client CPU per call in the table)."]
    lines += ["", "| target | value | required | met |", "|---|---|---|---|"]
    for name, v in report["targets"].items():
        lines.append(f"| {name} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"
