"""Load a data source into DuckDB and validate it against the contract.

A source is a folder of ``NAME.parquet`` / ``NAME.csv`` files, a DuckDB database file, or
(for tests and notebooks) a dict of pandas frames. `load_source` returns a `DataSet`: a
DuckDB connection holding one clean, typed table per contract table, plus a `LoadReport`.
Every problem raises `DataError` naming the table, the column, how many rows and a few
example customer ids; rows set aside (dated after the load time or the end of the data,
exact duplicate payments) are counted, and suspicious records are reported with what was
done (`churnlens.features.suspicious`). Where the data end: `churnlens.features.extent`.

The rules run on a `churnlens.features.sql_runner.SqlRunner` (`validate`): DuckDB here,
Spark in `churnlens.features.spark_loading`, one SQL text for both.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from churnlens.features import extent, suspicious
from churnlens.features.checks import (
    SQL_TYPES,
    attribute_kinds,
    cast_expr,
    check_keys,
    check_types,
    check_values,
)
from churnlens.features.contract import ACTIVITY_TABLES, TABLES, TableSpec
from churnlens.features.known import sql_string
from churnlens.features.reading import DataError, quote_ident, register_raw, unreadable
from churnlens.features.relations import timestamp_literal
from churnlens.features.report import LoadReport
from churnlens.features.shapes import Shape, recognise_shape
from churnlens.features.sql_runner import DuckRunner, SqlRunner
from churnlens.settings import ChurnSettings, Settings

__all__ = ["DataError", "DataSet", "LoadReport", "connect", "fingerprint", "load_source"]


@dataclass
class DataSet:
    """Clean contract tables in a DuckDB connection, when the data end, and their shape.

    shape: "subscriptions" | "snapshot" | "transactions" (`churnlens.features.shapes`);
    churn_observable_from: the first moment the data can show a churn under the shape's
    own definition (None: never).
    """

    con: duckdb.DuckDBPyConnection
    observed_until: pd.Timestamp
    attributes: dict[str, str]  # static customer attribute -> "str" | "float"
    report: LoadReport
    shape: str = "subscriptions"
    churn_observable_from: pd.Timestamp | None = None

    def first_signup(self) -> pd.Timestamp | None:
        """The earliest signed_up_at of the customers (None: no customer)."""
        first = self.con.execute("SELECT min(signed_up_at) FROM customers").fetchall()[0][0]
        return None if first is None else pd.Timestamp(first)


def connect(memory_limit: str = "2GB") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC, so timestamp casts never shift by a local offset."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Bounded memory: DuckDB spills to disk past this instead of growing with the data.
    con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    con.execute("SET preserve_insertion_order = false")
    # Inside Jupyter without ipywidgets DuckDB refuses this setting; no bar shows there anyway.
    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")
    spill = Path(tempfile.gettempdir()) / "churnlens-duckdb"
    con.execute(f"SET temp_directory = {sql_string(str(spill))}")
    return con


def _check_columns(runner: SqlRunner, spec: TableSpec, report: LoadReport) -> dict[str, str]:
    """The raw columns of SPEC's table and their DuckDB types; DataError when one is missing."""
    cols = runner.columns(f"raw_{spec.name}")
    missing = [c for c in spec.required if c not in cols]
    if missing:
        raise DataError(
            f"table {spec.name}: required column(s) {', '.join(missing)} missing "
            f"(found: {', '.join(cols)}); add or rename them as in the data contract"
        )
    known = {c.name for c in spec.columns}
    report.defaulted_columns[spec.name] = [c.name for c in spec.columns if c.name not in cols]
    if not spec.keep_extra:
        report.ignored_columns[spec.name] = [c for c in cols if c not in known]
    return cols


def _clean_select(spec: TableSpec, cols: dict[str, str], attributes: dict[str, str]) -> str:
    parts = []
    for col in spec.columns:
        if col.name in cols:
            parts.append(f"{cast_expr(col.name, col.kind, cols[col.name])} "
                         f"AS {quote_ident(col.name)}")
        else:
            parts.append(f"CAST({col.default or 'NULL'} AS {SQL_TYPES[col.kind]}) "
                         f"AS {quote_ident(col.name)}")
    for attr, kind in attributes.items():
        value = cast_expr(attr, kind, cols[attr])
        if kind == "float":  # the few values that are not finite numbers are read as empty
            value = f"CASE WHEN isfinite({value}) THEN {value} END"
        parts.append(f"{value} AS {quote_ident(attr)}")
    return ", ".join(parts)


def _empty_table(runner: SqlRunner, spec: TableSpec) -> None:
    cols = ", ".join(f"CAST(NULL AS {SQL_TYPES[c.kind]}) AS {quote_ident(c.name)}"
                     for c in spec.columns)
    runner.define(spec.name, f"SELECT {cols} LIMIT 0")


def _load_table(runner: SqlRunner, spec: TableSpec, report: LoadReport) -> dict[str, str]:
    """Check raw_NAME and define the typed table NAME; returns its static attributes."""
    cols = _check_columns(runner, spec, report)
    report.rows_read[spec.name] = check_types(runner, spec, cols)
    attrs = attribute_kinds(runner, spec, cols, report) if spec.keep_extra else {}
    # The largest table stays a view over the source, so it is streamed, not held.
    runner.define(spec.name, f"SELECT {_clean_select(spec, cols, attrs)} FROM raw_{spec.name}",
                  view=spec.name == "events")
    return attrs


def _load_tables(runner: SqlRunner, found: dict[str, str],
                 report: LoadReport) -> dict[str, str]:
    """Every contract table typed on RUNNER (empty when absent); returns the attributes."""
    attributes: dict[str, str] = {}
    for name, spec in TABLES.items():
        if name not in found:
            _empty_table(runner, spec)
            report.missing_tables.append(name)
            continue
        try:
            attributes.update(_load_table(runner, spec, report))
        except runner.errors as exc:  # a file that opened but whose data do not read
            raise unreadable(found[name], exc, runner.engine) from None
    if not report.rows_read["customers"]:
        raise DataError(f"table customers ({found['customers']}) has no rows: churnlens needs "
                        "one row per customer; export the customers again")
    return attributes


def missing_tables_message(found: dict[str, str], kind: str) -> str | None:
    """Why the contract tables FOUND are not enough (None: they are); KIND: where they were
    looked for: "files", "frames" or "database tables"."""
    where = "customers.parquet or customers.csv" if kind == "files" else "a table customers"
    seen = ", ".join(found) or "none"
    if "customers" not in found:
        return (f"the source has no customers table; it is required ({where}; contract "
                f"tables found: {seen})")
    if not any(t in found for t in ACTIVITY_TABLES):
        return (f"the source needs at least one of {', '.join(ACTIVITY_TABLES)}; found only "
                f"{seen}")
    return None


def load_source(source, observed_until: str | pd.Timestamp | None = None, *,
                horizon_days: int = Settings.model_fields["horizon_days"].default,
                activity: str = ChurnSettings.model_fields["activity"].default,
                value_event: str | None = None, now: pd.Timestamp | None = None,
                memory_limit: str = "2GB") -> DataSet:
    """Load and validate a data source, and recognise its shape.

    Args:
        source: a folder of NAME.parquet / NAME.csv, a .duckdb file, or {name: DataFrame}.
        observed_until: exclusive end of the observed data; records at or after it are set
            aside and counted. None: inferred (`churnlens.features.extent`): the day after
            the last day holding a material share of a typical day's records.
        horizon_days, activity: the settings `horizon_days` and `churn.activity`, which the
            shape and the first observable churn depend on (defaults: the built-in ones).
        value_event: `features.value_event`, reported when it never occurs (None: not checked).
        now: the load time; records dated after it are set aside (None: the clock).
        memory_limit: DuckDB's memory limit (`connect`); past it DuckDB spills to disk.

    Returns:
        A `DataSet` whose connection holds tables customers, subscriptions, events,
        payments, tickets and surveys with the contract's columns and types, and whose
        shape and churn_observable_from the load report names.

    Raises:
        DataError: an unreadable file, a missing table or column, a wrong type, an
        unparseable or out-of-range timestamp, a number that is not finite, an empty
        required value, a duplicate customer, a row for an unknown customer, or a value
        out of its range; the message names table, column, count and example customer ids.
    """
    con = connect(memory_limit)
    report = LoadReport(source=str(source) if not isinstance(source, dict) else "in-memory frames")
    found = register_raw(con, source, report)
    kind = ("frames" if isinstance(source, dict) else "database tables"
            if Path(source).is_file() else "files")
    checked = validate(DuckRunner(con), found, kind, report, observed_until,
                       horizon_days=horizon_days, activity=activity, value_event=value_event,
                       now=now)
    return DataSet(con=con, observed_until=checked.observed_until,
                   attributes=checked.attributes, report=report, shape=checked.shape.name,
                   churn_observable_from=checked.shape.churn_observable_from)


@dataclass(frozen=True)
class Validated:
    """What `validate` found: the end of the data, the static attributes, the shape."""

    observed_until: pd.Timestamp
    attributes: dict[str, str]
    shape: Shape


def validate(runner: SqlRunner, found: dict[str, str], kind: str, report: LoadReport,
             observed_until: str | pd.Timestamp | None = None, *, horizon_days: int,
             activity: str, value_event: str | None = None,
             now: pd.Timestamp | None = None) -> Validated:
    """Type, check and repair the raw tables raw_NAME of FOUND on RUNNER into the contract
    tables NAME, and fill REPORT: the one sequence of rules both engines run.

    FOUND: {table: where it was read}; KIND: what the source holds ("files", "frames",
    "database tables"), for the message on missing tables. The other arguments are
    `load_source`'s. Raises DataError as `load_source` documents.
    """
    problem = missing_tables_message(found, kind)
    if problem:
        raise DataError(problem)
    attributes = _load_tables(runner, found, report)
    check_keys(runner)
    check_values(runner)
    suspicious.repair_signups(runner, report)
    now = extent.load_time() if now is None else now
    latest = extent.profile(runner, [t for t in TABLES if t in found])
    extent.set_aside_future(runner, report, latest, now)
    if observed_until is not None:
        until = extent.parse_until(observed_until)
        report.end_reason = "data.observed_until"
    else:
        until, report.end_reason = extent.inferred_end(runner, now)
    report.observed_until = str(until.date())
    extent.set_aside_after(runner, report, latest, until, given=observed_until is not None)
    if "payments" in found:
        suspicious.drop_duplicate_payments(runner, report)
    for name in found:
        report.rows_kept[name] = report.rows_read[name] - sum(
            report.set_aside.get(name, {}).values())
    _known_by_the_end(runner, report, until)
    suspicious.report_overlaps(runner, report)
    suspicious.check_value_event(runner, report, value_event)
    report.last_dates = extent.last_dates(runner, report, latest)
    shape = recognise_shape(runner, until, horizon_days=horizon_days, activity=activity)
    report.shape = shape.lines()
    return Validated(observed_until=until, attributes=attributes, shape=shape)


def _known_by_the_end(runner: SqlRunner, report: LoadReport, until: pd.Timestamp) -> None:
    """An end or close that lies after the observed data was not yet known: treat it as open."""
    at_or_after = f">= {timestamp_literal(until)}"
    late_ends = runner.update("subscriptions", {"ended_at": "NULL"}, f"ended_at {at_or_after}")
    if late_ends:
        report.notes.append(
            f"subscriptions: {late_ends:,} end(s) at or after observed_until {until.date()} "
            "treated as not yet known (open); if the data were exported later, set "
            "data.observed_until to the export date")
    runner.update("tickets", {"closed_at": "NULL", "csat": "NULL"}, f"closed_at {at_or_after}")


def fingerprint(ds: DataSet) -> dict[str, str]:
    """A content fingerprint per table (row count and an order-free hash of every row).

    Logged with each training run, so two runs can tell whether they saw the same data.
    """
    out = {}
    for name in TABLES:
        count, digest = ds.con.execute(
            f"SELECT count(*), coalesce(bit_xor(hash(t)), 0) FROM {name} t"
        ).fetchall()[0]
        out[name] = f"{count}:{digest:016x}"
    out["observed_until"] = str(ds.observed_until.date())
    return out
