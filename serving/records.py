"""The score record's parquet layout: one row per record, built from score columns.

`RECORD_SCHEMA` is the endpoint's score record (serving.core) as Arrow types; the one
difference is a driver's value, split by type because a parquet column has one type:
``value`` holds numbers, ``category`` holds category levels. `score_table` scores feature
rows straight into that layout; `records_table` and `table_records` convert records to rows
and back.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa

from churnlens.serving.core import SURVIVAL_DAYS, Scored, score_columns
from churnlens.training.bundle import ChurnModel
from churnlens.training.drivers import DIRECTION

SCORE_ROWS = 10_000  # rows scored at once: bounds the drivers held as Python objects

_DRIVER = pa.struct([
    ("name", pa.string()), ("feature", pa.string()),
    ("value", pa.float64()), ("category", pa.string()),
    ("contribution", pa.float64()), ("direction", pa.string()),
    ("text", pa.string()), ("playbook", pa.string()),
])
RECORD_SCHEMA = pa.schema([
    ("customer_id", pa.string()),
    ("as_of", pa.date32()),
    ("model", pa.struct([("name", pa.string()), ("version", pa.string()),
                         ("run_id", pa.string())])),
    ("churn_probability", pa.float64()),
    ("horizon_days", pa.int32()),
    ("risk_tier", pa.string()),
    ("lifecycle_stage", pa.string()),
    ("survival", pa.struct([(d, pa.float64()) for d in SURVIVAL_DAYS])),
    ("expected_remaining_days", pa.float64()),
    ("expected_ltv", pa.float64()),
    ("currency", pa.string()),
    ("drivers", pa.list_(_DRIVER)),
])


def record_row(record: dict) -> dict:
    """A score record (serving.core) in RECORD_SCHEMA's layout.

    as_of becomes a date, the model version a string, and a driver's value is split by type:
    ``value`` holds numbers, ``category`` holds category levels (parquet needs one type).
    """
    row = dict(record)
    row["as_of"] = date.fromisoformat(record["as_of"])
    row["model"] = {k: None if v is None else str(v) for k, v in record["model"].items()}
    row["drivers"] = [
        {**d, "value": None if isinstance(d["value"], str) else d["value"],
         "category": d["value"] if isinstance(d["value"], str) else None}
        for d in record["drivers"]
    ]
    return row


def records_table(records: list[dict]) -> pa.Table:
    """Score records as an Arrow table with RECORD_SCHEMA."""
    return pa.Table.from_pylist([record_row(r) for r in records], schema=RECORD_SCHEMA)


def score_table(model: ChurnModel, frame: pd.DataFrame,
                num_threads: int | None = None) -> pa.Table:
    """FRAME's score records as an Arrow table with RECORD_SCHEMA, equal to
    ``records_table(score_records(model, frame))`` but built from columns, without a dict
    per record (a third of the scoring time on large chunks). Scored in slices of
    SCORE_ROWS rows, so a chunk never holds all its drivers as Python objects at once;
    num_threads: LightGBM's threads (None: its default; a Spark task uses 1)."""
    tables = [_columns_table(model, score_columns(model, frame.iloc[i:i + SCORE_ROWS],
                                                  num_threads=num_threads))
              for i in range(0, len(frame), SCORE_ROWS)]
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def _columns_table(model: ChurnModel, c: Scored) -> pa.Table:
    n, sc = len(c.customer_id), c.scores
    ref = {k: None if v is None else str(v) for k, v in model.info_ref.items()}
    model_type, surv_type = RECORD_SCHEMA.field("model").type, RECORD_SCHEMA.field("survival").type
    d = c.drivers
    numbers = [None if isinstance(v, str) else v for v in d.value]
    levels = [v if isinstance(v, str) else None for v in d.value]
    flat = pa.StructArray.from_arrays(
        [pa.array(d.name, pa.string()), pa.array(d.feature, pa.string()),
         pa.array(numbers, pa.float64()), pa.array(levels, pa.string()),
         pa.array(d.contribution, pa.float64()),
         pa.array([DIRECTION] * len(d.name), pa.string()),
         pa.array(d.text, pa.string()), pa.array(d.playbook, pa.string())],
        fields=list(_DRIVER))
    days = {s: date.fromisoformat(s) for s in set(c.as_of)}
    columns = {
        "customer_id": pa.array(c.customer_id, pa.string()),
        "as_of": pa.array([days[s] for s in c.as_of], pa.date32()),
        "model": pa.array([ref] * n, model_type),
        "churn_probability": pa.array(sc["churn_probability"], pa.float64()),
        "horizon_days": pa.array(np.full(n, model.horizon_days), pa.int32()),
        "risk_tier": pa.array(sc["risk_tier"].tolist(), pa.string()),
        "lifecycle_stage": pa.array(c.lifecycle_stage, pa.string()),
        "survival": pa.StructArray.from_arrays(
            [pa.array(sc[f"survival_{d}"], pa.float64()) for d in SURVIVAL_DAYS],
            fields=list(surv_type)),
        "expected_remaining_days": pa.array(sc["expected_remaining_days"], pa.float64()),
        "expected_ltv": pa.array(sc["expected_ltv"], pa.float64()),
        "currency": pa.array([model.currency] * n, pa.string()),
        "drivers": pa.ListArray.from_arrays(pa.array(d.offsets, pa.int32()), flat),
    }
    return pa.Table.from_pydict(columns, schema=RECORD_SCHEMA)


def table_records(table: pa.Table) -> list[dict]:
    """Rows of a scores table back as score records (the inverse of `records_table`)."""
    out = []
    for row in table.select(RECORD_SCHEMA.names).to_pylist():
        row["as_of"] = row["as_of"].isoformat()
        for d in row["drivers"]:
            category = d.pop("category")
            if category is not None:
                d["value"] = category
        out.append(row)
    return out


