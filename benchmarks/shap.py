"""TreeSHAP drivers by table lookup (ShapTable) against LightGBM's predict and pred_contrib.

For two boosters, the churnlens risk model trained on a sample base and a random model of
the same shape (141 trees of 7 leaves over 60 features), this times on the same rows
LightGBM `predict` (raw score), LightGBM `pred_contrib` and `ShapTable.contributions`, at
1k, 10k and 100k rows, with LightGBM's default threads and with one thread: rows/s as the
median of --repeats passes (the three methods take turns in each pass, so load drifts hit
them alike), the load average before and after, one-row latency (median of 200 calls),
the table's build time and its largest difference from pred_contrib.

    python benchmarks/shap.py [--customers 20000] [--repeats 5]

Writes benchmarks/results/shap.json and shap.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np

from churnlens.training.shap_table import ShapTable

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1_000, 10_000, 100_000)
METHODS = ("predict", "pred_contrib", "shap_table")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "churnlens-shap")
    args = parser.parse_args()
    models = [("churnlens risk model", *risk_model(args.customers, args.work)),
              ("random 60 features", *random_model())]
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                      f"{platform.python_version()}, LightGBM {lgb.__version__}",
           "customers": args.customers, "repeats": args.repeats, "models": []}
    for name, booster, rows in models:
        out["models"].append(measure(name, booster, rows, args.repeats))
        print(json.dumps(out["models"][-1]["rates"][-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shap.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "shap.md").write_text(to_markdown(out))
    print(to_markdown(out))


def risk_model(customers: int, work: Path) -> tuple[lgb.Booster, np.ndarray]:
    """The risk model trained as `churnlens train` does, and 100k of its encoded rows."""
    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    from churnlens.features.sample import generate_sample, write_sample
    from churnlens.settings import Settings
    from churnlens.training.risk import RiskModel
    from churnlens.training.split import temporal_split

    source = work / f"sample-{customers}"
    if not (source / "done").exists():
        print(f"generating {customers:,} customers in {source}", flush=True)
        write_sample(generate_sample(customers, seed=0), source)
        (source / "done").touch()
    settings = Settings(data={"source": str(source)})
    ff = build_training_set(load_source(source, None), settings)
    split = temporal_split(ff.frame, settings.horizon_days, settings.training)
    model = RiskModel(ff.features, settings.training.lightgbm, settings.training.seed,
                      num_threads=2).fit(split.train, split.validation, split.calibration)
    rows = ff.frame.sample(max(SIZES), replace=len(ff.frame) < max(SIZES), random_state=0)
    return model.booster_, model.encode(rows)


def random_model() -> tuple[lgb.Booster, np.ndarray]:
    """141 trees of 7 leaves (depth 3) over 60 features, 10 of them counts, 5% missing."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(max(SIZES), 60))
    x[:, :10] = rng.poisson(3.0, (len(x), 10))
    x[rng.random(x.shape) < 0.05] = np.nan
    y = (np.nan_to_num(x) @ rng.normal(size=60) / 8 + rng.normal(size=len(x)) > 0.5)
    params = {"objective": "binary", "num_leaves": 7, "max_depth": 3, "learning_rate": 0.05,
              "verbosity": -1, "seed": 0, "num_threads": 2}
    return lgb.train(params, lgb.Dataset(x, y.astype(float)), num_boost_round=141), x


def measure(name: str, booster: lgb.Booster, rows: np.ndarray, repeats: int) -> dict:
    t0 = time.perf_counter()
    table = ShapTable.from_booster(booster)
    build_s = time.perf_counter() - t0
    check = rows[:20_000]
    diff = float(np.abs(table.contributions(check) - booster.predict(check, pred_contrib=True)
                        ).max())
    calls = {"predict": lambda x, k: booster.predict(x, raw_score=True, num_threads=k),
             "pred_contrib": lambda x, k: booster.predict(x, pred_contrib=True, num_threads=k),
             "shap_table": lambda x, k: table.contributions(x, num_threads=k)}
    rates = []
    for threads in (None, 1):
        for n in SIZES:
            x = np.ascontiguousarray(rows[:n])
            load_before = os.getloadavg()[0]
            runs = {m: [] for m in METHODS}
            for _ in range(repeats):
                for m in METHODS:
                    t0 = time.perf_counter()
                    calls[m](x, 0 if threads is None and m != "shap_table" else threads)
                    runs[m].append(n / (time.perf_counter() - t0))
            rates.append({"rows": n, "threads": "default" if threads is None else threads,
                          **{m: statistics.median(r) for m, r in runs.items()},
                          "runs": runs, "load_before": round(load_before, 2),
                          "load_after": round(os.getloadavg()[0], 2)})
    one = {m: one_row_us(lambda x, m=m: calls[m](x, 1), rows[:1]) for m in METHODS}
    return {"model": name, "trees": booster.num_trees(), "features": booster.num_feature(),
            "table_build_s": build_s, "table_cells": table.n_cells,
            "fallback_trees": len(table.fallback_trees), "max_abs_diff": diff,
            "one_row_us": one, "rates": rates}


def one_row_us(call, x: np.ndarray, n: int = 200) -> float:
    call(x)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def to_markdown(out: dict) -> str:
    lines = ["# TreeSHAP by table lookup (ShapTable) against LightGBM", "",
             f"{out['machine']}. Rows/s, median of {out['repeats']} passes on the same rows; "
             "threads `default` = LightGBM's (all cores) and ShapTable's (all cores from 4,096 "
             "rows). ShapTable equals `pred_contrib` to the max abs difference shown.", ""]
    for m in out["models"]:
        lines += [f"## {m['model']}: {m['trees']} trees, {m['features']} features", "",
                  f"Table built in {m['table_build_s']:.2f} s, {m['table_cells']:,} cells, "
                  f"{m['fallback_trees']} fallback trees; max abs difference from "
                  f"pred_contrib {m['max_abs_diff']:.1e} on 20,000 rows. One row, one thread "
                  "(median of 200 calls): " + ", ".join(
                      f"{k} {v:.0f} us" for k, v in m["one_row_us"].items()) + ".", "",
                  "| rows | threads | predict rows/s | pred_contrib rows/s | ShapTable rows/s "
                  "| ShapTable / pred_contrib | ShapTable / predict | load before, after |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in m["rates"]:
            lines.append(
                f"| {r['rows']:,} | {r['threads']} | {r['predict']:,.0f} | "
                f"{r['pred_contrib']:,.0f} | {r['shap_table']:,.0f} | "
                f"{r['shap_table'] / r['pred_contrib']:.1f}x | "
                f"{r['shap_table'] / r['predict']:.2f} | {r['load_before']}, {r['load_after']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
