"""Scoring one chunk on the executors, and committing it as a folder of the output.

A chunk's feature rows are scored in ``mapInArrow`` (the Arrow form of ``mapInPandas``) by
the scoring core's column path, `churnlens.serving.records.score_table`, with the model
broadcast once and unpickled once per task, one LightGBM thread per task. The records leave
the task as the Arrow batches score_table builds: through ``mapInPandas`` they would be
turned back into a dict per record and per driver on the way out. Each task also computes
`churnlens.serving.stats.chunk_stats` of its batches and sends them, merged, as one extra row
(``_stats``, JSON): the driver reads those rows only (one per task), never the records.

The records are written by the executors under ``_writing/`` of the output's temporary
folder; the driver checks the written rows' count and id digest against the manifest's chunk,
puts the chunk's statistics beside them (``_stats.json``) and renames the folder to
``chunk-NNNNN``: a chunk folder exists only complete.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator

import pyarrow as pa

from churnlens.serving.chunks import BatchError, Chunk
from churnlens.serving.records import RECORD_SCHEMA, score_table
from churnlens.serving.spark_files import Files, join
from churnlens.serving.spark_sql import small_rows
from churnlens.serving.stats import chunk_stats, merge_stats
from churnlens.training.bundle import ChurnModel

STATS = "_stats"
TASK_SCHEMA = pa.schema([*RECORD_SCHEMA, pa.field(STATS, pa.string())])


def chunk_folder(chunk: Chunk) -> str:
    return f"chunk-{chunk.index:05d}"


def _frame(batch: pa.RecordBatch, numeric: list[str]):
    """A batch of feature rows as pandas, typed as `compute_features` types them: ids as
    str, numeric features as float64, timestamps tz-naive UTC."""
    table = pa.Table.from_batches([batch])
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            table = table.set_column(i, field.name, table.column(i).cast(pa.timestamp("us")))
        elif field.name in numeric and not pa.types.is_floating(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.float64()))
    frame = table.to_pandas()
    frame["customer_id"] = frame["customer_id"].astype(str)
    for name in numeric:
        frame[name] = frame[name].astype("float64")
    return frame


def _with_stats(records: pa.Table | None, stats: str | None) -> pa.RecordBatch:
    if records is None:  # the task's one statistics row
        return pa.RecordBatch.from_arrays(
            [pa.nulls(1, f.type) for f in RECORD_SCHEMA] + [pa.array([stats], pa.string())],
            schema=TASK_SCHEMA)
    table = records.cast(RECORD_SCHEMA).append_column(
        TASK_SCHEMA.field(STATS), pa.nulls(records.num_rows, pa.string()))
    return table.combine_chunks().to_batches()[0]


def score_task(model_bytes, model: ChurnModel):
    """The function mapInArrow runs: feature batches in, record batches and one statistics
    row out (see the module docstring)."""
    numeric = [f.name for f in model.features if f.kind == "numeric"]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        m: ChurnModel = pickle.loads(model_bytes.value)  # once per task, not per batch
        stats = []
        for batch in batches:
            if batch.num_rows == 0:
                continue
            frame = _frame(batch, numeric)
            records = score_table(m, frame, num_threads=1)
            stats.append(chunk_stats(frame, records, m.reference, m.ltv.horizon_days))
            yield _with_stats(records, None)
        if stats:
            yield _with_stats(None, json.dumps(merge_stats(stats)))

    return run


def score_chunk(features, chunk: Chunk, model_bytes, model: ChurnModel, work: str,
                files: Files, tasks: int) -> dict:
    """Score FEATURES (the chunk's feature rows) into WORK/chunk-NNNNN; return its stats.

    Raises BatchError when the written records are not the manifest's chunk.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    writing, done = join(work, "_writing", chunk_folder(chunk)), join(work, chunk_folder(chunk))
    files.delete(writing)
    scored = features.repartition(tasks).mapInArrow(score_task(model_bytes, model),
                                                    from_arrow_schema(TASK_SCHEMA))
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        records = scored.where(F.col(STATS).isNull()).drop(STATS)
        records.sortWithinPartitions("customer_id").write.parquet(writing)
        found = small_rows(scored.agg(
            F.count("customer_id").alias("count"),
            # xxhash64 of the statistics rows' null id is its seed, not null: left out.
            F.sum(F.when(F.col("customer_id").isNotNull(), F.xxhash64("customer_id"))
                  .cast("decimal(38,0)")).alias("digest"),
            F.collect_list(STATS).alias("stats")), f"chunk {chunk.index}'s statistics")[0]
    finally:
        scored.unpersist()
    if (found["count"], str(found["digest"])) != (chunk.count, chunk.digest):
        raise BatchError(f"chunk {chunk.index}'s records hold {found['count']:,} customers "
                         f"(id digest {found['digest']}), where the manifest's chunk has "
                         f"{chunk.count:,} ({chunk.digest}); the spine and the features "
                         "disagree")
    stats = merge_stats([json.loads(s) for s in found["stats"]])
    files.write_json(join(writing, "_stats.json"), {"chunk": chunk.__dict__, "stats": stats})
    files.rename(writing, done)
    return stats
