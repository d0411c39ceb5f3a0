"""Feature queries: SQL over the contract tables, one row per spine (customer, cutoff).

The before-cutoff rule lives in one function, `visible`: every feature reads a table only
through it, so a record at or after a cutoff can never change that cutoff's features.
Columns that become known later than their row (a subscription's end, a ticket's close and
csat) are masked to NULL unless they happened before the cutoff. Every builder takes the
names it reads (`churnlens.features.relations.Sources` for the contract tables, the spine,
the daily event rollup) and picks columns by name. The SQL is plain enough for DuckDB and
Spark SQL alike; `feature_list` describes each output column for the models.
"""

from __future__ import annotations

from dataclasses import dataclass

from churnlens.features.contract import TABLES
from churnlens.features.relations import LOADED, Sources
from churnlens.settings import FeatureSettings

# column -> the column whose time must be before the cutoff for it to be known
_LATER_KNOWN = {
    "subscriptions": {"ended_at": "ended_at"},
    "tickets": {"closed_at": "closed_at", "csat": "closed_at"},
}


# Events rolled up per customer and UTC day (see `events_daily_sql`); exact because cutoffs
# are always midnights, so a whole day is either before a cutoff or not.
_DAILY_COLUMNS = ("customer_id", "occurred_at", "quantity", "type_mask", "value_quantity")

# Counts that are 0, not NULL, for a customer without rows in their table.
_PAYMENT_COUNTS = ("failed_payments_90d", "failed_payments_30d", "paid_amount_90d",
                   "refunds_90d")
_TICKET_COUNTS = ("tickets_opened_90d", "tickets_high_90d", "tickets_open", "tickets_high_open")


def visible(table: str, source: str, *, spine: str | None = None, cutoffs: str | None = None,
            window_days: int | None = None) -> str:
    """SQL for the rows of TABLE known before each cutoff, with a `cutoff` column.

    table: a contract table name, or "events_daily" (`events_daily_sql`), for its columns
    and time column; source: where to read it (a name or a parenthesised query).
    window_days None: all history, each row once per SPINE row (customer_id, cutoff) of its
    customer with a later cutoff. window_days N: rows recorded in [cutoff - N, cutoff), once
    per row of CUTOFFS (one column `cutoff`, each cutoff once): a range join on a small side.
    Raises ValueError when the spine (all history) or the cutoffs (a window) are not given.
    """
    if table == "events_daily":
        time_column, names = "occurred_at", _DAILY_COLUMNS
    else:
        time_column, names = TABLES[table].time_column, [c.name for c in TABLES[table].columns]
    keys = spine if window_days is None else cutoffs
    if keys is None:
        needed = "spine" if window_days is None else "cutoffs"
        raise ValueError(f"visible({table!r}): give {needed}= to read "
                         f"{'all history' if window_days is None else 'a window'}")
    columns = []
    for name in names:
        known_by = _LATER_KNOWN.get(table, {}).get(name)
        if known_by:
            columns.append(f"CASE WHEN record.{known_by} < known_at.cutoff "
                           f"THEN record.{name} END AS {name}")
        else:
            columns.append(f"record.{name}")
    before = f"record.{time_column} < known_at.cutoff"
    if window_days is None:
        on = f"record.customer_id = known_at.customer_id AND {before}"
    else:
        since = f"known_at.cutoff - INTERVAL {int(window_days)} DAY"
        on = f"{before} AND record.{time_column} >= {since}"
    return (f"SELECT known_at.cutoff, {', '.join(columns)} "
            f"FROM {source} AS record JOIN {keys} AS known_at ON {on}")


def _days(start: str, end: str) -> str:
    """Whole-and-fractional days from timestamp START to timestamp END."""
    return f"(date_diff('second', {start}, {end}) / 86400.0)"


def _quote(value: str) -> str:
    return value.replace("'", "''")


def events_daily_sql(fs: FeatureSettings, events: str) -> str:
    """Events of EVENTS per customer and day: total quantity, a bit per event type, value events.

    Event types beyond 64 share bits (their index modulo 64), so breadth is then a floor.
    """
    return f"""
        WITH type_bits AS (
            SELECT event, row_number() OVER (ORDER BY event) - 1 AS type_index
            FROM (SELECT DISTINCT event FROM {events}) AS event_types),
        typed AS (
            SELECT occurrence.customer_id, occurrence.event, occurrence.quantity,
                   CAST(CAST(occurrence.occurred_at AS DATE) AS TIMESTAMP) AS day,
                   CAST(type_bits.type_index % 64 AS UBIGINT) AS bit
            FROM {events} AS occurrence JOIN type_bits ON type_bits.event = occurrence.event)
        SELECT customer_id, day AS occurred_at, sum(quantity) AS quantity,
               bit_or(CAST(1 AS UBIGINT) << bit) AS type_mask,
               sum(quantity) FILTER (WHERE event = '{_quote(fs.value_event)}') AS value_quantity
        FROM typed GROUP BY customer_id, day
    """


def _usage_sql(fs: FeatureSettings, daily: str, cutoffs: str) -> str:
    span = max(fs.max_window, 60)
    parts = []
    for w in fs.windows:
        in_window = f"occurred_at >= cutoff - INTERVAL {w} DAY"
        parts.append(f"sum(quantity) FILTER (WHERE {in_window}) AS events_{w}d")
        parts.append(f"count(*) FILTER (WHERE {in_window}) AS active_days_{w}d")
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
    days = visible("events_daily", daily, cutoffs=cutoffs, window_days=span)
    return (f"SELECT customer_id, cutoff, {', '.join(parts)} "
            f"FROM ({days}) AS active_day GROUP BY customer_id, cutoff")


def _recency_sql(daily: str, cutoffs: str) -> str:
    # The last active day before each cutoff: the day whose next active day is at or after it.
    return f"""
        WITH active_days AS (
            SELECT customer_id, occurred_at AS day,
                   lead(occurred_at) OVER (PARTITION BY customer_id ORDER BY occurred_at)
                       AS next_day
            FROM {daily})
        SELECT active_days.customer_id, known_at.cutoff,
               {_days('active_days.day', 'known_at.cutoff')} AS days_since_last_event
        FROM active_days JOIN {cutoffs} AS known_at ON active_days.day < known_at.cutoff
         AND (active_days.next_day IS NULL OR active_days.next_day >= known_at.cutoff)
    """


def _first_value_sql(fs: FeatureSettings, events: str) -> str:
    # The first value event is a per-customer minimum: known at c exactly when it is < c.
    return f"""
        SELECT customer_id, min(occurred_at) AS first_value_at FROM {events}
        WHERE event = '{_quote(fs.value_event)}' GROUP BY customer_id
    """


def _subscription_sql(subscriptions: str, spine: str) -> str:
    return f"""
        WITH known AS ({visible('subscriptions', subscriptions, spine=spine)}),
        in_force AS (
            SELECT customer_id, cutoff, mrr, seats, plan, billing_interval,
                   row_number() OVER (PARTITION BY customer_id, cutoff
                                      ORDER BY started_at DESC) AS newest
            FROM known WHERE ended_at IS NULL OR ended_at > cutoff),
        in_force_90d_ago AS (
            SELECT customer_id, cutoff, mrr AS mrr_90d_ago, seats AS seats_90d_ago,
                   row_number() OVER (PARTITION BY customer_id, cutoff
                                      ORDER BY started_at DESC) AS newest
            FROM known WHERE started_at < cutoff - INTERVAL 90 DAY
              AND (ended_at IS NULL OR ended_at > cutoff - INTERVAL 90 DAY)),
        history AS (
            SELECT customer_id, cutoff, min(started_at) AS contract_start,
                   count(*) FILTER (WHERE started_at >= cutoff - INTERVAL 365 DAY)
                       AS subscription_changes_365d
            FROM known GROUP BY customer_id, cutoff)
        SELECT history.customer_id, history.cutoff, latest.mrr, latest.seats, latest.plan,
               latest.billing_interval, earlier.mrr_90d_ago, earlier.seats_90d_ago,
               history.contract_start, history.subscription_changes_365d
        FROM history
        LEFT JOIN (SELECT * FROM in_force WHERE newest = 1) AS latest
          ON latest.customer_id = history.customer_id AND latest.cutoff = history.cutoff
        LEFT JOIN (SELECT * FROM in_force_90d_ago WHERE newest = 1) AS earlier
          ON earlier.customer_id = history.customer_id AND earlier.cutoff = history.cutoff
    """


def _payment_sql(payments: str, cutoffs: str) -> str:
    return f"""
        SELECT customer_id, cutoff,
            count(*) FILTER (WHERE status = 'failed') AS failed_payments_90d,
            count(*) FILTER (WHERE status = 'failed' AND occurred_at >= cutoff - INTERVAL 30 DAY)
                AS failed_payments_30d,
            coalesce(sum(amount) FILTER (WHERE status = 'paid'), 0) AS paid_amount_90d,
            count(*) FILTER (WHERE status = 'refunded') AS refunds_90d
        FROM ({visible('payments', payments, cutoffs=cutoffs, window_days=90)}) AS payment
        GROUP BY customer_id, cutoff
    """


def _ticket_sql(tickets: str, spine: str) -> str:
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
        FROM ({visible('tickets', tickets, spine=spine)}) AS ticket GROUP BY customer_id, cutoff
    """


def _survey_sql(surveys: str, spine: str) -> str:
    return f"""
        WITH answers AS (
            SELECT customer_id, cutoff, answered_at, nps,
                   row_number() OVER (PARTITION BY customer_id, cutoff
                                      ORDER BY answered_at DESC) AS newest
            FROM ({visible('surveys', surveys, spine=spine)}) AS survey WHERE nps IS NOT NULL)
        SELECT customer_id, cutoff,
            max(nps) FILTER (WHERE newest = 1) AS nps_latest,
            max(nps) FILTER (WHERE newest = 1) - max(nps) FILTER (WHERE newest = 2) AS nps_change,
            min({_days('answered_at', 'cutoff')}) AS days_since_nps
        FROM answers WHERE newest <= 2 GROUP BY customer_id, cutoff
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
    features = []
    features.append(Feature("tenure_days", "numeric", "account", "tenure in days"))
    features.append(Feature("lifecycle_stage", "category", "contract", "lifecycle stage"))
    for w in fs.windows:
        features.append(Feature(f"events_{w}d", "numeric", "usage", f"product events in the last {w} days"))
        features.append(Feature(f"active_days_{w}d", "numeric", "usage", f"active days in the last {w}"))
    features += [
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
        features.append(Feature(name, "category" if kind == "str" else "numeric", "account", name))
    return features


def feature_sql(fs: FeatureSettings, attributes: dict[str, str], *, spine: str, daily: str,
                sources: Sources = LOADED) -> str:
    """One query giving customer_id, cutoff and every feature for each row of SPINE.

    spine: from-item of (customer_id, cutoff) rows, each once; daily: from-item of the
    daily event rollup of `events_daily_sql` over the same customers; sources: where the
    contract tables are; attributes: the static customer columns (name -> "str" | "float").
    Columns come in the order of `feature_list`, after customer_id and cutoff.
    """
    windows = [f"coalesce(usage.events_{w}d, 0) AS events_{w}d, "
               f"coalesce(usage.active_days_{w}d, 0) AS active_days_{w}d" for w in fs.windows]
    period = "CASE contract.billing_interval WHEN 'year' THEN 365.25 ELSE 30.4375 END"
    attrs = "".join(f', customer."{a}"' for a in attributes)
    payments = ", ".join(f"coalesce(billing.{x}, 0) AS {x}" for x in _PAYMENT_COUNTS)
    tickets = ", ".join(f"coalesce(support.{x}, 0) AS {x}" for x in _TICKET_COUNTS)

    def per_cutoff(name: str) -> str:
        return (f"LEFT JOIN {name} ON {name}.customer_id = spine.customer_id "
                f"AND {name}.cutoff = spine.cutoff")

    return f"""
        WITH cutoffs AS (SELECT DISTINCT cutoff FROM {spine} AS spine),
             usage AS ({_usage_sql(fs, daily, 'cutoffs')}),
             recency AS ({_recency_sql(daily, 'cutoffs')}),
             first_value_dates AS ({_first_value_sql(fs, sources.events)}),
             contract AS ({_subscription_sql(sources.subscriptions, spine)}),
             billing AS ({_payment_sql(sources.payments, 'cutoffs')}),
             support AS ({_ticket_sql(sources.tickets, spine)}),
             sentiment AS ({_survey_sql(sources.surveys, spine)}),
        base AS (
            SELECT spine.customer_id, spine.cutoff,
                {_days('customer.signed_up_at', 'spine.cutoff')} AS tenure_days,
                {', '.join(windows)},
                (coalesce(usage.events_30d, 0) + 1) / (coalesce(usage.events_prev_30d, 0) + 1) - 1
                    AS events_trend_30d,
                coalesce(usage.active_days_prev_30d, 0) AS active_days_prev_30d,
                coalesce(usage.active_days_30d, 0) - coalesce(usage.active_days_prev_30d, 0)
                    AS active_days_trend_30d,
                coalesce(usage.event_types_30d, 0) AS event_types_30d,
                coalesce(usage.event_types_all_windows, 0) AS event_types_all_windows,
                recency.days_since_last_event,
                coalesce(usage.value_events_30d, 0) AS value_events_30d,
                CASE WHEN first_value_dates.first_value_at < spine.cutoff THEN 1 ELSE 0 END
                    AS reached_first_value,
                CASE WHEN first_value_dates.first_value_at < spine.cutoff
                     THEN {_days('customer.signed_up_at', 'first_value_dates.first_value_at')}
                END AS days_to_first_value,
                contract.mrr, contract.seats, contract.plan, contract.billing_interval,
                contract.mrr - contract.mrr_90d_ago AS mrr_change_90d,
                contract.seats - contract.seats_90d_ago AS seats_change_90d,
                coalesce(contract.subscription_changes_365d, 0) AS subscription_changes_365d,
                CASE WHEN contract.contract_start IS NOT NULL THEN
                    {period} - mod({_days('contract.contract_start', 'spine.cutoff')}, {period})
                END AS days_to_renewal,
                {payments}, {tickets},
                support.days_to_close_180d, support.csat_180d,
                sentiment.nps_latest, sentiment.nps_change, sentiment.days_since_nps{attrs}
            FROM {spine} AS spine
            JOIN {sources.customers} AS customer ON customer.customer_id = spine.customer_id
            {per_cutoff('usage')}
            {per_cutoff('recency')}
            LEFT JOIN first_value_dates ON first_value_dates.customer_id = spine.customer_id
            {per_cutoff('contract')}
            {per_cutoff('billing')}
            {per_cutoff('support')}
            {per_cutoff('sentiment')})
        SELECT *, CASE
                WHEN tenure_days < {fs.onboarding_days} THEN 'onboarding'
                WHEN billing_interval = 'year' AND days_to_renewal <= {fs.renewal_window_days}
                    THEN 'renewal'
                ELSE 'adoption' END AS lifecycle_stage
        FROM base
    """
