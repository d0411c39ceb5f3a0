"""Benchmark: the workspace's list endpoint on a 1,000,000-account snapshot, over HTTP.

Builds a large snapshot from a real one (the rows repeated under new ids, MRR scaled by a
seeded log-normal factor and days to renewal redrawn uniformly in 0-365, so that scores,
revenue at risk and renewal months spread out), starts the real server on it (`bentoml
serve` of the service, the model from MLFLOW_TRACKING_URI), and times GET
/workspace/accounts for filtered pages: the median and 90th percentile of --repeats calls
after two warm-up calls, each call a full page of 50 rows with their main drivers and the
filtered summary. Also the time to ready (loading and scoring the whole snapshot) and the
server's resident memory. The target: a filtered page under 200 ms (median).

Run it where `churnlens train` and `churnlens features --as-of DATE` ran, or pass
--model-uri / --snapshot. Writes benchmarks/results/workspace.json and workspace.md.

    python benchmarks/workspace.py --customers 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serving import free_port, tree_rss, wait_ready  # noqa: E402  (benchmarks/serving.py)

RESULTS = Path(__file__).parent / "results"
TARGET_MS = 200.0
READY_TIMEOUT_S = 1800


def big_snapshot(source: Path, customers: int, out: Path, seed: int = 0) -> None:
    """SOURCE's rows repeated to CUSTOMERS rows under new ids, written to OUT."""
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(source)
    rng = np.random.default_rng(seed)
    big = frame.iloc[np.arange(customers) % len(frame)].reset_index(drop=True)
    big["customer_id"] = [f"B{i:07d}" for i in range(customers)]
    if "mrr" in big.columns:
        big["mrr"] = big["mrr"] * rng.lognormal(0.0, 0.5, customers)
    if "days_to_renewal" in big.columns:
        known = big["days_to_renewal"].notna().to_numpy()
        big.loc[known, "days_to_renewal"] = rng.uniform(0, 365, int(known.sum()))
    big.to_parquet(out, index=False)


def queries(levels: dict[str, list[str]]) -> dict[str, dict]:
    """The timed list queries: name -> query parameters."""
    segment = {f"attr.{name}": values[0] for name, values in levels.items()
               if name != "lifecycle_stage"}
    one = dict(list(segment.items())[:1])
    stage = (levels.get("lifecycle_stage") or [None])[0]
    return {
        "unfiltered, first page": {},
        "tier high+critical": {"tier": ["high", "critical"]},
        "tier high, page 200 (offset 10,000)": {"tier": "high", "offset": 10_000},
        "critical + attribute + renewal within 60 d": {"tier": "critical",
                                                       "renewal_within": 60, **one},
        "stage, sorted by days to renewal": {"stage": stage, "sort": "days_to_renewal"},
        "id prefix search": {"q": "B00012"},
    }


def time_queries(url: str, repeats: int) -> tuple[list[dict], dict]:
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        meta = client.get("/workspace/meta").json()
        for name, params in queries(meta["attributes"]).items():
            params = {k: v for k, v in params.items() if v is not None}
            times, total = [], None
            for i in range(repeats + 2):
                t0 = time.perf_counter()
                response = client.get("/workspace/accounts", params={**params, "limit": 50})
                elapsed = (time.perf_counter() - t0) * 1000
                response.raise_for_status()
                total = response.json()["total"]
                if i >= 2:
                    times.append(elapsed)
            times.sort()
            rows.append({"query": name, "params": params, "matches": total,
                         "median_ms": round(statistics.median(times), 1),
                         "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1),
                         "max_ms": round(times[-1], 1)})
    return rows, meta


def markdown(report: dict) -> str:
    lines = [
        "# Workspace list endpoint",
        "",
        f"`python benchmarks/workspace.py --customers {report['customers']}` on "
        f"{report['machine']}: {report['customers']:,} accounts ({report['source_rows']:,} "
        f"snapshot rows repeated under new ids), model {report['model']}. Each figure is over "
        f"{report['repeats']} GET /workspace/accounts calls of 50 rows (with their main "
        "drivers and the filtered summary) after two warm-up calls, on one reused "
        "connection.",
        "",
        f"Ready after {report['ready_s']:.0f} s (loading, checking and scoring the whole "
        f"snapshot); server resident memory {report['rss_gib']:.2f} GiB. Load average "
        f"{report['load_before']} before, {report['load_after']} after.",
        "",
        "| query | matches | median ms | p90 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['query']} | {r['matches']:,} | {r['median_ms']} | {r['p90_ms']} "
                     f"| {r['max_ms']} |")
    worst = max(r["median_ms"] for r in report["rows"])
    verdict = "met" if worst < TARGET_MS else "NOT met"
    lines += ["", f"Target: a filtered page under {TARGET_MS:.0f} ms (median): {verdict} "
                  f"(slowest median {worst} ms).", ""]
    return "\n".join(lines)


def startup(snapshot: Path, scores: Path | None, workdir: Path, log_path: Path) -> dict:
    """`churnlens serve` on SNAPSHOT (with --scores SCORES) run in WORKDIR (its params.yaml
    and MLflow store): seconds from launch to /readyz 200 and to /workspace/meta 200, the
    first 503 body seen in between, and the load average around it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("CHURNLENS_API_KEY",
                                                             "CHURNLENS_SCORES")}
    env.update({"BENTOML_DO_NOT_TRACK": "True", "MLFLOW_DISABLE_TELEMETRY": "true"})
    command = [str(Path(sys.executable).with_name("churnlens")), "serve", "--snapshot",
               str(snapshot), "--port", str(port), *(["--scores", str(scores)] if scores else [])]
    load_before = [round(x, 2) for x in os.getloadavg()]
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        server = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
        try:
            ready_s = wait_ready(server, url, READY_TIMEOUT_S, t0)
            preparing = None
            with httpx.Client(base_url=url, timeout=30) as client:
                while time.perf_counter() - t0 < READY_TIMEOUT_S:
                    response = client.get("/workspace/meta")
                    if response.status_code != 503:
                        response.raise_for_status()
                        break
                    preparing = preparing or response.json()
                    time.sleep(0.2)
            workspace_s = time.perf_counter() - t0
            rss = tree_rss(server.pid)
        except BaseException:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
    return {"scores": scores is not None, "ready_s": round(ready_s, 2),
            "workspace_s": round(workspace_s, 2), "first_503": preparing,
            "rss_gib": round(rss / 2**30, 2), "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def startup_markdown(rows: list[dict]) -> str:
    lines = ["", "## Start-up: `churnlens serve` to ready and to the workspace ready", "",
             "The workspace is built in a background thread: `/readyz` and the scoring API "
             "answer while /workspace/* answer 503 with the progress. With --scores the "
             "workspace reads a score file of the same model and date instead of scoring.", "",
             "| accounts | score file | /readyz 200 s | workspace ready s | first 503 says | "
             "RSS GiB | load before | load after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        said = (r["first_503"] or {}).get("error", "(none seen)").replace("|", "/")
        lines.append(f"| {r['customers']:,} | {'yes' if r['scores'] else 'no'} | "
                     f"{r['ready_s']} | {r['workspace_s']} | {said} | {r['rss_gib']} | "
                     f"{r['load_before']} | {r['load_after']} |")
    return "\n".join(lines) + "\n"


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs the finally that stops the server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--model-uri", default="models:/churnlens@champion")
    parser.add_argument("--snapshot", help="source snapshot (default: the newest "
                                           "work/snapshots/features-*.parquet)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--startup", nargs=3, metavar=("SNAPSHOT", "SCORES", "WORKDIR"),
                        help="instead: time `churnlens serve` to ready and to the workspace "
                             "ready on SNAPSHOT, without and with the score file SCORES, "
                             "run in WORKDIR; appended to results/workspace-startup.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.startup:
        return run_startup(*map(Path, args.startup))
    import pandas as pd

    source = Path(args.snapshot) if args.snapshot else sorted(
        Path("work/snapshots").glob("features-*.parquet"))[-1]
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "features-big.parquet"
        big_snapshot(source, args.customers, snapshot)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k != "CHURNLENS_API_KEY"}
        env.update({"BENTOML_DO_NOT_TRACK": "True", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "CHURNLENS_MODEL_URI": args.model_uri,
                    "CHURNLENS_SNAPSHOT": str(snapshot)})
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve",
                 "churnlens.serving.service:ChurnService", "--host", "127.0.0.1",
                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
            try:
                ready_s = wait_ready(server, url, READY_TIMEOUT_S)
                load_before = [round(x, 2) for x in os.getloadavg()]
                rows, meta = time_queries(url, args.repeats)
                load_after = [round(x, 2) for x in os.getloadavg()]
                rss = tree_rss(server.pid)
            except BaseException:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
    report = {"customers": args.customers, "source_rows": len(pd.read_parquet(source,
                                                                              columns=["customer_id"])),
              "model": f"{meta['model']['name']} v{meta['model']['version']}",
              "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
              "repeats": args.repeats, "ready_s": ready_s, "rss_gib": rss / 2**30,
              "load_before": load_before, "load_after": load_after, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workspace.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "workspace.md").write_text(markdown(report))
    print(markdown(report))


def run_startup(snapshot: Path, scores: Path, workdir: Path) -> None:
    """Both start-ups of SNAPSHOT (scored, then from SCORES), appended to the results."""
    import pyarrow.parquet as pq

    customers = pq.read_metadata(snapshot).num_rows
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for with_scores in (False, True):
            row = startup(snapshot, scores if with_scores else None, workdir,
                          Path(tmp) / "server.log")
            rows.append({"customers": customers, **row})
            print(json.dumps(rows[-1]))
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "workspace-startup.jsonl"
    with open(log, "a") as out:
        out.writelines(json.dumps(r) + "\n" for r in rows)
    every = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    (RESULTS / "workspace-startup.md").write_text(
        f"# Workspace start-up\n\n`python benchmarks/workspace.py --startup SNAPSHOT SCORES "
        f"WORKDIR` on {os.cpu_count()} cores, every run so far (newest last)."
        + startup_markdown(every))
    print(startup_markdown(rows))


if __name__ == "__main__":
    main()
