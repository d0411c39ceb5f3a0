"""Which features a source can give: the model inputs, what each needs, and what was left out.

A feature is built only when its inputs exist in the source: no ticket features without
tickets, no NPS without NPS answers, no MRR without subscriptions, no days to renewal (nor a
renewal lifecycle stage) without a billing interval, no counts of failed payments when no
payment ever failed. `source_contents` reads what a loaded source holds; `feature_plan`
turns that into the feature list and the (feature, reason) pairs left out. The plan is made
once, at training time, and its `Feature` list travels with the model: the event types
chosen for per-type features are carried in it, so a snapshot built later for scoring has
exactly the training columns, whatever the scoring data hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from churnlens.features.event_queries import choose_event_types
from churnlens.features.relations import LOADED, Sources
from churnlens.settings import FeatureSettings

if TYPE_CHECKING:
    from churnlens.features.loading import DataSet


@dataclass(frozen=True)
class Feature:
    """One model input: its name, kind (numeric or category), driver group and label.

    label: a readable name for driver sentences; event_type and measure: for the features
    of one event type, that type and what is counted ("7d": over a window of 7 days,
    "trend_30d", "since_signup"); attribute: a static column of customers, read as is.
    """

    name: str
    kind: str  # "numeric" | "category"
    group: str  # one of churnlens.settings.DRIVER_GROUPS
    label: str
    event_type: str | None = None
    measure: str = ""
    attribute: bool = False


# Inputs a feature can need: a contract table with rows ("tickets"), an optional column with
# values ("tickets.csat"), or a value seen in a column ("payments.status=failed").
_TABLES = ("subscriptions", "events", "payments", "tickets", "surveys")
_COLUMNS = (("subscriptions", "seats"), ("subscriptions", "plan"),
            ("subscriptions", "billing_interval"), ("tickets", "closed_at"),
            ("tickets", "priority"), ("tickets", "csat"), ("surveys", "nps"))
_CATEGORIES = ("lifecycle_stage", "plan", "billing_interval")
_ONE = {"subscriptions": "subscription", "events": "event", "payments": "payment",
        "tickets": "ticket", "surveys": "survey"}


def _value_key(fs: FeatureSettings) -> str:
    return f"events.event={fs.value_event}"


def _values(fs: FeatureSettings) -> tuple[tuple[str, str, str], ...]:
    return (("payments", "status", "paid"), ("payments", "status", "failed"),
            ("payments", "status", "refunded"), ("tickets", "priority", "high"),
            ("events", "event", fs.value_event))


@dataclass(frozen=True)
class SourceContents:
    """What a source holds, as far as features go.

    holds: the inputs present (table names, "table.column", "table.column=value");
    event_types: the event types that get features of their own, most frequent first.
    """

    holds: frozenset[str]
    event_types: tuple[str, ...] = ()

    @classmethod
    def complete(cls, fs: FeatureSettings, event_types: Sequence[str] = ()) -> SourceContents:
        """A source holding every table, optional column and value: every built-in feature."""
        keys = {*_TABLES, *(f"{t}.{c}" for t, c in _COLUMNS),
                *(f"{t}.{c}={v}" for t, c, v in _values(fs))}
        return cls(frozenset(keys), tuple(event_types))


def source_contents(ds: DataSet, fs: FeatureSettings, sources: Sources = LOADED) -> SourceContents:
    """What the loaded source DS holds (tables with rows, optional columns and values given).

    An optional column counts when the source gave it (not filled in by loading, see the
    load report's defaulted columns) and it holds a value; event types are chosen by
    `churnlens.features.event_queries.choose_event_types`.
    """
    def any_row(table: str, condition: str = "true") -> bool:
        sql = f"SELECT count(*) FROM (SELECT 1 FROM {sources.of(table)} AS whole " \
              f"WHERE {condition} LIMIT 1) AS first_row"
        return ds.con.sql(sql).fetchall()[0][0] > 0

    holds = {t for t in _TABLES if any_row(t)}
    defaulted = ds.report.defaulted_columns
    holds |= {f"{t}.{c}" for t, c in _COLUMNS
              if t in holds and c not in defaulted.get(t, []) and any_row(t, f"{c} IS NOT NULL")}
    holds |= {f"{t}.{c}={v}" for t, c, v in _values(fs)
              if t in holds and any_row(t, f"{c} = '{v.replace(chr(39), chr(39) * 2)}'")}
    types = choose_event_types(ds.con, sources.events, fs) if "events" in holds else ()
    return SourceContents(frozenset(holds), types)


def _reason(key: str, fs: FeatureSettings) -> str:
    if key == _value_key(fs):
        return f"no '{fs.value_event}' event in the source (features.value_event)"
    if "=" in key:
        column, value = key.split("=", 1)
        table, column = column.split(".")
        return f"no {_ONE[table]} has {column} '{value}'"
    if "." in key:
        return f"{key} not given"
    return f"the source holds no {key}"


def _builtin(fs: FeatureSettings) -> list[tuple[Feature, tuple[str, ...]]]:
    """Every built-in feature in column order, with the inputs it needs."""
    events, value = ("events",), ("events", _value_key(fs))
    subs, paid = ("subscriptions",), ("payments", "payments.status=paid")
    failed = ("payments", "payments.status=failed")
    refunded = ("payments", "payments.status=refunded")
    seats, interval = (*subs, "subscriptions.seats"), (*subs, "subscriptions.billing_interval")
    tickets, high = ("tickets",), ("tickets", "tickets.priority", "tickets.priority=high")
    closed, nps = ("tickets", "tickets.closed_at"), ("surveys", "surveys.nps")
    usage = []
    for w in fs.windows:
        usage += [(f"events_{w}d", "usage", events, f"product events in the last {w} days"),
                  (f"active_days_{w}d", "usage", events, f"active days in the last {w}")]
    rows = [
        ("tenure_days", "account", (), "tenure in days"),
        ("lifecycle_stage", "contract", (), "lifecycle stage"),
        ("events_trend_30d", "usage", events, "product events, last 30 days vs the 30 before"),
        ("active_days_prev_30d", "usage", events, "active days in the 30 days before last"),
        ("active_days_trend_30d", "usage", events, "change in active days, last 30 vs prior 30"),
        ("event_types_30d", "usage", events, "features used in the last 30 days"),
        ("event_types_all_windows", "usage", events, "features used in the longest window"),
        ("days_since_last_event", "usage", events, "days since the last product event"),
        ("value_events_30d", "onboarding", value, f"{fs.value_event} events in 30 days"),
        ("reached_first_value", "onboarding", value, "reached first value"),
        ("days_to_first_value", "onboarding", value, "days from signup to first value"),
        ("mrr", "account", subs, "MRR"),
        ("seats", "account", seats, "seats"),
        ("plan", "account", (*subs, "subscriptions.plan"), "plan"),
        ("billing_interval", "contract", interval, "billing interval"),
        ("mrr_change_90d", "account", subs, "MRR change over 90 days"),
        ("seats_change_90d", "account", seats, "seat change over 90 days"),
        ("subscription_changes_365d", "account", subs, "plan or seat changes in a year"),
        ("days_to_renewal", "contract", interval, "days to renewal"),
        ("failed_payments_90d", "billing", failed, "failed payments in 90 days"),
        ("failed_payments_30d", "billing", failed, "failed payments in 30 days"),
        ("refunds_90d", "billing", refunded, "refunds in 90 days"),
        ("paid_amount_90d", "revenue", paid, "amount paid in the last 90 days"),
        ("paid_amount_365d", "revenue", paid, "amount paid in the last 365 days"),
        ("paid_amount_trend_90d", "revenue", paid,
         "change in amount paid, last 90 days vs the 90 before (-1 to 1)"),
        ("purchases", "revenue", paid, "number of purchase days"),
        ("repeat_purchases", "revenue", paid, "number of repeat purchase days"),
        ("days_since_first_purchase", "revenue", paid, "days since the first purchase"),
        ("days_since_last_purchase", "revenue", paid, "days since the last purchase"),
        ("order_value_mean", "revenue", paid, "mean order value"),
        ("order_value_std", "revenue", paid, "spread (sd) of order value"),
        ("purchase_gap_mean_days", "revenue", paid, "mean days between purchases"),
        ("purchase_gap_std_days", "revenue", paid, "spread (sd) of days between purchases"),
        ("recency_to_gap_ratio", "revenue", paid, "days since the last purchase in mean gaps"),
        ("tickets_opened_90d", "support", tickets, "tickets opened in 90 days"),
        ("tickets_high_90d", "support", high, "high-priority tickets in 90 days"),
        ("tickets_open", "support", closed, "open tickets"),
        ("tickets_high_open", "support", (*high, "tickets.closed_at"),
         "open high-priority tickets"),
        ("days_to_close_180d", "support", closed, "mean days to close a ticket"),
        ("csat_180d", "support", ("tickets", "tickets.csat"), "mean CSAT over 180 days"),
        ("nps_latest", "sentiment", nps, "latest NPS"),
        ("nps_change", "sentiment", nps, "change in NPS"),
        ("days_since_nps", "sentiment", nps, "days since the last NPS answer"),
    ]
    rows[2:2] = usage
    return [(Feature(name, "category" if name in _CATEGORIES else "numeric", group, label), needs)
            for name, group, needs, label in rows]


def _slug(event_type: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", event_type.lower()).strip("_")[:40] or "type"


def event_type_features(fs: FeatureSettings, event_types: Sequence[str],
                        taken: set[str]) -> list[Feature]:
    """The features of each of EVENT_TYPES: a count per window, the 30-day trend, since signup.

    Names are type_<slug>_<measure>, the slug made unique against TAKEN (names in use).
    """
    out = []
    for event_type in event_types:
        slug, n = _slug(event_type), 2
        while any(name.startswith(f"type_{slug}_") for name in taken):
            slug, n = f"{_slug(event_type)}_{n}", n + 1
        what = f"'{event_type}' events"
        measures = [(f"{w}d", f"number of {what} in the last {w} days") for w in fs.windows]
        measures += [("trend_30d", f"change in {what}, last 30 days vs the 30 before"),
                     ("since_signup", f"number of {what} since signup")]
        for measure, label in measures:
            feature = Feature(f"type_{slug}_{measure}", "numeric", "usage", label,
                              event_type=event_type, measure=measure)
            out.append(feature)
            taken.add(feature.name)
    return out


def event_types_of(features: Sequence[Feature]) -> tuple[str, ...]:
    """The event types FEATURES count one by one, in order of first appearance.

    The daily event rollup (`churnlens.features.event_queries.events_daily_sql`) must be
    built with exactly these types for `churnlens.features.queries.feature_sql` to read it.
    """
    return tuple(dict.fromkeys(f.event_type for f in features if f.event_type is not None))


@dataclass(frozen=True)
class FeaturePlan:
    """The features a source can give, and those left out with the reason why."""

    features: list[Feature]
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per reason naming the features it left out."""
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.left_out:
            by_reason.setdefault(reason, []).append(name)
        return [f"features left out ({reason}): {', '.join(names)}"
                for reason, names in by_reason.items()]


def feature_plan(fs: FeatureSettings, attributes: dict[str, str],
                 contents: SourceContents | None = None) -> FeaturePlan:
    """The model inputs `feature_sql` builds for a source holding CONTENTS, in column order.

    attributes: the static customer columns (name -> "str" | "float"); contents: from
    `source_contents` (None: a source holding everything, no per-type event features).
    Raises ValueError when a customer attribute has the name of a built-in feature.
    """
    contents = contents or SourceContents.complete(fs)
    features, left_out = [], []
    for feature, needs in _builtin(fs):
        missing = [key for key in needs if key not in contents.holds]
        if missing:
            left_out.append((feature.name, _reason(missing[0], fs)))
        else:
            features.append(feature)
    if "subscriptions.billing_interval" not in contents.holds:
        left_out.append(("lifecycle_stage 'renewal'", _reason(
            "subscriptions" if "subscriptions" not in contents.holds
            else "subscriptions.billing_interval", fs)))
    if "events" not in contents.holds:
        left_out.append(("per-type event counts", _reason("events", fs)))
    clashes = sorted(set(attributes) & {f.name for f, _ in _builtin(fs)})
    if clashes:
        raise ValueError(f"customers column(s) {clashes} have the name of a built-in feature; "
                         "rename them in the source")
    taken = {f.name for f in features} | set(attributes)
    features += event_type_features(fs, contents.event_types, taken)
    features += [Feature(name, "category" if kind == "str" else "numeric", "account", name,
                         attribute=True) for name, kind in attributes.items()]
    return FeaturePlan(features, left_out)


def feature_list(fs: FeatureSettings, attributes: dict[str, str],
                 contents: SourceContents | None = None) -> list[Feature]:
    """The features of `feature_plan` (a source holding everything when CONTENTS is None)."""
    return feature_plan(fs, attributes, contents).features


def plan_for_source(ds: DataSet, fs: FeatureSettings) -> FeaturePlan:
    """The feature plan of the loaded source DS: `feature_plan` over `source_contents`."""
    return feature_plan(fs, ds.attributes, source_contents(ds, fs))
