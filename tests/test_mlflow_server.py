"""churnlens against a real MLflow tracking server, as a team would run it.

A `mlflow server` on a free loopback port (SQLite backend and a local artifact destination
under a temporary folder, artifacts proxied by the server: `--serve-artifacts`) and, in a
working folder of their own with MLFLOW_TRACKING_URI pointing at it, the commands a user
runs: `sample-data`, `features`, `train` (which registers and promotes the champion),
`features --as-of`, `score` and `serve`. The run, the registered version and the champion
alias must be in that server, the model's files in its artifact destination, and nothing
in a local store (mlflow.db, mlruns/, mlartifacts/) of the working folder. The server is
stopped whatever happens, and no process of it is left behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.serving.conftest import free_port, group_alive, stop_server, wait_ready

CUSTOMERS = 800  # the smallest base seen to clear the promotion floor (seed 3: AUC 0.85)
SEED = 3
AS_OF = "2026-10-31"
HEALTH_TIMEOUT_S = 180  # a fresh SQLite store migrates first: 10-45 s on a busy machine
COMMAND_TIMEOUT_S = 900
LOCAL_STORES = ("mlflow.db", "mlruns", "mlartifacts")


@dataclass(frozen=True)
class TrackingServer:
    url: str
    root: Path  # its backend store (mlflow.db) and artifact destination (artifacts/)
    proc: subprocess.Popen
    log: Path


def start_tracking_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` in its own session (its uvicorn worker is a child: the whole group
    is stopped at the end), with no job runner (its consumers take cores the tests need)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(root / "server.log", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(server: TrackingServer) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.proc.returncode}:\n"
                               f"{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {HEALTH_TIMEOUT_S} s:\n"
                       f"{server.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> Iterator[TrackingServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = start_tracking_server(root, port)
    server = TrackingServer(f"http://127.0.0.1:{port}", root, proc, root / "server.log")
    try:
        wait_healthy(server)
        yield server
    finally:
        stop_server(proc)
        deadline = time.monotonic() + 10
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker exits a moment after its parent
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server left processes in group {proc.pid} after SIGTERM")


@dataclass
class Flow:
    """The working folder, each command's output and the scored customer's HTTP record."""

    cwd: Path
    env: dict[str, str]
    out: dict[str, str]
    served: dict | None = None
    serve_log: str = ""


def cli(flow: Flow, step: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "churnlens.cli", *args], cwd=flow.cwd,
                          env=flow.env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, (f"churnlens {' '.join(args)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    flow.out[step] = proc.stdout
    return proc.stdout


def serve_one(flow: Flow, customer_id: str) -> None:
    """`churnlens serve` from the working folder: ready, one customer scored, stopped."""
    port = free_port()
    log = flow.cwd.parent / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "churnlens.cli", "serve", "--port", str(port)],
            cwd=flow.cwd, env=flow.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        response = httpx.post(f"{url}/score_customer", timeout=60,
                              json={"customers": [{"customer_id": customer_id}]})
        assert response.status_code == 200, response.text
        flow.served = response.json()[0]
    finally:
        stop_server(proc)
        flow.serve_log = log.read_text()


@pytest.fixture(scope="module")
def flow(tracking_server, tmp_path_factory) -> Flow:
    cwd = tmp_path_factory.mktemp("team-project") / "project"
    cwd.mkdir()
    home = cwd.parent
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHURNLENS_")},
           "MLFLOW_TRACKING_URI": tracking_server.url, "MLFLOW_DISABLE_TELEMETRY": "true",
           "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    f = Flow(cwd, env, {})
    cli(f, "sample", "sample-data", "--customers", str(CUSTOMERS), "--seed", str(SEED))
    cli(f, "features", "features")
    cli(f, "train", "train")
    cli(f, "snapshot", "features", "--as-of", AS_OF)
    cli(f, "score", "score", "--as-of", AS_OF, "--out", "work/scores.parquet")
    scores = pd.read_parquet(cwd / "work" / "scores.parquet")
    serve_one(f, str(scores.sort_values("churn_probability")["customer_id"].iloc[-1]))
    return f


def registered(flow: Flow) -> tuple[str, str]:
    """The version and run id `train` says it registered and promoted."""
    found = re.search(r"registered churnlens v(\d+) \(run ([0-9a-f]{32})\): promoted to "
                      r"champion", flow.out["train"])
    assert found, flow.out["train"][-2000:]
    return found.group(1), found.group(2)


@pytest.mark.slow
def test_the_run_the_version_and_the_champion_are_in_the_server(tracking_server, flow):
    version, run_id = registered(flow)
    client = MlflowClient(tracking_uri=tracking_server.url, registry_uri=tracking_server.url)
    experiment = client.get_experiment_by_name("churnlens")
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run_id, "FINISHED")]
    assert runs[0].data.metrics["test.risk.roc_auc"] > 0.5
    champion = client.get_model_version_by_alias("churnlens", "champion")
    assert (champion.version, champion.run_id) == (version, run_id)
    # Artifacts go through the server (proxied), into its destination: not a client path.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "settings.yaml"} <= names
    bundles = list((tracking_server.root / "artifacts").rglob("artifacts/bundle.pkl"))
    assert len(bundles) == 1, bundles
    # The link `train` prints opens the run's experiment on that server.
    assert f"{tracking_server.url}/#/experiments/{experiment.experiment_id}/runs" \
        in flow.out["train"]


@pytest.mark.slow
def test_score_and_serve_use_the_servers_champion(flow):
    version, run_id = registered(flow)
    scores = pd.read_parquet(flow.cwd / "work" / "scores.parquet")
    assert len(scores) > 0 and scores["customer_id"].is_unique
    models = {(m["name"], m["version"], m["run_id"]) for m in scores["model"]}
    assert models == {("churnlens", version, run_id)}
    assert f"model models:/churnlens/{version} and" in flow.serve_log, flow.serve_log[-2000:]
    assert flow.served["model"] == {"name": "churnlens", "version": version, "run_id": run_id}
    top = scores.sort_values("churn_probability").iloc[-1]
    assert flow.served["customer_id"] == top["customer_id"]
    assert flow.served["churn_probability"] == pytest.approx(top["churn_probability"])
    # serve keeps the model's file in its local cache (per store and version).
    cached = list((flow.cwd / "work" / "cache" / "models").glob(
        f"*/churnlens-v{version}-{run_id[:12]}/bundle.pkl"))
    assert len(cached) == 1, cached


@pytest.mark.slow
def test_nothing_is_tracked_in_the_working_folder(flow):
    local = [p for name in LOCAL_STORES for p in flow.cwd.rglob(name)]
    assert local == []
    assert "mlflow.db" not in flow.out["train"]  # no `mlflow ui` hint for a local store


@pytest.mark.slow  # a CLI process that imports MLflow: make test, not test-fast
def test_an_unreachable_tracking_server_is_one_error_line(tmp_path):
    # A port nobody listens on; no retries, so the refusal comes at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    proc = subprocess.run([sys.executable, "-m", "churnlens.cli", "score", "--as-of", AS_OF,
                           "--out", "scores.parquet", "--source", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert re.fullmatch(rf"churnlens score: error: the MLflow tracking server {url} cannot "
                        r"be reached .*MLFLOW_TRACKING_URI.*", lines[0]), lines[0]


def test_a_server_that_refuses_names_the_refusal_and_the_credentials():
    from mlflow.exceptions import RestException

    from churnlens.training.tracking import _store_error

    refusal = RestException({"error_code": "PERMISSION_DENIED",
                             "message": "User 'ci' lacks READ on experiment 'churnlens'"})
    text = _store_error("https://mlflow.internal", refusal)
    assert text.startswith("the MLflow tracking server https://mlflow.internal refused: "
                           "PERMISSION_DENIED: User 'ci' lacks READ")
    assert "MLFLOW_TRACKING_TOKEN" in text and "MLFLOW_TRACKING_USERNAME" in text
