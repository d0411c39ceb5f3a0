"""Load a data source into DuckDB and validate it against the contract.

A source is a folder of ``NAME.parquet`` / ``NAME.csv`` files, a DuckDB database file, or
(for tests and notebooks) a dict of pandas frames. `load_source` returns a `DataSet`: a
DuckDB connection holding one clean, typed table per contract table, plus a `LoadReport`.
Every problem raises `DataError` naming the table, the column, how many rows and a few
example customer ids; rows set aside (dated after the load time or the end of the data,
exact duplicate payments) are counted, and suspicious records are reported with what was
done (`churnlens.features.suspicious`). Where the data end: `churnlens.features.extent`.
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
from churnlens.features.report import LoadReport
from churnlens.features.shapes import recognise_shape
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


def _check_columns(con, spec: TableSpec, report: LoadReport) -> dict[str, str]:
    """The raw columns of SPEC's table and their DuckDB types; DataError when one is missing."""
    # Not DESCRIBE: on a view it shows a column's source spelling, not a case-only rename.
    cols = {name: str(kind) for name, kind, *_ in con.execute(
        f"SELECT * FROM raw_{spec.name} LIMIT 0").description}
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


def _empty_table(con, spec: TableSpec) -> None:
    cols = ", ".join(f"{quote_ident(c.name)} {SQL_TYPES[c.kind]}" for c in spec.columns)
    con.execute(f"CREATE TABLE {spec.name} ({cols})")


def _load_table(con, spec: TableSpec, report: LoadReport) -> dict[str, str]:
    """Check raw_NAME and create the typed table NAME; returns its static attributes."""
    cols = _check_columns(con, spec, report)
    check_types(con, spec, cols)
    attrs = attribute_kinds(con, spec, cols, report) if spec.keep_extra else {}
    # The largest table stays a view over the source, so it is streamed, not held.
    kind, target = ("VIEW", "events_all") if spec.name == "events" else ("TABLE", spec.name)
    con.execute(f"CREATE {kind} {target} AS SELECT {_clean_select(spec, cols, attrs)} "
                f"FROM raw_{spec.name}")
    if spec.name == "events":
        con.execute("CREATE VIEW events AS SELECT * FROM events_all")
    report.rows_read[spec.name] = con.execute(
        f"SELECT count(*) FROM {spec.name}").fetchall()[0][0]
    return attrs


def _load_tables(con, found: dict[str, str], report: LoadReport) -> dict[str, str]:
    """Every contract table typed on CON (empty when absent); returns the attributes."""
    attributes: dict[str, str] = {}
    for name, spec in TABLES.items():
        if name not in found:
            _empty_table(con, spec)
            report.missing_tables.append(name)
            continue
        try:
            attributes.update(_load_table(con, spec, report))
        except duckdb.Error as exc:  # a file that opened but whose data do not read
            raise unreadable(found[name], exc) from None
    if not report.rows_read["customers"]:
        raise DataError(f"table customers ({found['customers']}) has no rows: churnlens needs "
                        "one row per customer; export the customers again")
    return attributes


def _missing_tables_message(found: dict[str, str], source) -> str | None:
    kind = ("frames" if isinstance(source, dict) else "database tables"
            if Path(source).is_file() else "files")
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
                value_event: str | None = None, now: pd.Timestamp | None = None) -> DataSet:
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
    con = connect()
    report = LoadReport(source=str(source) if not isinstance(source, dict) else "in-memory frames")
    found = register_raw(con, source, report)
    problem = _missing_tables_message(found, source)
    if problem:
        raise DataError(problem)
    attributes = _load_tables(con, found, report)
    check_keys(con)
    check_values(con)
    suspicious.repair_signups(con, report)
    now = extent.load_time() if now is None else now
    latest = extent.profile(con, [t for t in TABLES if t in found])
    extent.set_aside_future(con, report, latest, now)
    if observed_until is not None:
        until = extent.parse_until(observed_until)
        report.end_reason = "data.observed_until"
    else:
        until, report.end_reason = extent.inferred_end(con, now)
    report.observed_until = str(until.date())
    extent.set_aside_after(con, report, latest, until, given=observed_until is not None)
    if "payments" in found:
        suspicious.drop_duplicate_payments(con, report)
    for name in found:
        report.rows_kept[name] = report.rows_read[name] - sum(
            report.set_aside.get(name, {}).values())
    _known_by_the_end(con, report, until)
    suspicious.report_overlaps(con, report)
    suspicious.check_value_event(con, report, value_event)
    report.last_dates = extent.last_dates(con, report, latest)
    shape = recognise_shape(con, until, horizon_days=horizon_days, activity=activity)
    report.shape = shape.lines()
    return DataSet(con=con, observed_until=until, attributes=attributes, report=report,
                   shape=shape.name, churn_observable_from=shape.churn_observable_from)


def _known_by_the_end(con, report: LoadReport, until: pd.Timestamp) -> None:
    """An end or close that lies after the observed data was not yet known: treat it as open."""
    late_ends = con.execute("UPDATE subscriptions SET ended_at = NULL WHERE ended_at >= ?",
                            [until]).fetchall()[0][0]
    if late_ends:
        report.notes.append(
            f"subscriptions: {late_ends:,} end(s) at or after observed_until {until.date()} "
            "treated as not yet known (open); if the data were exported later, set "
            "data.observed_until to the export date")
    con.execute("UPDATE tickets SET closed_at = NULL, csat = NULL WHERE closed_at >= ?", [until])


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
