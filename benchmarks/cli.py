"""Benchmark: how fast `churnlens --help` and each sub-command's `--help` answer.

Each run is a fresh process of the installed console script (the interpreter's start-up
included, as a user waits for it), timed from spawn to exit. Prints a table and writes
benchmarks/results/cli.json and cli.md. The load average is recorded beside the figures:
on a busy machine every process starts slower.

    python benchmarks/cli.py            # 5 runs each
    python benchmarks/cli.py --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TARGET_S = 0.5


def commands() -> list[str]:
    from churnlens.cli.app import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


def time_help(script: str, argv: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([script, *argv], check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command line")
    args = parser.parse_args()
    script = str(Path(sys.executable).parent / "churnlens")
    subprocess.run([script, "--help"], check=True, stdout=subprocess.DEVNULL)  # warm caches
    rows = {}
    for argv in [["--help"]] + [[name, "--help"] for name in commands()]:
        runs = time_help(script, argv, args.runs)
        line = "churnlens " + " ".join(argv)
        rows[line] = {"median_seconds": statistics.median(runs), "max_seconds": max(runs),
                      "runs": runs}
        print(f"  {line:<32} median {rows[line]['median_seconds']:.3f} s  "
              f"max {max(runs):.3f} s", flush=True)
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0]},
        "runs_per_command": args.runs, "target_seconds": TARGET_S, "commands": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# CLI start-up benchmark", "",
        f"Median of {args.runs} fresh processes per command line, console script "
        f"`churnlens` ({result['machine']['cpus']} CPUs, Python {result['machine']['python']}, "
        f"load average {result['machine']['load_average_1min']:.1f} while measured). "
        f"Target: under {TARGET_S} s.", "",
        "| command | median s | max s |", "|---|---|---|",
        *(f"| `{line}` | {r['median_seconds']:.3f} | {r['max_seconds']:.3f} |"
          for line, r in rows.items()),
        "", "`python benchmarks/cli.py` writes this file.",
    ]
    (RESULTS / "cli.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'cli.md'}")


if __name__ == "__main__":
    main()
