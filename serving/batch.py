"""Batch scoring: one score record per active customer as of a date, written as parquet.

The job plans chunks of sorted customer ids, and for each chunk computes the features (the
same queries as training, restricted to the chunk), scores them with the scoring core and
writes the chunk as its own parquet part under ``OUT.parts/``. Memory therefore grows with
the chunk, not with the base; a part is renamed into place only when complete, so a killed
job resumes (``resume=True``) from the parts it finished. The parts are then combined into
``OUT.tmp`` and renamed to ``OUT``, so a reader never sees a half-written file.

Each part has a small JSON beside it with what the summary and the drift check need
(`churnlens.serving.stats`), so a resumed job never re-reads finished chunks' features. Parts hold
score records in `churnlens.serving.records.RECORD_SCHEMA`.

Two engines compute a chunk: ``local`` (`churnlens.serving.local.LocalEngine`: DuckDB +
pandas in this process) and ``spark`` (`churnlens.serving.spark.SparkEngine`: Spark SQL
translated from the same DuckDB SQL, scoring through ``mapInPandas``); what the job and the
engines share is in `churnlens.serving.chunks`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from churnlens.features.loading import DataSet, load_source
from churnlens.features.relations import from_item
from churnlens.features.shapes import resolve_churn
from churnlens.features.spine import build_spine, cutoff_relation
from churnlens.serving.chunks import BatchError, Chunk, Engine, plan_chunks
from churnlens.serving.local import LocalEngine
from churnlens.serving.records import RECORD_SCHEMA
from churnlens.serving.spark import SparkEngine
from churnlens.serving.stats import chunk_stats, drift_report, merge_stats
from churnlens.settings import Settings
from churnlens.training.bundle import ChurnModel

MANIFEST_FORMAT = 1
ENGINES = ("local", "spark")


Log = Callable[[str], None]


def load_model(model_uri: str) -> ChurnModel:
    """Load the ChurnModel behind MODEL_URI, its registry name/version/run_id filled in.

    A ``models:/NAME@ALIAS`` URI is resolved to its version first, so an alias that moves
    while the job runs cannot mix two models. Raises BatchError when nothing loads.
    """
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
        raise BatchError(f"cannot load model {model_uri}: {msg}; train one with "
                         "`churnlens train` or pass --model-uri") from None
    model.info = {**model.info, **ref}
    if model.info.get("version") is not None:
        model.info["version"] = str(model.info["version"])
    return model


def parse_as_of(value: str, observed_until: pd.Timestamp) -> pd.Timestamp:
    """The as-of date as a UTC midnight; BatchError when not a date or after the data."""
    try:
        as_of = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise BatchError(f"as-of date {value!r} is not a date ({exc}); use YYYY-MM-DD") from None
    if pd.isna(as_of):
        raise BatchError(f"as-of date {value!r} is not a date; use YYYY-MM-DD")
    as_of = as_of.tz_localize(None).normalize() if as_of.tz is None else (
        as_of.tz_convert("UTC").tz_localize(None).normalize())
    if as_of > observed_until:
        raise BatchError(f"as-of date {as_of.date()} is after the end of the data "
                         f"({observed_until.date()}): features would miss records")
    return as_of


def _manifest(as_of: pd.Timestamp, model: ChurnModel, model_uri: str, source: str,
              observed_until: pd.Timestamp, chunk_size: int, chunks: list[Chunk]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "as_of": str(as_of.date()),
        "model": {"uri": model_uri, **model.info_ref},
        "source": source,
        "observed_until": str(observed_until.date()),
        "chunk_size": chunk_size,
        "customers": sum(c.count for c in chunks),
        "chunks": [c.__dict__ for c in chunks],
    }


def check_manifest(found: dict, wanted: dict, parts: Path) -> None:
    """Raise BatchError naming every difference between a resumed job and the one on disk."""
    keys = [("as_of", "as-of date"), ("source", "data source"),
            ("observed_until", "end of data"), ("chunk_size", "chunk size")]
    diffs = [f"{label}: {found.get(k)!r} on disk, {wanted[k]!r} now"
             for k, label in keys if found.get(k) != wanted[k]]
    for k in ("name", "version", "run_id"):
        if found.get("model", {}).get(k) != wanted["model"][k]:
            diffs.append(f"model {k}: {found.get('model', {}).get(k)!r} on disk, "
                         f"{wanted['model'][k]!r} now")
    if not diffs and found.get("chunks") != wanted["chunks"]:
        diffs.append("the active customers differ (the data changed since the first run)")
    if diffs:
        raise BatchError(
            f"cannot resume: {parts} belongs to a different job ({'; '.join(diffs)}); "
            f"rerun with the same settings, or delete {parts} to start afresh")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


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


def parts_dir(out: Path) -> Path:
    """The work folder beside OUT holding the parts and the manifest."""
    return out.with_name(out.name + ".parts")


def drift_path(out: Path) -> Path:
    return out.with_suffix(".drift.json")


def _open_parts(job: BatchJob, manifest: dict, log: Log) -> Path:
    parts = parts_dir(job.out)
    path = parts / "manifest.json"
    if path.exists():
        if not job.resume:
            raise BatchError(f"{parts} holds an unfinished job: pass --resume to finish it, or "
                             f"delete {parts} to start afresh")
        check_manifest(json.loads(path.read_text()), manifest, parts)
        return parts
    if job.resume:
        log(f"note: nothing to resume at {parts}; starting afresh")
    parts.mkdir(parents=True, exist_ok=True)
    _write_json(path, manifest)
    return parts


def _score_chunks(engine: Engine, chunks: list[Chunk], parts: Path, reference: dict,
                  progress: bool, ltv_horizon_days: int = 365) -> int:
    """Score every chunk whose part is missing; return how many were already done."""
    from tqdm import tqdm

    done = {c.index for c in chunks if (parts / f"{c.part}.parquet").exists()}
    todo = [c for c in chunks if c.index not in done]
    bar = tqdm(total=sum(c.count for c in chunks),
               initial=sum(c.count for c in chunks if c.index in done),
               unit=" customers", file=sys.stderr, disable=not progress, smoothing=0.1)
    with bar:
        for chunk in todo:
            records, features = engine.score(chunk)
            if records.num_rows != chunk.count:
                raise BatchError(f"chunk {chunk.index} gave {records.num_rows} records for "
                                 f"{chunk.count} customers; the spine and features disagree")
            # Stats first, part last: a part that exists always has its stats beside it.
            _write_json(parts / f"{chunk.part}.stats.json",
                        chunk_stats(features, records, reference, ltv_horizon_days))
            tmp = parts / f"{chunk.part}.parquet.tmp"
            pq.write_table(records, tmp)
            tmp.replace(parts / f"{chunk.part}.parquet")
            bar.update(chunk.count)
            del records, features
            _release_free_memory()
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
    """Concatenate the parts (one at a time) into OUT.tmp, then rename it to OUT."""
    tmp = out.with_name(out.name + ".tmp")
    meta = {b"churnlens": json.dumps({k: manifest[k] for k in
                                       ("as_of", "model", "customers")}).encode()}
    with pq.ParquetWriter(tmp, RECORD_SCHEMA.with_metadata(meta)) as writer:
        for c in chunks:
            part = pq.read_table(parts / f"{c.part}.parquet")
            writer.write_table(part.replace_schema_metadata(meta))
    tmp.replace(out)


def _open_engine(job: BatchJob, ds: DataSet, settings: Settings, model: ChurnModel,
                 spine: duckdb.DuckDBPyRelation, spark) -> Engine:
    """The engine JOB asks for; pyspark is imported only when the spark engine starts."""
    if job.engine == "spark":
        return SparkEngine(ds, settings, model, spine, job.master, spark)
    return LocalEngine(ds, settings, model, spine)


def run_batch(job: BatchJob, settings: Settings, log: Log = print, progress: bool = True,
              spark=None) -> BatchResult:
    """Score every customer active at JOB.as_of into JOB.out (see the module docstring).

    Raises BatchError (bad arguments, nothing to score, a resume that does not match the
    unfinished job) and DataError (bad input data).
    """
    t0 = time.perf_counter()
    if job.chunk_size < 1:
        raise BatchError(f"chunk size must be at least 1, got {job.chunk_size}")
    if job.engine not in ENGINES:
        raise BatchError(f"engine must be one of {', '.join(ENGINES)}, not {job.engine!r}")
    model = load_model(job.model_uri)
    source = str(job.source or settings.data.source)
    ds = load_source(source, settings.data.observed_until, horizon_days=settings.horizon_days,
                     activity=settings.churn.activity)
    try:
        for line in ds.report.lines():
            log(line)
        as_of = parse_as_of(job.as_of, ds.observed_until)
        spine = build_spine(ds.con, cutoff_relation(ds.con, [as_of]),
                            resolve_churn(settings.churn, ds))
        if spine.shape[0] == 0:
            raise BatchError(f"no customer is active as of {as_of.date()}; pick a date inside "
                             f"the data (it ends {ds.observed_until.date()})")
        ids = ds.con.sql(f"SELECT customer_id FROM {from_item(spine)} AS spine "
                         "ORDER BY customer_id").to_arrow_table()
        chunks = plan_chunks(ids.column(0).combine_chunks(), job.chunk_size)
        del ids
        manifest = _manifest(as_of, model, job.model_uri, str(Path(source).resolve()),
                             ds.observed_until, job.chunk_size, chunks)
        log(f"{manifest['customers']:,} customers active on {as_of.date()}, scored by "
            f"{model.info.get('name')} v{model.info.get('version')} in {len(chunks)} chunk(s) "
            f"of up to {job.chunk_size:,} on the {job.engine} engine")
        job.out.parent.mkdir(parents=True, exist_ok=True)
        parts = _open_parts(job, manifest, log)
        engine = _open_engine(job, ds, settings, model, spine, spark)
        try:
            resumed = _score_chunks(engine, chunks, parts, model.reference, progress,
                                    model.ltv.horizon_days)
        finally:
            engine.close()
    finally:
        ds.con.close()
    stats = merge_stats([json.loads((parts / f"{c.part}.stats.json").read_text())
                         for c in chunks])
    drift = drift_report(stats, model.reference, job.psi_threshold)
    drift.update(as_of=manifest["as_of"], model=manifest["model"], customers=stats["customers"])
    _write_json(drift_path(job.out), drift)
    _combine(chunks, parts, job.out, manifest)
    shutil.rmtree(parts)
    return BatchResult(job.out, drift_path(job.out), stats["customers"], len(chunks), resumed,
                       time.perf_counter() - t0, model.currency, stats, drift)
