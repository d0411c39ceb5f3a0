"""The batch job on Spark: read, validate, compute, score and write on the executors.

`run_spark_batch` is `churnlens.serving.batch.run_batch` for ``--engine spark``. The sources
are read and validated by Spark (`churnlens.features.spark_loading.load_source_spark`, the
local loader's rules); the spine is the DuckDB SQL of `churnlens.features` translated
(`churnlens.serving.spark.to_spark_sql`); the sources are staged partitioned by chunk, the
events as the recent ones and their summary per customer and type
(`churnlens.serving.spark_stage`);
each task takes one chunk's staged rows, computes its features with the local engine's
feature SQL in a DuckDB of its own and scores them, and each chunk is committed as a folder
of the output dataset (`churnlens.serving.spark_score`, `churnlens.serving.spark_output`).
The driver only ever reads small aggregates: counts, chunk digests, per-chunk statistics
(`churnlens.serving.spark_sql.small_rows`), so its memory does not grow with the base. With
a master that is not ``local[...]`` the package is shipped to the executors first
(`churnlens.serving.spark_ship`)."""

from __future__ import annotations

import pickle
import secrets
import sys
import time
from pathlib import Path

from churnlens.features.contract import TABLES
from churnlens.features.extent import check_as_of
from churnlens.features.shapes import resolve_churn
from churnlens.serving.chunks import BatchError
from churnlens.serving.parts import OutputLock
from churnlens.serving.spark import overflow_error, spark_session
from churnlens.serving.spark_files import Files, drift_path, is_local, join, sibling
from churnlens.serving.spark_output import check_options, clear_leftovers, open_output, publish
from churnlens.serving.spark_score import ChunkQuery, score_wave
from churnlens.serving.spark_stage import (
    spine_frame,
    stage_sources,
    stage_spine,
    wave_input,
)
from churnlens.serving.stats import drift_report, merge_stats
from churnlens.serving.workdir import MANIFEST_FORMAT, manifest_digest
from churnlens.settings import Settings

WAVE_TASKS = 2  # chunks per executor core in one Spark job of the scoring


def session_for(master: str | None, spark=None, log=print):
    """SPARK, or a new session on MASTER; (session, whether this job owns it). With a master
    that is not local the package is shipped to the executors (CLUSTER's `ship_package`)."""
    owns = spark is None
    spark = spark or spark_session(master)
    if not spark.sparkContext.master.startswith("local"):
        try:
            from churnlens.serving.spark_ship import ship_package
        except ImportError:
            log("note: churnlens.serving.spark_ship is not installed: the executors need "
                "churnlens installed already")
        else:
            log(f"shipped {ship_package(spark)} to the executors")
    return spark, owns


def _source_name(source: str) -> str:
    return str(Path(source).resolve()) if is_local(source) else source


def _staging(settings: Settings, out: str) -> tuple[str, bool]:
    """Where this run stages (a fresh folder) and whether its root is the default one."""
    root = settings.batch.spark.staging
    name = f"{out.rstrip('/').rpartition('/')[2]}-{secrets.token_hex(4)}"
    return (join(root, name), False) if root else (join(sibling(out, ".staging"), name), True)


def run_spark_batch(job, settings: Settings, log=print, progress: bool = True, spark=None):
    """Score every customer active at JOB.as_of into the dataset folder JOB.out on Spark.

    job: a `churnlens.serving.batch.BatchJob`. A local OUT is locked as the local engine's
    is (`OutputLock`). Returns a BatchResult; raises BatchError and DataError as run_batch.
    """
    from churnlens.serving.batch import BatchResult

    t0 = time.perf_counter()
    out = str(job.out).removeprefix("file:") if is_local(str(job.out)) else str(job.out)
    spark, owns = session_for(job.master, spark, log)
    try:
        files = Files(spark)
        if is_local(out):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            with OutputLock(Path(out), log):
                r = _run_locked(job, out, settings, spark, files, log, progress)
        else:
            r = _run_locked(job, out, settings, spark, files, log, progress)
    except Exception as exc:
        error = overflow_error(exc)
        if error is None:
            raise
        raise error from None
    finally:
        if owns:
            spark.stop()
    stats, drift, chunks, resumed, currency = r
    return BatchResult(job.out, drift_path(out), stats["customers"], chunks, resumed,
                       time.perf_counter() - t0, currency, stats, drift)


def _fingerprint(ds) -> dict[str, str]:
    """Per table, "ROWS:DIGEST": the rows kept and a digest of its files' listing (paths,
    sizes, modification times; `Files.digest`). Not the content hash of the local engine's
    manifest (`churnlens.features.loading.fingerprint`): over the 1M base's tables that
    hash was another 39 s of the cluster's job, and a rewritten file is told apart by its
    time."""
    files = Files(ds.spark)
    return {t: f"{ds.report.rows_kept.get(t, 0)}:"
               f"{files.digest(ds.files[t]) if t in ds.files else '-'}" for t in TABLES}


def _manifest(job, model, source: str, ds, as_of, chunks) -> dict:
    """What identifies the job (the local job's manifest keys, `workdir.check_manifest`)."""
    until = str(ds.observed_until.date())
    return {"format": MANIFEST_FORMAT, "engine": "spark", "as_of": str(as_of.date()),
            "model": {"uri": job.model_uri, **model.info_ref}, "source": _source_name(source),
            "observed_until": until,
            "data": _fingerprint(ds) | {"observed_until": until},
            "chunk_size": job.chunk_size, "customers": sum(c.count for c in chunks),
            "chunks": [c.__dict__ for c in chunks]}


def _score_todo(spark, todo, staged, staging: str, as_of, model, settings: Settings,
                done: dict, work: str, files: Files, progress: bool) -> None:
    """Stage the sources, then score and commit TODO's chunks a wave at a time (their stats
    into DONE): WAVE_TASKS chunks per executor core in each Spark job, so a failed job loses
    one wave and `--resume` re-runs only the waves' chunks that did not commit."""
    schemas, event_types = stage_sources(staged, settings.features, staging, as_of)
    query = ChunkQuery(settings.features, tuple(event_types))
    model_bytes = spark.sparkContext.broadcast(pickle.dumps(model))
    # The chunks' one-partition unions are put side by side, not zipped into one partition
    # as Spark 4 unions children of the same partitioning (`wave_frame`).
    spark.conf.set("spark.sql.unionOutputPartitioning", "false")
    size = WAVE_TASKS * spark.sparkContext.defaultParallelism
    finished = 0
    try:
        for start in range(0, len(todo), size):
            t = time.perf_counter()
            wave = todo[start:start + size]
            rows, layout = wave_input(spark, staging, wave, schemas)
            done.update(score_wave(rows, layout, query, wave, model_bytes, model, work, files))
            finished += len(wave)
            if progress:
                seconds = time.perf_counter() - t
                customers = sum(c.count for c in wave)
                print(f"chunks {wave[0].index}-{wave[-1].index} ({finished}/{len(todo)}): "
                      f"{customers:,} customers in {seconds:.1f} s ({customers / seconds:,.0f}/s)",
                      file=sys.stderr, flush=True)
    finally:
        model_bytes.destroy()


def _run_locked(job, out: str, settings: Settings, spark, files: Files, log, progress):
    from churnlens.features.spark_loading import load_source_spark
    from churnlens.serving.batch import load_model, parse_as_of

    clear_leftovers(files, out)
    check_options(files, out, resume=job.resume, overwrite=job.overwrite)
    model = load_model(job.model_uri)
    source = str(job.source or settings.data.source)
    ds = load_source_spark(spark, source, settings.data.observed_until,
                           horizon_days=settings.horizon_days, activity=settings.churn.activity)
    for line in ds.report.lines():
        log(line)
    as_of = check_as_of(ds, str(parse_as_of(job.as_of).date()))
    staging, default_root = _staging(settings, out)
    spark.sparkContext.setCheckpointDir(join(staging, "checkpoints"))
    try:
        staged, chunks = stage_spine(spine_frame(spark, as_of, resolve_churn(settings.churn, ds)),
                                     job.chunk_size, staging)
        if not chunks:
            raise BatchError(f"no customer is active as of {as_of.date()}; pick a date inside "
                             f"the data (it ends {ds.observed_until.date()})")
        manifest = _manifest(job, model, source, ds, as_of, chunks)
        work, done, finished = open_output(files, out, manifest, resume=job.resume,
                                           overwrite=job.overwrite, log=log)
        if finished is not None:
            log(f"note: {out} is this job, finished: nothing to score")
            return (finished["stats"], files.read_json(drift_path(out)), len(chunks),
                    len(chunks), model.currency)
        log(f"{manifest['customers']:,} customers active on {as_of.date()}, scored by "
            f"{model.info.get('name')} v{model.info.get('version')} in {len(chunks)} chunk(s) "
            f"of about {job.chunk_size:,} on Spark ({spark.sparkContext.master}); "
            f"{len(done)} committed before")
        resumed = len(done)
        todo = [c for c in chunks if c.index not in done]
        if todo:
            _score_todo(spark, todo, staged, staging, as_of, model, settings, done, work, files,
                        progress)
        stats = merge_stats([done[c.index] for c in chunks])
        drift = drift_report(stats, model.reference, job.psi_threshold)
        drift.update(as_of=manifest["as_of"], model=manifest["model"],
                     customers=stats["customers"])
        publish(files, out, work, {**manifest, "job": manifest_digest(manifest), "stats": stats},
                drift, drift_path(out))
    finally:
        files.delete(staging.rpartition("/")[0] if default_root else staging)
    return stats, drift, len(chunks), resumed, model.currency
