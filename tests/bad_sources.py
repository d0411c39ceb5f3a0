"""Bad data sources for tests/test_bad_input.py, each written from one small sample.

A change takes the sample's tables (a copy) and returns them changed; a maker writes a
source under a folder and returns its path (a folder, or a .duckdb file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd

Tables = dict[str, pd.DataFrame]


def copy(tables: Tables) -> Tables:
    return {name: frame.copy() for name, frame in tables.items()}


def write(tables: Tables, folder: Path, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True)
    for name, frame in tables.items():
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def as_text(frame: pd.DataFrame, column: str, row: int, value: str) -> pd.DataFrame:
    """FRAME with COLUMN as text and VALUE in ROW (for values a typed column cannot hold)."""
    frame = frame.copy()
    frame[column] = frame[column].astype(str)
    frame.loc[frame.index[row], column] = value
    return frame


# --- the inputs: each writes a source under FOLDER from the sample and returns its path ---


def future_records(t: Tables) -> Tables:
    """Three events dated 2099, a signup in 2031, a scheduled payment per customer in 2027."""
    ids = t["customers"]["customer_id"]
    t["events"] = pd.concat([t["events"], pd.DataFrame({
        "customer_id": ids[:3], "occurred_at": pd.Timestamp("2099-01-01"), "event": "login",
        "quantity": 1.0})], ignore_index=True)
    t["customers"] = pd.concat([t["customers"], pd.DataFrame({
        "customer_id": ["C999999"], "signed_up_at": [pd.Timestamp("2031-01-01")]})],
        ignore_index=True)
    t["payments"] = pd.concat([t["payments"], pd.DataFrame({
        "customer_id": ids, "occurred_at": pd.Timestamp("2027-03-01"), "amount": 10.0,
        "status": "paid"})], ignore_index=True)
    return t


def thin_tail(t: Tables) -> Tables:
    ids = t["customers"]["customer_id"]
    t["events"] = pd.concat([t["events"], pd.DataFrame({
        "customer_id": ids[:3], "occurred_at": pd.Timestamp("2026-11-06"), "event": "login",
        "quantity": 1.0})], ignore_index=True)
    return t


def stale_tickets(t: Tables) -> Tables:
    t["tickets"] = t["tickets"][t["tickets"]["opened_at"] < "2026-06-01"]
    return t


def overlapping(t: Tables) -> Tables:
    subs = t["subscriptions"]
    first = subs.sort_values("started_at").groupby("customer_id").head(1).head(4)
    # An add-on for a day, inside each customer's first subscription only.
    extra = first.assign(started_at=first["started_at"] + pd.Timedelta(days=1),
                         ended_at=first["started_at"] + pd.Timedelta(days=2), mrr=5.0)
    t["subscriptions"] = pd.concat([subs, extra], ignore_index=True)
    return t


def duplicate_payments(t: Tables) -> Tables:
    t["payments"] = pd.concat([t["payments"], t["payments"].head(5)], ignore_index=True)
    return t


def late_signups(t: Tables) -> Tables:
    customers = t["customers"]
    customers.loc[customers.index[:7], "signed_up_at"] += pd.Timedelta(days=400)
    return t


def one_text_employee_count(t: Tables) -> Tables:
    employees = [str(10 + i) for i in range(len(t["customers"]))]
    employees[3] = "1,200"
    t["customers"] = t["customers"].assign(employees=employees)
    return t


def renamed_column(t: Tables) -> Tables:
    t["subscriptions"] = t["subscriptions"].rename(columns={"ended_at": "Ended_At"})
    return t


def spaced_column(t: Tables) -> Tables:
    t["payments"] = t["payments"].rename(columns={"amount": " amount "})
    return t


def two_near_misses(t: Tables) -> Tables:
    t["subscriptions"] = t["subscriptions"].rename(columns={"mrr": "MRR"}).assign(
        **{" mrr": 1.0})
    return t


def tables_in(change: Callable[[Tables], Tables] | None = None, fmt: str = "parquet"):
    """A source maker: the sample, changed by CHANGE, written as FMT."""
    def make(tables: Tables, folder: Path) -> Path:
        return write(change(copy(tables)) if change else copy(tables), folder, fmt)
    return make


def with_files(**files: bytes | Path) -> Callable[[Tables, Path], Path]:
    """The sample as parquet, with FILES (name -> bytes) written over or beside its files."""
    def make(tables: Tables, folder: Path) -> Path:
        write(copy(tables), folder)
        for name, content in files.items():
            target = folder / name.replace("__", ".")
            (folder / f"{name.split('__')[0]}.parquet").unlink(missing_ok=True)
            target.write_bytes(content)
        return folder
    return make


def truncated_events(tables: Tables, folder: Path) -> Path:
    write(copy(tables), folder)
    path = folder / "events.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return folder


def renamed_files(tables: Tables, folder: Path) -> Path:
    write(copy(tables), folder)
    (folder / "tickets.parquet").rename(folder / "Tickets.parquet")
    (folder / "notes.txt").write_text("exported by hand\n")
    (folder / "old").mkdir()
    return folder


def database(upper: bool = False, name: str = "source.duckdb"):
    def make(tables: Tables, folder: Path) -> Path:
        folder.mkdir(parents=True)
        path = folder / name
        con = duckdb.connect(str(path))
        for table, frame in tables.items():
            con.register("frame", frame)
            con.execute(f'CREATE TABLE "{table.upper() if upper else table}" AS '
                        "SELECT * FROM frame")
            con.unregister("frame")
        con.close()
        return path
    return make


def raw_file(name: str, content: bytes):
    def make(tables: Tables, folder: Path) -> Path:
        folder.mkdir(parents=True)
        (folder / name).write_bytes(content)
        return folder / name
    return make


def quoted_path(tables: Tables, folder: Path) -> Path:
    return write(copy(tables), folder / "it's \"data\"; DROP TABLE customers; --")


def attribute_named(name: str):
    def change(t: Tables) -> Tables:
        t["customers"] = t["customers"].assign(**{name: "x"})
        return t
    return change


def empty_customers(t: Tables) -> Tables:
    t["customers"] = t["customers"].head(0)
    return t


def spaced_id(t: Tables) -> Tables:
    customers = t["customers"]
    customers.loc[customers.index[0], "customer_id"] += " "
    return t


def future_placeholder(t: Tables) -> Tables:
    t["events"] = as_text(t["events"], "occurred_at", 5, "9999-12-31")
    return t


def ancient_signup(t: Tables) -> Tables:
    t["customers"] = as_text(t["customers"], "signed_up_at", 2, "1900-01-01")
    return t


def text_number(table: str, column: str, value: str):
    def change(t: Tables) -> Tables:
        t[table] = as_text(t[table], column, 1, value)
        return t
    return change


LATIN1 = "customer_id,signed_up_at\nJosé,2024-01-01\n".encode("latin-1")
