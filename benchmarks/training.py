"""Benchmark: wall time and peak memory of `train`, and the model quality table.

For each size a sample base is generated (not timed), then `train` runs in a fresh process
with its own MLflow store, so the peak resident memory is the training's own. Prints a table
and writes benchmarks/results/training.json and training.md.

    python benchmarks/training.py                      # 10k and 100k customers
    python benchmarks/training.py --sizes 20000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

TRAIN = r"""
import json, resource, sys, time
from churnlens.settings import Settings
from churnlens.training.pipeline import train
source, work = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
result = train(Settings(data={"source": source}, paths={"work_dir": work}), log=lambda *_: None)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"seconds": seconds, "peak_bytes": peak, "metrics": result.metrics}))
"""

QUALITY = [
    ("risk", "roc_auc"), ("oracle", "roc_auc"), ("logistic", "roc_auc"),
    ("risk", "pr_auc"), ("risk", "brier"), ("risk", "calibration_error"),
    ("logistic", "calibration_error"), ("risk", "top_decile_lift"),
    ("risk", "top_decile_capture"), ("survival", "concordance"),
    ("kaplan_meier", "concordance"), ("survival", "integrated_brier"),
    ("kaplan_meier", "integrated_brier"), ("survival", "time_auc_90"),
    ("survival", "time_auc_180"), ("ltv", "spearman"), ("ltv", "normalized_gini"),
    ("ltv", "decile_mape"), ("ltv", "total_error_pct"),
]


def generate(n: int, folder: Path) -> None:
    from churnlens.features.sample import generate_sample, write_sample

    write_sample(generate_sample(n, seed=0), folder)


def run_train(source: Path, root: Path) -> dict:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
               MLFLOW_DISABLE_TELEMETRY="true")
    out = subprocess.run([sys.executable, "-c", TRAIN, str(source), str(root / "work")],
                         capture_output=True, text=True, cwd=root, env=env)
    if out.returncode != 0:
        raise SystemExit(f"train failed with status {out.returncode}:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if "RESULT " in x)
    return json.loads(line.split("RESULT ", 1)[1])


def measure(n: int, runs: int) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "sample"
        generate(n, source)
        for i in range(runs):
            root = Path(tmp) / f"run{i}"
            root.mkdir()
            rows.append(run_train(source, root))
            print(f"  {n:,}: train {rows[-1]['seconds']:.1f} s, peak "
                  f"{rows[-1]['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    return {
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "median_peak_gib": statistics.median(r["peak_bytes"] for r in rows) / 2**30,
        "max_peak_gib": max(r["peak_bytes"] for r in rows) / 2**30,
        "metrics": rows[0]["metrics"],
        "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in rows],
    }


def markdown(report: dict) -> str:
    sizes = list(report["sizes"])
    lines = ["| customers | runs | median train s | median peak GiB | max peak GiB | load at start |",
             "|---|---|---|---|---|---|"]
    for n, s in report["sizes"].items():
        load = s.get("load_average_at_start")
        lines.append(f"| {int(n):,} | {s.get('runs_count', '')} | {s['median_seconds']:.1f} | "
                     f"{s['median_peak_gib']:.2f} | {s['max_peak_gib']:.2f} | "
                     f"{'' if load is None else load[0]} |")
    lines += ["", "Test-slice quality (same seed; oracle = the generator's true probabilities):",
              "", "| model | metric | " + " | ".join(f"{int(n):,}" for n in sizes) + " |",
              "|---|---|" + "---|" * len(sizes)]
    for model, metric in QUALITY:
        key = f"test.{model}.{metric}"
        cells = [report["sizes"][n]["metrics"].get(key) for n in sizes]
        lines.append(f"| {model} | {metric} | " + " | ".join(
            "" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Sizes measured earlier are kept, so large sizes can be run with fewer repeats.
    previous = RESULTS / "training.json"
    report = json.loads(previous.read_text()) if previous.exists() else {"sizes": {}}
    report["cpus"] = len(os.sched_getaffinity(0))
    for n in args.sizes:
        load = [round(x, 2) for x in os.getloadavg()]
        report["sizes"][str(n)] = measure(n, args.runs) | {"runs_count": args.runs,
                                                          "load_average_at_start": load}
    report["sizes"] = dict(sorted(report["sizes"].items(), key=lambda kv: int(kv[0])))
    (RESULTS / "training.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (RESULTS / "training.md").write_text(
        f"# Training benchmark\n\nMedians over the runs of `train` (runs per size in "
        f"training.json), each in a fresh process ({report['cpus']} CPUs).\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
