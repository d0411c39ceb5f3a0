"""The local engine of the batch job: features from DuckDB, scored in this process."""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow as pa

from churnlens.features.build import build_events_daily, compute_features
from churnlens.features.catalog import event_types_of
from churnlens.features.loading import DataSet
from churnlens.features.relations import LOADED, drop, from_item, materialise
from churnlens.serving.chunks import Chunk
from churnlens.serving.records import score_table
from churnlens.settings import Settings
from churnlens.training.bundle import ChurnModel

DUCKDB_MEMORY_LIMIT = "1GB"  # DuckDB's limit while scoring chunks (loading uses its own)


def in_chunk(chunk: Chunk) -> str:
    """DuckDB condition on customer_id that holds exactly for the chunk's customers."""
    def literal(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    return f"customer_id BETWEEN {literal(chunk.first)} AND {literal(chunk.last)}"


class LocalEngine:
    """Features from DuckDB (the loaded DataSet), scored in this process.

    Each chunk's features read the spine and every contract table through queries
    restricted to the chunk's customers, so every query reads one chunk only. Features depend
    only on a customer's own rows, so the restriction is exact. The daily event rollup is
    built per chunk too (never for the whole base), which is exact while there are at most
    64 event types: each type then has its own bit whatever the numbering, so breadth counts
    do not change. Beyond 64 types the bits are shared as numbered over the whole base, so
    the rollup is built once for the whole base instead.
    """

    name = "local"

    def __init__(self, ds: DataSet, settings: Settings, model: ChurnModel,
                 spine: duckdb.DuckDBPyRelation, memory_limit: str | None = DUCKDB_MEMORY_LIMIT):
        self.ds, self.settings, self.model, self.spine = ds, settings, model, spine
        con = ds.con
        if memory_limit:
            # From here DuckDB needs memory for one chunk only: under a lower limit it moves
            # the loaded tables to its temp folder instead of holding all of them, so peak
            # memory does not grow with the base.
            con.execute(f"SET memory_limit = '{memory_limit}'")
        # The base's event types, found once: each chunk's rollup numbers its bits from them
        # instead of finding them in the chunk's events (a third of the rollup's time).
        self.event_types = materialise(con, f"SELECT DISTINCT event FROM {LOADED.events}",
                                       "event_types")
        types = con.sql(f"SELECT count(*) FROM {from_item(self.event_types)} AS t").fetchall()[0][0]
        self.base_daily = (None if types <= 64 else build_events_daily(
            con, settings.features, LOADED, event_types_of(model.features),
            types=self.event_types))

    def features(self, chunk: Chunk) -> pd.DataFrame:
        """Feature rows of the chunk's customers, exactly as `build_snapshot` gives them."""
        where = in_chunk(chunk)
        daily = None if self.base_daily is None else self.base_daily.filter(where)
        return compute_features(self.ds.con, self.spine.filter(where), self.settings.features,
                                self.ds.attributes, sources=LOADED.where(where), daily=daily,
                                features=self.model.features, event_types=self.event_types)

    def records(self, features: pd.DataFrame) -> pa.Table:
        """Score records of FEATURES; touches no DuckDB state, so it runs beside `features`."""
        return score_table(self.model, features)

    def close(self) -> None:
        """Drop the whole-base rollup, if any, and the event types; the DataSet itself
        belongs to the caller."""
        drop(self.ds.con, self.base_daily, self.event_types)
