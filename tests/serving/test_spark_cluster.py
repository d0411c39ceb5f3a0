"""The Spark engine on a real standalone cluster: a master and two one-core workers.

`churnlens score --engine spark --master spark://...` runs as a user runs it (a subprocess,
the driver), against the cluster of tests/spark_cluster.py, whose executors run a Python
without churnlens: the job works there only because it ships the package
(`churnlens.serving.spark_ship`). Checked in one job (a cluster job here costs minutes, most
of it start-up): a worker SIGKILLed (with its executor) once the job's tasks run, and the job
still finishes with records equal to the local engine's; and, in a driver of its own, that
without shipping a task importing churnlens fails on those executors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from churnlens.serving.batch import run_batch
from churnlens.serving.records import table_records
from tests.fixtures_model import AS_OF, TrainedEnv
from tests.serving.test_batch import Env, assert_same_records, batch_env
from tests.spark_cluster import SparkCluster, cluster_or_skip, skip_reason

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 600  # seconds: a Spark driver start-up and the job, on a shared 2-core machine

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))]


@pytest.fixture(scope="module")
def env(trained_env: TrainedEnv) -> Iterator[Env]:
    with batch_env(trained_env) as e:
        yield e


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory) -> Iterator[SparkCluster]:
    with cluster_or_skip(tmp_path_factory.mktemp("spark-cluster")) as c:
        yield c


@pytest.fixture
def spark_cluster(module_cluster: SparkCluster) -> SparkCluster:
    """The module's cluster with both workers alive (a test may have killed one)."""
    module_cluster.ensure_workers()
    return module_cluster


def read_records(out: Path) -> list[dict]:
    """The score records of OUT (a parquet file or dataset folder), by customer id."""
    return sorted(table_records(pq.read_table(out)), key=lambda r: r["customer_id"])


@pytest.fixture(scope="module")
def local_records(env, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("local") / "scores.parquet"
    run_batch(env.job(out, chunk_size=5000), env.settings, log=lambda *_: None, progress=False)
    records = read_records(out)
    assert len(records) > 1000  # enough customers for several tasks
    return records


def score_cmd(env: Env, cluster, out: Path) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "churnlens"), "--params", str(ROOT / "params.yaml"),
            "score", "--source", str(env.trained.source), "--as-of", AS_OF, "--out", str(out),
            "--model-uri", env.trained.model_uri, "--chunk-size", "5000",
            "--engine", "spark", "--master", cluster.master]


def finished(proc: subprocess.Popen, what: str) -> str:
    """PROC's stderr once it exits 0 (the test fails with its output otherwise)."""
    try:
        stdout, stderr = proc.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"{what} still running after {JOB_TIMEOUT} s:\n{stdout[-2000:]}\n"
                    f"{stderr[-4000:]}")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{stdout[-2000:]}\n" \
                                 f"{stderr[-4000:]}"
    return stderr


def start_job(env: Env, cluster, out: Path) -> subprocess.Popen:
    return subprocess.Popen(score_cmd(env, cluster, out), cwd=out.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cluster.driver_env(env.trained.env()))


@pytest.fixture(scope="module")
def cluster_run(env, module_cluster, tmp_path_factory) -> dict:
    """One job on the cluster, with a worker SIGKILLed (with its executor and Python) once
    Python runs on an executor: the scoring tasks (mapInArrow) have started, after the
    loading and feature stages whose outputs that executor holds. Its records, stderr,
    tasks per worker and the zips each worker's executors fetched."""
    module_cluster.ensure_workers()
    before = [module_cluster.tasks_started(i) for i in range(2)]
    apps = {p for w in module_cluster.workers for p in w.work_dir.glob("app-*")}
    out = tmp_path_factory.mktemp("cluster") / "scores.parquet"
    t0 = time.monotonic()
    proc = start_job(env, module_cluster, out)
    deadline, victim = time.monotonic() + JOB_TIMEOUT, None
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        victim = next((i for i in range(2) if module_cluster.python_workers(i)), None)
        time.sleep(0.1)
    assert victim is not None and proc.poll() is None, \
        f"no Python task started on the cluster while the job ran (exit {proc.poll()})"
    killed = module_cluster.kill_worker(victim)
    stderr = finished(proc, f"score with worker {victim} killed")
    seconds = time.monotonic() - t0
    print(f"cluster job: {seconds:.1f} s, worker {victim} killed")
    new = [[p for p in w.work_dir.glob("app-*") if p not in apps] for w in module_cluster.workers]
    return {"records": read_records(out), "seconds": seconds, "stderr": stderr,
            "killed": killed, "victim": victim,
            "tasks": [module_cluster.tasks_started(i) - before[i] for i in range(2)],
            "shipped": [sorted(z.name for a in apps_i for z in a.glob("*/churnlens-*.zip"))
                        for apps_i in new]}


def test_cluster_records_equal_the_local_engine(cluster_run, local_records):
    assert_same_records(cluster_run["records"], local_records, rel=1e-9)
    # Both executors ran tasks (the killed one before it went), from the zip the driver
    # shipped (fetched into their work folders, which outlive the kill).
    assert all(n > 0 for n in cluster_run["tasks"]), cluster_run["tasks"]
    assert all(len(z) == 1 for z in cluster_run["shipped"]), cluster_run["shipped"]


def test_a_killed_worker_does_not_stop_the_job(cluster_run):
    # The worker, the executor it launched and its Python went; the driver saw the executor
    # go and carried on (Spark retried its tasks): the job exited 0 with the records above.
    assert len(cluster_run["killed"]) >= 3, cluster_run["killed"]
    assert "Lost executor" in cluster_run["stderr"]


# A driver of its own (no churnlens job): the task imports churnlens on an executor, first
# without shipping the package, then after ship_package.
PROBE = """
import json, sys
from pyspark.sql import SparkSession
from churnlens.serving.spark_ship import ship_package

spark = (SparkSession.builder.master(sys.argv[1]).appName("ship-probe")
         .config("spark.ui.enabled", "false").getOrCreate())

def probe(_):
    try:
        import churnlens.features.loading as m
        yield "imported " + m.__file__
    except ModuleNotFoundError as exc:
        yield f"{type(exc).__name__}: {exc}"

def run():
    return spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect()

before = run()
zip_path = ship_package(spark)
print(json.dumps({"before": before, "after": run(), "zip": zip_path.name}))
spark.stop()
"""


def test_executors_import_churnlens_only_when_shipped(spark_cluster, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, spark_cluster.master], cwd=tmp_path,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT,
                          env=spark_cluster.driver_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["before"] == ["ModuleNotFoundError: No module named 'churnlens'"] * 2
    assert seen["zip"].startswith("churnlens-") and seen["zip"].endswith(".zip")
    assert seen["after"] == [f"imported ./{seen['zip']}/churnlens/features/loading.py"] * 2
