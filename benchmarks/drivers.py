"""Drivers benchmark: rows/s of the scoring core with and without drivers, beside the model.

On a model trained as `churnlens train` does (a 2,000-customer sample by default) and rows
of its training set, this times at 1, 100 and 20,000 rows: LightGBM `predict` (raw) and
`pred_contrib` on the encoded rows, `ShapTable` contributions (RiskModel.contributions),
`score_frame` (no drivers), `score_columns` with drivers (what the endpoint and the batch
scorer call: scores, contributions, `explain`) and `explain` alone from ready
contributions. With --before COMMIT, `explain` of that commit's training/drivers.py and
sentences.py (git show) too. Each figure is the median of --repeats runs; a run repeats
the call until it has taken --min-seconds. Methods take turns in each run, so load drifts
hit them alike; the load average is recorded before and after each size.

    python benchmarks/drivers.py [--customers 2000] [--repeats 5] [--before 0020238]

Writes benchmarks/results/drivers.json and drivers.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SIZES = (1, 100, 20_000)


def churnlens(*args: str) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "churnlens"), "--params", str(ROOT / "params.yaml"),
            *args]


def trained(work: Path, customers: int) -> Path:
    """The sample source under WORK, and a model trained on it registered in WORK/model."""
    store, data = work / "model", work / "data"
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
                      MLFLOW_DISABLE_TELEMETRY="true")
    if not (store / "trained").exists():
        store.mkdir(parents=True, exist_ok=True)
        subprocess.run(churnlens("sample-data", "--customers", str(customers), "--seed", "7",
                                 "--out", str(data)), check=True)
        subprocess.run(churnlens("train", "--source", str(data), "--promote", "force"),
                       check=True, cwd=store, stdout=subprocess.DEVNULL)
        (store / "trained").touch()
    return data


def before_explain(commit: str):
    """`explain` of COMMIT's training/drivers.py and sentences.py, under other names."""
    names = {"sentences": "drivers_bench_sentences", "drivers": "drivers_bench_drivers"}
    folder = Path(tempfile.mkdtemp())
    for stem, module in names.items():
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:training/{stem}.py"],
                                check=True, capture_output=True, text=True).stdout
        path = folder / f"{module}.py"
        path.write_text(source.replace("from churnlens.training.sentences import",
                                       f"from {names['sentences']} import"))
        spec = importlib.util.spec_from_file_location(module, path)
        sys.modules[module] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[module])
    return sys.modules[names["drivers"]].explain


def methods(model, frame, before) -> dict:
    """Name -> a call on FRAME's rows, for each figure."""
    from churnlens.serving.core import prepare, score_columns, score_frame
    from churnlens.training.drivers import explain

    prepared = prepare(model, frame)
    matrix, booster = prepared.risk, model.risk.booster_
    threads = 1 if len(frame) < 1000 else None  # as RiskModel does
    contrib = model.risk.contributions(matrix)
    args = (prepared.frame, contrib, model.features, model.playbooks, model.top_n)
    out = {
        "lightgbm predict": lambda: booster.predict(matrix, raw_score=True,
                                                    num_threads=threads or 0),
        "lightgbm pred_contrib": lambda: booster.predict(matrix, pred_contrib=True,
                                                         num_threads=threads or 0),
        "ShapTable contributions": lambda: model.risk.contributions(matrix),
        "score_frame (no drivers)": lambda: score_frame(model, frame),
        "score_columns with drivers": lambda: score_columns(model, frame),
        "explain alone": lambda: explain(*args, typical=model.risk.typical_),
    }
    if before is not None:
        out["explain alone, before"] = lambda: before(*args, typical=model.risk.typical_)
    return out


def measure(model, frame, before, repeats: int, min_seconds: float) -> dict:
    calls = methods(model, frame, before)
    for fn in calls.values():
        fn()  # warm-up: first calls build caches (ShapTable, driver layout)
    rates: dict[str, list[float]] = {name: [] for name in calls}
    load_before = os.getloadavg()
    for _ in range(repeats):
        for name, fn in calls.items():
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    break
            rates[name].append(len(frame) * n / elapsed)
    return {"rows": len(frame),
            "rows_per_s": {name: statistics.median(r) for name, r in rates.items()},
            "load_average": [round(x, 2) for x in (*load_before, *os.getloadavg())]}


def to_markdown(out: dict) -> str:
    lines = ["# Drivers benchmark", "",
             f"{out['machine']}; model trained on {out['customers']:,} sample customers "
             f"({out['trees']} trees); rows of its training set; median of {out['repeats']} "
             "runs. Load average: 1/5/15 min before, then after, each size.", "",
             "| method | " + " | ".join(f"{r['rows']:,} rows" for r in out["sizes"]) + " |",
             "|---|" + "---:|" * len(out["sizes"])]
    for name in out["sizes"][0]["rows_per_s"]:
        cells = []
        for r in out["sizes"]:
            rate = r["rows_per_s"][name]
            cells.append(f"{rate:,.0f} rows/s ({1e3 * r['rows'] / rate:.2f} ms)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| rows | load average (before / after) |", "|---|---|"]
    lines += [f"| {r['rows']:,} | {r['load_average'][:3]} / {r['load_average'][3:]} |"
              for r in out["sizes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--before", help="also time explain of this commit")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "churnlens-drivers")
    args = parser.parse_args()
    import lightgbm as lgb

    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    from churnlens.serving.batch import load_model
    from churnlens.settings import Settings

    data = trained(args.work, args.customers)
    model = load_model("models:/churnlens@champion")
    rows = build_training_set(load_source(data), Settings(data={"source": str(data)})).frame
    rows = rows.sample(max(SIZES), replace=len(rows) < max(SIZES), random_state=0)
    before = before_explain(args.before) if args.before else None
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                      f"{platform.python_version()}, LightGBM {lgb.__version__}",
           "customers": args.customers, "repeats": args.repeats, "before": args.before,
           "trees": model.risk.booster_.num_trees(), "sizes": []}
    for size in SIZES:
        frame = rows.head(size).reset_index(drop=True)
        out["sizes"].append(measure(model, frame, before, args.repeats, args.min_seconds))
        print(json.dumps(out["sizes"][-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drivers.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "drivers.md").write_text(to_markdown(out))
    print(to_markdown(out))


if __name__ == "__main__":
    main()
