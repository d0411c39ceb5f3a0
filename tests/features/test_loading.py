"""features.loading.load_source against the input data contract (v1), one bad input at a time.

Every source here is built by hand, a few rows per table, as pandas frames or written to
tmp_path as a folder of CSV files, a folder of parquet files or a DuckDB database file.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from churnlens.features.contract import ACTIVITY_TABLES, TABLES, VALUE_RULES
from churnlens.features.loading import DataError, load_source

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


# --- tables ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["dict", "csv"])
def test_missing_customers_table(tmp_path, fmt):
    frames = tables()
    del frames["customers"]
    with pytest.raises(DataError, match=r"no customers table; it is required"):
        load_source(make_source(frames, fmt, tmp_path))


def test_empty_folder_has_no_customers_table(tmp_path):
    with pytest.raises(DataError, match=r"no customers table"):
        load_source(tmp_path)


@pytest.mark.parametrize("fmt", ["dict", "parquet"])
def test_no_activity_table(tmp_path, fmt):
    frames = {name: tables()[name] for name in ("customers", "tickets", "surveys")}
    with pytest.raises(
        DataError,
        match=r"needs at least one of subscriptions, events, payments; "
        r"found only customers, tickets, surveys",
    ):
        load_source(make_source(frames, fmt, tmp_path))


@pytest.mark.parametrize("activity", ACTIVITY_TABLES)
def test_one_activity_table_is_enough(activity):
    ds = load_source({"customers": tables()["customers"], activity: tables()[activity]})
    assert ds.report.rows_kept[activity] == len(tables()[activity])
    others = [t for t in TABLES if t not in ("customers", activity)]
    assert ds.report.missing_tables == others
    for table in others:  # absent tables exist, empty, with the contract's columns
        assert rows(ds, f"SELECT count(*) FROM {table}") == [(0,)]
        assert list(column_types(ds, table)) == [c.name for c in TABLES[table].columns]
    assert any("tickets: not in the source" in line for line in ds.report.lines())


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(
        DataError, match=rf"data source {re.escape(str(missing))} not found: give a folder"
    ):
        load_source(missing)


def test_missing_duckdb_file(tmp_path):
    missing = tmp_path / "gone.duckdb"
    with pytest.raises(DataError, match=rf"data source {re.escape(str(missing))} not found"):
        load_source(missing)


# --- columns and types -----------------------------------------------------------------

# Every kind of column (str, timestamp, float), not every column: each load opens a DuckDB
# connection, and the file must stay fast.
REQUIRED = [
    ("customers", "customer_id"),
    ("customers", "signed_up_at"),
    ("subscriptions", "mrr"),
    ("events", "event"),
    ("surveys", "answered_at"),
]


def test_required_sample_is_required():
    assert all(column in TABLES[table].required for table, column in REQUIRED)
    kinds = {TABLES[table].column(column).kind for table, column in REQUIRED}
    assert kinds == {"str", "timestamp", "float"}


@pytest.mark.parametrize(("table", "column"), REQUIRED, ids=[f"{t}.{c}" for t, c in REQUIRED])
def test_missing_required_column(table, column):
    frames = around(table)
    frames[table] = frames[table].drop(columns=column)
    with pytest.raises(
        DataError, match=rf"^table {table}: required column\(s\) {column} missing \(found: "
    ):
        load_source(frames)


def test_missing_required_column_in_csv_lists_the_columns_found(tmp_path):
    frames = tables()
    frames["subscriptions"] = frames["subscriptions"].rename(columns={"mrr": "MRR"})
    with pytest.raises(
        DataError,
        match=r"table subscriptions: required column\(s\) mrr missing \(found: customer_id, "
        r"started_at, MRR, ended_at",
    ):
        load_source(make_source(frames, "csv", tmp_path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_type(tmp_path, fmt):
    frames = tables()
    subs = frames["subscriptions"]
    subs["mrr"] = ["100", "abc"]  # c2 holds text where a number belongs
    with pytest.raises(
        DataError,
        match=located("subscriptions", "mrr", 1, r"hold a value that is not a float \(values 'abc'",
                      "c2"),
    ):
        load_source(make_source(frames, fmt, tmp_path))


FLOATS = [("events", "quantity"), ("tickets", "csat")]


@pytest.mark.parametrize(("table", "column"), FLOATS, ids=[f"{t}.{c}" for t, c in FLOATS])
def test_wrong_type_in_other_float_columns(table, column):
    frames = around(table)
    frame = frames[table]
    frame[column] = frame[column].astype(str)
    frame.loc[frame.index[-1], column] = "twelve"
    bad_id = frame["customer_id"].iloc[-1]
    with pytest.raises(
        DataError, match=located(table, column, 1, "hold a value that is not a float", bad_id)
    ):
        load_source(frames)


# Required and optional timestamps; events.occurred_at is in the file formats test below.
TIMESTAMPS = [
    ("customers", "signed_up_at"),
    ("subscriptions", "ended_at"),
    ("tickets", "closed_at"),
]


def test_samples_name_contract_columns_of_their_kind():
    for sample, kind in ((FLOATS, "float"), (TIMESTAMPS, "timestamp")):
        assert all(TABLES[t].column(c).kind == kind for t, c in sample)


@pytest.mark.parametrize(
    ("table", "column"), TIMESTAMPS, ids=[f"{t}.{c}" for t, c in TIMESTAMPS]
)
def test_timestamp_that_does_not_parse(table, column):
    frames = around(table)
    frame = frames[table]
    frame.loc[frame.index[-1], column] = "2024-13-45"
    bad_id = frame["customer_id"].iloc[-1]
    with pytest.raises(
        DataError,
        match=located(table, column, 1, r"hold a timestamp that does not parse \(values "
                      r"'2024-13-45'", bad_id),
    ):
        load_source(frames)


@pytest.mark.parametrize("fmt", ["csv", "duckdb"])
def test_timestamp_that_does_not_parse_in_files(tmp_path, fmt):
    frames = tables()
    frames["events"]["occurred_at"] = ["2024-01-05", "last tuesday", "01/02/2024 25:00"]
    with pytest.raises(
        DataError,
        match=located("events", "occurred_at", 2, "hold a timestamp that does not parse",
                      "c1", "c3") + r".*fix them to ISO 8601 UTC timestamps",
    ):
        load_source(make_source(frames, fmt, tmp_path))


@pytest.mark.parametrize(
    ("table", "column"),
    [rc for rc in REQUIRED if rc[1] != "customer_id"],
    ids=[f"{t}.{c}" for t, c in REQUIRED if c != "customer_id"],
)
def test_empty_required_value(table, column):
    frames = around(table)
    frame = frames[table]
    frame[column] = frame[column].astype(object)
    frame.loc[frame.index[-1], column] = None
    bad_id = frame["customer_id"].iloc[-1]
    with pytest.raises(
        DataError,
        match=located(table, column, 1, "are empty", bad_id) + ".*this column is required",
    ):
        load_source(frames)


@pytest.mark.parametrize(
    ("table", "blank"), [("customers", None), ("events", "   ")]
)
def test_empty_customer_id(table, blank):
    frames = around(table)
    frames[table].loc[0, "customer_id"] = blank
    with pytest.raises(
        DataError,
        match=located(table, "customer_id", 1, r"are empty \(customers with no id\)"),
    ):
        load_source(frames)


def test_empty_required_value_in_csv(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "customers.csv").write_text(
        "customer_id,signed_up_at\nc1,2024-01-01\nc2,\nc3,\"\"\n"
    )
    (folder / "events.csv").write_text("customer_id,occurred_at,event\nc1,2024-01-02,login\n")
    with pytest.raises(
        DataError, match=located("customers", "signed_up_at", 2, "are empty", "c2", "c3")
    ):
        load_source(folder)


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["dict", "parquet"])
def test_duplicate_customer(tmp_path, fmt):
    frames = tables()
    customers = frames["customers"]
    frames["customers"] = pd.concat([customers, customers.iloc[[1]]], ignore_index=True)
    with pytest.raises(
        DataError,
        match=located("customers", "customer_id", 2, "share a customer_id", "c2")
        + ".*each customer must appear once",
    ):
        load_source(make_source(frames, fmt, tmp_path))


@pytest.mark.parametrize("table", ["subscriptions", "surveys"])
def test_row_for_unknown_customer(table):
    frames = around(table)
    frame = frames[table]
    ghosts = pd.concat([frame.iloc[[0]]] * 2, ignore_index=True).assign(customer_id="ghost")
    frames[table] = pd.concat([frame, ghosts], ignore_index=True)
    with pytest.raises(
        DataError,
        match=located(table, "customer_id", 2, "for customers not in the customers table", "ghost"),
    ):
        load_source(frames)


def test_row_for_unknown_customer_in_duckdb(tmp_path):
    frames = tables()
    frames["payments"].loc[1, "customer_id"] = "c9"
    with pytest.raises(
        DataError, match=located("payments", "customer_id", 1, "for customers not in", "c9")
    ):
        load_source(make_source(frames, "duckdb", tmp_path))


# --- value rules -------------------------------------------------------------------------

# For each rule in contract.VALUE_RULES: values that break it (a new rule needs an entry here).
BREAKING = {
    ("subscriptions", "mrr"): [-0.01],
    ("subscriptions", "ended_at"): ["2024-01-09"],  # c2 started 2024-01-10
    ("subscriptions", "seats"): [-1.0],
    ("subscriptions", "billing_interval"): ["Month"],
    ("payments", "status"): ["pending"],
    ("tickets", "closed_at"): ["2024-01-02 23:59:59"],  # c1 opened 2024-01-03
    ("tickets", "csat"): [0.0, 5.5],
    ("surveys", "nps"): [-1.0, 11.0],
    ("events", "quantity"): [-2.0],
}
BREAKING_CASES = [
    (table, column, rule, value)
    for table, column, _condition, rule in VALUE_RULES
    for value in BREAKING.get((table, column), [None])
]


def test_every_value_rule_has_a_breaking_case():
    assert {(t, c) for t, c, _, _ in VALUE_RULES} == set(BREAKING)


@pytest.mark.parametrize(
    ("table", "column", "rule", "value"),
    BREAKING_CASES,
    ids=[f"{t}.{c}={v!r}" for t, c, _, v in BREAKING_CASES],
)
def test_value_rule(table, column, rule, value):
    assert value is not None, f"no breaking value for {table}.{column} in BREAKING"
    frames = around(table)
    frame = frames[table]
    frame[column] = frame[column].astype(object)
    frame.loc[frame.index[-1], column] = value
    bad_id = frame["customer_id"].iloc[-1]
    with pytest.raises(
        DataError,
        match=located(table, column, 1, rf"break the rule: {re.escape(rule)}", bad_id),
    ):
        load_source(frames)


def test_value_rules_accept_their_boundaries():
    frames = tables()
    frames["subscriptions"]["mrr"] = [0.0, 0.0]
    frames["subscriptions"]["seats"] = [0.0, 0.0]
    frames["subscriptions"]["ended_at"] = [None, "2024-01-10"]  # same day it started
    frames["tickets"]["csat"] = [1.0]
    frames["tickets"]["closed_at"] = ["2024-01-03"]
    frames["events"]["quantity"] = [0.0, 0.0, 0.0]
    frames["payments"]["status"] = ["refunded", "failed"]
    frames = {**frames, "surveys": pd.concat([frames["surveys"]] * 2, ignore_index=True)}
    frames["surveys"]["nps"] = [0.0, 10.0]
    ds = load_source(frames)
    assert rows(ds, "SELECT min(nps), max(nps) FROM surveys") == [(0.0, 10.0)]
    assert rows(ds, "SELECT count(*) FROM subscriptions WHERE mrr = 0") == [(2,)]


# --- valid sources -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_source_loads(tmp_path, fmt):
    ds = load_source(make_source(tables(), fmt, tmp_path))
    expected = {name: len(frame) for name, frame in tables().items()}
    assert ds.report.rows_read == expected
    assert ds.report.rows_kept == expected
    assert ds.report.missing_tables == []
    assert ds.report.set_aside == {}
    assert ds.attributes == {}
    # the day after the latest timestamp (events 2024-02-02)
    assert ds.observed_until == pd.Timestamp("2024-02-03")
    assert ds.report.observed_until == "2024-02-03"
    for name, spec in TABLES.items():
        types = column_types(ds, name)
        kinds = {"str": "VARCHAR", "timestamp": "TIMESTAMP", "float": "DOUBLE"}
        assert types == {c.name: kinds[c.kind] for c in spec.columns}, name
    assert rows(ds, "SELECT customer_id, mrr, ended_at FROM subscriptions ORDER BY 1") == [
        ("c1", 100.0, None),
        ("c2", 50.0, pd.Timestamp("2024-01-25").to_pydatetime()),
    ]
    assert rows(ds, "SELECT occurred_at FROM events WHERE event = 'login' ORDER BY 1")[0] == (
        pd.Timestamp("2024-01-05 10:00:00").to_pydatetime(),
    )


def test_typed_frames_load():
    frames = tables()
    for name, frame in frames.items():
        for col in TABLES[name].columns:
            if col.kind == "timestamp" and col.name in frame:
                frame[col.name] = pd.to_datetime(frame[col.name], format="ISO8601")
    frames["customers"]["customer_id"] = ["1", "2", "3"]
    ds = load_source({"customers": frames["customers"], "events": frames["events"].assign(
        customer_id=["1", "1", "3"])})
    assert rows(ds, "SELECT count(*) FROM events WHERE customer_id = '1'") == [(2,)]
    assert column_types(ds, "events")["occurred_at"] == "TIMESTAMP"


def test_absent_optional_columns_get_their_default():
    frames = tables()
    frames["events"] = frames["events"].drop(columns="quantity")
    frames["payments"] = frames["payments"].drop(columns="status")
    frames["subscriptions"] = frames["subscriptions"].drop(
        columns=["billing_interval", "plan", "seats", "ended_at"]
    )
    ds = load_source(frames)
    assert rows(ds, "SELECT DISTINCT quantity FROM events") == [(1.0,)]
    assert rows(ds, "SELECT DISTINCT status FROM payments") == [("paid",)]
    assert rows(ds, "SELECT DISTINCT billing_interval FROM subscriptions") == [("month",)]
    assert rows(ds, "SELECT DISTINCT plan, seats, ended_at FROM subscriptions") == [
        (None, None, None)
    ]
    assert column_types(ds, "events")["quantity"] == "DOUBLE"
    assert ds.report.defaulted_columns["events"] == ["quantity"]
    assert ds.report.defaulted_columns["payments"] == ["status"]
    assert ds.report.defaulted_columns["subscriptions"] == [
        "ended_at", "plan", "seats", "billing_interval"
    ]
    assert "    absent optional columns: quantity" in ds.report.lines()


@pytest.mark.parametrize("fmt", ["dict", "csv"])
def test_extra_customer_columns_become_attributes(tmp_path, fmt):
    frames = tables()
    frames["customers"] = frames["customers"].assign(
        segment=["smb", "enterprise", None],
        employees=[12, 4500, None],
        zip_code=["02134", "n/a", "10001"],  # one non-number: the whole column is text
    )
    ds = load_source(make_source(frames, fmt, tmp_path))
    assert ds.attributes == {"segment": "str", "employees": "float", "zip_code": "str"}
    types = column_types(ds, "customers")
    assert (types["segment"], types["employees"], types["zip_code"]) == (
        "VARCHAR", "DOUBLE", "VARCHAR"
    )
    assert rows(ds, "SELECT employees, zip_code FROM customers ORDER BY customer_id") == [
        (12.0, "02134"), (4500.0, "n/a"), (None, "10001")
    ]
    assert "customers" not in ds.report.ignored_columns


@pytest.mark.parametrize("fmt", ["dict", "parquet"])
def test_extra_columns_elsewhere_are_ignored_and_reported(tmp_path, fmt):
    frames = tables()
    frames["events"] = frames["events"].assign(utm_source="ads", session_ms=[1, 2, 3])
    frames["payments"] = frames["payments"].assign(invoice="INV-1")
    ds = load_source(make_source(frames, fmt, tmp_path))
    assert ds.report.ignored_columns["events"] == ["utm_source", "session_ms"]
    assert ds.report.ignored_columns["payments"] == ["invoice"]
    assert ds.report.ignored_columns["tickets"] == []
    assert "utm_source" not in column_types(ds, "events")
    assert "invoice" not in column_types(ds, "payments")
    assert ds.attributes == {}
    assert "    ignored extra columns: utm_source, session_ms" in ds.report.lines()


def test_rows_at_or_after_observed_until_are_set_aside():
    frames = tables()
    frames["events"] = pd.concat([frames["events"], pd.DataFrame({
        "customer_id": ["c1", "c2", "c3"],
        "occurred_at": ["2024-01-31 23:59:59", "2024-02-01 00:00:00", "2024-03-05"],
        "event": ["login", "login", "login"],
        "quantity": [1.0, 1.0, 1.0],
    })], ignore_index=True)
    ds = load_source(frames, observed_until="2024-02-01")
    reason = "recorded at or after observed_until 2024-02-01"
    # events: c3 on 2024-02-02 and the two new rows at/after the cutoff; customers: c3
    assert ds.report.set_aside == {"customers": {reason: 1}, "events": {reason: 3}}
    assert ds.report.rows_read["events"] == 6
    assert ds.report.rows_kept["events"] == 3
    assert ds.report.rows_kept["customers"] == 2
    assert rows(ds, "SELECT max(occurred_at) FROM events") == [
        (pd.Timestamp("2024-01-31 23:59:59").to_pydatetime(),)
    ]
    assert rows(ds, "SELECT count(*) FROM customers") == [(2,)]
    assert ds.observed_until == pd.Timestamp("2024-02-01")
    lines = ds.report.lines()
    assert f"    set aside 3 rows: {reason}" in lines
    assert f"    set aside 1 rows: {reason}" in lines
    assert lines[0].endswith("observed until 2024-02-01")


def test_observed_until_is_a_date():
    with pytest.raises(DataError, match=r"data\.observed_until 'soon' is not a date.*YYYY-MM-DD"):
        load_source(tables(), observed_until="soon")
    with pytest.raises(DataError, match=r"data\.observed_until '' is not a date"):
        load_source(tables(), observed_until="")


def test_subscription_end_at_or_after_observed_until_becomes_open():
    frames = tables()
    frames["subscriptions"] = pd.DataFrame({
        "customer_id": ["c1", "c2", "c3"],
        "started_at": ["2024-01-01", "2024-01-10", "2024-01-15"],
        "mrr": [100.0, 50.0, 10.0],
        "ended_at": ["2024-01-31 23:00:00", "2024-02-01", "2024-06-01"],
    })
    frames["tickets"]["closed_at"] = ["2024-02-03"]
    ds = load_source(frames, observed_until="2024-02-01")
    assert rows(ds, "SELECT customer_id, ended_at FROM subscriptions ORDER BY 1") == [
        ("c1", pd.Timestamp("2024-01-31 23:00:00").to_pydatetime()),
        ("c2", None),
        ("c3", None),
    ]
    assert rows(ds, "SELECT closed_at, csat FROM tickets") == [(None, None)]


def test_utc_offsets_in_csv_are_converted_to_naive_utc(tmp_path):
    frames = tables()
    frames["events"]["occurred_at"] = [
        "2024-01-01T02:00:00+02:00", "2024-01-01T00:30:00Z", "2023-12-31T20:00:00-05:00"
    ]
    ds = load_source(make_source(frames, "csv", tmp_path))
    assert column_types(ds, "events")["occurred_at"] == "TIMESTAMP"
    assert rows(ds, "SELECT occurred_at FROM events ORDER BY event, occurred_at") == [
        (pd.Timestamp("2024-01-01 00:00:00").to_pydatetime(),),
        (pd.Timestamp("2024-01-01 01:00:00").to_pydatetime(),),
        (pd.Timestamp("2024-01-01 00:30:00").to_pydatetime(),),
    ]


def test_tz_aware_frames_are_converted_to_naive_utc():
    frames = tables()
    frames["events"]["occurred_at"] = pd.to_datetime(
        ["2024-01-01 09:00", "2024-01-02 09:00", "2024-01-03 09:00"]
    ).tz_localize("Asia/Tokyo")
    ds = load_source(frames)
    assert rows(ds, "SELECT min(occurred_at) FROM events") == [
        (pd.Timestamp("2024-01-01 00:00:00").to_pydatetime(),)
    ]
