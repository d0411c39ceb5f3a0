"""Hand-built data sources for the loading tests: a few rows per table, in every format."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd

from churnlens.features.contract import ACTIVITY_TABLES

FORMATS = ("dict", "csv", "parquet", "duckdb")


def tables() -> dict[str, pd.DataFrame]:
    """A small valid source with every contract table and every optional column."""
    return {
        "customers": pd.DataFrame({
            "customer_id": ["c1", "c2", "c3"],
            "signed_up_at": ["2024-01-01", "2024-01-10", "2024-02-01"],
        }),
        "subscriptions": pd.DataFrame({
            "customer_id": ["c1", "c2"],
            "started_at": ["2024-01-01", "2024-01-10"],
            "mrr": [100.0, 50.0],
            "ended_at": [None, "2024-01-25"],
            "plan": ["pro", "basic"],
            "seats": [5.0, 1.0],
            "billing_interval": ["month", "year"],
        }),
        "events": pd.DataFrame({
            "customer_id": ["c1", "c1", "c3"],
            "occurred_at": ["2024-01-05 10:00:00", "2024-01-06", "2024-02-02"],
            "event": ["login", "report_created", "login"],
            "quantity": [1.0, 2.0, 1.0],
        }),
        "payments": pd.DataFrame({
            "customer_id": ["c1", "c2"],
            "occurred_at": ["2024-01-01", "2024-01-10"],
            "amount": [100.0, 50.0],
            "status": ["paid", "failed"],
        }),
        "tickets": pd.DataFrame({
            "customer_id": ["c1"],
            "opened_at": ["2024-01-03"],
            "closed_at": ["2024-01-04"],
            "priority": ["high"],
            "csat": [4.0],
        }),
        "surveys": pd.DataFrame({
            "customer_id": ["c2"],
            "answered_at": ["2024-01-20"],
            "nps": [7.0],
            "score": [3.0],
        }),
    }


def around(table: str) -> dict[str, pd.DataFrame]:
    """Customers, TABLE and one activity table: the least a valid source needs (keeps tests fast)."""
    keep = {"customers", table, table if table in ACTIVITY_TABLES else "events"}
    return {name: frame for name, frame in tables().items() if name in keep}


def make_source(frames: dict[str, pd.DataFrame], fmt: str, tmp_path: Path):
    """The same tables as a dict, a CSV folder, a parquet folder or a .duckdb file."""
    if fmt == "dict":
        return frames
    if fmt == "duckdb":
        path = tmp_path / "source.duckdb"
        con = duckdb.connect(str(path))
        for name, frame in frames.items():
            con.register("frame", frame)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame')
            con.unregister("frame")
        con.close()
        return path
    folder = tmp_path / fmt
    folder.mkdir()
    for name, frame in frames.items():
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def located(table: str, column: str, count: int, what: str, *ids: str) -> str:
    """A regex for an error that names table, column, row count, and example customer ids."""
    return (
        rf"^table {table}, column {column}: {count:,} rows?(\(s\))? {what}"
        + "".join(f"(?=.*{re.escape(repr(i))})" for i in ids)
    )


def rows(ds, sql: str) -> list[tuple]:
    return ds.con.execute(sql).fetchall()


def column_types(ds, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in rows(ds, f"DESCRIBE {table}")}

