"""Records that are valid but suspicious: counted in the load report, never hidden.

Each check is one or two SQL statements over a loaded table and adds a line to the load
report saying how many records, a few customer ids, and what churnlens did about them:

- a signup after the customer's first subscription start: moved back to that start (a
  customer subscribes only once signed up; left alone, the cutoffs in between would drop
  the customer from the spine without a word);
- exact duplicate payments (same customer, moment, amount and status): kept once, the
  copies set aside (an export that repeats rows must not double the revenue);
- overlapping subscriptions of one customer: kept; the features read the latest-started
  subscription in force at each cutoff (its MRR, seats and plan, not a sum);
- a `features.value_event` that never occurs in the events: the first-value features are
  empty, which usually means a misspelt event name.
"""

from __future__ import annotations

from churnlens.features.checks import example_ids, examples
from churnlens.features.known import sql_string
from churnlens.features.report import LoadReport
from churnlens.features.sql_runner import SqlRunner

# The customer's first subscription start, for a row of customers (a correlated subquery).
FIRST_START = ("(SELECT min(started_at) FROM subscriptions AS subscription "
               "WHERE subscription.customer_id = customers.customer_id)")


def repair_signups(runner: SqlRunner, report: LoadReport) -> None:
    """Move signups that follow the customer's first subscription start back to that start."""
    late = f"signed_up_at > {FIRST_START}"
    count, ids = examples(runner, "customers", late)
    if not count:
        return
    runner.update("customers", {"signed_up_at": FIRST_START}, late)
    report.check("customers", (
        f"{count:,} signed_up_at after the customer's first subscription start (e.g. {ids}): "
        "moved back to that start, so the customer is in the spine from their first "
        "subscription on; fix the signup dates in the source if they are wrong otherwise"))


def drop_duplicate_payments(runner: SqlRunner, report: LoadReport) -> None:
    """Keep one of each set of payments equal in every column; count the copies set aside."""
    copied = """(SELECT customer_id, count(*) AS n FROM payments
                 GROUP BY customer_id, occurred_at, amount, status HAVING count(*) > 1) AS copied"""
    copies, rows = runner.rows(f"SELECT coalesce(sum(n - 1), 0), coalesce(sum(n), 0) "
                               f"FROM {copied}")[0]
    if not copies:
        return
    ids = example_ids(runner, copied, "TRUE")
    runner.define("payments", "SELECT DISTINCT * FROM payments")
    report.set_aside_rows("payments", (
        f"exact copies of another payment (same customer, occurred_at, amount and status; "
        f"{rows:,} rows in all, e.g. customers {ids}): each payment kept once"), int(copies))


def report_overlaps(runner: SqlRunner, report: LoadReport) -> None:
    """Count subscriptions that start before an earlier one of the same customer ends."""
    overlapping = """(customer_id, started_at) IN (SELECT customer_id, started_at FROM (
        SELECT customer_id, started_at,
               max(coalesce(ended_at, TIMESTAMP '9999-12-31')) OVER (
                   PARTITION BY customer_id ORDER BY started_at, ended_at NULLS LAST
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
        FROM subscriptions) AS ordered WHERE started_at < earlier_end)"""
    count, ids = examples(runner, "subscriptions", overlapping)
    if count:
        customers = runner.rows(f"SELECT count(DISTINCT customer_id) FROM subscriptions "
                                f"WHERE {overlapping}")[0][0]
        report.check("subscriptions", (
            f"{count:,} subscriptions of {customers:,} customers start before an earlier one "
            f"of theirs ends (e.g. {ids}): all kept; MRR, seats and plan at a cutoff are the "
            "latest-started subscription's in force (not added up); end the earlier row "
            "where a new one replaces it, or merge concurrent contracts into one row"))


def check_value_event(runner: SqlRunner, report: LoadReport, value_event: str | None) -> None:
    """A line when VALUE_EVENT (features.value_event) never occurs in non-empty events."""
    if value_event is None:
        return
    # The usual case, the event occurs, stops at its first row instead of counting them all.
    if runner.rows(f"SELECT count(*) FROM (SELECT 1 FROM events WHERE event = "
                   f"{sql_string(value_event)} LIMIT 1) AS found")[0][0]:
        return
    common = runner.rows("""
        SELECT event, sum(n) OVER () AS total
        FROM (SELECT event, count(*) AS n FROM events GROUP BY event) AS per_type
        ORDER BY n DESC, event LIMIT 3""")
    if common:
        report.check("events", (
            f"features.value_event {value_event!r} never occurs in the {common[0][1]:,} events "
            f"(the most frequent: {', '.join(event for event, _ in common)}): the first-value "
            "features are empty; set features.value_event to the event that marks a "
            "customer's first value"))
