"""Batch scoring: one score record per active customer as of a date, written as parquet.

The job plans chunks of sorted customer ids, and for each chunk computes the features (the
same queries as training, restricted to the chunk), scores them with the scoring core and
writes the chunk as its own parquet part under ``OUT.parts/``. Memory therefore grows with
the chunk, not with the base; a part is renamed into place only when complete, so a killed
job resumes (``resume=True``) from the parts it finished. The parts are then combined into
``OUT.tmp`` and renamed to ``OUT``, so a reader never sees a half-written file.

A job holds ``OUT.lock`` throughout, and trusts a part only after checking it against the
manifest (`churnlens.serving.parts`); the work folder is created, finished and removed in an
order that no kill can make misleading (`churnlens.serving.workdir`). Each part's record holds
what the summary and the drift check need (`churnlens.serving.stats`), so a resumed job never
re-reads finished chunks' features. Parts hold score records in
`churnlens.serving.records.RECORD_SCHEMA`.

The ``local`` engine (`churnlens.serving.local.LocalEngine`: DuckDB + pandas in this
process) computes the chunks here. ``spark`` runs the whole job on Spark instead
(`churnlens.serving.spark_job.run_spark_batch`: read, validated, computed, scored and written
by the executors, OUT a parquet dataset folder); what the job and the engines share is in
`churnlens.serving.chunks`.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnlens.features.extent import check_as_of
from churnlens.features.loading import DataSet, fingerprint, load_source
from churnlens.features.relations import from_item
from churnlens.features.shapes import resolve_churn
from churnlens.features.spine import build_spine, cutoff_relation
from churnlens.serving.chunks import BatchError, Chunk, Engine, plan_chunks
from churnlens.serving.local import DUCKDB_MEMORY_LIMIT, LocalEngine
from churnlens.serving.parts import (
    OutputLock,
    check_part,
    is_no_space,
    part_record,
    read_part,
    write_json,
    write_part,
)
from churnlens.serving.records import RECORD_SCHEMA
from churnlens.serving.stats import chunk_stats, drift_report, merge_stats
from churnlens.serving.workdir import (
    MANIFEST_FORMAT,
    META_KEY,
    clear_leftovers,
    drift_path,
    manifest_digest,
    open_parts,
    parts_dir,
    publish,
    temporary,
)
from churnlens.settings import Settings
from churnlens.training.bundle import ChurnModel

ENGINES = ("local", "spark")


Log = Callable[[str], None]


def load_model(model_uri: str) -> ChurnModel:
    """Load the ChurnModel behind MODEL_URI, its registry name/version/run_id filled in.

    A ``models:/NAME@ALIAS`` URI is resolved to its version first, so an alias that moves
    while the job runs cannot mix two models. Raises BatchError when nothing loads.
    """
    model = _load_in_place(model_uri)
    if model is not None:
        return model
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from churnlens.training.tracking import load_bundle

    ref: dict = {}
    uri = model_uri
    try:
        if model_uri.startswith("models:/"):
            name, _, tail = model_uri.removeprefix("models:/").rstrip("/").partition("/")
            name, _, alias = name.partition("@")
            client = MlflowClient()
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, tail))
            ref = {"name": name, "version": str(mv.version), "run_id": mv.run_id}
            uri = f"models:/{name}/{mv.version}"
        model = load_bundle(uri)
    except (MlflowException, FileNotFoundError) as exc:
        msg = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise _cannot_load(model_uri, msg) from None
    return _with_ref(model, ref)


def _cannot_load(model_uri: str, why: str) -> BatchError:
    return BatchError(f"cannot load model {model_uri}: {why}; train one with "
                      "`churnlens train` or pass --model-uri")


def _with_ref(model: ChurnModel, ref: dict) -> ChurnModel:
    model.info = {**model.info, **ref}
    if model.info.get("version") is not None:
        model.info["version"] = str(model.info["version"])
    return model


def _load_in_place(model_uri: str) -> ChurnModel | None:
    """MODEL_URI's model read where its file lies, without MLflow (whose import and store
    cost more than a 50k-customer chunk): a registry version in the local SQLite store of
    MLFLOW_TRACKING_URI whose artifacts are a local folder, resolved as `churnlens serve`
    resolves it (`churnlens.serving.registry`). None for any other model or store, which
    MLflow loads."""
    from churnlens.serving import model_files, registry

    try:
        resolved = registry.resolve_local(model_uri, os.environ.get("MLFLOW_TRACKING_URI", ""))
    except registry.NotRegistered as exc:
        raise _cannot_load(model_uri, str(exc)) from None
    found = None if resolved is None else model_files.in_place(resolved)
    if found is None or not model_files.complete(found.bundle):
        return None
    with open(found.bundle, "rb") as fh:
        model = pickle.load(fh)
    return _with_ref(model, {"name": resolved.name, "version": resolved.version,
                             "run_id": resolved.run_id})


def parse_as_of(value: str) -> pd.Timestamp:
    """The as-of date as a UTC midnight; BatchError when it is not a date. Whether it lies
    inside the data is `churnlens.features.extent.check_as_of`'s to say."""
    try:
        as_of = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise BatchError(f"as-of date {value!r} is not a date ({exc}); use YYYY-MM-DD") from None
    if pd.isna(as_of):
        raise BatchError(f"as-of date {value!r} is not a date; use YYYY-MM-DD")
    return as_of.tz_localize(None).normalize() if as_of.tz is None else (
        as_of.tz_convert("UTC").tz_localize(None).normalize())


def _manifest(as_of: pd.Timestamp, model: ChurnModel, model_uri: str, source: str,
              ds: DataSet, chunk_size: int, chunks: list[Chunk]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "as_of": str(as_of.date()),
        "model": {"uri": model_uri, **model.info_ref},
        "source": source,
        "observed_until": str(ds.observed_until.date()),
        "data": fingerprint(ds),  # rows and content hash per table (`loading.fingerprint`)
        "chunk_size": chunk_size,
        "customers": sum(c.count for c in chunks),
        "chunks": [c.__dict__ for c in chunks],
    }


@dataclass(frozen=True)
class BatchJob:
    """What to score, with what, and where to write it."""

    as_of: str
    out: Path
    model_uri: str
    chunk_size: int
    psi_threshold: float
    source: str | None = None
    resume: bool = False
    engine: str = "local"
    master: str | None = None
    overwrite: bool = False  # spark: replace an existing OUT (the local engine always does)


@dataclass
class BatchResult:
    out: Path
    drift_path: Path
    customers: int
    chunks: int
    chunks_resumed: int
    seconds: float
    currency: str
    stats: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)


def _score_chunks(engine: Engine, chunks: list[Chunk], parts: Path, reference: dict,
                  progress: bool, log: Log, ltv_horizon_days: int = 365) -> int:
    """Score every chunk whose part is missing or fails its check (`parts.check_part`);
    return how many were trusted as done."""
    from tqdm import tqdm

    done = set()
    for c in chunks:
        problem = check_part(c, parts)
        if problem is None:
            done.add(c.index)
        elif problem != "missing":
            log(f"note: {c.part} is scored again: {problem}")
    todo = [c for c in chunks if c.index not in done]
    bar = tqdm(total=sum(c.count for c in chunks),
               initial=sum(c.count for c in chunks if c.index in done),
               unit=" customers", file=sys.stderr, disable=not progress, smoothing=0.1)

    def scored(features: pd.DataFrame) -> tuple[pa.Table, dict]:
        records = engine.records(features)
        return records, chunk_stats(features, records, reference, ltv_horizon_days)

    def commit(chunk: Chunk, future: Future) -> None:
        records, stats = future.result()
        write_part(records, chunk, stats, parts)
        bar.update(chunk.count)
        del records, stats
        _release_free_memory()

    # A chunk is scored in a worker thread while the next chunk's features are computed
    # here: DuckDB works outside the GIL, and scoring holds it for its Python parts, so
    # the two fill each other's idle core. At most two chunks are held at once.
    pending: tuple[Chunk, Future] | None = None
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="churnlens-score") as pool:
        try:
            for chunk in todo:
                features = engine.features(chunk)
                if pending is not None:
                    previous, pending = pending, None
                    commit(*previous)
                pending = (chunk, pool.submit(scored, features))
                del features
            if pending is not None:
                previous, pending = pending, None
                commit(*previous)
        except BaseException:
            # Nothing computed is lost: the chunk being scored is finished and written (and
            # kept by --resume) before the error goes on; it takes a second or two.
            if pending is not None:
                wait([pending[1]])
                if pending[1].exception() is None:
                    commit(*pending)
            raise
    return len(done)


def _release_free_memory() -> None:
    """Hand the allocator's free pages back to the system between chunks (glibc only).

    Each chunk frees its features and records, but glibc keeps the freed pages and the next
    chunk's allocations land beside them; without this the 1M-customer job's RSS crept from
    ~1.4 to ~2.0 GiB over its chunks.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass  # not glibc (macOS, musl): nothing to trim


def _combine(chunks: list[Chunk], parts: Path, out: Path, manifest: dict) -> None:
    """Concatenate the parts (one at a time, each checked against the manifest) into
    OUT.tmp, whose metadata names the job (`workdir.manifest_digest`)."""
    meta = {META_KEY: json.dumps({**{k: manifest[k] for k in ("as_of", "model", "customers")},
                                  "job": manifest_digest(manifest)}).encode()}
    try:
        with pq.ParquetWriter(temporary(out), RECORD_SCHEMA.with_metadata(meta)) as writer:
            for c in chunks:
                writer.write_table(read_part(c, parts).replace_schema_metadata(meta))
    except BaseException:
        temporary(out).unlink(missing_ok=True)
        raise


def _open_engine(job: BatchJob, ds: DataSet, settings: Settings, model: ChurnModel,
                 spine: duckdb.DuckDBPyRelation, spark) -> Engine:
    """The engine of a local job (the spark engine runs its own job, `run_spark_batch`)."""
    return LocalEngine(ds, settings, model, spine)


def run_batch(job: BatchJob, settings: Settings, log: Log = print, progress: bool = True,
              spark=None) -> BatchResult:
    """Score every customer active at JOB.as_of into JOB.out (see the module docstring).

    The job holds JOB.out's lock throughout (`churnlens.serving.parts.OutputLock`).
    Raises BatchError (bad arguments, nothing to score, another job on the same output, a
    resume that does not match the unfinished job, a full disk) and DataError (bad data).
    """
    t0 = time.perf_counter()
    if job.chunk_size < 1:
        raise BatchError(f"chunk size must be at least 1, got {job.chunk_size}")
    if job.engine not in ENGINES:
        raise BatchError(f"engine must be one of {', '.join(ENGINES)}, not {job.engine!r}")
    if job.engine == "spark":  # pyspark is imported only when the spark engine starts
        from churnlens.serving.spark_job import run_spark_batch

        return run_spark_batch(job, settings, log, progress, spark)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with OutputLock(job.out, log):
            clear_leftovers(job.out, log)
            try:
                result = _run_locked(job, settings, log, progress, spark)
            except (OSError, duckdb.IOException) as exc:
                if not is_no_space(exc):
                    raise
                raise _disk_full(job.out, exc) from None  # still holding the lock
    except OSError as exc:  # the lock file itself could not be written
        if not is_no_space(exc):
            raise
        raise BatchError(f"no space left on the device for {job.out.parent} ({exc}); free "
                         f"some space (`df -h {job.out.parent}`) and rerun") from None
    result.seconds = time.perf_counter() - t0
    return result


def _disk_full(out: Path, exc: Exception) -> BatchError:
    """The full-disk message, after deleting every temporary file the job had begun."""
    parts = parts_dir(out)
    removed = [p for p in [temporary(out), temporary(drift_path(out)),
                           *(parts.glob("*.tmp") if parts.is_dir() else [])] if p.exists()]
    for path in removed:
        path.unlink()
    done = len(list(parts.glob("part-*.json"))) if parts.is_dir() else 0
    return BatchError(
        f"no space left on the device while writing near {out} ({exc}); its temporary "
        f"files are removed; free some space (`df -h {out.parent}`) and rerun with --resume: "
        f"the {done} finished part(s) in {parts} are kept")


def _run_locked(job: BatchJob, settings: Settings, log: Log, progress: bool, spark
                ) -> BatchResult:
    model = load_model(job.model_uri)
    source = str(job.source or settings.data.source)
    # The engine's limit from the start: the load needs no more (measured at 1M customers:
    # 7.0 s against 7.8 s with 2 GB), and at 2 GB the load set the job's peak.
    ds = load_source(source, settings.data.observed_until, horizon_days=settings.horizon_days,
                     activity=settings.churn.activity, memory_limit=DUCKDB_MEMORY_LIMIT)
    try:
        for line in ds.report.lines():
            log(line)
        # Refused outside the data, with the data's range (first sign-up to their end).
        as_of = check_as_of(ds, str(parse_as_of(job.as_of).date()))
        spine = build_spine(ds.con, cutoff_relation(ds.con, [as_of]),
                            resolve_churn(settings.churn, ds))
        if spine.shape[0] == 0:
            raise BatchError(f"no customer is active as of {as_of.date()}; pick a date inside "
                             f"the data (it ends {ds.observed_until.date()})")
        ids = ds.con.sql(f"SELECT customer_id FROM {from_item(spine)} AS spine "
                         "ORDER BY customer_id").to_arrow_table()
        chunks = plan_chunks(ids.column(0).combine_chunks(), job.chunk_size)
        del ids
        manifest = _manifest(as_of, model, job.model_uri, str(Path(source).resolve()), ds,
                             job.chunk_size, chunks)
        log(f"{manifest['customers']:,} customers active on {as_of.date()}, scored by "
            f"{model.info.get('name')} v{model.info.get('version')} in {len(chunks)} chunk(s) "
            f"of up to {job.chunk_size:,} on the {job.engine} engine")
        parts = open_parts(job.out, manifest, job.resume, log)
        engine = _open_engine(job, ds, settings, model, spine, spark)
        try:
            resumed = _score_chunks(engine, chunks, parts, model.reference, progress, log,
                                    model.ltv.horizon_days)
        finally:
            engine.close()
    finally:
        ds.con.close()
    stats = merge_stats([part_record(c, parts)["stats"] for c in chunks])
    drift = drift_report(stats, model.reference, job.psi_threshold)
    drift.update(as_of=manifest["as_of"], model=manifest["model"], customers=stats["customers"])
    write_json(temporary(drift_path(job.out)), drift)
    _combine(chunks, parts, job.out, manifest)
    publish(job.out, parts)
    return BatchResult(job.out, drift_path(job.out), stats["customers"], len(chunks), resumed,
                       0.0, model.currency, stats, drift)
