"""Tree count and depth of the risk model: quality on the test slice against TreeSHAP speed.

TreeSHAP (the drivers of every score) costs far more than prediction and grows with the
number of trees and their depth, which the LightGBM settings in params.yaml decide. For each
candidate setting this fits the risk model on the same split of a sample base, reports its
test-slice quality (ROC AUC, Brier, calibration error, top-decile lift; the generator's
true probabilities give the oracle AUC, a ceiling) and times TreeSHAP contributions on
100,000 rows (median of --repeats passes, LightGBM's default threads, as the batch scorer).

    python benchmarks/trees.py [--customers 100000] [--repeats 3]

Writes benchmarks/results/trees.json and trees.md.
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

RESULTS = Path(__file__).resolve().parent / "results"
SHAP_ROWS = 100_000
# (learning_rate, num_leaves, max_depth): params.yaml has (0.05, 7, 3), chosen by this benchmark
# over the earlier default (0.05, 15, 5).
CANDIDATES = [(0.05, 15, 5), (0.1, 15, 5), (0.05, 7, 3), (0.1, 7, 3), (0.05, 31, -1)]
METRICS = ("roc_auc", "brier", "calibration_error", "top_decile_lift")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "churnlens-trees")
    args = parser.parse_args()

    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    from churnlens.features.sample import generate_sample, write_sample
    from churnlens.settings import Settings
    from churnlens.training.evaluation import oracle_probabilities
    from churnlens.training.metrics import classification_metrics
    from churnlens.training.risk import RiskModel
    from churnlens.training.split import temporal_split

    source = args.work / f"sample-{args.customers}"
    if not (source / "done").exists():
        print(f"generating {args.customers:,} customers in {source}", flush=True)
        write_sample(generate_sample(args.customers, seed=0), source)
        (source / "done").touch()
    settings = Settings(data={"source": str(source)})
    ff = build_training_set(load_source(source, None), settings)
    split = temporal_split(ff.frame, settings.horizon_days, settings.training)
    y = split.test["churned"].astype(int).to_numpy()
    oracle = oracle_probabilities(source, split.test)
    rows = split.test.sample(SHAP_ROWS, replace=len(split.test) < SHAP_ROWS, random_state=0)
    print(f"train {len(split.train):,} rows, test {len(split.test):,}; TreeSHAP on "
          f"{len(rows):,} rows", flush=True)

    results = []
    for lr, leaves, depth in CANDIDATES:
        params = settings.training.lightgbm.model_copy(
            update={"learning_rate": lr, "num_leaves": leaves, "max_depth": depth})
        t0 = time.perf_counter()
        model = RiskModel(ff.features, params, settings.training.seed, num_threads=2).fit(
            split.train, split.validation, split.calibration)
        fit_s = time.perf_counter() - t0
        quality = classification_metrics(y, model.predict_proba(split.test))
        matrix = model.encode(rows)
        model.contributions(matrix[:1000])  # warm-up
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.contributions(matrix)
            rates.append(len(matrix) / (time.perf_counter() - t0))
        row = {"learning_rate": lr, "num_leaves": leaves, "max_depth": depth,
               "trees": model.booster_.num_trees(), "fit_s": fit_s,
               "shap_rows_per_s": statistics.median(rates), "shap_runs": rates,
               **{k: quality[k] for k in METRICS}}
        results.append(row)
        print(json.dumps(row), flush=True)

    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                      f"{platform.python_version()}",
           "customers": args.customers, "test_rows": len(split.test), "repeats": args.repeats,
           "oracle_roc_auc": classification_metrics(y, oracle)["roc_auc"] if oracle is not None
           else None, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
           "candidates": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trees.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "trees.md").write_text(to_markdown(out))
    print(to_markdown(out))


def to_markdown(out: dict) -> str:
    oracle = f"{out['oracle_roc_auc']:.3f}" if out["oracle_roc_auc"] is not None else "n/a"
    lines = ["# Risk model trees: quality against TreeSHAP speed", "",
             f"{out['machine']}; sample base of {out['customers']:,} customers, test slice of "
             f"{out['test_rows']:,} rows (oracle ROC AUC {oracle}). TreeSHAP: rows/s on "
             f"{SHAP_ROWS:,} rows, median of {out['repeats']} passes, default threads.", "",
             "| learning rate | leaves | max depth | trees | fit s | ROC AUC | Brier | "
             "calibration error | top-decile lift | TreeSHAP rows/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["candidates"]:
        lines.append(f"| {r['learning_rate']} | {r['num_leaves']} | {r['max_depth']} | "
                     f"{r['trees']} | {r['fit_s']:.1f} | {r['roc_auc']:.4f} | {r['brier']:.4f} | "
                     f"{r['calibration_error']:.4f} | {r['top_decile_lift']:.2f} | "
                     f"{r['shap_rows_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
