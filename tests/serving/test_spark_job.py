"""The Spark-native job: a dataset written by the executors, committed atomically, resumable,
and nothing proportional to the base collected on the driver."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from churnlens.serving import spark_job, spark_score, spark_stage
from churnlens.serving.batch import BatchError, run_batch
from churnlens.serving.records import table_records
from churnlens.serving.spark import java_missing, overflow_error, spark_session, to_spark_sql
from churnlens.settings import Settings
from tests.fixtures_model import TrainedEnv
from tests.serving.test_batch import Env, assert_same_records, batch_env

ROOT = Path(__file__).resolve().parents[2]
# Calls that bring rows to the driver, and the functions allowed to make them: the job's
# `small_rows` bounds what it fetches; the loader's runner fetches its rules' counts and
# examples (`rows`) and the per-day record counts of its extent check (`define`).
FETCHES = {"collect", "toPandas", "toArrow", "take", "head", "first", "tail",
           "toLocalIterator", "collectAsList", "takeAsList"}
ALLOWED = {("spark_sql.py", "small_rows"), ("spark_loading.py", "rows"),
           ("spark_loading.py", "define")}
CHUNK = 800  # two chunks of the sample's ~1,400 active customers

needs_spark = pytest.mark.skipif(
    importlib.util.find_spec("pyspark") is None or java_missing() is not None,
    reason=f"needs pyspark (pip install -e .[spark]) and Java: {java_missing()}")


def _fetches(path: Path) -> list[tuple[str, str, int]]:
    """(function, call, line) of each FETCHES call in PATH, with the function holding it."""
    found = []

    def visit(node, owner: str):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else owner
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr in FETCHES):
                found.append((owner, child.func.attr, child.lineno))
            visit(child, name)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_no_records_reach_the_driver():
    files = [*sorted((ROOT / "serving").glob("spark*.py")), ROOT / "features" / "spark_loading.py"]
    assert {f.name for f in files} >= {"spark.py", "spark_job.py", "spark_score.py",
                                       "spark_sql.py", "spark_stage.py", "spark_output.py",
                                       "spark_features.py", "spark_loading.py"}
    seen = {(f.name, owner, call, line) for f in files for owner, call, line in _fetches(f)}
    allowed = {s for s in seen if (s[0], s[1]) in ALLOWED}
    assert allowed, "small_rows no longer fetches: update ALLOWED"
    assert seen - allowed == set(), "fetch rows through spark_sql.small_rows (bounded)"
    assert {s[0] for s in allowed} == {"spark_sql.py", "spark_loading.py"}


@pytest.mark.parametrize(("argv", "message"), [
    (["score", "--as-of", "2026-10-31", "--out", "s", "--resume", "--overwrite"],
     r"argument --overwrite: not allowed with argument --resume"),
    (["features", "--engine", "spark"],
     r"--engine spark builds the snapshot \(--as-of DATE\); the training set is built by"),
    (["features", "--overwrite"], r"--master and --overwrite need --engine spark"),
    (["score", "--as-of", "2026-10-31", "--out", "s", "--engine", "spark", "--notify",
      "https://hooks.example.com/x"], r"--notify reads the whole score file on this machine"),
])
def test_spark_options_are_checked_before_spark_starts(argv, message, capsys, tmp_path,
                                                       monkeypatch):
    import re

    from churnlens.cli.app import main

    monkeypatch.chdir(tmp_path)
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2 and re.search(message, capsys.readouterr().err)


def test_the_code_check_finds_a_collect(tmp_path):
    bad = tmp_path / "spark_bad.py"
    bad.write_text("def records(df):\n    return df.where('x').toPandas()\n")
    assert _fetches(bad) == [("records", "toPandas", 2)]


@pytest.fixture(scope="module")
def env(trained_env: TrainedEnv) -> Iterator[Env]:
    with batch_env(trained_env) as e:
        yield e


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def local_out(env, tmp_path_factory) -> Path:
    """The local engine's score file (its drift report beside it)."""
    out = tmp_path_factory.mktemp("local") / "scores.parquet"
    run_batch(env.job(out, chunk_size=CHUNK), env.settings, log=lambda *_: None, progress=False)
    return out


@pytest.fixture(scope="module")
def local_records(local_out):
    return table_records(pq.read_table(local_out))


def _spark(env, spark, out, **kw):
    return run_batch(env.job(out, chunk_size=CHUNK, engine="spark", **kw), env.settings,
                     log=lambda *_: None, progress=False, spark=spark)


def _records(out: Path) -> list[dict]:
    return table_records(pq.read_table(out).sort_by("customer_id"))


@pytest.mark.slow
@needs_spark
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


@pytest.mark.slow
@needs_spark
def test_exact_sums_are_duckdb_s_doubles(spark):
    # `exact_sum` in Spark adds 64-bit integers: the doubles DuckDB's DECIMAL sums give, for
    # fractions, signs, nulls, totals past 2**53 billionths and an empty FILTER.
    import numpy as np
    import pandas as pd

    from churnlens.features.exact_sums import exact_sum

    rng = np.random.default_rng(7)
    n = 4_000
    values = np.concatenate([rng.normal(0, 1e3, n), rng.integers(0, 20, n).astype(float),
                             rng.uniform(-1, 1, n) * 1e-7, rng.uniform(0, 9.9e8, n),
                             rng.uniform(-2, 2, n) * 10.0 ** rng.integers(-9, 9, n),
                             [3.5e8 + 0.123456789] * 30, [-1e-9, -2.5e-9, -1.0000000025]])
    groups = np.concatenate([rng.integers(0, 200, 5 * n), [200] * 30, [201] * 3])
    values[rng.integers(0, 5 * n, 40)] = np.nan
    frame = pd.DataFrame({"g": groups, "v": values, "c": rng.integers(0, 3, len(values))})
    sql = (f"SELECT g, {exact_sum('v')} AS total, {exact_sum('v', 'c = 1')} AS ones, "
           f"{exact_sum('v', 'c = 9')} AS none FROM t GROUP BY g ORDER BY g")
    con = duckdb.connect()
    con.register("t", frame.astype({"v": "Float64"}))  # NaN as NULL, as loading leaves it
    want = con.sql(sql).df()
    spark.createDataFrame(frame).selectExpr("g", "nanvl(v, NULL) AS v", "c") \
        .createOrReplaceTempView("t")
    got = spark.sql(to_spark_sql(sql, integer_sums=True)).toPandas()
    assert want["total"].abs().max() > 2**53 / 1e9  # some totals take the long way
    for column in ("total", "ones"):
        assert np.array_equal(want[column], got[column], equal_nan=True)
    assert got["none"].isna().all() and want["none"].isna().all()
    spark.createDataFrame(pd.DataFrame({"g": [1], "v": [1e10], "c": [1]})) \
        .createOrReplaceTempView("t")
    with pytest.raises(Exception, match="CAST_OVERFLOW") as raised:
        spark.sql(to_spark_sql(sql, integer_sums=True)).collect()
    assert "use the local engine" in str(overflow_error(raised.value))


@pytest.fixture(scope="module")
def spark_run(env, spark, tmp_path_factory) -> dict:
    """One uninterrupted Spark job, staged under a `batch.spark.staging` of its own: its
    output, result and the staging folder it used."""
    root = tmp_path_factory.mktemp("spark-run")
    out, staging, used = root / "scores.parquet", root / "shared-staging", []
    real = spark_job.stage_sources
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spark_job, "stage_sources",
                   lambda spine, fs, at, *a: used.append(at) or real(spine, fs, at, *a))
        settings = Settings(data={"source": env.trained.source},
                            batch={"spark": {"staging": str(staging)}})
        result = run_batch(env.job(out, chunk_size=CHUNK, engine="spark"), settings,
                           log=lambda *_: None, progress=False, spark=spark)
    return {"out": out, "result": result, "staging": staging, "used": used}


@pytest.mark.slow
@needs_spark
def test_dataset_equals_the_local_file(spark_run, local_out, local_records):
    out, r = spark_run["out"], spark_run["result"]
    assert out.is_dir() and (out / "_SUCCESS").is_file() and (out / "_manifest.json").is_file()
    chunks = sorted(p.name for p in out.iterdir() if p.name.startswith("chunk-"))
    assert len(chunks) == r.chunks >= 2 and r.chunks_resumed == 0
    assert not out.with_name("scores.parquet.tmp").exists()
    # Staged under batch.spark.staging, not beside the output, and removed when done.
    used = spark_run["used"]
    assert used and used[0].startswith(f"{spark_run['staging']}/scores.parquet-")
    assert not Path(used[0]).exists(), "the run's staging is removed when it is done"
    assert not out.with_name("scores.parquet.staging").exists()
    assert_same_records(_records(out), local_records, rel=1e-9)
    assert r.customers == len(local_records) > 1000
    # The same drift report as the local engine's.
    drift = [json.loads(p.with_suffix(".drift.json").read_text())
             for p in (out, local_out)]
    assert drift[0]["over_threshold"] == drift[1]["over_threshold"]
    for name, entry in drift[1]["features"].items():
        if "psi" in entry:
            assert drift[0]["features"][name]["psi"] == pytest.approx(entry["psi"], abs=1e-9)


@pytest.mark.slow
@needs_spark
def test_chunks_delivered_by_spark_equal_the_local_file(env, spark, local_records, tmp_path,
                                                        monkeypatch):
    # Staging on a store the tasks cannot open themselves (hdfs://, s3a://): Spark reads the
    # chunks' staged rows and hands each task its chunk's; here the local staging is read
    # that way too, so the path is tested on this machine.
    seen = []

    def delivered(spark, staging, chunks, schemas):
        rows, layout = spark_stage.wave_frame(spark, staging, chunks, schemas)
        seen.append(rows.rdd.getNumPartitions() == len(chunks))
        return rows, layout

    monkeypatch.setattr(spark_job, "wave_input", delivered)
    r = _spark(env, spark, tmp_path / "scores")
    assert seen and all(seen), "one partition per chunk"
    assert r.chunks >= 2
    assert_same_records(_records(tmp_path / "scores"), local_records, rel=1e-9)


@pytest.mark.slow
@needs_spark
def test_resume_scores_only_the_chunks_that_did_not_commit(env, spark, local_records, tmp_path,
                                                           monkeypatch):
    out, scored = tmp_path / "scores", []
    real = spark_score.commit_chunk

    def failing(found, chunk, *a, **kw):
        if len(scored) == 1:
            raise RuntimeError("executor lost")
        scored.append(chunk.index)
        return real(found, chunk, *a, **kw)

    monkeypatch.setattr(spark_score, "commit_chunk", failing)
    with pytest.raises(RuntimeError, match="executor lost"):
        _spark(env, spark, out)
    assert not out.exists(), "a reader must never see a half-written dataset"
    committed = sorted(p.name for p in Path(f"{out}.tmp").iterdir() if p.name.startswith("chunk-"))
    assert committed == [f"chunk-{scored[0]:05d}"]
    # Refused before the source is read (a source that does not exist would fail there).
    with pytest.raises(BatchError, match=r"holds an unfinished job: pass --resume .*1 of \d+ "
                                         "chunks committed.*or --overwrite"):
        _spark(env, spark, out, source=str(tmp_path / "no-such-source"))

    again = []
    monkeypatch.setattr(spark_score, "commit_chunk",
                        lambda found, chunk, *a, **kw: again.append(chunk.index)
                        or real(found, chunk, *a, **kw))
    r = _spark(env, spark, out, resume=True)
    assert scored[0] not in again and len(again) == r.chunks - 1 and r.chunks_resumed == 1
    assert_same_records(_records(out), local_records, rel=1e-9)


@pytest.mark.slow
@needs_spark
def test_an_existing_output_needs_overwrite(env, spark, spark_run, local_records, tmp_path):
    # A copy of the finished job's output: the manifest names the job, not the folder.
    out = tmp_path / "scores"
    shutil.copytree(spark_run["out"], out)
    shutil.copy(spark_run["out"].with_suffix(".drift.json"), out.with_suffix(".drift.json"))
    with pytest.raises(BatchError, match=r"scores exists: pass --overwrite to replace it"):
        _spark(env, spark, out, source=str(tmp_path / "no-such-source"))  # before the load
    notes = []
    done = run_batch(env.job(out, chunk_size=CHUNK, engine="spark", resume=True), env.settings,
                     log=notes.append, progress=False, spark=spark)
    assert any("finished: nothing to score" in n for n in notes)
    assert done.stats == spark_run["result"].stats
    (out / "chunk-00000").rename(tmp_path / "moved")  # spoil it: overwrite must rebuild
    r = _spark(env, spark, out, overwrite=True)
    assert r.chunks_resumed == 0 and (out / "chunk-00000").is_dir()
    assert_same_records(_records(out), local_records, rel=1e-9)


@pytest.mark.slow
@needs_spark
def test_snapshot_on_spark_equals_the_local_snapshot(env, spark, tmp_path):
    import numpy as np
    import pandas as pd

    from churnlens.serving.spark_features import spark_snapshot
    from tests.fixtures_model import AS_OF

    out = str(tmp_path / "features")
    snap = spark_snapshot(spark, str(env.trained.source), AS_OF, env.settings, out,
                          log=lambda *_: None)
    want, got = pd.read_parquet(env.trained.snapshot), pd.read_parquet(out)
    assert snap.customers == len(want) == len(got) and list(got.columns) == list(want.columns)
    assert got["customer_id"].tolist() == want["customer_id"].tolist()  # sorted as the local one
    for name in want.columns:
        if want[name].dtype == np.float64:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-9, err_msg=name)
        else:  # categories locally, strings from Spark
            assert got[name].astype(str).tolist() == want[name].astype(str).tolist(), name
    with pytest.raises(BatchError, match=r"features exists: pass --overwrite"):
        spark_snapshot(spark, str(env.trained.source), AS_OF, env.settings, out)
