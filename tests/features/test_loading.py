"""features.loading.load_source against the input data contract (v1): which tables a source needs, and what a valid source loads into.

Every source here is built by hand, a few rows per table (tests.features.sources), as pandas
frames or written to tmp_path as a folder of CSV files, a folder of parquet files or a DuckDB
database file.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from churnlens.features.contract import ACTIVITY_TABLES, TABLES
from churnlens.features.loading import DataError, load_source
from tests.features.sources import FORMATS, column_types, make_source, rows, tables

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
    # events: c3 on 2024-02-02 and the two new rows at/after the cutoff; customers: c3
    events_reason = ("occurred_at at or after data.observed_until 2024-02-01 (e.g. values "
                     "'2024-02-01 00:00:00', '2024-02-02 00:00:00', '2024-03-05 00:00:00'; "
                     "customers 'c2', 'c3')")
    customers_reason = ("signed_up_at at or after data.observed_until 2024-02-01 (e.g. values "
                        "'2024-02-01 00:00:00'; customers 'c3')")
    assert ds.report.set_aside == {"customers": {customers_reason: 1},
                                   "events": {events_reason: 3}}
    assert ds.report.rows_read["events"] == 6
    assert ds.report.rows_kept["events"] == 3
    assert ds.report.rows_kept["customers"] == 2
    assert rows(ds, "SELECT max(occurred_at) FROM events") == [
        (pd.Timestamp("2024-01-31 23:59:59").to_pydatetime(),)
    ]
    assert rows(ds, "SELECT count(*) FROM customers") == [(2,)]
    assert ds.observed_until == pd.Timestamp("2024-02-01")
    lines = ds.report.lines()
    assert f"    set aside 3 rows: {events_reason}" in lines
    assert f"    set aside 1 rows: {customers_reason}" in lines
    assert lines[0].endswith("observed until 2024-02-01 (data.observed_until)")


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


# --- the end of the data -------------------------------------------------------------------


def _busy_events(days: int = 30, per_day: int = 40) -> pd.DataFrame:
    moments = pd.date_range("2024-01-05", periods=days, freq="D").repeat(per_day)
    return pd.DataFrame({"customer_id": "c1", "occurred_at": moments, "event": "login"})


def test_a_thin_tail_does_not_move_the_inferred_end():
    frames = tables()
    late = pd.DataFrame({"customer_id": ["c1", "c3"], "event": "login",
                         "occurred_at": pd.to_datetime(["2024-03-20", "2024-04-02"])})
    frames["events"] = pd.concat([_busy_events(), late], ignore_index=True)
    ds = load_source(frames, now=pd.Timestamp("2025-01-01"))
    # 40 events a day to 2024-02-03; 1 a day later is under 5% of that typical day.
    assert ds.observed_until == pd.Timestamp("2024-02-04")
    assert ds.report.set_aside["events"] == {
        "occurred_at after the inferred end of the data (a thin tail) 2024-02-04 (e.g. values "
        "'2024-03-20 00:00:00', '2024-04-02 00:00:00'; customers 'c1', 'c3')": 2}
    assert ds.report.rows_kept["events"] == 30 * 40
    assert ds.report.lines()[0].endswith(
        "observed until 2024-02-04 (inferred: the day after 2024-02-03, the last day with at "
        "least 5% of a typical day's records of a table, 40 events; data.observed_until sets it)")


def test_records_after_the_load_time_are_set_aside_and_do_not_move_the_end():
    frames = tables()
    frames["payments"] = pd.concat([frames["payments"], pd.DataFrame({
        "customer_id": ["c1", "c2"], "occurred_at": ["2024-06-01", "2099-01-01"],
        "amount": [10.0, 10.0], "status": "paid"})], ignore_index=True)
    ds = load_source(frames, now=pd.Timestamp("2024-05-01 12:00"))
    assert ds.report.set_aside["payments"] == {
        "occurred_at after the load time 2024-05-01 12:00 UTC: not happened yet (e.g. values "
        "'2024-06-01 00:00:00', '2099-01-01 00:00:00'; customers 'c1', 'c2')": 2}
    assert ds.observed_until == pd.Timestamp("2024-02-03")  # as without those payments
    assert ds.report.last_dates["payments"] == "2024-01-10"


def test_a_customer_set_aside_takes_their_rows_along():
    frames = tables()
    frames["customers"].loc[2, "signed_up_at"] = "2030-01-01"  # c3, who has one event
    frames["events"].loc[2, "occurred_at"] = "2024-01-20"
    ds = load_source(frames, now=pd.Timestamp("2025-01-01"))
    assert ds.report.rows_kept["customers"] == 2 and ds.report.rows_kept["events"] == 2
    assert list(ds.report.set_aside["events"].values()) == [1]
    assert "of a customer set aside above" in next(iter(ds.report.set_aside["events"]))


def test_each_table_shows_its_last_date_and_a_stale_one_is_marked():
    frames = tables()
    frames["events"] = _busy_events()
    ds = load_source(frames, now=pd.Timestamp("2025-01-01"))
    assert ds.report.last_dates == {
        "customers": "2024-02-01", "subscriptions": "2024-01-10", "events": "2024-02-03",
        "payments": "2024-01-10", "tickets": "2024-01-03", "surveys": "2024-01-20"}
    lines = ds.report.lines()
    assert "  tickets: 1 rows read, 1 kept, last 2024-01-03 (32 days before the end of the " \
           "data: is this table up to date?)" in lines
    assert "  surveys: 1 rows read, 1 kept, last 2024-01-20" in lines
    assert any(line.startswith("tables: customers 3 rows, last 2024-02-01;")
               for line in ds.report.brief())


def test_as_of_must_lie_inside_the_data():
    from churnlens.features.extent import check_as_of

    ds = load_source(tables())
    assert check_as_of(ds, "2024-02-03") == pd.Timestamp("2024-02-03")
    for day in ("2024-01-01", "2024-02-04"):
        with pytest.raises(DataError, match=rf"^--as-of {day} is outside the data, which run "
                           r"from the first signup on 2024-01-01 to 2024-02-03: pick a date "
                           r"after 2024-01-01 and at most 2024-02-03$"):
            check_as_of(ds, day)


# --- suspicious records ----------------------------------------------------------------------


def test_suspicious_records_are_counted_and_handled():
    frames = tables()
    frames["customers"].loc[1, "signed_up_at"] = "2024-01-15"  # c2 subscribed on 2024-01-10
    frames["payments"] = pd.concat([frames["payments"]] + [frames["payments"].iloc[[0]]] * 2,
                                   ignore_index=True)
    ds = load_source(frames, value_event="first_report")
    assert rows(ds, "SELECT signed_up_at FROM customers WHERE customer_id = 'c2'") == [
        (pd.Timestamp("2024-01-10").to_pydatetime(),)]
    assert rows(ds, "SELECT count(*), sum(amount) FROM payments") == [(2, 150.0)]
    assert ds.report.set_aside["payments"] == {
        "exact copies of another payment (same customer, occurred_at, amount and status; 3 "
        "rows in all, e.g. customers 'c1'): each payment kept once": 2}
    assert ds.report.checks["customers"][0].startswith(
        "1 signed_up_at after the customer's first subscription start (e.g. 'c2'): moved back")
    assert ds.report.checks["events"] == [
        "features.value_event 'first_report' never occurs in the 3 events (the most frequent: "
        "login, report_created): the first-value features are empty; set "
        "features.value_event to the event that marks a customer's first value"]
    assert "subscriptions" not in ds.report.checks  # c1 and c2 overlap nobody


def test_unread_frames_and_files_are_listed(tmp_path):
    ds = load_source({**tables(), "Tickets_old": tables()["tickets"]})
    assert ds.report.unread == ["frame 'Tickets_old' (not a contract table)"]
    folder = make_source(tables(), "parquet", tmp_path)
    (folder / "customers.csv").write_text("customer_id,signed_up_at\n")
    ds = load_source(folder)
    assert ds.report.unread == ["customers.csv (customers was read from customers.parquet)"]
