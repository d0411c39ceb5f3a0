"""Bad input through the CLI, as an operator meets it: one table of (input, exit status,
message), each input written by the test into a folder of its own from one small sample
and given to `churnlens` (its entry point, in process; the future-record test runs the
command as a fresh process).

Expected failures exit 2 with one line naming what is wrong and where; inputs churnlens
can take (future-dated or suspicious records, near-miss names, unread files) exit 0 with a
line of the load report saying how many and what was done. `churnlens features --as-of`
stops right after printing the load report plus a snapshot, the cheapest command to show it.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.bad_sources import (
    LATIN1,
    Tables,
    ancient_signup,
    attribute_named,
    copy,
    database,
    duplicate_payments,
    empty_customers,
    future_placeholder,
    future_records,
    late_signups,
    one_text_employee_count,
    overlapping,
    quoted_path,
    raw_file,
    renamed_column,
    renamed_files,
    spaced_column,
    spaced_id,
    stale_tickets,
    tables_in,
    text_number,
    thin_tail,
    truncated_events,
    two_near_misses,
    with_files,
    write,
)
from tests.test_cli_errors import run_cli

# Each case runs the CLI on a broken source as a fresh process: make test, not test-fast.
pytestmark = pytest.mark.slow

AS_OF = "2026-10-01"


@pytest.fixture(scope="module")
def sample() -> Tables:
    from churnlens.features.sample import generate_sample

    tables = generate_sample(300, seed=1)
    del tables["truth"]
    return tables


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Tables, Path], Path]
    status: int
    message: str  # regex that the output must hold (the one line, for status 2)
    argv: tuple[str, ...] = ("features", "--as-of", AS_OF)
    params: str = ""  # params.yaml, when the case needs one


FUTURE = Case("future-dated-records", tables_in(future_records), 0,
              r"observed until 2026-11-01 .*"
              r"customers: 301 rows read, 300 kept.*set aside 1 rows: signed_up_at after the "
              r"load time .*'2031-01-01 00:00:00'.*'C999999'.*"
              r"events: [\d,]+ rows read.*set aside 3 rows: occurred_at after the load time.*"
              r"'2099-01-01 00:00:00'.*payments: .*set aside 300 rows: occurred_at after")
CASES = [
    # 1. the end of the data
    FUTURE,
    Case("as-of-beyond-the-data", tables_in(future_records), 2,
         r"--as-of 2030-01-01 is outside the data, which run from the first signup on "
         r"\d{4}-\d\d-\d\d to 2026-11-01", argv=("features", "--as-of", "2030-01-01")),
    Case("thin-tail", tables_in(thin_tail), 0,
         r"observed until 2026-11-01 \(inferred.*set aside 3 rows: occurred_at after the "
         r"inferred end of the data \(a thin tail\) 2026-11-01"),
    Case("stale-table", tables_in(stale_tickets), 0,
         r"tickets: [\d,]+ rows read, [\d,]+ kept, last 2026-05-\d\d \(1\d\d days before the end"),
    Case("date-9999", tables_in(future_placeholder, "csv"), 2,
         r"table events, column occurred_at: 1 row\(s\) hold a timestamp before 1970-01-01 or "
         r"after 2262-04-11 \(values '9999-12-31'"),
    Case("date-1900", tables_in(ancient_signup, "csv"), 2,
         r"table customers, column signed_up_at: 1 row\(s\) hold a timestamp before 1970"),
    # 2. finite numbers
    Case("mrr-inf", tables_in(text_number("subscriptions", "mrr", "inf"), "csv"), 2,
         r"table subscriptions, column mrr: 1 row\(s\) hold a number that is not finite "
         r"\(inf, -inf, NaN or beyond 1.8e308\) \(values 'inf'"),
    Case("amount-1e400", tables_in(text_number("payments", "amount", "1e400"), "csv"), 2,
         r"table payments, column amount: 1 row\(s\) hold a number that is not finite.*'1e400'"),
    Case("mrr-nan", tables_in(text_number("subscriptions", "mrr", "NaN")), 2,
         r"table subscriptions, column mrr: 1 row\(s\) hold a number that is not finite"),
    # 3. names matched like a person would
    Case("column-case", tables_in(renamed_column), 0,
         r"read column 'Ended_At' as ended_at \(the names differ only in case or spaces\)"),
    Case("column-spaces", tables_in(spaced_column), 0, r"read column ' amount ' as amount"),
    Case("column-two-near-misses", tables_in(two_near_misses), 2,
         r"table subscriptions: columns 'MRR', ' mrr' all differ from mrr only in case"),
    Case("table-case-and-unread-files", renamed_files, 0,
         r"tickets: .*\n    read from Tickets.parquet \(its name differs from tickets only in "
         r"case.*not read: notes.txt \(not a .parquet or .csv file\)\n  not read: old \(a folder\)"),
    Case("duckdb-upper-case-tables", database(upper=True), 0,
         r"read from database table 'CUSTOMERS' \(its name differs from customers only"),
    # 4. suspicious records
    Case("overlapping-subscriptions", tables_in(overlapping), 0,
         r"4 subscriptions of 4 customers start before an earlier one of theirs ends .*: all "
         r"kept; MRR, seats and plan at a cutoff are the latest-started"),
    Case("duplicate-payments", tables_in(duplicate_payments), 0,
         r"payments: [\d,]+ rows read, [\d,]+ kept.*\n.*set aside 5 rows: exact copies of "
         r"another payment .*10 rows in all.*each payment kept once"),
    Case("signups-after-the-first-subscription", tables_in(late_signups), 0,
         r"7 signed_up_at after the customer's first subscription start .*moved back to that "
         r"start"),
    Case("numeric-attribute-with-one-text", tables_in(one_text_employee_count), 0,
         r"attribute 'employees': numbers except 1 of 300 values \('1,200'\): read as a number"),
    # 5. one message for every expected failure
    Case("parquet-0-bytes", with_files(events__parquet=b""), 2,
         r"file .*events.parquet is empty \(0 bytes\): it was probably cut off"),
    Case("parquet-truncated", truncated_events, 2,
         r"file .*events.parquet cannot be read: it is truncated or not a parquet file"),
    Case("parquet-garbage", with_files(events__parquet=b"PAR1 not really"), 2,
         r"file .*events.parquet cannot be read: it is truncated or not a parquet file"),
    Case("csv-not-utf8", with_files(customers__csv=LATIN1), 2,
         r"file .*customers.csv cannot be read: it is not UTF-8 text; save it as UTF-8"),
    Case("csv-0-bytes", with_files(customers__csv=b""), 2,
         r"file .*customers.csv is empty \(0 bytes\)"),
    Case("duckdb-garbage", raw_file("source.duckdb", b"not a database" * 100), 2,
         r"file .*source.duckdb cannot be opened as a DuckDB database"),
    Case("duckdb-0-bytes", raw_file("source.duckdb", b""), 2,
         r"database file .*source.duckdb is empty \(0 bytes\)"),
    Case("path-with-quotes", quoted_path, 0, r"customers: 300 rows read, 300 kept"),
    Case("duckdb-path-with-a-quote", database(name="it's.duckdb"), 0,
         r"customers: 300 rows read, 300 kept"),
    Case("attribute-name-with-quotes", tables_in(attribute_named('a" , 1 AS "b')), 2,
         r"""table customers: column name\(s\) 'a" , 1 AS "b' hold a double quote"""),
    Case("attribute-name-with-sql", tables_in(attribute_named("it's; DROP TABLE x")), 0,
         r"feature snapshot of \d+ customers active on 2026-10-01"),
    Case("customers-empty", tables_in(empty_customers), 2,
         r"table customers \(.*customers.parquet\) has no rows: churnlens needs one row per "
         r"customer"),
    Case("id-with-a-trailing-space", tables_in(spaced_id), 2,
         r"for customers not in the customers table .*; \d+ of them match a customer once "
         r"surrounding spaces and case are ignored \(e.g. 'C000001' in \w+, 'C000001 ' in "
         r"customers\)"),
    # 8. settings to the letter
    Case("params-duplicate-key", tables_in(), 2,
         r"params.yaml: key 'horizon_days' appears twice \(lines 1 and 3\); keep one",
         params="horizon_days: 60\nchurn: {grace_days: 7}\nhorizon_days: 90\n"),
    Case("params-boolean-horizon", tables_in(), 2,
         r"params.yaml: horizon_days: .*a boolean .* is not a valid value here; .*\(got True\)",
         params="horizon_days: true\n"),
    Case("value-event-never-occurs", tables_in(), 0,
         r"features.value_event 'report_made' never occurs in the [\d,]+ events \(the most "
         r"frequent: .*\): the first-value features are empty",
         params="features: {value_event: report_made}\n"),
]


def run_main(*argv: str) -> tuple[str, int, str]:
    """`churnlens ARGV...` through the command's own entry point, in this process (a fresh
    process per case would spend most of its time importing): (output, status, stderr)."""
    from churnlens.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exit_:  # argparse's own errors
            status = exit_.code
    return out.getvalue() + err.getvalue(), status, err.getvalue()


@pytest.fixture(scope="module")
def outcomes(sample, tmp_path_factory, request) -> dict[str, tuple[str, int, str]]:
    """Each selected case run once: (case id) -> (output, status, stderr)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.originalname == "test_bad_input"]
    root = tmp_path_factory.mktemp("bad-input")
    runs = {}
    for case in selected:
        cwd = root / case.id
        source = case.make(sample, cwd / "source")
        settings = ()
        if case.params:
            (cwd / "params.yaml").write_text(case.params)
            settings = ("--params", str(cwd / "params.yaml"))
        runs[case.id] = run_main(*settings, *case.argv, "--source", str(source),
                                 "--out", str(cwd / "out.parquet"))
    return runs


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input(case, outcomes):
    output, status, stderr = outcomes[case.id]
    assert "Traceback" not in output, output
    assert status == case.status, output
    if status == 2:
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith("churnlens features: error: "), stderr
    assert re.search(case.message, output, re.DOTALL if status == 0 else 0), output


def test_a_quoted_path_never_becomes_sql(outcomes):
    # The folder's name holds quotes and a statement: read as a path, the customers survive.
    output, status, _ = outcomes["path-with-quotes"]
    assert status == 0 and "DROP TABLE customers" in output and "300 kept" in output


@pytest.fixture(scope="module")
def training_sets(sample, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """`churnlens features` on the clean sample and on it with FUTURE's records added."""
    root = tmp_path_factory.mktemp("future")
    frames = {}
    for name, change in (("clean", None), ("future", future_records)):
        source = write(change(copy(sample)) if change else copy(sample), root / name)
        done = run_cli(root, "features", "--source", str(source), "--out", f"{name}.parquet")
        assert done.returncode == 0, done.stderr
        frames[name] = pd.read_parquet(root / f"{name}.parquet").sort_values(
            ["customer_id", "cutoff"], ignore_index=True)
        frames[f"{name} output"], frames[f"{name} source"] = done.stdout, source
    return frames


def test_future_records_leave_the_training_set_as_on_the_clean_data(training_sets):
    future, clean = training_sets["future"], training_sets["clean"]
    assert "set aside 300 rows" in training_sets["future output"]
    assert "observed until 2026-11-01" in training_sets["future output"]
    assert len(future) == len(clean) > 1000
    pd.testing.assert_frame_equal(future, clean, rtol=1e-12)


@pytest.mark.slow
def test_future_records_leave_the_model_as_on_the_clean_data(training_sets):
    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    from churnlens.settings import Settings
    from churnlens.training.risk import RiskModel
    from churnlens.training.split import temporal_split

    settings = Settings()
    predictions = {}
    for name in ("clean", "future"):
        ff = build_training_set(load_source(training_sets[f"{name} source"]), settings)
        frame = ff.frame.sort_values(["customer_id", "cutoff"], ignore_index=True)
        split = temporal_split(frame, settings.horizon_days, settings.training)
        model = RiskModel(ff.features, settings.training.lightgbm, seed=42).fit(
            split.train, split.validation, split.calibration)
        predictions[name] = model.predict_proba(split.test)
    assert len(predictions["clean"]) > 100
    assert predictions["future"].tolist() == predictions["clean"].tolist()


def test_a_full_disk_while_writing_leaves_no_file(sample, tmp_path, monkeypatch):
    def full_disk(frame, path, **_kwargs):
        Path(path).write_bytes(b"PAR1 half")  # the disk fills part way
        raise OSError(28, "No space left on device")

    source = write(copy(sample), tmp_path / "source")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    out = tmp_path / "work" / "snapshot.parquet"
    output, status, stderr = run_main("features", "--as-of", AS_OF, "--source", str(source),
                                      "--out", str(out))
    assert status == 2, output
    assert stderr.strip() == (f"churnlens features: error: could not write {out} (No space "
                              "left on device); nothing was written (the partial file is "
                              "removed): free some space or pass --out elsewhere")
    assert list(out.parent.iterdir()) == []
