"""Load a data source into DuckDB and validate it against the contract.

A source is a folder of ``NAME.parquet`` / ``NAME.csv`` files, a DuckDB database file, or
(for tests and notebooks) a dict of pandas frames. `load_source` returns a `DataSet`: a
DuckDB connection holding one clean, typed table per contract table, plus a `LoadReport`.
Every problem raises `DataError` naming the table, the column, how many rows and a few
example customer ids; rows set aside (recorded after ``observed_until``) are counted.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from churnlens.features.contract import ACTIVITY_TABLES, TABLES, VALUE_RULES, TableSpec
from churnlens.features.shapes import recognise_shape
from churnlens.settings import ChurnSettings, Settings

_SQL_TYPES = {"str": "VARCHAR", "timestamp": "TIMESTAMP", "float": "DOUBLE"}


class DataError(ValueError):
    """The input data break the contract; the message says where and how to fix it."""


@dataclass
class LoadReport:
    """What was read, kept, set aside and ignored, per table."""

    source: str
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_kept: dict[str, int] = field(default_factory=dict)
    set_aside: dict[str, dict[str, int]] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    defaulted_columns: dict[str, list[str]] = field(default_factory=dict)
    missing_tables: list[str] = field(default_factory=list)
    observed_until: str = ""
    shape: list[str] = field(default_factory=list)  # the shape and from when churn shows
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A human-readable summary, one line per table and per note."""
        out = [f"source {self.source}, observed until {self.observed_until}"]
        out += [f"  {line}" for line in self.shape]
        for table, n in self.rows_read.items():
            out.append(f"  {table}: {n:,} rows read, {self.rows_kept[table]:,} kept")
            for reason, count in self.set_aside.get(table, {}).items():
                out.append(f"    set aside {count:,} rows: {reason}")
            if self.ignored_columns.get(table):
                out.append(f"    ignored extra columns: {', '.join(self.ignored_columns[table])}")
            if self.defaulted_columns.get(table):
                out.append(f"    absent optional columns: {', '.join(self.defaulted_columns[table])}")
        for table in self.missing_tables:
            out.append(f"  {table}: not in the source; its features are empty")
        out += [f"  {note}" for note in self.notes]
        return out


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
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    # Inside Jupyter without ipywidgets DuckDB refuses this setting; no bar shows there anyway.
    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")
    spill = Path(tempfile.gettempdir()) / "churnlens-duckdb"
    con.execute(f"SET temp_directory = '{spill}'")
    return con


def _register_raw(con: duckdb.DuckDBPyConnection, source) -> list[str]:
    """Create views raw_NAME for each table found in the source; return their names."""
    found = []
    if isinstance(source, dict):
        for name, frame in source.items():
            if name in TABLES and frame is not None:
                con.register(f"raw_{name}", frame)
                found.append(name)
        return found
    path = Path(source)
    if path.is_file() and path.suffix in {".duckdb", ".db"}:
        con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
        present = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src'"
        ).fetchall()}
        for name in TABLES:
            if name in present:
                con.execute(f'CREATE VIEW raw_{name} AS SELECT * FROM src."{name}"')
                found.append(name)
        return found
    if not path.is_dir():
        raise DataError(
            f"data source {path} not found: give a folder of NAME.parquet / NAME.csv files "
            "or a .duckdb file (set data.source in params.yaml, or run `churnlens sample-data`)"
        )
    for name in TABLES:
        parquet, csv = path / f"{name}.parquet", path / f"{name}.csv"
        if parquet.exists():
            con.execute(f"CREATE VIEW raw_{name} AS SELECT * FROM read_parquet('{parquet}')")
        elif csv.exists():
            # CSV is parsed once into a table: re-parsing it for every query would be slow.
            con.execute(
                f"CREATE TABLE raw_{name} AS SELECT * FROM read_csv('{csv}', all_varchar = true)"
            )
        else:
            continue
        found.append(name)
    return found


def _examples(con, table: str, condition: str, n: int = 3) -> tuple[int, str]:
    """How many rows of TABLE meet CONDITION, and a few of their customer ids."""
    count = con.execute(f"SELECT count(*) FROM {table} WHERE {condition}").fetchall()[0][0]
    if not count:
        return 0, ""
    ids = con.execute(
        f"SELECT DISTINCT CAST(customer_id AS VARCHAR) FROM {table} "
        f"WHERE ({condition}) AND trim(CAST(customer_id AS VARCHAR)) <> '' ORDER BY 1 LIMIT {n}"
    ).fetchall()
    return count, ", ".join(repr(r[0]) for r in ids)


def _cast_expr(col: str, kind: str) -> str:
    if kind == "timestamp":
        return f"TRY_CAST(TRY_CAST(\"{col}\" AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"TRY_CAST(\"{col}\" AS {_SQL_TYPES[kind]})"


def _check_columns(con, spec: TableSpec, report: LoadReport) -> list[str]:
    cols = [r[0] for r in con.execute(f"DESCRIBE raw_{spec.name}").fetchall()]
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


def _check_types(con, spec: TableSpec, cols: list[str]) -> None:
    for col in spec.columns:
        if col.name not in cols:
            continue
        bad = f'"{col.name}" IS NOT NULL AND {_cast_expr(col.name, col.kind)} IS NULL'
        count, ids = _examples(con, f"raw_{spec.name}", bad)
        if count:
            sample = con.execute(
                f'SELECT DISTINCT CAST("{col.name}" AS VARCHAR) FROM raw_{spec.name} '
                f"WHERE {bad} LIMIT 3"
            ).fetchall()
            what = "timestamp that does not parse" if col.kind == "timestamp" else (
                f"value that is not a {col.kind}")
            raise DataError(
                f"table {spec.name}, column {col.name}: {count:,} row(s) hold a {what} "
                f"(values {', '.join(repr(s[0]) for s in sample)}; customers {ids}); "
                f"fix them to {'ISO 8601 UTC timestamps' if col.kind == 'timestamp' else col.kind}"
            )
        if col.required:
            empty = f'"{col.name}" IS NULL'
            if col.kind == "str":  # a blank id or name is as empty as a missing one
                empty += f' OR trim(CAST("{col.name}" AS VARCHAR)) = \'\''
            count, ids = _examples(con, f"raw_{spec.name}", empty)
            if count:
                raise DataError(
                    f"table {spec.name}, column {col.name}: {count:,} row(s) are empty "
                    f"(customers {ids or 'with no id'}); this column is required"
                )


def _clean_select(spec: TableSpec, cols: list[str], attributes: dict[str, str]) -> str:
    parts = []
    for col in spec.columns:
        if col.name in cols:
            parts.append(f'{_cast_expr(col.name, col.kind)} AS "{col.name}"')
        else:
            parts.append(f'CAST({col.default or "NULL"} AS {_SQL_TYPES[col.kind]}) AS "{col.name}"')
    for attr, kind in attributes.items():
        parts.append(f'{_cast_expr(attr, kind)} AS "{attr}"')
    return ", ".join(parts)


def _attribute_kinds(con, spec: TableSpec, cols: list[str]) -> dict[str, str]:
    """Static attributes of customers: numeric when every value parses as a number."""
    kinds = {}
    for col in cols:
        if col in {c.name for c in spec.columns}:
            continue
        not_numeric = con.execute(
            f'SELECT count(*) FROM raw_customers WHERE "{col}" IS NOT NULL '
            f'AND TRY_CAST("{col}" AS DOUBLE) IS NULL'
        ).fetchall()[0][0]
        kinds[col] = "str" if not_numeric else "float"
    return kinds


def _empty_table(con, spec: TableSpec) -> None:
    cols = ", ".join(f'"{c.name}" {_SQL_TYPES[c.kind]}' for c in spec.columns)
    con.execute(f"CREATE TABLE {spec.name} ({cols})")


def _check_keys(con) -> None:
    count, ids = _examples(
        con, "customers",
        "customer_id IN (SELECT customer_id FROM customers GROUP BY 1 HAVING count(*) > 1)",
    )
    if count:
        raise DataError(
            f"table customers, column customer_id: {count:,} rows share a customer_id "
            f"(e.g. {ids}); each customer must appear once"
        )
    for name in TABLES:
        if name == "customers":
            continue
        count, ids = _examples(
            con, name, "customer_id NOT IN (SELECT customer_id FROM customers)"
        )
        if count:
            raise DataError(
                f"table {name}, column customer_id: {count:,} row(s) for customers not in "
                f"the customers table (e.g. {ids}); add those customers or remove the rows"
            )


def _check_values(con) -> None:
    for table, column, condition, rule in VALUE_RULES:
        count, ids = _examples(con, table, condition)
        if count:
            raise DataError(
                f"table {table}, column {column}: {count:,} row(s) break the rule: {rule} "
                f"(customers {ids})"
            )


def _observed_until(con, explicit: str | pd.Timestamp | None, tables: list[str]) -> pd.Timestamp:
    if explicit is not None:
        try:
            until = pd.Timestamp(explicit)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"data.observed_until {explicit!r} is not a date: {exc}; use YYYY-MM-DD"
            ) from None
        if pd.isna(until):
            raise DataError(f"data.observed_until {explicit!r} is not a date; use YYYY-MM-DD")
        return until.tz_localize(None).normalize()
    parts = [
        f"SELECT max({TABLES[t].time_column}) AS m FROM {t}" for t in tables
    ]
    latest = con.execute(f"SELECT max(m) FROM ({' UNION ALL '.join(parts)})").fetchall()[0][0]
    if latest is None:
        raise DataError("the source holds no timestamps at all; check that the tables have rows")
    return pd.Timestamp(latest).normalize() + pd.Timedelta(days=1)


def load_source(source, observed_until: str | pd.Timestamp | None = None, *,
                horizon_days: int = Settings.model_fields["horizon_days"].default,
                activity: str = ChurnSettings.model_fields["activity"].default) -> DataSet:
    """Load and validate a data source, and recognise its shape.

    Args:
        source: a folder of NAME.parquet / NAME.csv, a .duckdb file, or {name: DataFrame}.
        observed_until: exclusive end of the observed data; records at or after it are set
            aside and counted. None: the day after the latest timestamp in the data.
        horizon_days, activity: the settings `horizon_days` and `churn.activity`, which the
            shape and the first observable churn depend on (defaults: the built-in ones).

    Returns:
        A `DataSet` whose connection holds tables customers, subscriptions, events,
        payments, tickets and surveys with the contract's columns and types, and whose
        shape and churn_observable_from the load report names.

    Raises:
        DataError: a missing table or column, a wrong type, an unparseable timestamp, an
        empty required value, a duplicate customer, a row for an unknown customer, or a value
        out of its range; the message names table, column, count and example customer ids.
    """
    con = connect()
    found = _register_raw(con, source)
    report = LoadReport(source=str(source) if not isinstance(source, dict) else "in-memory frames")
    if "customers" not in found:
        raise DataError("the source has no customers table; it is required (customers.parquet)")
    if not any(t in found for t in ACTIVITY_TABLES):
        raise DataError(
            f"the source needs at least one of {', '.join(ACTIVITY_TABLES)}; found only "
            f"{', '.join(found)}"
        )
    attributes: dict[str, str] = {}
    for name, spec in TABLES.items():
        if name not in found:
            _empty_table(con, spec)
            report.missing_tables.append(name)
            continue
        cols = _check_columns(con, spec, report)
        _check_types(con, spec, cols)
        attrs = _attribute_kinds(con, spec, cols) if spec.keep_extra else {}
        attributes.update(attrs)
        # The largest table stays a view over the source, so it is streamed, not held.
        kind, target = ("VIEW", "events_all") if name == "events" else ("TABLE", name)
        con.execute(f"CREATE {kind} {target} AS SELECT {_clean_select(spec, cols, attrs)} "
                    f"FROM raw_{name}")
        if name == "events":
            con.execute("CREATE VIEW events AS SELECT * FROM events_all")
        report.rows_read[name] = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    _check_keys(con)
    _check_values(con)
    present = [t for t in TABLES if t in found]
    until = _observed_until(con, observed_until, present)
    report.observed_until = str(until.date())
    for name in present:
        time_col = TABLES[name].time_column
        later = con.execute(
            f"SELECT count(*) FROM {name} WHERE {time_col} >= ?", [until]
        ).fetchall()[0][0]
        if later and name == "events":
            con.execute("CREATE OR REPLACE VIEW events AS SELECT * FROM events_all "
                        f"WHERE occurred_at < TIMESTAMP '{until}'")
        elif later:
            con.execute(f"DELETE FROM {name} WHERE {time_col} >= ?", [until])
        if later:
            report.set_aside.setdefault(name, {})[
                f"recorded at or after observed_until {until.date()}"] = later
        report.rows_kept[name] = report.rows_read[name] - later
    # An end or close that lies after the observed data was not yet known: treat it as open.
    late_ends = con.execute("UPDATE subscriptions SET ended_at = NULL WHERE ended_at >= ?",
                            [until]).fetchall()[0][0]
    if late_ends:
        report.notes.append(
            f"subscriptions: {late_ends:,} end(s) at or after observed_until {until.date()} "
            "treated as not yet known (open); if the data were exported later, set "
            "data.observed_until to the export date")
    con.execute("UPDATE tickets SET closed_at = NULL, csat = NULL WHERE closed_at >= ?", [until])
    shape = recognise_shape(con, until, horizon_days=horizon_days, activity=activity)
    report.shape = shape.lines()
    return DataSet(con=con, observed_until=until, attributes=attributes, report=report,
                   shape=shape.name, churn_observable_from=shape.churn_observable_from)


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
