"""The Spark engine: DuckDB feature SQL translated faithfully, and the same records."""

from __future__ import annotations

import json
from collections.abc import Iterator

import duckdb
import pyarrow.parquet as pq
import pytest

from churnlens.serving.batch import BatchError, run_batch
from churnlens.serving.records import table_records
from churnlens.serving.spark import java_missing, spark_session, to_spark_sql
from tests.fixtures_model import TrainedEnv
from tests.serving.test_batch import Env, assert_same_records, batch_env

pytest.importorskip("pyspark")
# A Spark session takes ~10 s to start: the tests that need one are slow, the others not.
needs_java = pytest.mark.skipif(java_missing() is not None, reason=str(java_missing()))


@pytest.fixture(scope="module")
def env(trained_env: TrainedEnv) -> Iterator[Env]:
    with batch_env(trained_env) as e:
        yield e


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.mark.slow
@needs_java
def test_translation_keeps_duckdb_semantics(spark):
    # Sub-second times (DuckDB counts second boundaries), a decimal divisor (Spark would
    # round in DECIMAL) and a 64th bit (no unsigned type in Spark).
    sql = """
        SELECT date_diff('second', a, b) / 86400.0 AS days, 7 / 2 AS half,
               bit_count(CAST(1 AS UBIGINT) << 63) AS bits
        FROM (SELECT TIMESTAMP '2020-01-01 00:00:00.9' AS a,
                     TIMESTAMP '2020-01-01 00:00:10' AS b) t
    """
    want = duckdb.sql(sql).fetchall()[0]
    got = tuple(spark.sql(to_spark_sql(sql)).collect()[0])
    assert got == want == (10 / 86400, 3.5, 1)


def test_without_java_the_engine_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert java_missing() == "Spark needs Java 17: no `java` on PATH and JAVA_HOME is not set"
    with pytest.raises(BatchError, match=r"spark engine cannot start: Spark needs Java 17.*"
                                         r"install a JDK 17"):
        spark_session("local[1]")


def test_translation_refuses_what_it_cannot_keep_exact():
    with pytest.raises(BatchError, match=r"date_diff\('day', \.\.\.\) has no exact Spark"):
        to_spark_sql("SELECT date_diff('day', a, b) FROM t")


@pytest.mark.slow
@needs_java
def test_engines_give_identical_records(env, spark, tmp_path):
    outs = {}
    for engine in ("local", "spark"):
        out = tmp_path / f"{engine}.parquet"
        run_batch(env.job(out, chunk_size=5000, engine=engine), env.settings,
                  log=lambda *_: None, progress=False, spark=spark)
        outs[engine] = out
    # The spark engine writes a dataset folder (chunk folders of part files, _SUCCESS and
    # the manifest), read back as one table.
    assert (outs["spark"] / "_SUCCESS").is_file() and (outs["spark"] / "_manifest.json").is_file()
    local, remote = (table_records(pq.read_table(outs[e]).sort_by("customer_id"))
                     for e in ("local", "spark"))
    assert len(local) > 1000
    assert_same_records(remote, local, rel=1e-9)
    drift = [json.loads(outs[e].with_suffix(".drift.json").read_text()) for e in outs]
    assert drift[0]["over_threshold"] == drift[1]["over_threshold"]
    for name, entry in drift[0]["features"].items():
        if "psi" in entry:
            assert drift[1]["features"][name]["psi"] == pytest.approx(entry["psi"], abs=1e-9)
