"""Benchmark: latency, throughput and memory of the real scoring service over HTTP.

Starts `churnlens serve` on a free loopback port --starts times (median time from launch
to /readyz 200, with the server's own account of where start-up went), then drives the
last one from a separate load process (asyncio + one reused aiohttp session) while this
process samples the server's resident memory (psutil, the whole process tree):

- single-customer calls with drivers at 1, 8 and 32 concurrent clients;
- pages of 100 customers with drivers at 1 and 4 concurrent clients;
- a soak at a steady request rate (default 5 minutes), with server memory over time.

Beside them, the same run's bare model on the same rows (LightGBM `predict` and
`pred_contrib` of the risk model, and churnlens' scoring core `score_records` in process),
so the service's overhead over its model is a ratio. The load average is recorded at the
start of every step: on a shared machine the latencies are inflated by the others' work.

Run it where `churnlens train` and `churnlens features --as-of DATE` ran (their MLflow store
and snapshot), or point it elsewhere with --model-uri / --snapshot / MLFLOW_TRACKING_URI.
Prints a table and writes benchmarks/results/serving.json and serving.md.

    python benchmarks/serving.py --params params.yaml
    python benchmarks/serving.py --seconds 10 --soak-seconds 60 --soak-rate 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

WARMUP_S = 3.0  # per scenario: requests in the first seconds are not measured


# ---------------------------------------------------------------- load process


def load_main(argv: list[str]) -> None:
    """The load generator (own process): runs one scenario, prints its latencies as JSON."""
    import asyncio

    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--ids", required=True, help="JSON file with customer ids")
    p.add_argument("--page", type=int, default=0, help="customers per call; 0: single calls")
    p.add_argument("--get", help="GET this path instead of scoring (the HTTP stack's floor)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--rate", type=float, default=0.0, help="calls/s (open loop); 0: closed")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=float, default=WARMUP_S)
    p.add_argument("--out", required=True, help="JSON file for the results")
    args = p.parse_args(argv)
    ids = json.loads(Path(args.ids).read_text())
    # A file, not stdout: a soak's latencies overflow a pipe the parent reads only at the end.
    import resource

    result = asyncio.run(_drive(args, ids))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = usage.ru_utime + usage.ru_stime  # the load process's own CPU
    Path(args.out).write_text(json.dumps(result))


async def _drive(args, ids: list[str]) -> dict:
    import asyncio

    # The load process shares the machine's 2 cores with the server it measures, so its own
    # CPU per call is reported with each scenario (client_cpu_ms_per_call).
    import aiohttp

    state = {"latencies": [], "failed": 0, "errors": [], "next": 0, "calls": 0}
    connector = aiohttp.TCPConnector(limit=max(args.concurrency, 64))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(args.url, connector=connector, timeout=timeout) as client:
        start = time.perf_counter()
        measure_from, stop = start + args.warmup, start + args.warmup + args.seconds

        async def call() -> None:
            body = _body(ids, state, args.page)
            state["calls"] += 1
            t0 = time.perf_counter()
            try:
                route = "/score_page" if args.page else "/score_customer"
                request = (client.get(args.get) if args.get else
                           client.post(route, json=body))
                async with request as response:
                    await response.read()
                    ok = response.status == 200
            except (TimeoutError, aiohttp.ClientError) as exc:
                ok = False
                state["errors"].append(type(exc).__name__)
            if t0 >= measure_from:
                state["latencies"].append(time.perf_counter() - t0)
                state["failed"] += not ok

        if args.rate:  # open loop: a call every 1/rate s, whether or not earlier ones ended
            tasks, i = [], 0
            while (due := start + i / args.rate) < stop:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(call()))
                i += 1
            await asyncio.gather(*tasks)
        else:
            async def client_loop() -> None:
                while time.perf_counter() < stop:
                    await call()
            await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - measure_from
    return {"latencies": state["latencies"], "failed": state["failed"],
            "errors": sorted(set(state["errors"]))[:5], "seconds": elapsed,
            "total_calls": state["calls"]}


def _body(ids: list[str], state: dict, page: int) -> dict:
    n = max(page, 1)
    picked = [ids[(state["next"] + k) % len(ids)] for k in range(n)]
    state["next"] += n
    if page:
        return {"customer_ids": picked, "with_drivers": True}
    return {"customers": [{"customer_id": picked[0], "with_drivers": True}]}


# ---------------------------------------------------------------- server and memory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, log, pycache: str | None = None) -> subprocess.Popen:
    """`churnlens serve` on PORT; with PYCACHE, Python reads and writes bytecode under that
    folder (PYTHONPYCACHEPREFIX) even where PYTHONDONTWRITEBYTECODE is set."""
    cmd = [sys.executable, "-m", "churnlens.cli", "--params", args.params, "serve",
           "--port", str(port)]
    if args.model_uri:
        cmd += ["--model-uri", args.model_uri]
    if args.snapshot:
        cmd += ["--snapshot", args.snapshot]
    env = {k: v for k, v in os.environ.items() if k != "CHURNLENS_API_KEY"}
    env.update({"BENTOML_DO_NOT_TRACK": "True", "MLFLOW_DISABLE_TELEMETRY": "true"})
    if pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 180,
               t0: float | None = None, path: str = "/readyz") -> float:
    """Seconds from T0 (default: now) until URL's PATH answers 200."""
    import httpx

    t0 = time.perf_counter() if t0 is None else t0
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}; see its log")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def tree_rss(pid: int) -> int:
    """Resident bytes of process PID and all its descendants (BentoML's worker processes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def run_load(url: str, ids_file: str, server_pid: int, seconds: float, page: int = 0,
             concurrency: int = 1, rate: float = 0.0, sample_every: float = 0.5,
             get: str | None = None) -> dict:
    """One scenario in a separate load process, sampling the server's memory meanwhile."""
    out = Path(ids_file).with_name("load.json")
    cmd = [sys.executable, __file__, "load", "--url", url, "--ids", ids_file,
           "--page", str(page), "--concurrency", str(concurrency), "--rate", str(rate),
           "--seconds", str(seconds), "--out", str(out), *(["--get", get] if get else [])]
    proc = subprocess.Popen(cmd)
    t0, memory = time.perf_counter(), []
    while proc.poll() is None:
        memory.append((round(time.perf_counter() - t0, 2), tree_rss(server_pid)))
        time.sleep(sample_every)
    if proc.returncode != 0:
        raise SystemExit(f"load process failed with status {proc.returncode}")
    return {**json.loads(out.read_text()), "memory": memory}


# ---------------------------------------------------------------- main


def batches(url: str) -> tuple[float, float]:
    """/score_customer batches so far and the customers in them (the micro-batcher's
    histogram in /metrics)."""
    import httpx

    figures = dict.fromkeys(("count", "sum"), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        for key in figures:
            if line.startswith(f"churnlens_score_customer_batch_size_{key} "):
                figures[key] = float(line.rsplit(" ", 1)[1])
    return figures["count"], figures["sum"]


def snapshot_info(url: str) -> tuple[str, int]:
    import httpx

    info = httpx.post(f"{url}/model_info", json={}, timeout=30).json()
    model = info["model"]
    return f"{model['name']} v{model['version']}", info["snapshot"]["customers"]


def customer_ids(args, work_dir: Path) -> list[str]:
    import pandas as pd

    path = Path(args.snapshot) if args.snapshot else sorted(
        (work_dir / "snapshots").glob("features-*.parquet"))[-1]
    return [str(i) for i in pd.read_parquet(path, columns=["customer_id"])["customer_id"]]


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs the finally that stops the server


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        load_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model-uri")
    parser.add_argument("--snapshot")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per scenario")
    parser.add_argument("--starts", type=int, default=3, help="server starts timed (median)")
    parser.add_argument("--soak-seconds", type=float, default=300, help="0 skips the soak")
    parser.add_argument("--soak-rate", type=float, default=20, help="soak calls per second")
    parser.add_argument("--soak-warmup", type=float, default=30,
                        help="seconds of the soak before memory growth is measured")
    parser.add_argument("--pycache-prefix", help="also time --starts starts with Python's "
                        "bytecode cached in this folder (as an installed package has it)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    from churnlens.settings import load_settings

    settings = load_settings(args.params)
    work_dir = Path(settings.paths.work_dir)
    snapshot = Path(args.snapshot) if args.snapshot else sorted(
        (work_dir / "snapshots").glob("features-*.parquet"))[-1]
    ids = customer_ids(args, work_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ids_file = Path(tmp) / "ids.json"
        ids_file.write_text(json.dumps(ids))
        cached = []
        if args.pycache_prefix:  # one start fills the bytecode cache; it is not counted
            one_start(args, tmp, "fill", args.pycache_prefix)
            cached = [one_start(args, tmp, f"bytecode-{n}", args.pycache_prefix)[0]
                      for n in range(args.starts)]
        starts = [one_start(args, tmp, n)[0] for n in range(args.starts - 1)]
        last, report = one_start(args, tmp, args.starts - 1, then=lambda url, server: measure(
            args, url, str(ids_file), server))
        starts.append(last)
    report.update(ready_s=_median_ready(starts), starts=starts, bytecode=bytecode_state(),
                  ready_bytecode_s=_median_ready(cached), starts_bytecode=cached)
    from serving_report import bare_model, markdown, verdicts

    store = os.environ.get("MLFLOW_TRACKING_URI") or settings.mlflow.tracking_uri or \
        f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    report["bare"] = bare_model(args.model_uri or f"models:/{settings.mlflow.model_name}"
                                                  "@champion", snapshot, store)
    report["targets"] = verdicts(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "serving.md").write_text(markdown(report))
    print(markdown(report))


def one_start(args, tmp: str, n, pycache: str | None = None, then=None) -> tuple[dict, object]:
    """Start a server (PYCACHE: see `start_server`) and time it to ready; THEN(url, server)
    runs while it is up. Returns the start's figures and what THEN returned."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tmp) / f"server-{n}.log"
    with open(log_path, "wb") as log:
        load_avg = [round(x, 2) for x in os.getloadavg()]
        server = start_server(args, port, log, pycache)
        try:
            ready_s = wait_ready(server, url)
            print(f"start {n}: ready in {ready_s:.1f} s (load {load_avg[0]})", flush=True)
            start = {"ready_s": round(ready_s, 2), "load_avg": load_avg,
                     "log": _startup_line(log_path)}
            return start, then(url, server) if then else None
        except BaseException:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def _median_ready(starts: list[dict]) -> float | None:
    import statistics

    return round(statistics.median(s["ready_s"] for s in starts), 2) if starts else None


def bytecode_state() -> dict:
    """Whether the server's Python could read compiled bytecode: with
    PYTHONDONTWRITEBYTECODE set and no .pyc installed, every start compiles its imports."""
    import pandas

    folder = Path(pandas.__file__).parent
    return {"PYTHONDONTWRITEBYTECODE": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
            "pandas_pyc_installed": any(folder.glob("__pycache__/*.pyc"))}


def _startup_line(log: Path) -> str:
    """The server's own line on where its start-up time went."""
    return next((line for line in log.read_text().splitlines() if " checked in " in line), "")


def measure(args, url: str, ids_file: str, server: subprocess.Popen) -> dict:
    """The scenarios on the server at URL, once its workspace is built (scoring the
    snapshot in the background would otherwise share the cores with the first ones)."""
    from serving_report import soak_figures, summarise

    workspace_s = wait_ready(server, url, path="/workspace/meta")
    model, customers = snapshot_info(url)
    print(f"server ready: {model}, {customers:,} customers; workspace after {workspace_s:.1f} s "
          "more", flush=True)
    rows, peak = [], 0
    for name, page, concurrency, get in [
            ("single c=1", 0, 1, None), ("single c=8", 0, 8, None), ("single c=32", 0, 32, None),
            ("page of 100 c=1", 100, 1, None), ("page of 100 c=4", 100, 4, None),
            ("HTTP floor: GET /livez c=8", 0, 8, "/livez")]:
        load_avg = round(os.getloadavg()[0], 2)
        before = batches(url)
        result = run_load(url, ids_file, server.pid, args.seconds, page, concurrency, get=get)
        count, total = (now - then for now, then in zip(batches(url), before, strict=True))
        rows.append({**summarise(name, result, page, concurrency), "load_avg": load_avg,
                     "mean_batch": round(total / count, 1) if count else None})
        peak = max(peak, rows[-1]["peak_rss_mb"])
        print(f"  {name}: {rows[-1]['calls_per_s']} calls/s, p99 {rows[-1]['p99_ms']} ms, "
              f"{rows[-1]['failed']} failed (load {load_avg})", flush=True)
    soak = None
    if args.soak_seconds > 0:
        result = run_load(url, ids_file, server.pid, args.soak_seconds, rate=args.soak_rate,
                          sample_every=1.0)
        row = summarise("soak", result, 0, 0)
        soak = {"rate": args.soak_rate, "calls": row["calls"], "failed": row["failed"],
                "errors": row["errors"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
                **soak_figures(result, args.soak_warmup)}
        peak = max(peak, soak["rss_max_mb"])
        print(f"  soak: {soak['calls']} calls, {soak['failed']} failed, memory growth "
              f"{soak['memory_growth_pct']}%", flush=True)
    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_at_start": [round(x, 2) for x in os.getloadavg()]},
            "model": model, "snapshot_customers": customers,
            "workspace_after_ready_s": round(workspace_s, 2),
            "scenarios": rows, "peak_rss_mb": peak, "soak": soak}


if __name__ == "__main__":
    main()
