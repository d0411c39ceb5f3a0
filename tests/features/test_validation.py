"""features.loading.load_source against the input data contract (v1): one bad input at a time.

Every source here is built by hand, a few rows per table (tests.features.sources), as pandas
frames or written to tmp_path as a folder of CSV files, a folder of parquet files or a DuckDB
database file.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from churnlens.features.contract import TABLES, VALUE_RULES
from churnlens.features.loading import DataError, load_source
from tests.features.sources import (
    FORMATS,
    around,
    column_types,
    located,
    make_source,
    rows,
    tables,
)

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
    frames["subscriptions"] = frames["subscriptions"].rename(columns={"mrr": "mrr_usd"})
    with pytest.raises(
        DataError,
        match=r"table subscriptions: required column\(s\) mrr missing \(found: customer_id, "
        r"started_at, mrr_usd, ended_at",
    ):
        load_source(make_source(frames, "csv", tmp_path))


@pytest.mark.parametrize("fmt", ["csv", "duckdb"])
def test_a_column_named_but_for_case_and_spaces_is_read_and_said_so(tmp_path, fmt):
    frames = tables()
    frames["subscriptions"] = frames["subscriptions"].rename(
        columns={"mrr": "MRR", "ended_at": " Ended_At "})
    ds = load_source(make_source(frames, fmt, tmp_path))
    assert list(column_types(ds, "subscriptions"))[:4] == [
        "customer_id", "started_at", "mrr", "ended_at"]
    assert rows(ds, "SELECT count(ended_at), sum(mrr) FROM subscriptions") == [(1, 150.0)]
    # DuckDB's CSV reader trims the spaces of a header itself.
    ended = "'Ended_At'" if fmt == "csv" else "' Ended_At '"
    assert ds.report.renamed["subscriptions"] == [
        "read column 'MRR' as mrr (the names differ only in case or spaces)",
        f"read column {ended} as ended_at (the names differ only in case or spaces)"]


def test_two_near_misses_for_one_column_are_refused_with_both_named():
    frames = tables()
    frames["subscriptions"] = frames["subscriptions"].rename(columns={"mrr": " mrr"}).assign(
        **{"mrr ": [1.0, 2.0]})
    with pytest.raises(DataError, match=r"^table subscriptions: columns ' mrr', 'mrr ' all "
                       r"differ from mrr only in case or spaces; rename the one to use"):
        load_source(frames)


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
