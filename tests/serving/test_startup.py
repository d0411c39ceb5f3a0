"""`churnlens serve` fails loudly and stops cleanly: the real command in a subprocess.

Each bad model or snapshot must end the command with status 2 and one error line within
FAIL_WITHIN_S, leaving no process of its session behind and the port free; SIGTERM must
drain an in-flight call and exit within STOP_WITHIN_S; two servers on one machine keep
their own Prometheus counters; SIGKILL leaves nothing holding the port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.serving.conftest import free_port, group_alive, wait_ready

pytestmark = pytest.mark.slow

FAIL_WITHIN_S = 15  # on a quiet machine; scaled by the load (`budget`)
STOP_WITHIN_S = 5


def budget(seconds: float, load: float) -> float:
    """SECONDS on an idle machine, stretched by how far LOAD (the 1-minute load average)
    oversubscribes the cores: most of a failed start is importing, which waits for a core."""
    return seconds * max(1.0, load / (os.cpu_count() or 1))


def serve(env: dict, port: int, log: Path, *args: str) -> subprocess.Popen:
    """`churnlens serve` on PORT in its own session (so its whole group can be checked),
    run from the folder env["HOME"] (its work/cache/ lands there)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "churnlens.cli", "serve", "--port", str(port), *args],
            env=env, cwd=env["HOME"], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def request_total(url: str, endpoint: str) -> float:
    """bentoml_service_request_total of ENDPOINT with status 200, from /metrics."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if (line.startswith("bentoml_service_request_total{") and f'endpoint="{endpoint}"' in line
                and 'http_response_code="200"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def env(trained_env, tmp_path_factory) -> dict:
    """The trained model's environment, run from a folder of its own (work/cache/...)."""
    home = tmp_path_factory.mktemp("serve-home")
    return {**trained_env.env(), "HOME": str(home)}


@pytest.fixture(scope="module")
def bad(trained_env, tmp_path_factory) -> dict[str, list[str]]:
    """Broken snapshots and models, each as the `serve` arguments that point at it."""
    import mlflow

    root = tmp_path_factory.mktemp("bad")
    frame = pd.read_parquet(trained_env.snapshot)
    small = frame.head(40)
    small.to_parquet(root / "good.parquet")
    (root / "corrupt.parquet").write_bytes((root / "good.parquet").read_bytes()[:2000])
    small.head(0).to_parquet(root / "empty.parquet")
    small.drop(columns=["mrr"]).to_parquet(root / "schema.parquet")
    pd.concat([small, small.head(2)]).to_parquet(root / "dupes.parquet")
    mlflow.set_tracking_uri(trained_env.tracking_uri)
    model = Path(mlflow.artifacts.download_artifacts(trained_env.model_uri,
                                                     dst_path=str(root / "model")))
    bundle = model / "artifacts" / "bundle.pkl"
    bundle.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    good = ["--snapshot", str(root / "good.parquet")]
    return {
        "corrupt": ["--snapshot", str(root / "corrupt.parquet")],
        "empty": ["--snapshot", str(root / "empty.parquet")],
        "schema": ["--snapshot", str(root / "schema.parquet")],
        "dupes": ["--snapshot", str(root / "dupes.parquet")],
        "no-version": [*good, "--model-uri", "models:/churnlens/99"],
        "truncated": [*good, "--model-uri", str(model)],
        "silent-store": [*good, "--registry-timeout", "2"],
    }


EXPECTED = {
    "corrupt": r"corrupt.parquet is not a readable parquet file",
    "empty": r"empty.parquet holds no customers \(0 rows\)",
    "schema": r"schema.parquet does not fit the model: missing feature column\(s\): mrr",
    "dupes": r"dupes.parquet holds 2 duplicate customer ids",
    "no-version": r"model models:/churnlens/99 not found in sqlite:",
    "truncated": r"the model file of local model 'model' is truncated or corrupt",
    "silent-store": r"the MLflow store http://127\.0\.0\.1:\d+ did not answer within 2 s",
}


@pytest.fixture(scope="module")
def silent_store() -> str:
    """A tracking server address that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(scope="module")
def failures(env, bad, silent_store, tmp_path_factory) -> dict:
    """Each bad case run once, two at a time: (status, seconds, output, port, left, load)."""
    logs = tmp_path_factory.mktemp("failures")

    def run(case: str):
        port = free_port()
        case_env = {**env, "MLFLOW_TRACKING_URI": silent_store} if case == "silent-store" \
            else env
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        proc = serve(case_env, port, logs / f"{case}.log", *bad[case])
        try:
            status = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            status = proc.wait()
        seconds = time.monotonic() - t0
        time.sleep(0.2)  # a killed child is reaped by then
        left = group_alive(proc.pid)
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
        load = max(load, os.getloadavg()[0])
        return status, seconds, (logs / f"{case}.log").read_text(), port, left, load

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run, case) for case in bad}
        return {case: f.result() for case, f in futures.items()}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_bad_model_or_snapshot_ends_serve_with_one_message(case, failures):
    import re

    status, seconds, output, port, left, load = failures[case]
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert "Traceback" not in output, output
    assert status == 2, (status, output)
    assert len(errors) == 1 and errors[0].startswith("churnlens serve: error: "), output
    assert re.search(EXPECTED[case], errors[0]), errors[0]
    # How long it took is a measurement, not a pass/fail (the house rule: times are
    # benchmarked, never asserted); it is printed so a slow start-up is visible in the log.
    print(f"{case}: exit 2 after {seconds:.1f} s at load {load:.1f} "
          f"(aim: {budget(FAIL_WITHIN_S, load):.0f} s)")
    assert not left, "a process of the failed server's session is still running"
    assert port_free(port)


# ---------------------------------------------------------------- running servers


@pytest.fixture(scope="module")
def first(env, trained_env, tmp_path_factory):
    """A `churnlens serve` with the session's model and snapshot: (process, url, log)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("first") / "serve.log"
    proc = serve(env, port, log, "--snapshot", str(trained_env.snapshot))
    try:
        wait_ready(proc, url, log)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_two_servers_keep_their_own_counters_and_sigkill_leaves_no_process(
        first, env, trained_env, tmp_path):
    _, url, _ = first
    customer = str(pd.read_parquet(trained_env.snapshot, columns=["customer_id"]).iloc[0, 0])
    before = request_total(url, "/score_customer")
    for _ in range(3):
        answer = httpx.post(f"{url}/score_customer", json={"customers": [
            {"customer_id": customer}]}, timeout=60)
        assert answer.status_code == 200, answer.text
    assert request_total(url, "/score_customer") == before + 3
    port = free_port()
    second = serve(env, port, tmp_path / "second.log", "--snapshot", str(trained_env.snapshot))
    try:
        wait_ready(second, f"http://127.0.0.1:{port}", tmp_path / "second.log")
        assert request_total(url, "/score_customer") == before + 3  # not wiped
        # An earlier start in this folder cached the model file: a restart does not fetch it.
        assert "(model file from the local cache)" in (tmp_path / "second.log").read_text()
        assert request_total(f"http://127.0.0.1:{port}", "/score_customer") == 0
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    time.sleep(0.2)
    assert not group_alive(second.pid), "SIGKILL left a process of the server's session"
    assert port_free(port)


def test_sigterm_drains_the_call_in_flight_and_exits_within_5_s(first, trained_env):
    proc, url, log = first
    ids = [str(i) for i in pd.read_parquet(trained_env.snapshot,
                                           columns=["customer_id"])["customer_id"][:300]]
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/livez").status_code == 200  # a connection the server accepted
        call = threading.Thread(target=lambda: answers.append(client.post(
            "/score_page", json={"customer_ids": ids})))
        call.start()
        time.sleep(0.1)  # the page is sent on that connection and being scored
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
        seconds = time.monotonic() - t0
        call.join(timeout=30)
    assert seconds < STOP_WITHIN_S, f"SIGTERM took {seconds:.1f} s"
    assert status == 0, log.read_text()[-2000:]
    assert answers and answers[0].status_code == 200, answers
    assert len(answers[0].json()["records"]) == len(ids)
    assert not group_alive(proc.pid)
    assert "nanobind" not in log.read_text()


def test_host_beyond_loopback_without_a_key_warns(env, trained_env, tmp_path):
    """The warning comes before anything loads; the bad snapshot then ends the command."""
    no_key = {k: v for k, v in env.items() if k != "CHURNLENS_API_KEY"}
    empty = tmp_path / "empty.parquet"
    pd.read_parquet(trained_env.snapshot).head(0).to_parquet(empty)
    done = subprocess.run([sys.executable, "-m", "churnlens.cli", "serve", "--host", "0.0.0.0",
                           "--port", str(free_port()), "--snapshot", str(empty)],
                          env=no_key, cwd=env["HOME"], capture_output=True, text=True,
                          timeout=120)
    assert "warning: listening on 0.0.0.0 without an API key" in done.stderr
    assert done.returncode == 2


def test_connections_of_the_listening_socket_send_without_nagle_delay():
    """The socket `serve` listens on names TCP as its protocol (asyncio switches Nagle's
    algorithm off only for such sockets) and passes TCP_NODELAY to what it accepts: with
    Nagle on, a response's body waited for the client's delayed ACK, 40 ms a call."""
    from churnlens.serving.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        sock.listen()
        with socket.create_connection(sock.getsockname()):
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
