"""One definition of each loading rule: Spark reads and validates a source as DuckDB does.

`load_source_spark` and `load_source` read the same folder; their tables must hold the same
rows and types, their reports the same lines, and a bad source must fail with the same
message (an unreadable file names the engine's own error at the end). One local Spark
session for the module, small sources written from one sample.
"""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from churnlens.features.contract import TABLES
from churnlens.features.loading import DataError, load_source
from churnlens.features.sql_runner import DuckRunner
from tests.bad_sources import (
    LATIN1,
    Tables,
    copy,
    duplicate_payments,
    future_placeholder,
    future_records,
    late_signups,
    one_text_employee_count,
    overlapping,
    renamed_column,
    spaced_id,
    tables_in,
    text_number,
    thin_tail,
    two_near_misses,
    with_files,
    write,
)

pytest.importorskip("pyspark")
from churnlens.features.spark_loading import load_source_spark  # noqa: E402
from churnlens.serving.spark import java_missing, spark_session  # noqa: E402

# A Spark session and a query per rule (a second or more each): make test, not test-fast.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(java_missing() is not None, reason=str(java_missing()))]

NOW = pd.Timestamp("2026-12-01")  # the load time of every load here


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[1]")
    session.conf.set("spark.sql.shuffle.partitions", "1")  # small data: one task a stage
    yield session
    session.stop()


@pytest.fixture(scope="module")
def sample() -> Tables:
    from churnlens.features.sample import generate_sample

    tables = generate_sample(200, seed=1)
    del tables["truth"]
    return tables


def _value(value):
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.to_pydatetime() if isinstance(value, pd.Timestamp) else value


def records(frame: pd.DataFrame) -> list[tuple]:
    """FRAME's rows as plain values (NaN and NaT as None), in one order."""
    rows = [tuple(_value(v) for v in row) for row in frame.itertuples(index=False)]
    return sorted(rows, key=lambda row: tuple((v is None, str(v)) for v in row))


def both(spark, source, **kwargs):
    """The DuckDB and the Spark load of SOURCE (each a DataSet, or the DataError's text)."""
    loaded = []
    for load in (lambda: load_source(source, now=NOW, **kwargs),
                 lambda: load_source_spark(spark, str(source), now=NOW, **kwargs)):
        try:
            loaded.append(load())
        except DataError as exc:
            loaded.append(str(exc))
    return loaded


def assert_same_tables(local, remote) -> None:
    spark_runner = remote.runner
    for name in TABLES:
        assert spark_runner.columns(name) == DuckRunner(local.con).columns(name), name
        want = records(local.con.execute(f"SELECT * FROM {name}").df())
        got = records(remote.spark.table(name).toPandas())
        assert len(got) == len(want), name
        assert got == want, name


def one_late_event(t: Tables) -> Tables:
    """One event a few days after the others: too thin a tail to move the inferred end."""
    t = thin_tail(t)
    t["events"] = t["events"].iloc[:-2]
    return t


@pytest.mark.slow  # two whole loads, one on Spark (about 60-90 s on the shared machine)
def test_the_sample_loads_alike(spark, sample, tmp_path):
    tables = one_late_event(copy(sample))
    files = write(tables, tmp_path / "files")
    # Spark reads the same tables through a URI, the events as a folder of part files.
    uri = write({name: frame for name, frame in tables.items() if name != "events"},
                tmp_path / "parts")
    parts, half = uri / "events", len(tables["events"]) // 2
    parts.mkdir()
    tables["events"].iloc[:half].to_parquet(parts / "part-00000.parquet", index=False)
    tables["events"].iloc[half:].to_parquet(parts / "part-00001.parquet", index=False)
    (parts / "_SUCCESS").write_bytes(b"")
    local = load_source(files, now=NOW)
    remote = load_source_spark(spark, f"file://{uri}", now=NOW)
    lines = local.report.lines()
    assert "set aside 1 rows: occurred_at after the inferred end" in "\n".join(lines)
    assert remote.report.lines() == [line.replace(str(files), f"file://{uri}") for line in lines]
    assert (remote.observed_until, remote.shape, remote.churn_observable_from,
            remote.attributes) == (local.observed_until, local.shape,
                                   local.churn_observable_from, local.attributes)
    assert remote.first_signup() == local.first_signup()
    assert_same_tables(local, remote)


def messy(t: Tables) -> Tables:
    """Rows to set aside and repair at once (future records, late signups, duplicate and
    overlapping rows), near-miss and suspicious columns; a fifth of the events."""
    t["events"] = t["events"].iloc[::5]
    for change in (future_records, late_signups, duplicate_payments, overlapping,
                   renamed_column, one_text_employee_count):
        t = change(t)
    return t


@pytest.mark.slow  # two whole loads, one on Spark
def test_set_asides_and_repairs_load_alike_from_csv(spark, sample, tmp_path):
    source = write(messy(copy(sample)), tmp_path / "source", "csv")
    (source / "tickets.csv").rename(source / "Tickets.csv")
    (source / "notes.txt").write_text("exported by hand\n")
    (source / "old").mkdir()
    local, remote = both(spark, source, observed_until="2026-06-01", value_event="no_such")
    lines = "\n".join(local.report.lines())
    # The source holds every kind of change this test is about.
    for seen in ("set aside 3 rows: occurred_at after the load time", "7 signed_up_at after",
                 "exact copies of another payment", "subscriptions of 4 customers start before",
                 "end(s) at or after observed_until 2026-06-01", "never occurs in the",
                 "read column 'Ended_At' as ended_at", "attribute 'employees': numbers except",
                 "read from Tickets.csv", "not read: notes.txt", "not read: old (a folder)"):
        assert seen in lines
    assert remote.report.lines() == local.report.lines()
    assert_same_tables(local, remote)


def _drop(table: str, column: str):
    def change(t: Tables) -> Tables:
        t[table] = t[table].drop(columns=[column])
        return t
    return change


def _set(table: str, column: str, value, rows=slice(0, 2)):
    def change(t: Tables) -> Tables:
        frame = t[table].copy()
        frame[column] = frame[column].astype(object)
        frame.iloc[rows, frame.columns.get_loc(column)] = value
        t[table] = frame
        return t
    return change


def _duplicate_customers(t: Tables) -> Tables:
    t["customers"] = pd.concat([t["customers"], t["customers"].head(2)], ignore_index=True)
    return t


def _no_customers(t: Tables) -> Tables:
    del t["customers"]
    return t


BAD = {
    "missing-column": (tables_in(_drop("subscriptions", "mrr")),
                       r"^table subscriptions: required column\(s\) mrr missing"),
    "wrong-type": (tables_in(text_number("subscriptions", "mrr", "a lot")),
                   r"^table subscriptions, column mrr: 1 row\(s\) hold a value that is not a float"),
    "timestamp-does-not-parse": (tables_in(text_number("tickets", "opened_at", "yesterday")),
                                 r"^table tickets, column opened_at: 1 row\(s\) hold a timestamp "
                                 r"that does not parse"),
    "timestamp-9999": (tables_in(future_placeholder, "csv"),
                       r"^table events, column occurred_at: 1 row\(s\) hold a timestamp before "
                       r"1970-01-01 or after 2262-04-11 \(values '9999-12-31'"),
    "not-finite": (tables_in(text_number("payments", "amount", "1e400"), "csv"),
                   r"^table payments, column amount: 1 row\(s\) hold a number that is not finite"),
    "empty-required": (tables_in(_set("events", "event", None)),
                       r"^table events, column event: 2 row\(s\) are empty"),
    "duplicate-customer": (tables_in(_duplicate_customers),
                           r"^table customers, column customer_id: 4 rows share a customer_id"),
    "unknown-customer": (tables_in(spaced_id),
                         r"for customers not in the customers table .* match a customer once "
                         r"surrounding spaces and case are ignored"),
    "out-of-range": (tables_in(_set("subscriptions", "mrr", -5.0)),
                     r"^table subscriptions, column mrr: 2 row\(s\) break the rule: mrr must be "
                     r">= 0"),
    "two-near-misses": (tables_in(two_near_misses),
                        r"^table subscriptions: columns 'MRR', ' mrr' all differ from mrr"),
    "no-customers-table": (tables_in(_no_customers), r"^the source has no customers table"),
    "csv-not-utf8": (with_files(customers__csv=LATIN1),
                     r"customers.csv cannot be read: it is not UTF-8 text; save it as UTF-8"),
    "parquet-0-bytes": (with_files(events__parquet=b""),
                        r"events.parquet is empty \(0 bytes\)"),
    "parquet-garbage": (with_files(events__parquet=b"PAR1 not really"),
                        r"events.parquet cannot be read: it is truncated or not a parquet file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_source_fails_alike(spark, sample, tmp_path, case):
    make, message = BAD[case]
    local, remote = both(spark, make(sample, tmp_path / "source"))
    assert isinstance(local, str) and re.search(message, local), local
    # The same words; an unreadable file ends with the engine's own error.
    assert isinstance(remote, str), remote
    assert remote.split(" (Spark: ")[0] == local.split(" (DuckDB: ")[0]


def test_a_missing_folder_is_named(spark, tmp_path):
    with pytest.raises(DataError, match=r"data source .*nowhere not found: the spark engine "
                                        r"reads a folder of NAME.parquet"):
        load_source_spark(spark, str(tmp_path / "nowhere"))
