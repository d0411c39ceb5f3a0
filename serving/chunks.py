"""What the batch job and its engines share: the job's error, chunks, and the engine's shape.

`churnlens.serving.batch` plans chunks and runs an engine over them; each engine
(`churnlens.serving.local`, `churnlens.serving.spark`) scores one chunk at a time. Both
sides import this module and neither imports the other's callers, so there is no circle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import pandas as pd
import pyarrow as pa


class BatchError(ValueError):
    """The batch job cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Chunk:
    """Customers [first, last] (sorted ids) scored together and written as one part."""

    index: int
    first: str
    last: str
    count: int
    digest: str  # sha256 of the chunk's ids, one per line: same ids <=> same digest

    @property
    def part(self) -> str:
        return f"part-{self.index:05d}"


def plan_chunks(ids: pa.Array, chunk_size: int) -> list[Chunk]:
    """Consecutive chunks of CHUNK_SIZE over sorted customer ids (deterministic)."""
    chunks = []
    for i, start in enumerate(range(0, len(ids), chunk_size)):
        part = ids[start:start + chunk_size].to_pylist()
        digest = hashlib.sha256("\n".join(part).encode()).hexdigest()
        chunks.append(Chunk(i, part[0], part[-1], len(part), digest))
    return chunks


class Engine(Protocol):
    """Computes one chunk's features, then scores them; `close` releases what it holds.

    The job calls `features` from its own thread and `records` from a worker thread, so a
    chunk is scored while the next one's features are computed: `records` must not touch
    what `features` uses (the local engine's DuckDB connection)."""

    name: str

    def features(self, chunk: Chunk) -> pd.DataFrame:
        """The feature rows of the chunk's customers (customer_id, cutoff, the model's
        features and mrr), in customer_id order."""
        ...

    def records(self, features: pd.DataFrame) -> pa.Table:
        """The score records (RECORD_SCHEMA) of FEATURES' rows, in the same order."""
        ...

    def close(self) -> None:
        ...
