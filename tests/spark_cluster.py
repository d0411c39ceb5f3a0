"""A Spark standalone cluster on 127.0.0.1 for the tests: one master, two one-core workers.

Started from pyspark's own launcher (``bin/spark-class org.apache.spark.deploy.master.Master``
and ``...worker.Worker``), each daemon a separate process in its own process group, each
worker with its own work directory under the cluster's folder, every port chosen free. The
executors run a Python that does NOT see the editable churnlens install (`bare_python`), so
a job only works on this cluster when it ships the package (`churnlens.serving.spark_ship`).

    with start_cluster(tmp_path) as cluster:
        run(f"churnlens score --engine spark --master {cluster.master} ...",
            env=cluster.driver_env())
        cluster.kill_worker(0)  # SIGKILL the worker and its executor

`start_cluster` always tears everything down (the daemons, the executors they launched and
the executors' Python workers) and checks with psutil that no process is left, also when the
block raised. `cluster_or_skip` is the same for a test fixture, skipping without Java.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

VENV_SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
# What a user's spark-defaults.conf would set for a cluster of two cores: Spark's default
# of 200 shuffle partitions made a 2,000-customer job run 957 tasks (475 s here).
DRIVER_DEFAULTS = {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"}
START_TIMEOUT = 120.0  # seconds for both workers to register (JVM start-up on a busy machine)


def free_port() -> int:
    """A TCP port nothing listens on right now on 127.0.0.1 (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> Path:
    """pyspark's installed folder: it holds bin/spark-class and the jars."""
    import pyspark

    return Path(pyspark.__file__).parent


def bare_python(root: Path) -> Path:
    """A venv under ROOT that sees this venv's site-packages as a plain sys.path entry.

    Lines of a .pth file are sys.path entries; the .pth files inside that folder (the
    editable install's finder among them) are not processed, so `churnlens` is not
    importable there while lightgbm, pandas, pyarrow and pyspark are. Checked here.
    """
    venv = root / "executor-venv"
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "churnlens-deps.pth").write_text(f"{VENV_SITE}\n")
    probe = ("import importlib.util as u; "
             "print([m for m in ('lightgbm', 'pandas', 'pyarrow', 'pyspark') if not u.find_spec(m)],"
             " u.find_spec('churnlens') is None)")
    seen = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True,
                          cwd=root, env=_clean_env()).stdout.strip()
    if seen != "[] True":
        raise RuntimeError(f"executor python {python} is not as intended: missing modules, "
                           f"churnlens hidden = {seen}")
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    # No PYTHONPATH or venv from the test process: the daemons (and so the executors) must
    # not find the repository's packages through the environment.
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"}}
    return env | extra


@dataclass
class Daemon:
    """One master or worker process (its own process group) and where it logs."""

    name: str
    proc: subprocess.Popen
    log: Path
    ui_port: int
    port: int | None = None  # a worker's RPC port, as the master lists it
    work_dir: Path | None = None

    def tree(self) -> list[psutil.Process]:
        """The daemon and everything it started (executors, their Python workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@dataclass
class SparkCluster:
    """A running cluster: `master` is the URL to submit to ("spark://127.0.0.1:PORT")."""

    root: Path
    master: str
    master_ui: str
    python: Path  # the executors' Python (no churnlens)
    memory: str = "1g"  # each worker's
    daemons: list[Daemon] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # every pid ever in the cluster's trees

    @property
    def workers(self) -> list[Daemon]:
        return [d for d in self.daemons if d.work_dir is not None]

    def state(self) -> dict:
        """The master's JSON status (workers, applications)."""
        with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=5) as r:
            return json.loads(r.read())

    def alive_workers(self) -> int:
        """How many of this cluster's current worker processes the master lists ALIVE (a
        killed worker's entry can stay ALIVE until the master notices; a restarted worker
        has a new port)."""
        ports = {w["port"] for w in self.state()["workers"] if w["state"] == "ALIVE"}
        return sum(w.port in ports for w in self.workers)

    def driver_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a driver process submitting here: executors run `python`, and
        the driver reads this cluster's spark-defaults.conf (`DRIVER_DEFAULTS`)."""
        conf = self.root / "driver-conf"
        if not conf.is_dir():
            conf.mkdir()
            lines = [f"{k} {v}" for k, v in DRIVER_DEFAULTS.items()]
            # Executors as large as their worker allows (Spark's default is 1g, whatever
            # the worker offers).
            (conf / "spark-defaults.conf").write_text("\n".join(
                [*lines, f"spark.pyspark.python {self.python}",
                 f"spark.executor.memory {self.memory}"]) + "\n")
        return {**(os.environ if base is None else base), "PYSPARK_PYTHON": str(self.python),
                "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_CONF_DIR": str(conf)}

    def python_workers(self, i: int) -> int:
        """How many Python processes worker I's executors run now (pyspark's daemon and
        its workers: Python code, such as the scoring task, has started there)."""
        return sum(_name(p).startswith("python") for p in self.workers[i].tree())

    def executor_logs(self, i: int) -> list[Path]:
        """Worker I's executors' stderr files (work_dir/app-*/N/stderr), oldest first."""
        return sorted(self.workers[i].work_dir.glob("app-*/*/stderr"),
                      key=lambda p: p.stat().st_mtime)

    def tasks_started(self, i: int) -> int:
        """How many tasks worker I's executors have started (their logs' 'Running task')."""
        return sum(p.read_text(errors="replace").count("Running task")
                   for p in self.executor_logs(i))

    def kill_worker(self, i: int) -> list[int]:
        """SIGKILL worker I and what it started (its executors die too); the pids killed."""
        return _kill(self.workers[i], self.seen)

    def ensure_workers(self) -> None:
        """Restart any worker that is not running and wait until all are registered."""
        for i, w in enumerate(self.workers):
            if w.proc.poll() is not None:
                self.daemons[self.daemons.index(w)] = _start_worker(self, i)
        _wait_registered(self, len(self.workers))

    def close(self) -> None:
        """Kill every process of the cluster; raise if psutil still sees one afterwards."""
        for d in reversed(self.daemons):
            _kill(d, self.seen)
        left = [p for p in _alive(self.seen) if _is_ours(p, self.root)]
        if left:
            raise RuntimeError(f"{len(left)} cluster processes left running: "
                               f"{[p.pid for p in left]}")


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return ""


def _alive(pids: set[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _is_ours(p: psutil.Process, root: Path) -> bool:
    # A recorded pid may have been reused by an unrelated process: only count it when it
    # still names the cluster's folder (its command line or working directory).
    try:
        return str(root) in " ".join(p.cmdline()) or str(root) in p.cwd()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _kill(d: Daemon, seen: set[int]) -> list[int]:
    tree = d.tree()
    seen.update(p.pid for p in tree)
    with suppress(ProcessLookupError):  # the group: what the JVM launched stays in it
        os.killpg(d.proc.pid, signal.SIGKILL)
    for p in tree:  # and anything that left the group (a Python daemon's own group)
        with suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)
    d.proc.wait(timeout=10)
    return [p.pid for p in tree]


def _spawn(cluster_root: Path, name: str, args: list[str], ui_port: int,
           port: int | None = None, work_dir: Path | None = None) -> Daemon:
    log = cluster_root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    conf = cluster_root / "conf"  # empty: no spark-defaults or log4j of the user's
    conf.mkdir(exist_ok=True)
    env = _clean_env(SPARK_HOME=str(spark_home()), SPARK_CONF_DIR=str(conf),
                     SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_MEMORY="256m",
                     SPARK_NO_DAEMONIZE="1")
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cluster_root, start_new_session=True)
    return Daemon(name, proc, log, ui_port, port, work_dir)


def _start_worker(cluster: SparkCluster, i: int) -> Daemon:
    work = cluster.root / f"worker-{i}"
    work.mkdir(exist_ok=True)
    ui, port = free_port(), free_port()
    return _spawn(cluster.root, f"worker-{i}", [
        "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(port),
        "--webui-port", str(ui), "--cores", "1", "--memory", cluster.memory, "--work-dir", str(work),
        cluster.master], ui, port, work)


def _wait_registered(cluster: SparkCluster, workers: int, timeout: float = START_TIMEOUT) -> None:
    deadline, alive = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        for d in cluster.daemons:
            if d.proc.poll() is not None:
                raise RuntimeError(f"spark {d.name} exited ({d.proc.returncode}) while "
                                   f"starting; its log: {d.log}\n{_tail(d.log)}")
        try:
            alive = cluster.alive_workers()
        except OSError:
            alive = 0  # the master's UI is not up yet
        if alive >= workers:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{alive} of {workers} spark workers registered with "
                       f"{cluster.master} after {timeout:.0f} s; logs in {cluster.root / 'logs'}")


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def start_cluster(root: Path, workers: int = 2, memory: str = "1g") -> Iterator[SparkCluster]:
    """A master and WORKERS one-core workers (MEMORY each) under ROOT; torn down on exit.

    Raises RuntimeError when a daemon exits while starting or the workers do not register
    within START_TIMEOUT (the message names the logs).
    """
    root.mkdir(parents=True, exist_ok=True)
    port, ui = free_port(), free_port()
    cluster = SparkCluster(root, f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}",
                           bare_python(root), memory)
    try:
        cluster.daemons.append(_spawn(root, "master", [
            "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
            str(port), "--webui-port", str(ui)], ui))
        for i in range(workers):
            cluster.daemons.append(_start_worker(cluster, i))
        _wait_registered(cluster, workers)
        yield cluster
    finally:
        cluster.close()


def skip_reason() -> str | None:
    """Why no cluster can start here (no pyspark, no Java), or None."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install -e .[spark])"
    from churnlens.serving.spark import java_missing

    return java_missing()


@contextmanager
def cluster_or_skip(root: Path) -> Iterator[SparkCluster]:
    """`start_cluster` under ROOT, or skip the test saying why no cluster can start here.

    A test module's fixtures:

        @pytest.fixture(scope="module")
        def module_cluster(tmp_path_factory):
            with cluster_or_skip(tmp_path_factory.mktemp("spark-cluster")) as c:
                yield c

        @pytest.fixture
        def cluster(module_cluster):  # both workers alive at each test's start
            module_cluster.ensure_workers()
            return module_cluster
    """
    reason = skip_reason()
    if reason:
        pytest.skip(f"no Spark standalone cluster: {reason}")
    with start_cluster(root) as cluster:
        yield cluster
