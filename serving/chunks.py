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
    """Computes and scores one chunk at a time; `close` releases what it holds."""

    name: str

    def score(self, chunk: Chunk) -> tuple[pa.Table, pd.DataFrame]:
        """The chunk's score records (RECORD_SCHEMA) and the feature rows they came from
        (customer_id, the model's features and mrr), in customer_id order."""
        ...

    def close(self) -> None:
        ...
