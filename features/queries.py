"""Feature queries: SQL over the contract tables, one row per spine (customer, cutoff).

`feature_sql` builds exactly the features it is given (a `Feature` list from
`churnlens.features.catalog.feature_plan`, or the one a trained model carries), reading
only the tables those features need. Every part reads its table through the before-cutoff
rule of `churnlens.features.known`. Every builder takes the names it reads
(`churnlens.features.relations.Sources` for the contract tables, the spine, the daily event
rollup) and picks columns by name. The SQL is plain enough for DuckDB and Spark SQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from churnlens.features.catalog import Feature, event_types_of, feature_list, feature_plan
from churnlens.features.event_queries import (
    event_summary_sql,
    events_daily_sql,
    first_value_sql,
    recency_at_sql,
    recency_sql,
    usage_sql,
)
from churnlens.features.exact_sums import exact_sum
from churnlens.features.known import days_between, visible
from churnlens.features.purchase_queries import payment_sql, purchase_history_sql
from churnlens.features.relations import LOADED, Sources
from churnlens.settings import FeatureSettings

# Re-exported: the names the feature steps, serving and the tests import from here.
__all__ = ["Feature", "events_daily_sql", "feature_list", "feature_plan", "feature_sql",
           "visible"]

# Counts that are 0, not NULL, for a customer without rows in their table.
_ZERO_WHEN_NONE = {
    "billing": ("failed_payments_90d", "failed_payments_30d", "refunds_90d",
                "paid_amount_90d", "paid_amount_365d"),
    "support": ("tickets_opened_90d", "tickets_high_90d", "tickets_open", "tickets_high_open"),
    "contract": ("subscription_changes_365d",),
}


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


def _ticket_sql(tickets: str, spine: str) -> str:
    recent = "opened_at >= cutoff - INTERVAL 90 DAY"
    recent_180 = "opened_at >= cutoff - INTERVAL 180 DAY"
    closed_180 = f"closed_at IS NOT NULL AND {recent_180}"
    # Whole seconds and exact sums: averages that do not depend on the order of the rows.
    return f"""
        SELECT customer_id, cutoff,
            count(*) FILTER (WHERE {recent}) AS tickets_opened_90d,
            count(*) FILTER (WHERE {recent} AND priority = 'high') AS tickets_high_90d,
            count(*) FILTER (WHERE closed_at IS NULL) AS tickets_open,
            count(*) FILTER (WHERE closed_at IS NULL AND priority = 'high') AS tickets_high_open,
            {exact_sum("date_diff('second', opened_at, closed_at)", closed_180)}
                / count(*) FILTER (WHERE {closed_180}) / 86400.0 AS days_to_close_180d,
            {exact_sum('csat', recent_180)}
                / count(csat) FILTER (WHERE {recent_180}) AS csat_180d
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
            min({days_between('answered_at', 'cutoff')}) AS days_since_nps
        FROM answers WHERE newest <= 2 GROUP BY customer_id, cutoff
    """


def _usage_expressions(fs: FeatureSettings) -> dict[str, tuple[str, str]]:
    def zero(part: str, column: str) -> str:
        return f"coalesce({part}.{column}, 0)"

    reached = "first_value_dates.first_value_at < spine.cutoff"
    took = days_between("customer.signed_up_at", "first_value_dates.first_value_at")
    out = {}
    for w in fs.windows:
        out[f"events_{w}d"] = ("usage", zero("usage", f"events_{w}d"))
        out[f"active_days_{w}d"] = ("usage", zero("usage", f"active_days_{w}d"))
    out |= {
        "events_trend_30d": ("usage", f"({zero('usage', 'events_30d')} + 1) / "
                                      f"({zero('usage', 'events_prev_30d')} + 1) - 1"),
        "active_days_prev_30d": ("usage", zero("usage", "active_days_prev_30d")),
        "active_days_trend_30d": ("usage", f"{zero('usage', 'active_days_30d')} - "
                                           f"{zero('usage', 'active_days_prev_30d')}"),
        "event_types_30d": ("usage", zero("usage", "event_types_30d")),
        "event_types_all_windows": ("usage", zero("usage", "event_types_all_windows")),
        "days_since_last_event": ("recency", "recency.days_since_last_event"),
        "value_events_30d": ("usage", zero("usage", "value_events_30d")),
        "reached_first_value": ("first_value_dates", f"CASE WHEN {reached} THEN 1 ELSE 0 END"),
        "days_to_first_value": ("first_value_dates", f"CASE WHEN {reached} THEN {took} END"),
    }
    return out


def _account_expressions() -> dict[str, tuple[str, str]]:
    period = "CASE contract.billing_interval WHEN 'year' THEN 365.25 ELSE 30.4375 END"
    since_start = days_between("contract.contract_start", "spine.cutoff")
    p90, prev = "coalesce(billing.paid_amount_90d, 0)", "coalesce(billing.paid_amount_prev_90d, 0)"
    last_gap = days_between("purchase.last_day", "spine.cutoff")
    out = {name: ("contract", f"contract.{name}") for name in ("mrr", "seats", "plan",
                                                               "billing_interval")}
    out |= {
        "mrr_change_90d": ("contract", "contract.mrr - contract.mrr_90d_ago"),
        "seats_change_90d": ("contract", "contract.seats - contract.seats_90d_ago"),
        "days_to_renewal": ("contract", f"CASE WHEN contract.contract_start IS NOT NULL THEN "
                                        f"{period} - mod({since_start}, {period}) END"),
        "paid_amount_trend_90d": ("billing", f"CASE WHEN {p90} + {prev} > 0 "
                                             f"THEN ({p90} - {prev}) / ({p90} + {prev}) END"),
        "purchases": ("purchase", "coalesce(purchase.purchases, 0)"),
        "repeat_purchases": ("purchase", "greatest(coalesce(purchase.purchases, 0) - 1, 0)"),
        "days_since_first_purchase": ("purchase",
                                      days_between("purchase.first_day", "spine.cutoff")),
        "days_since_last_purchase": ("purchase", last_gap),
        "recency_to_gap_ratio": ("purchase", f"{last_gap} / purchase.purchase_gap_mean_days"),
    }
    out |= {name: ("purchase", f"purchase.{name}") for name in (
        "order_value_mean", "order_value_std", "purchase_gap_mean_days", "purchase_gap_std_days")}
    out |= {name: ("support", f"support.{name}") for name in ("days_to_close_180d", "csat_180d")}
    out |= {name: ("sentiment", f"sentiment.{name}")
            for name in ("nps_latest", "nps_change", "days_since_nps")}
    for part, names in _ZERO_WHEN_NONE.items():
        out |= {name: (part, f"coalesce({part}.{name}, 0)") for name in names}
    return out


def _event_type_expression(feature: Feature, index: int, fs: FeatureSettings) -> str:
    def count(column: str) -> str:
        return f"coalesce(usage.type{index}_{column}, 0)"

    if feature.measure == "trend_30d":
        return f"({count('30d')} + 1) / ({count('prev_30d')} + 1) - 1"
    if feature.measure == "since_signup":
        return f"coalesce(recency.type{index}_total, 0)"
    if feature.measure in {f"{w}d" for w in fs.windows}:
        return count(feature.measure)
    raise ValueError(f"feature {feature.name}: measure {feature.measure!r} is not a window of "
                     f"features.windows {list(fs.windows)}, trend_30d or since_signup; "
                     "train with the same feature windows as this model")


def _select(fs: FeatureSettings, features: Sequence[Feature],
            event_types: list[str]) -> tuple[list[str], set[str]]:
    """The base SELECT's feature columns, and the parts (CTEs) they read."""
    known = {"tenure_days": ("", days_between("customer.signed_up_at", "spine.cutoff"))}
    known |= _usage_expressions(fs) | _account_expressions()
    columns, parts = [], set()
    unknown = []
    for feature in features:
        if feature.attribute:
            columns.append(f'customer."{feature.name}" AS "{feature.name}"')
        elif feature.event_type is not None:
            index = event_types.index(feature.event_type)
            parts |= {"usage", "recency"}
            columns.append(f"{_event_type_expression(feature, index, fs)} AS {feature.name}")
        elif feature.name in known:
            part, expression = known[feature.name]
            parts.add(part)
            columns.append(f"{expression} AS {feature.name}")
        elif feature.name != "lifecycle_stage":
            unknown.append(feature.name)
    if unknown:
        raise ValueError(f"feature_sql: {len(unknown)} unknown feature(s) {unknown}; build the "
                         "list with churnlens.features.catalog.feature_plan")
    if any(f.name == "days_to_renewal" for f in features):  # the renewal lifecycle stage
        parts.add("contract")
        columns.append("contract.billing_interval = 'year' AND "
                       f"{_account_expressions()['days_to_renewal'][1]} "
                       f"<= {fs.renewal_window_days} AS stage_renewal")
    return columns, parts - {""}


def _parts(fs: FeatureSettings, parts: set[str], event_types: list[str], *, spine: str,
           daily: str, sources: Sources, one_cutoff: bool,
           summary: str | None, duckdb: bool = False) -> list[tuple[str, str]]:
    """The CTEs (name, SQL) the feature columns read, in dependency order; DUCKDB: for
    DuckDB only (see `usage_sql`'s ordered)."""
    summarized = one_cutoff and bool(parts & {"recency", "first_value_dates"})
    if summarized and summary is None:
        parts = parts | {"event_summary"}
        summary = "event_summary"
    builders = {
        "event_summary": lambda: event_summary_sql(sources.events, "cutoffs"),
        "usage": lambda: usage_sql(fs, daily, "cutoffs", len(event_types), ordered=duckdb),
        "recency": lambda: (recency_at_sql(summary, "cutoffs", event_types) if one_cutoff
                            else recency_sql(daily, "cutoffs", len(event_types))),
        "first_value_dates": lambda: (first_value_sql(fs, summary, "first_at") if one_cutoff
                                      else first_value_sql(fs, sources.events)),
        "contract": lambda: _subscription_sql(sources.subscriptions, spine),
        "billing": lambda: payment_sql(sources.payments, "cutoffs"),
        "purchase": lambda: purchase_history_sql(sources.payments, "cutoffs"),
        "support": lambda: _ticket_sql(sources.tickets, spine),
        "sentiment": lambda: _survey_sql(sources.surveys, spine),
    }
    return [(name, builders[name]()) for name in builders if name in parts]


def part_queries(fs: FeatureSettings, features: Sequence[Feature], *, spine: str, daily: str,
                 sources: Sources = LOADED) -> list[tuple[str, str]]:
    """The parts (CTEs) of `feature_sql` for many cutoffs, each as a query of its own:
    (name, SQL), for measuring where a training set's time goes (benchmarks/features.py)."""
    event_types = list(event_types_of(features))
    _, parts = _select(fs, features, event_types)
    cutoffs = f"WITH cutoffs AS (SELECT DISTINCT cutoff FROM {spine} AS spine)"
    return [(name, f"{cutoffs} SELECT * FROM ({sql}) AS part") for name, sql in
            _parts(fs, parts, event_types, spine=spine, daily=daily, sources=sources,
                   one_cutoff=False, summary=None, duckdb=True)]


def feature_sql(fs: FeatureSettings, features: Sequence[Feature], *, spine: str, daily: str,
                sources: Sources = LOADED, one_cutoff: bool = False,
                materialized: bool = False, summary: str | None = None) -> str:
    """One query giving customer_id, cutoff and each of FEATURES for each row of SPINE.

    features: from `churnlens.features.catalog.feature_plan` (or a trained model's list);
    spine: from-item of (customer_id, cutoff) rows, each once; daily: from-item of the daily
    event rollup of `events_daily_sql` over the same customers, built with the event types
    `event_types_of(FEATURES)` (read only by event features); sources: where the contract
    tables are; one_cutoff: SPINE holds a single cutoff, recency and the first value event
    are read from a summary of the events at it (`event_summary_sql`, `recency_at_sql`),
    and DAILY needs only the days of the usage windows, without running totals
    (`events_daily_sql(..., where=recent_days(...))`); summary: with
    ONE_CUTOFF, a from-item holding that summary already (the Spark job stages it), else a
    CTE computes it from the events;
    materialized: each part (CTE) is computed on its own before the joins (DuckDB's
    `AS MATERIALIZED`; not Spark SQL): run inline, the parts' aggregates and the joins'
    hash tables all hold memory at once, which overran 2 GB for 100k customers' cutoffs;
    the usage part's bands are also ordered for DuckDB (`usage_sql`'s ordered).
    lifecycle_stage has a renewal stage
    exactly when days_to_renewal is among FEATURES. Columns come in the order of FEATURES,
    after customer_id and cutoff. Raises ValueError for a feature it does not know.
    """
    names = {f.name for f in features}
    event_types = list(event_types_of(features))
    columns, parts = _select(fs, features, event_types)
    renewal = "days_to_renewal" in names
    tenure = days_between("customer.signed_up_at", "spine.cutoff")
    how = "AS MATERIALIZED" if materialized else "AS"
    ctes = "".join(f",\n {name} {how} ({sql})" for name, sql in
                   _parts(fs, parts, event_types, spine=spine, daily=daily, sources=sources,
                          one_cutoff=one_cutoff, summary=summary, duckdb=materialized))
    joins = "\n".join(
        f"LEFT JOIN {name} ON {name}.customer_id = spine.customer_id"
        + ("" if name == "first_value_dates" else f" AND {name}.cutoff = spine.cutoff")
        for name in ("usage", "recency", "first_value_dates", "contract", "billing", "purchase",
                     "support", "sentiment") if name in parts)
    stage = (f"CASE WHEN stage_tenure_days < {fs.onboarding_days} THEN 'onboarding' "
             + ("WHEN stage_renewal THEN 'renewal' " if renewal else "")
             + "ELSE 'adoption' END AS lifecycle_stage")
    outputs = [stage if f.name == "lifecycle_stage" else f'"{f.name}"' for f in features]
    return f"""
        WITH cutoffs AS (SELECT DISTINCT cutoff FROM {spine} AS spine){ctes},
        base AS (
            SELECT spine.customer_id, spine.cutoff, {tenure} AS stage_tenure_days,
                   {', '.join(columns) or 'NULL AS no_feature'}
            FROM {spine} AS spine
            JOIN {sources.customers} AS customer ON customer.customer_id = spine.customer_id
            {joins})
        SELECT customer_id, cutoff{''.join(f', {o}' for o in outputs)} FROM base
    """
