"""The real service, started once per session in a subprocess on a free loopback port.

It runs with an API key, so the HTTP tests exercise the key on every call; the clients
below send it, and the tests that check 401 build their own requests without it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-4f9a"
READY_TIMEOUT_S = 120


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    log: Path


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group PGID is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """`bentoml serve` of the service, in its own process group so it can be killed whole."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "churnlens.serving.service:ChurnService",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def server(trained_env) -> Iterator[Server]:
    """The service on 127.0.0.1:<free port>, ready, with CHURNLENS_API_KEY set."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = trained_env.local / "server.log"  # the model is shared by the workers; logs not
    proc = start_server({**trained_env.env(), "CHURNLENS_API_KEY": API_KEY}, port, log)
    try:
        wait_ready(proc, url, log)
        yield Server(url, API_KEY, log)
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def http(server) -> Iterator[httpx.Client]:
    """One reused HTTP client that sends the API key."""
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as client:
        yield client
