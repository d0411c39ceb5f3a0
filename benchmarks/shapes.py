"""Benchmark: the model beside its baselines on each data shape, fitted in the same run.

For each shape a sample base is generated (`sample-data --shape S`), then `train` runs in a
fresh process with its own MLflow store and only the settings the README names for that
shape. Every test metric of the run (`test.<row>.<metric>`: the model and each baseline
fitted in that run on the same test rows) goes into one table per shape and task. Prints the
tables and writes benchmarks/results/shapes.json and shapes.md.

    python benchmarks/shapes.py                         # 20k customers per shape
    python benchmarks/shapes.py --customers 5000 --shapes snapshot
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# The settings the README names for each shape (section "Data shapes").
SETTINGS = {
    "subscriptions": {},
    "snapshot": {"horizon_days": 31, "data": {"observed_until": "2026-11-01"}},
    "transactions": {},
}

TRAIN = r"""
import json, sys, time
from churnlens.features.sample import generate_shape, write_sample
from churnlens.settings import Settings
from churnlens.training.pipeline import train
shape, customers, root, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
overrides = json.loads(overrides)
source = f"{root}/data"
data = {"source": source, **overrides.pop("data", {})}
settings = Settings(data=data, paths={"work_dir": f"{root}/work"}, **overrides)
write_sample(generate_shape(shape, customers, seed=1, horizon_days=settings.horizon_days,
                            ltv_horizon_days=settings.ltv.horizon_days), source)
t0 = time.perf_counter()
result = train(settings, log=lambda *_: None)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "metrics": result.metrics,
                              "notes": result.notes}))
"""


def run_shape(shape: str, customers: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        proc = subprocess.run(
            [sys.executable, "-c", TRAIN, shape, str(customers), root,
             json.dumps(SETTINGS[shape])], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def tables(metrics: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """{row: {metric: value}} per task, from test.<row>.<metric> keys."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "test":
            rows.setdefault(parts[1], {})[parts[2]] = value
    tasks: dict[str, dict[str, dict[str, float]]] = {}
    for row, values in rows.items():
        task = ("ltv" if "ltv" in row or "spearman" in values else
                "survival" if "concordance" in values else "risk")
        tasks.setdefault(task, {})[row] = values
    return tasks


def markdown(report: dict) -> str:
    out = [f"# Model vs baselines per data shape\n\n{report['customers']:,} customers per "
           f"shape, seed 1; every row fitted in the same run on the same test rows "
           f"({report['cpus']} CPUs, load average {report['load']}).\n"]
    for shape, res in report["shapes"].items():
        out.append(f"## {shape}\n")
        if "error" in res:
            out.append(f"failed: {res['error']}\n")
            continue
        out.append(f"train {res['seconds']:.0f} s; settings: "
                   f"{json.dumps(SETTINGS[shape]) if SETTINGS[shape] else 'defaults'}\n")
        for task, rows in tables(res["metrics"]).items():
            cols = sorted({c for values in rows.values() for c in values})
            out.append(f"### {task}\n\n| row | " + " | ".join(cols) + " |\n|---|"
                       + "---|" * len(cols))
            for row, values in rows.items():
                cells = [f"{values[c]:.4f}" if c in values else "" for c in cols]
                out.append(f"| {row} | " + " | ".join(cells) + " |")
            out.append("")
        notes = [n for n in res["notes"] if any(w in n for w in ("calibrat", "LTV", "ltv",
                                                                  "extrapolat", "cutoff"))]
        if notes:
            out.append("notes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--shapes", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args()
    report = {"customers": args.customers, "cpus": os.cpu_count(),
              "load": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%d %H:%M"),
              "shapes": {}}
    for shape in args.shapes:
        report["shapes"][shape] = run_shape(shape, args.customers)
        print(f"{shape}: done", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shapes.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "shapes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
