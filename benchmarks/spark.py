"""Spark benchmark: customers/s and peak memory of `churnlens score` on three engines.

For each base size (sample data from `churnlens sample-data --customers N --seed 0`, cached
under --work), in one run, each job in a fresh process:

* ``local``: the local engine (DuckDB + pandas in the driver process);
* ``spark-local``: ``--engine spark`` in Spark local mode (driver and executors in one JVM);
* ``cluster``: ``--engine spark --master spark://...`` on a standalone cluster on this
  machine started for the run (tests/spark_cluster.py: a master and two one-core workers of
  1 GiB, executors running a Python without churnlens, so the job ships the package).

Memory is sampled every 50 ms with psutil: the driver (the `churnlens` Python process and,
for Spark, the driver JVM it starts, each and together; in local mode that JVM also holds the
executor) and, separately, the cluster's processes (master, workers, executors and their
Python workers). The rate is scored customers / the job's own seconds (as `score` prints
them); the wall seconds include start-up. A model is trained once on a 20k-customer sample.
Figures: benchmarks/results/spark.json and spark.md (rows of earlier invocations are kept
until measured again; each row says its commit and the load average).

    python benchmarks/spark.py [--sizes 100000 1000000] [--repeats 2] [--engines ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from batch import AS_OF, BLOCK, churnlens, make_source, model_env  # noqa: E402  (benchmarks/batch.py)

RESULTS = ROOT / "benchmarks" / "results"
ENGINES = ("local", "spark-local", "cluster")
MIB = 2**20


def sample_source(work: Path, customers: int) -> Path:
    """`churnlens sample-data --customers N --seed 0` into WORK/data, once; above BLOCK
    customers the blocks of benchmarks/batch.py (independent samples of BLOCK customers,
    distinct id prefixes, written table by table): `sample-data` holds the whole base in
    memory, about 240M events for 1M customers."""
    if customers > BLOCK:
        return make_source(customers, work / "data" / f"blocks-{customers}")
    out = work / "data" / f"seed0-{customers}"
    if not (out / "done").exists():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(churnlens("sample-data", "--customers", str(customers), "--seed", "0",
                                 "--out", str(out)), check=True, stdout=subprocess.DEVNULL)
        (out / "done").touch()
    return out


def _rss(procs) -> int:
    import psutil

    total = 0
    for p in procs:
        with suppress(psutil.NoSuchProcess):  # ended between listing and reading
            total += p.memory_info().rss
    return total


def sample_memory(proc, cluster) -> dict[str, int]:
    """RSS now (bytes): the driver Python, its JVM(s), its whole tree, the cluster."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        kids = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    jvms = [p for p in kids if _name(p) == "java"]
    out = {"driver_python": _rss([root]), "driver_jvm": _rss(jvms),
           "driver_tree": _rss([root, *kids])}
    if cluster is not None:
        out["cluster"] = _rss([p for d in cluster.daemons for p in d.tree()])
    return out


def _name(p) -> str:
    import psutil

    try:
        return p.name()
    except psutil.NoSuchProcess:
        return ""


def job_run(source: Path, out: Path, env: dict, engine: str, cluster) -> dict:
    """One `churnlens score` job; its rate, seconds and peak memory (MiB) by part."""
    # The job's folder, with what an interrupted run left beside OUT (OUT.tmp, OUT.lock,
    # OUT.staging), which the job refuses to touch without --resume or --overwrite.
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["score", "--source", str(source), "--as-of", AS_OF, "--out", str(out)]
    if engine != "local":
        args += ["--engine", "spark"]
    if engine == "cluster":
        args += ["--master", cluster.master]
        env = cluster.driver_env(env)
    peaks: dict[str, int] = {}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(churnlens(*args), env=env, cwd=out.parent, stdout=stdout,
                                stderr=stderr)
        while proc.poll() is None:
            # The cluster stays up through the run: counted for its own jobs only.
            for k, v in sample_memory(proc, cluster if engine == "cluster" else None).items():
                peaks[k] = max(peaks.get(k, 0), v)
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        stdout.seek(0), stderr.seek(0)
        text, err = stdout.read().decode(), stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} job failed ({proc.returncode}):\n{text[-2000:]}\n"
                           f"{err[-3000:]}")
    found = re.search(r"wrote ([\d,]+) score records .* in ([\d.]+) s", text)
    if not found:
        raise RuntimeError(f"{engine} job printed no 'wrote N score records ... in S s':\n"
                           f"{text[-2000:]}")
    scored, seconds = int(found.group(1).replace(",", "")), float(found.group(2))
    return {"scored": scored, "job_s": seconds, "wall_s": wall,
            "customers_per_s": scored / seconds, "load_start": load,
            "load_end": os.getloadavg()[0], **{f"{k}_mib": v / MIB for k, v in peaks.items()}}


def commit() -> str:
    """The measured code: HEAD, and the engine files changed in the working tree if any."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "serving", "features",
                            "cli"], cwd=ROOT, capture_output=True, text=True).stdout.split("\n")
    changed = sorted(line[3:] for line in dirty if line.strip())
    return head + (f" + uncommitted {', '.join(changed)}" if changed else "")


def median_row(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    row = {k: statistics.median(r[k] for r in runs) for k in keys}
    return row | {"runs": len(runs), "load_start": runs[0]["load_start"],
                  "load_end": runs[-1]["load_end"]}


def run_all(args, work: Path) -> list[dict]:
    """Every (size, engine) job, ARGS.repeats times; the median rows."""
    env = model_env(work)
    sources = {n: sample_source(work, n) for n in args.sizes}
    rows, code = [], commit()
    with ExitStack() as stack:
        cluster = None
        if "cluster" in args.engines:
            from tests.spark_cluster import start_cluster

            t0 = time.perf_counter()
            cluster = stack.enter_context(start_cluster(work / "cluster", memory=args.memory))
            print(f"cluster up in {time.perf_counter() - t0:.1f} s: {cluster.master}",
                  flush=True)
        for n in args.sizes:
            for engine in args.engines:
                runs = []
                for i in range(args.repeats):
                    out = work / "out" / f"{engine}-{n}" / "scores.parquet"
                    r = job_run(sources[n], out, env, engine, cluster)
                    print(f"{engine} {n:,} run {i + 1}: {r['customers_per_s']:,.0f} "
                          f"customers/s, job {r['job_s']:.1f} s, driver "
                          f"{r['driver_tree_mib']:,.0f} MiB, load {r['load_start']:.1f}",
                          flush=True)
                    runs.append(r)
                memory = {"worker_memory": args.memory} if engine == "cluster" else {}
                rows.append({"engine": engine, "customers": n, "commit": code, **memory,
                             **median_row(runs)})
    return rows


def _workers(row: dict) -> str:
    """The cluster's memory per worker for ROW ('-' for another engine); rows from before it
    was recorded ran with the default 1g."""
    return row.get("worker_memory", "1g") if row["engine"] == "cluster" else "-"


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Earlier rows kept unless measured again (same engine, size and worker memory)."""
    key = {(r["engine"], r["customers"], _workers(r)) for r in new}
    rows = [r for r in old if (r["engine"], r["customers"], _workers(r)) not in key] + new
    return sorted(rows, key=lambda r: (r["customers"], ENGINES.index(r["engine"]), _workers(r)))


def checks(rows: list[dict]) -> list[str]:
    """The issue's targets, where the rows needed are present."""
    # The targets are read on the default cluster (1g workers); other worker sizes are
    # compared with the local engine only.
    by = {(r["engine"], r["customers"]): r for r in rows if _workers(r) in ("-", "1g")}
    out = []
    small, big = by.get(("cluster", 100_000)), by.get(("cluster", 1_000_000))
    if not big:
        out.append("1,000,000 on the cluster: not measured yet (`python benchmarks/spark.py "
                   "--sizes 100000 1000000`): the driver-memory and rate targets are open")
    if small and big:
        ratio = big["driver_tree_mib"] / small["driver_tree_mib"]
        out.append(f"cluster driver peak at 1M = {ratio:.2f} x its peak at 100k "
                   f"({'meets' if ratio <= 1.25 else 'misses'} <= 1.25 x)")
    for n in sorted({r["customers"] for r in rows}):
        local, cluster = by.get(("local", n)), by.get(("cluster", n))
        if local and cluster:
            ratio = cluster["customers_per_s"] / local["customers_per_s"]
            target = " (target at 1M: >= 0.5)" if n == 1_000_000 else ""
            out.append(f"{n:,}: cluster {cluster['customers_per_s']:,.0f} customers/s = "
                       f"{ratio:.2f} x the local engine's {local['customers_per_s']:,.0f}"
                       f"{target}")
    for r in rows:
        local = by.get(("local", r["customers"]))
        if _workers(r) not in ("-", "1g") and local:
            out.append(f"{r['customers']:,} with {_workers(r)} workers: cluster "
                       f"{r['customers_per_s']:,.0f} customers/s = "
                       f"{r['customers_per_s'] / local['customers_per_s']:.2f} x the local "
                       "engine's")
    return out


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Spark benchmark", "",
        f"{m['arch']}, {m['cores']} cores, Python {m['python']}; model trained on 20,000 "
        "sample customers; bases up to 100,000 from `churnlens sample-data --seed 0`, larger ones "
        "as independent 100,000-customer samples (benchmarks/batch.py). Each job a fresh "
        "`churnlens score` process; medians over the runs. customers/s = scored / the job's "
        "own seconds; wall s includes start-up (imports, Spark session). Memory: peak RSS, "
        "sampled every 50 ms: the driver's Python process, the driver JVM it starts (in "
        "local mode that JVM also runs the tasks, whose Python workers count in 'driver "
        "total' only), and, separately, the standalone cluster's processes (master, two "
        "one-core workers of the memory in 'workers' (`--memory`, 1g by default), their "
        "executors and Python workers; the cluster is up, "
        "idle, during the other engines' jobs too, about 700 MiB).", "",
        "Rows measured by an earlier invocation are kept until measured again; each names "
        "the commit it measured and the 1-minute load average at its first start and last "
        "end (the machine is shared: compare rows of similar load).", "",
        "| engine | workers | base customers | scored | runs | job s | wall s | customers/s | "
        "driver Python MiB | driver JVM MiB | driver total MiB | cluster MiB | load | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        cluster = f"{r['cluster_mib']:,.0f}" if "cluster_mib" in r else "-"
        jvm = f"{r.get('driver_jvm_mib', 0):,.0f}" if r["engine"] != "local" else "-"
        lines.append(
            f"| {r['engine']} | {_workers(r)} | {r['customers']:,} | {r['scored']:,.0f} | "
            f"{r['runs']} | "
            f"{r['job_s']:.1f} | {r['wall_s']:.1f} | {r['customers_per_s']:,.0f} | "
            f"{r['driver_python_mib']:,.0f} | {jvm} | {r['driver_tree_mib']:,.0f} | {cluster} "
            f"| {r['load_start']:.1f}-{r['load_end']:.1f} | {r['commit']} |")
    found = checks(results["rows"])
    if found:
        lines += ["", "Targets (issue 13): on the two-worker cluster the driver's peak at 1M "
                  "within 25% of its peak at 100k; at 1M at least half the local engine's "
                  "rate (read on 1g workers).", "", *[f"- {c}" for c in found]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "churnlens-bench-spark",
                        help="cache of sample bases, model, outputs (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--memory", default="1g", help="each worker's memory (%(default)s)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(1, str(ROOT))  # tests.spark_cluster: the tests' cluster, one copy
    rows = run_all(args, args.work)
    path = RESULTS / "spark.json"
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    results = {"machine": {"arch": platform.machine(), "cores": os.cpu_count(),
                           "python": platform.python_version()}, "rows": merge(old, rows)}
    path.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "spark.md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
