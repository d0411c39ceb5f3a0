"""Scoring chunks on the executors, and committing each as a folder of the output.

A task gets one chunk's staged rows (it reads them itself from a staging folder every
executor mounts, `StagedFiles`; elsewhere Spark hands them over, `spark_stage.wave_frame`),
puts them in a DuckDB of its own (one thread), rolls the chunk's recent events up per day
and computes the chunk's features with the local engine's `compute_features` and feature SQL
itself (`ChunkQuery`; not a translation: Spark's plan of it took 20 s a chunk of 47,000
customers on the two-worker cluster, DuckDB 1.7 s), and scores them with the scoring core's
column path, `churnlens.serving.records.score_table` (the model broadcast once and unpickled
once per task, one LightGBM thread). The records leave the task as the Arrow batches
score_table builds, with their chunk; each task also computes
`churnlens.serving.stats.chunk_stats` of its chunk and sends them as one extra row
(``_stats``, JSON): the driver reads those rows only (one per chunk), never the records.

A wave of chunks is computed and written by one Spark job (persisted, a folder ``chunk=N``
per chunk under ``_writing/`` of the output's temporary folder); the driver then checks each
chunk's count and id digest against the manifest's chunk, puts its statistics
(``_stats.json``) and ``_SUCCESS`` beside its records and renames the folder to
``chunk-NNNNN`` (`commit_chunk`): a chunk folder exists only complete."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churnlens.features.build import compute_features
from churnlens.serving.chunks import BatchError, Chunk
from churnlens.serving.records import RECORD_SCHEMA, score_table
from churnlens.serving.spark_files import Files, join
from churnlens.serving.spark_sql import small_rows
from churnlens.serving.stats import chunk_stats, merge_stats
from churnlens.settings import FeatureSettings
from churnlens.training.bundle import ChurnModel

STATS = "_stats"
TASK_SCHEMA = pa.schema([*RECORD_SCHEMA, pa.field("chunk", pa.int32()),
                         pa.field(STATS, pa.string())])


def chunk_folder(chunk: Chunk) -> str:
    return f"chunk-{chunk.index:05d}"


def chunk_tables(batches: list[pa.RecordBatch], layout) -> tuple[int, dict[str, pa.Table]]:
    """The chunk and its tables, by view name, from the wide rows of `wave_frame` (LAYOUT:
    its layout); timestamps tz-naive UTC, as DuckDB's feature SQL compares them. Raises
    BatchError when the rows are not of one chunk (the frame's partitioning changed)."""
    wide = pa.Table.from_batches(batches)
    chunks = pc.unique(wide.column("chunk")).to_pylist()
    if len(chunks) != 1:
        raise BatchError(f"a scoring task met the rows of chunks {sorted(chunks)}, not one; "
                         "this is a bug in churnlens (report it)")
    names, tables = wide.column("_name"), {}
    for i, (view, columns) in enumerate(layout):
        rows = wide.filter(pc.equal(names, i)).select(["customer_id", *(c for c, _ in columns)])
        rows = rows.rename_columns(["customer_id", *(name for _, name in columns)])
        tables[view] = _naive(rows)
    return chunks[0], tables


@dataclass(frozen=True)
class ChunkQuery:
    """What a task needs to compute its chunk's features: the feature settings and the event
    types that number the daily rollup's type bits (the spine's customers',
    `churnlens.serving.spark_stage.stage_sources`)."""

    fs: FeatureSettings
    event_types: tuple[str, ...]

    def features(self, tables: dict[str, pa.Table], features) -> pd.DataFrame:
        """The feature rows of one chunk from TABLES (its staged rows by view name), in a
        DuckDB of one thread: the local engine's `compute_features` itself, the chunk's
        recent events rolled up per day there, recency read from the staged summary."""
        import duckdb

        from churnlens.serving.spark_stage import CHUNK_SPINE, CHUNK_SUMMARY, CHUNK_VIEWS

        con = duckdb.connect(config={"threads": 1})
        try:
            for view, table in tables.items():
                con.register(view, table)
            con.register("chunk_event_types", pa.table(
                {"event": pa.array(self.event_types, pa.string())}))
            return compute_features(con, con.table(CHUNK_SPINE), self.fs, {},
                                    sources=CHUNK_VIEWS, features=features,
                                    event_types=con.table("chunk_event_types"),
                                    summary=CHUNK_SUMMARY)
        finally:
            con.close()


def _with_stats(records: pa.Table | None, chunk: int, stats: str | None) -> pa.RecordBatch:
    if records is None:  # the chunk's one statistics row
        return pa.RecordBatch.from_arrays(
            [pa.nulls(1, f.type) for f in RECORD_SCHEMA]
            + [pa.array([chunk], pa.int32()), pa.array([stats], pa.string())],
            schema=TASK_SCHEMA)
    table = records.cast(RECORD_SCHEMA).append_column(
        TASK_SCHEMA.field("chunk"), pa.array(np.full(records.num_rows, chunk, np.int32))
    ).append_column(TASK_SCHEMA.field(STATS), pa.nulls(records.num_rows, pa.string()))
    return table.combine_chunks().to_batches()[0]


@dataclass(frozen=True)
class StagedFiles:
    """Where a task reads its chunk's staged rows itself: STAGING (a folder on a file system
    every executor mounts at the same path) and the Arrow schema of each view's staged name
    (`churnlens.serving.spark_stage.STAGED_VIEWS`)."""

    staging: str
    schemas: dict  # view -> (staged name, pa.Schema without the chunk column)

    def tables(self, chunk: int) -> dict[str, pa.Table]:
        """CHUNK's staged rows of each view; timestamps tz-naive UTC (as `chunk_tables`)."""
        import pyarrow.parquet as pq

        out = {}
        for view, (name, schema) in self.schemas.items():
            folder = Path(self.staging.removeprefix("file:"), name, f"chunk={chunk}")
            files = sorted(str(f) for f in folder.glob("*.parquet")) if folder.is_dir() else []
            table = pq.read_table(files) if files else schema.empty_table()
            # As Spark's Arrow would give them: Spark may write timestamps as INT96.
            out[view] = _naive(pa.Table.from_arrays(
                [c if pa.types.is_timestamp(f.type) else c.cast(f.type)
                 for f, c in zip(schema, table.select(schema.names).columns, strict=True)],
                names=schema.names))
        return out


def _naive(table: pa.Table) -> pa.Table:
    """TABLE with every timestamp as tz-naive UTC microseconds."""
    for j, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and (field.type.tz is not None
                                                  or field.type.unit != "us"):
            table = table.set_column(j, field.name, table.column(j).cast(pa.timestamp("us")))
    return table


def score_task(model_bytes, model: ChurnModel, layout, query: ChunkQuery):
    """The function mapInArrow runs: a chunk's rows in (LAYOUT: `wave_frame`'s layout of
    its wide rows, or `StagedFiles` when the input holds only the chunk's number), its
    record batches and one statistics row out (see the module docstring)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        if isinstance(layout, StagedFiles):
            work = [(c, None) for b in batches for c in b.column("chunk").to_pylist()]
        else:
            work = [chunk_tables(batches, layout)]
        del batches
        m: ChurnModel = pickle.loads(model_bytes.value)  # once per task
        for chunk, tables in work:
            frame = query.features(tables or layout.tables(chunk), m.features)
            del tables
            if len(frame):
                records = score_table(m, frame, num_threads=1)
                stats = chunk_stats(frame, records, m.reference, m.ltv.horizon_days)
                yield _with_stats(records, chunk, None)
                yield _with_stats(None, chunk, json.dumps(stats))

    return run


def score_wave(rows, layout, query: ChunkQuery, chunks: list[Chunk], model_bytes, model: ChurnModel,
               work: str, files: Files) -> dict[int, dict]:
    """Score ROWS (`wave_frame` of CHUNKS) and commit each chunk into WORK/chunk-NNNNN
    (`commit_chunk`); return each chunk's stats.

    Raises BatchError when a chunk's written records are not the manifest's chunk.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    writing = join(work, "_writing", f"wave-{chunks[0].index:05d}")
    files.delete(writing)
    scored = rows.mapInArrow(score_task(model_bytes, model, layout, query),
                             from_arrow_schema(TASK_SCHEMA))
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # One job computes the wave and writes every chunk's records (a folder chunk=N
        # each); the statistics are then read from the persisted rows.
        scored.where(F.col(STATS).isNull()).drop(STATS) \
            .sortWithinPartitions("chunk", "customer_id").write.partitionBy("chunk") \
            .parquet(writing)
        found = {r["chunk"]: r for r in small_rows(scored.groupBy("chunk").agg(
            F.count("customer_id").alias("count"),
            # xxhash64 of the statistics rows' null id is its seed, not null: left out.
            F.sum(F.when(F.col("customer_id").isNotNull(), F.xxhash64("customer_id"))
                  .cast("decimal(38,0)")).alias("digest"),
            F.collect_list(STATS).alias("stats")), "the chunks' statistics", limit=len(chunks))}
    finally:
        scored.unpersist()
    done = {c.index: commit_chunk(found.get(c.index), c, writing, work, files) for c in chunks}
    files.delete(writing)
    return done


def commit_chunk(found: dict | None, chunk: Chunk, writing: str, work: str,
                 files: Files) -> dict:
    """Check CHUNK's records, written to WRITING/chunk=N, against the manifest's chunk
    (FOUND: their count, digest and statistics rows; None when the tasks gave none), put
    ``_SUCCESS`` and the statistics beside them and rename the folder to
    WORK/chunk-NNNNN; return its stats."""
    count, digest = (0, "None") if found is None else (found["count"], str(found["digest"]))
    if (count, digest) != (chunk.count, chunk.digest):
        raise BatchError(f"chunk {chunk.index}'s records hold {count:,} customers "
                         f"(id digest {digest}), where the manifest's chunk has "
                         f"{chunk.count:,} ({chunk.digest}); the spine and the features "
                         "disagree")
    folder = join(writing, f"chunk={chunk.index}")
    stats = merge_stats([json.loads(s) for s in found["stats"]])
    files.write_json(join(folder, "_stats.json"), {"chunk": chunk.__dict__, "stats": stats})
    files.touch(join(folder, "_SUCCESS"))
    files.rename(folder, join(work, chunk_folder(chunk)))
    return stats
