"""Benchmark: time and peak memory to generate sample data and to build the training set.

Each measurement runs in a fresh Python process, so its peak resident memory is its own.
After the timed runs of a size, one more process profiles a build step by step
(`benchmarks/features_stages.py`): where the time goes. Prints a table and writes
benchmarks/results/features.json and features.md.

    python benchmarks/features.py                 # 10k and 100k customers, 3 runs each
    python benchmarks/features.py --sizes 10000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

STAGE = r"""
import json, resource, sys, time
stage, n, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
if stage == "generate":
    from churnlens.features.sample import generate_sample, write_sample
    write_sample(generate_sample(n, seed=0), folder)
    rows = None
elif stage == "profile":
    sys.path.insert(0, sys.argv[4])
    from features_stages import profile_build
    print("RESULT " + json.dumps(profile_build(folder)))
    raise SystemExit
else:
    from churnlens.settings import Settings
    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    rows = len(build_training_set(load_source(folder), Settings()).frame)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"seconds": seconds, "peak_bytes": peak, "rows": rows}))
"""


def run_stage(stage: str, n: int, folder: str) -> dict:
    """One stage in a fresh process; its seconds, peak and the load average around it (the
    machine may be shared: a figure is only as good as the load it was measured under)."""
    before = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", STAGE, stage, str(n), folder,
                          str(Path(__file__).parent)],
                         capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if "RESULT " in x)
    return {**json.loads(line.split("RESULT ", 1)[1]),
            "load_average": [round(before, 2), round(os.getloadavg()[0], 2)]}


def measure(n: int, runs: int, stages: bool) -> dict:
    results: dict[str, list[dict]] = {"generate": [], "build_training_set": []}
    profile = None
    for i in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            results["generate"].append(run_stage("generate", n, folder))
            results["build_training_set"].append(run_stage("build", n, folder))
            print(f"  {n:,}: generate {results['generate'][-1]['seconds']:.1f} s, "
                  f"build {results['build_training_set'][-1]['seconds']:.1f} s", flush=True)
            if stages and i == runs - 1:
                profile = run_stage("profile", n, folder)
                profile["load_average"] = profile["load_average"][1]
    summary = {}
    for stage, rows in results.items():
        summary[stage] = {
            "median_seconds": statistics.median(r["seconds"] for r in rows),
            "median_peak_gib": statistics.median(r["peak_bytes"] for r in rows) / 2**30,
            "max_peak_gib": max(r["peak_bytes"] for r in rows) / 2**30,
            "runs": rows,
        }
    summary["training_rows"] = results["build_training_set"][0]["rows"]
    summary["profile"] = profile
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-stages", action="store_true",
                        help="skip the step-by-step profile of one build per size")
    args = parser.parse_args()
    report = {"machine": {"python": platform.python_version(), "cpus": _cpus()},
              "runs_per_size": args.runs, "sizes": {}}
    for n in args.sizes:
        report["sizes"][str(n)] = measure(n, args.runs, not args.no_stages)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(report, indent=2))
    lines = ["| customers | training rows | stage | median s | runs s | median peak GiB | "
             "max peak GiB | load average before, after |", "|---|---|---|---|---|---|---|---|"]
    for n, s in report["sizes"].items():
        for stage in ("generate", "build_training_set"):
            runs = s[stage]["runs"]
            seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs)
            loads = "; ".join(f"{r['load_average'][0]}, {r['load_average'][1]}" for r in runs)
            lines.append(f"| {int(n):,} | {s['training_rows']:,} | {stage} | "
                         f"{s[stage]['median_seconds']:.1f} | {seconds} | "
                         f"{s[stage]['median_peak_gib']:.2f} | {s[stage]['max_peak_gib']:.2f} | "
                         f"{loads} |")
    table = "\n".join(lines)
    for n, s in report["sizes"].items():
        if s.get("profile"):
            from features_stages import stage_lines

            table += "\n\n" + "\n".join(stage_lines(s["profile"], n=int(n)))
    (RESULTS / "features.md").write_text(
        f"# Feature benchmark\n\nMedians of {args.runs} runs, each stage in a fresh process "
        f"({report['machine']['cpus']} CPUs, Python {report['machine']['python']}).\n\n"
        f"{table}\n")
    print(table)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
