"""`churnlens serve`'s server: the BentoML service's ASGI app under uvicorn, in one process.

This is what BentoML's own service worker does (`_bentoml_impl.worker.service`), without
the circus supervisor of `bentoml serve`. One process means: start-up checks the model and
snapshot before the port opens and a failure ends the process with one message (the
supervisor restarts a failing worker forever); SIGTERM drains and exits within
`GRACE_S`; SIGKILL leaves no worker behind holding the port; each server has its own
Prometheus folder (BentoML shares one per BENTOML_HOME and wipes it when a server starts);
and the service's Python starts once, not twice.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from functools import partial

from churnlens.serving.startup import ServeConfig, StartupError

GRACE_S = 3  # seconds SIGTERM waits for in-flight calls before closing connections
KEEP_ALIVE_S = 5  # idle keep-alive connections are closed after this (BentoML's default)
BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    """The listening socket on HOST:PORT (bound, not yet listening); StartupError when the
    address is not an IP address or the port is taken."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        raise StartupError(f"--host {host!r} is not an IP address (e.g. 127.0.0.1 or "
                           "0.0.0.0)") from None
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and without it Nagle's algorithm held each response's body until the client's
    # delayed ACK of its headers (40 ms a call). The listening socket's option is inherited
    # by the connections it accepts.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another "
                           "--port or stop the server using it") from None
    sock.set_inheritable(False)
    return sock


@contextmanager
def own_metrics_folder():
    """A fresh Prometheus multiprocess folder for this server, removed when it stops."""
    folder = tempfile.mkdtemp(prefix="churnlens-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Stopped(BaseException):
    """SIGTERM arrived: unwinds through the finally blocks (the metrics folder) to `serve`."""


def _stop(signum, frame) -> None:
    raise Stopped


def _fail_now(metrics_folder: str, message: str) -> None:
    """Print MESSAGE as the command's one error line and exit 2 at once (from the thread
    that watches the model's fetch, while the main thread may still be importing)."""
    shutil.rmtree(metrics_folder, ignore_errors=True)
    print(f"churnlens serve: error: {message}", file=sys.stderr, flush=True)
    _exit_now(2)


def _exit_now(status: int) -> None:
    """Exit without interpreter finalisation: DuckDB's bindings print a hundred lines of
    'nanobind: leaked ...' at finalisation, which would bury the server's last log lines."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve(config: ServeConfig, host: str, port: int, log: Callable[[str], None]) -> None:
    """Load CONFIG's model and snapshot, then answer on HOST:PORT until SIGTERM or Ctrl+C.

    Raises StartupError (one message) when the port, the model or the snapshot is unusable.
    """
    from churnlens.serving import startup

    signal.signal(signal.SIGTERM, _stop)  # also while loading: stop at once, cleanly
    try:
        with own_metrics_folder() as folder:
            # The workspace's scores are kept beside the model files (work/cache/).
            scores = config.cache_dir.parent / "workspace" if config.cache_dir else None
            loaded = startup.load(replace(config, fail_fast=partial(_fail_now, folder),
                                          lean_imports=True, workspace_cache=scores))
            # Imported after the load, whose checks come before the scoring stack's imports.
            from churnlens.serving import workspace_scores

            workspace_scores.check_env(loaded.model, loaded.prepared)  # --scores, at once
            sock = bind(host, port)
            try:
                startup.hand_over(loaded)
                steps = ", ".join(f"{k} {v:.2f}" for k, v in (loaded.seconds or {}).items())
                cache = " (model file from the local cache)" if loaded.from_cache else ""
                log(f"model {loaded.model_uri}{cache} and {len(loaded.snapshot):,} customers "
                    f"checked in {sum((loaded.seconds or {}).values()):.1f} s ({steps}); "
                    f"serving on http://{host}:{port} (workspace: /, API docs: /docs, "
                    "OpenAPI: /docs.json)")
                _run(sock)
            finally:
                sock.close()
    except Stopped:
        pass
    _exit_now(0)


def _run(sock: socket.socket) -> None:
    import uvicorn
    from bentoml._internal.context import server_context
    from bentoml._internal.log import configure_server_logging
    from bentoml._internal.utils.uri import join_paths

    from churnlens.serving.service import ChurnService

    configure_server_logging()
    server_context.worker_index = 1
    server_context.service_type = "entry_service"
    server_context.service_name = ChurnService.name
    server_context.service_routes = [join_paths(ChurnService.path_prefix, api.route)
                                     for api in ChurnService.apis.values()]
    server_context.bento_name = ChurnService.name
    server_context.bento_version = "not available"
    config = uvicorn.Config(app=ChurnService.to_asgi(is_main=True), log_config=None,
                            backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=GRACE_S, server_header=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        raise StartupError("the service did not start; the log above says why")
