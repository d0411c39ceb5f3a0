"""The input data contract (v1): which tables, which columns, which types.

This is the single description of the raw data that loading, validation, the sample
generator's tests and the README rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["str", "timestamp", "float"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = True
    default: str | None = None  # SQL literal used when an optional column is absent


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    time_column: str | None  # when the record became known; drives the before-cutoff rule
    keep_extra: bool = False  # customers keeps extra columns as static attributes

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _c(name: str, kind: Kind, required: bool = True, default: str | None = None) -> Column:
    return Column(name, kind, required, default)


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "customers",
            (_c("customer_id", "str"), _c("signed_up_at", "timestamp")),
            time_column="signed_up_at",
            keep_extra=True,
        ),
        TableSpec(
            "subscriptions",
            (
                _c("customer_id", "str"),
                _c("started_at", "timestamp"),
                _c("mrr", "float"),
                _c("ended_at", "timestamp", False),
                _c("plan", "str", False),
                _c("seats", "float", False),
                _c("billing_interval", "str", False, "'month'"),
            ),
            time_column="started_at",
        ),
        TableSpec(
            "events",
            (
                _c("customer_id", "str"),
                _c("occurred_at", "timestamp"),
                _c("event", "str"),
                _c("quantity", "float", False, "1.0"),
            ),
            time_column="occurred_at",
        ),
        TableSpec(
            "payments",
            (
                _c("customer_id", "str"),
                _c("occurred_at", "timestamp"),
                _c("amount", "float"),
                _c("status", "str", False, "'paid'"),
            ),
            time_column="occurred_at",
        ),
        TableSpec(
            "tickets",
            (
                _c("customer_id", "str"),
                _c("opened_at", "timestamp"),
                _c("closed_at", "timestamp", False),
                _c("priority", "str", False, "'normal'"),
                _c("csat", "float", False),
            ),
            time_column="opened_at",
        ),
        TableSpec(
            "surveys",
            (
                _c("customer_id", "str"),
                _c("answered_at", "timestamp"),
                _c("nps", "float", False),
                _c("score", "float", False),
            ),
            time_column="answered_at",
        ),
    )
}

# A valid source has customers and at least one of these.
ACTIVITY_TABLES = ("subscriptions", "events", "payments")

# Value rules checked after types: (table, SQL condition that is TRUE for a bad row, message).
VALUE_RULES: tuple[tuple[str, str, str, str], ...] = (
    ("subscriptions", "mrr", "mrr < 0", "mrr must be >= 0"),
    ("subscriptions", "ended_at", "ended_at < started_at", "ended_at must not precede started_at"),
    ("subscriptions", "seats", "seats < 0", "seats must be >= 0"),
    (
        "subscriptions",
        "billing_interval",
        "billing_interval NOT IN ('month', 'year')",
        "billing_interval must be 'month' or 'year'",
    ),
    (
        "payments",
        "status",
        "status NOT IN ('paid', 'failed', 'refunded')",
        "status must be one of paid, failed, refunded",
    ),
    ("tickets", "closed_at", "closed_at < opened_at", "closed_at must not precede opened_at"),
    ("tickets", "csat", "csat < 1 OR csat > 5", "csat must be between 1 and 5"),
    ("surveys", "nps", "nps < 0 OR nps > 10", "nps must be between 0 and 10"),
    ("events", "quantity", "quantity < 0", "quantity must be >= 0"),
)
