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

from churnlens.features.checks import examples
from churnlens.features.report import LoadReport

EARLIEST_START = "(SELECT customer_id, min(started_at) AS first_start FROM subscriptions " \
                 "GROUP BY customer_id)"


def repair_signups(con, report: LoadReport) -> None:
    """Move signups that follow the customer's first subscription start back to that start."""
    late = (f"customer_id IN (SELECT customer.customer_id FROM customers AS customer JOIN "
            f"{EARLIEST_START} AS earliest USING (customer_id) "
            "WHERE customer.signed_up_at > earliest.first_start)")
    count, ids = examples(con, "customers", late)
    if not count:
        return
    con.execute(f"""
        UPDATE customers SET signed_up_at = earliest.first_start FROM {EARLIEST_START} AS earliest
        WHERE customers.customer_id = earliest.customer_id
          AND customers.signed_up_at > earliest.first_start""")
    report.check("customers", (
        f"{count:,} signed_up_at after the customer's first subscription start (e.g. {ids}): "
        "moved back to that start, so the customer is in the spine from their first "
        "subscription on; fix the signup dates in the source if they are wrong otherwise"))


def drop_duplicate_payments(con, report: LoadReport) -> None:
    """Keep one of each set of payments equal in every column; count the copies set aside."""
    copies = con.execute("""
        SELECT coalesce(sum(n - 1), 0) FROM (
            SELECT count(*) AS n FROM payments
            GROUP BY customer_id, occurred_at, amount, status HAVING count(*) > 1)""").fetchall()
    if not copies[0][0]:
        return
    count, ids = examples(con, "payments", """(customer_id, occurred_at, amount, status) IN (
        SELECT (customer_id, occurred_at, amount, status) FROM payments
        GROUP BY ALL HAVING count(*) > 1)""")
    con.execute("CREATE OR REPLACE TABLE payments AS SELECT DISTINCT * FROM payments")
    report.set_aside_rows("payments", (
        f"exact copies of another payment (same customer, occurred_at, amount and status; "
        f"{count:,} rows in all, e.g. customers {ids}): each payment kept once"),
        int(copies[0][0]))


def report_overlaps(con, report: LoadReport) -> None:
    """Count subscriptions that start before an earlier one of the same customer ends."""
    overlapping = """(customer_id, started_at) IN (SELECT (customer_id, started_at) FROM (
        SELECT customer_id, started_at,
               max(coalesce(ended_at, TIMESTAMP '9999-12-31')) OVER (
                   PARTITION BY customer_id ORDER BY started_at, ended_at NULLS LAST
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
        FROM subscriptions) AS ordered WHERE started_at < earlier_end)"""
    count, ids = examples(con, "subscriptions", overlapping)
    if count:
        customers = con.execute(f"SELECT count(DISTINCT customer_id) FROM subscriptions "
                                f"WHERE {overlapping}").fetchall()[0][0]
        report.check("subscriptions", (
            f"{count:,} subscriptions of {customers:,} customers start before an earlier one "
            f"of theirs ends (e.g. {ids}): all kept; MRR, seats and plan at a cutoff are the "
            "latest-started subscription's in force (not added up); end the earlier row "
            "where a new one replaces it, or merge concurrent contracts into one row"))


def check_value_event(con, report: LoadReport, value_event: str | None) -> None:
    """A line when VALUE_EVENT (features.value_event) never occurs in non-empty events."""
    if value_event is None:
        return
    # The usual case, the event occurs, stops at its first row instead of counting them all.
    if con.execute("SELECT count(*) FROM (SELECT 1 FROM events WHERE event = ? LIMIT 1)",
                   [value_event]).fetchall()[0][0]:
        return
    total, common = con.execute("""
        SELECT sum(n), list(event ORDER BY n DESC, event)[1:3]
        FROM (SELECT event, count(*) AS n FROM events GROUP BY event) AS per_type""").fetchall()[0]
    if total:
        report.check("events", (
            f"features.value_event {value_event!r} never occurs in the {total:,} events (the "
            f"most frequent: {', '.join(common)}): the first-value features are empty; set "
            "features.value_event to the event that marks a customer's first value"))
