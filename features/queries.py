"""Feature queries: SQL over the contract tables, one row per spine (customer, cutoff).

The before-cutoff rule lives in one function, `visible`: every feature reads a table only
through it, so a record at or after a cutoff can never change that cutoff's features.
Columns that become known later than their row (a subscription's end, a ticket's close and
csat) are masked to NULL unless they happened before the cutoff. The SQL is plain enough
for DuckDB and Spark SQL alike; `FEATURES` describes each output column for the models.
"""

from __future__ import annotations

from dataclasses import dataclass

from churnlens.features.contract import TABLES
from churnlens.settings import FeatureSettings

# column -> the column whose time must be before the cutoff for it to be known
_LATER_KNOWN = {
    "subscriptions": {"ended_at": "ended_at"},
    "tickets": {"closed_at": "closed_at", "csat": "closed_at"},
}


# Events rolled up per customer and UTC day (see `events_daily_sql`); exact because cutoffs
# are always midnights, so a whole day is either before a cutoff or not.
_DAILY_COLUMNS = ("customer_id", "occurred_at", "quantity", "type_mask", "value_quantity")


def visible(table: str, window_days: int | None = None) -> str:
    """SQL for the rows of TABLE known before each cutoff, with a `cutoff` column.

    window_days: keep only rows recorded in [cutoff - window_days, cutoff), joined through
    the small `cutoffs` table (a range join); None: all history, joined through `spine`.
    """
    if table == "events_daily":
        ts, names = "occurred_at", _DAILY_COLUMNS
    else:
        ts, names = TABLES[table].time_column, [c.name for c in TABLES[table].columns]
    cols = []
    for name in names:
        known_by = _LATER_KNOWN.get(table, {}).get(name)
        if known_by:
            cols.append(f"CASE WHEN t.{known_by} < k.cutoff THEN t.{name} END AS {name}")
        else:
            cols.append(f"t.{name}")
    if window_days is None:
        join = f"JOIN spine k ON t.customer_id = k.customer_id AND t.{ts} < k.cutoff"
    else:
        join = (f"JOIN cutoffs k ON t.{ts} < k.cutoff "
                f"AND t.{ts} >= k.cutoff - INTERVAL {int(window_days)} DAY")
    return f"SELECT k.cutoff, {', '.join(cols)} FROM {table} t {join}"


def _days(a: str, b: str) -> str:
    """Whole-and-fractional days from timestamp a to timestamp b."""
    return f"(date_diff('second', {a}, {b}) / 86400.0)"


def events_daily_sql(fs: FeatureSettings) -> str:
    """Events per customer and day: total quantity, a bit per event type, value events.

    Event types beyond 64 share bits (their index modulo 64), so breadth is then a floor.
    """
    return f"""
        WITH typed AS (
            SELECT e.*, CAST(t.idx % 64 AS UBIGINT) AS bit FROM events e
            JOIN (SELECT event, row_number() OVER (ORDER BY event) - 1 AS idx
                  FROM (SELECT DISTINCT event FROM events)) t USING (event))
        SELECT customer_id, CAST(CAST(occurred_at AS DATE) AS TIMESTAMP) AS occurred_at,
               sum(quantity) AS quantity,
               bit_or(CAST(1 AS UBIGINT) << bit) AS type_mask,
               sum(quantity) FILTER (WHERE event = '{_quote(fs.value_event)}') AS value_quantity
        FROM typed GROUP BY 1, 2
    """


def _event_sql(fs: FeatureSettings) -> str:
    span = max(fs.max_window, 60)
    parts = []
    for w in fs.windows:
        inw = f"occurred_at >= cutoff - INTERVAL {w} DAY"
        parts.append(f"sum(quantity) FILTER (WHERE {inw}) AS events_{w}d")
        parts.append(f"count(*) FILTER (WHERE {inw}) AS active_days_{w}d")
    prev = "occurred_at < cutoff - INTERVAL 30 DAY AND occurred_at >= cutoff - INTERVAL 60 DAY"
    parts += [
        f"sum(quantity) FILTER (WHERE {prev}) AS events_prev_30d",
        f"count(*) FILTER (WHERE {prev}) AS active_days_prev_30d",
        "bit_count(bit_or(type_mask) FILTER (WHERE occurred_at >= cutoff - INTERVAL 30 DAY)) "
        "AS event_types_30d",
        "bit_count(bit_or(type_mask)) AS event_types_all_windows",
        "sum(value_quantity) FILTER (WHERE occurred_at >= cutoff - INTERVAL 30 DAY) "
        "AS value_events_30d",
    ]
    return (f"SELECT customer_id, cutoff, {', '.join(parts)} "
            f"FROM ({visible('events_daily', span)}) GROUP BY 1, 2")


def _quote(value: str) -> str:
    return value.replace("'", "''")


def _recency_sql() -> str:
    # The last active day before each cutoff: the day whose next active day is at or after it.
    return f"""
        WITH n AS (SELECT customer_id, occurred_at AS day,
                     lead(occurred_at) OVER (PARTITION BY customer_id ORDER BY occurred_at)
                     AS next_day FROM events_daily)
        SELECT n.customer_id, k.cutoff, {_days('n.day', 'k.cutoff')} AS days_since_last_event
        FROM n JOIN cutoffs k ON n.day < k.cutoff
         AND (n.next_day IS NULL OR n.next_day >= k.cutoff)
    """


def _first_value_sql(fs: FeatureSettings) -> str:
    # The first value event is a per-customer minimum: known at c exactly when it is < c.
    return f"""
        SELECT customer_id, min(occurred_at) AS first_value_at FROM events
        WHERE event = '{_quote(fs.value_event)}' GROUP BY 1
    """


def _subscription_sql() -> str:
    return f"""
        WITH v AS ({visible('subscriptions')}),
        cur AS (
            SELECT customer_id, cutoff, mrr, seats, plan, billing_interval,
                   row_number() OVER (PARTITION BY customer_id, cutoff
                                      ORDER BY started_at DESC) AS rn
            FROM v WHERE ended_at IS NULL OR ended_at > cutoff),
        ago AS (
            SELECT customer_id, cutoff, mrr AS mrr_90d_ago, seats AS seats_90d_ago,
                   row_number() OVER (PARTITION BY customer_id, cutoff
                                      ORDER BY started_at DESC) AS rn
            FROM v WHERE started_at < cutoff - INTERVAL 90 DAY
              AND (ended_at IS NULL OR ended_at > cutoff - INTERVAL 90 DAY)),
        hist AS (
            SELECT customer_id, cutoff, min(started_at) AS contract_start,
                   count(*) FILTER (WHERE started_at >= cutoff - INTERVAL 365 DAY)
                       AS subscription_changes_365d
            FROM v GROUP BY 1, 2)
        SELECT h.customer_id, h.cutoff, c.mrr, c.seats, c.plan, c.billing_interval,
               a.mrr_90d_ago, a.seats_90d_ago, h.contract_start, h.subscription_changes_365d
        FROM hist h
        LEFT JOIN (SELECT * FROM cur WHERE rn = 1) c USING (customer_id, cutoff)
        LEFT JOIN (SELECT * FROM ago WHERE rn = 1) a USING (customer_id, cutoff)
    """


def _payment_sql() -> str:
    return f"""
        SELECT customer_id, cutoff,
            count(*) FILTER (WHERE status = 'failed') AS failed_payments_90d,
            count(*) FILTER (WHERE status = 'failed' AND occurred_at >= cutoff - INTERVAL 30 DAY)
                AS failed_payments_30d,
            coalesce(sum(amount) FILTER (WHERE status = 'paid'), 0) AS paid_amount_90d,
            count(*) FILTER (WHERE status = 'refunded') AS refunds_90d
        FROM ({visible('payments', 90)}) GROUP BY 1, 2
    """


def _ticket_sql() -> str:
    recent = "opened_at >= cutoff - INTERVAL 90 DAY"
    return f"""
        SELECT customer_id, cutoff,
            count(*) FILTER (WHERE {recent}) AS tickets_opened_90d,
            count(*) FILTER (WHERE {recent} AND priority = 'high') AS tickets_high_90d,
            count(*) FILTER (WHERE closed_at IS NULL) AS tickets_open,
            count(*) FILTER (WHERE closed_at IS NULL AND priority = 'high') AS tickets_high_open,
            avg({_days('opened_at', 'closed_at')}) FILTER (
                WHERE closed_at IS NOT NULL AND opened_at >= cutoff - INTERVAL 180 DAY)
                AS days_to_close_180d,
            avg(csat) FILTER (WHERE opened_at >= cutoff - INTERVAL 180 DAY) AS csat_180d
        FROM ({visible('tickets')}) GROUP BY 1, 2
    """


def _survey_sql() -> str:
    return f"""
        WITH v AS (SELECT customer_id, cutoff, answered_at, nps,
                     row_number() OVER (PARTITION BY customer_id, cutoff
                                        ORDER BY answered_at DESC) AS rn
                   FROM ({visible('surveys')}) WHERE nps IS NOT NULL)
        SELECT customer_id, cutoff,
            max(nps) FILTER (WHERE rn = 1) AS nps_latest,
            max(nps) FILTER (WHERE rn = 1) - max(nps) FILTER (WHERE rn = 2) AS nps_change,
            min({_days('answered_at', 'cutoff')}) AS days_since_nps
        FROM v WHERE rn <= 2 GROUP BY 1, 2
    """


@dataclass(frozen=True)
class Feature:
    """One model input: its name, kind (numeric or category) and driver group."""

    name: str
    kind: str  # "numeric" | "category"
    group: str  # one of churnlens.settings.DRIVER_GROUPS
    label: str  # a readable name for driver sentences


def feature_list(fs: FeatureSettings, attributes: dict[str, str]) -> list[Feature]:
    """The model inputs produced by `feature_sql`, in column order."""
    f = []
    f.append(Feature("tenure_days", "numeric", "account", "tenure in days"))
    f.append(Feature("lifecycle_stage", "category", "contract", "lifecycle stage"))
    for w in fs.windows:
        f.append(Feature(f"events_{w}d", "numeric", "usage", f"product events in the last {w} days"))
        f.append(Feature(f"active_days_{w}d", "numeric", "usage", f"active days in the last {w}"))
    f += [
        Feature("events_trend_30d", "numeric", "usage", "product events, last 30 days vs the 30 before"),
        Feature("active_days_prev_30d", "numeric", "usage", "active days in the 30 days before last"),
        Feature("active_days_trend_30d", "numeric", "usage", "change in active days, last 30 vs prior 30"),
        Feature("event_types_30d", "numeric", "usage", "features used in the last 30 days"),
        Feature("event_types_all_windows", "numeric", "usage", "features used in the longest window"),
        Feature("days_since_last_event", "numeric", "usage", "days since the last product event"),
        Feature("value_events_30d", "numeric", "onboarding", f"{fs.value_event} events in 30 days"),
        Feature("reached_first_value", "numeric", "onboarding", "reached first value"),
        Feature("days_to_first_value", "numeric", "onboarding", "days from signup to first value"),
        Feature("mrr", "numeric", "account", "MRR"),
        Feature("seats", "numeric", "account", "seats"),
        Feature("plan", "category", "account", "plan"),
        Feature("billing_interval", "category", "contract", "billing interval"),
        Feature("mrr_change_90d", "numeric", "account", "MRR change over 90 days"),
        Feature("seats_change_90d", "numeric", "account", "seat change over 90 days"),
        Feature("subscription_changes_365d", "numeric", "account", "plan or seat changes in a year"),
        Feature("days_to_renewal", "numeric", "contract", "days to renewal"),
        Feature("failed_payments_90d", "numeric", "billing", "failed payments in 90 days"),
        Feature("failed_payments_30d", "numeric", "billing", "failed payments in 30 days"),
        Feature("paid_amount_90d", "numeric", "billing", "amount paid in 90 days"),
        Feature("refunds_90d", "numeric", "billing", "refunds in 90 days"),
        Feature("tickets_opened_90d", "numeric", "support", "tickets opened in 90 days"),
        Feature("tickets_high_90d", "numeric", "support", "high-priority tickets in 90 days"),
        Feature("tickets_open", "numeric", "support", "open tickets"),
        Feature("tickets_high_open", "numeric", "support", "open high-priority tickets"),
        Feature("days_to_close_180d", "numeric", "support", "mean days to close a ticket"),
        Feature("csat_180d", "numeric", "support", "mean CSAT over 180 days"),
        Feature("nps_latest", "numeric", "sentiment", "latest NPS"),
        Feature("nps_change", "numeric", "sentiment", "change in NPS"),
        Feature("days_since_nps", "numeric", "sentiment", "days since the last NPS answer"),
    ]
    for name, kind in attributes.items():
        f.append(Feature(name, "category" if kind == "str" else "numeric", "account", name))
    return f


def feature_sql(fs: FeatureSettings, attributes: dict[str, str]) -> str:
    """One query giving customer_id, cutoff and every feature for each row of `spine`."""
    ev = [f"coalesce(e.events_{w}d, 0) AS events_{w}d, "
          f"coalesce(e.active_days_{w}d, 0) AS active_days_{w}d" for w in fs.windows]
    period = "CASE s.billing_interval WHEN 'year' THEN 365.25 ELSE 30.4375 END"
    attrs = "".join(f', c."{a}"' for a in attributes)
    counts = ["failed_payments_90d", "failed_payments_30d", "paid_amount_90d", "refunds_90d",
              "tickets_opened_90d", "tickets_high_90d", "tickets_open", "tickets_high_open"]
    return f"""
        WITH e AS ({_event_sql(fs)}), r AS ({_recency_sql()}), fv AS ({_first_value_sql(fs)}),
             s AS ({_subscription_sql()}), p AS ({_payment_sql()}), t AS ({_ticket_sql()}),
             n AS ({_survey_sql()}),
        base AS (
            SELECT k.customer_id, k.cutoff,
                {_days('c.signed_up_at', 'k.cutoff')} AS tenure_days,
                {', '.join(ev)},
                (coalesce(e.events_30d, 0) + 1) / (coalesce(e.events_prev_30d, 0) + 1) - 1
                    AS events_trend_30d,
                coalesce(e.active_days_prev_30d, 0) AS active_days_prev_30d,
                coalesce(e.active_days_30d, 0) - coalesce(e.active_days_prev_30d, 0)
                    AS active_days_trend_30d,
                coalesce(e.event_types_30d, 0) AS event_types_30d,
                coalesce(e.event_types_all_windows, 0) AS event_types_all_windows,
                r.days_since_last_event,
                coalesce(e.value_events_30d, 0) AS value_events_30d,
                CASE WHEN fv.first_value_at < k.cutoff THEN 1 ELSE 0 END AS reached_first_value,
                CASE WHEN fv.first_value_at < k.cutoff
                     THEN {_days('c.signed_up_at', 'fv.first_value_at')} END AS days_to_first_value,
                s.mrr, s.seats, s.plan, s.billing_interval,
                s.mrr - s.mrr_90d_ago AS mrr_change_90d,
                s.seats - s.seats_90d_ago AS seats_change_90d,
                coalesce(s.subscription_changes_365d, 0) AS subscription_changes_365d,
                CASE WHEN s.contract_start IS NOT NULL THEN
                    {period} - mod({_days('s.contract_start', 'k.cutoff')}, {period})
                END AS days_to_renewal,
                {', '.join(f'coalesce(p.{x}, 0) AS {x}' for x in counts[:4])},
                {', '.join(f'coalesce(t.{x}, 0) AS {x}' for x in counts[4:])},
                t.days_to_close_180d, t.csat_180d,
                n.nps_latest, n.nps_change, n.days_since_nps{attrs}
            FROM spine k
            JOIN customers c ON c.customer_id = k.customer_id
            LEFT JOIN e ON e.customer_id = k.customer_id AND e.cutoff = k.cutoff LEFT JOIN r ON r.customer_id = k.customer_id AND r.cutoff = k.cutoff
            LEFT JOIN fv ON fv.customer_id = k.customer_id
            LEFT JOIN s ON s.customer_id = k.customer_id AND s.cutoff = k.cutoff LEFT JOIN p ON p.customer_id = k.customer_id AND p.cutoff = k.cutoff
            LEFT JOIN t ON t.customer_id = k.customer_id AND t.cutoff = k.cutoff LEFT JOIN n ON n.customer_id = k.customer_id AND n.cutoff = k.cutoff)
        SELECT *, CASE
                WHEN tenure_days < {fs.onboarding_days} THEN 'onboarding'
                WHEN billing_interval = 'year' AND days_to_renewal <= {fs.renewal_window_days}
                    THEN 'renewal'
                ELSE 'adoption' END AS lifecycle_stage
        FROM base
    """
