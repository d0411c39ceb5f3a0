"""Training sets over all cutoffs, and feature snapshots as of one date.

These are the two ways features leave this package; training, the endpoint and the batch
scorer all go through them, so a feature has exactly one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from churnlens.features.labels import LABEL_COLUMNS, build_labels
from churnlens.features.loading import DataSet
from churnlens.features.queries import Feature, events_daily_sql, feature_list, feature_sql
from churnlens.features.spine import build_spine, cutoff_dates, set_cutoffs
from churnlens.settings import Settings


@dataclass
class FeatureFrame:
    """Rows keyed by (customer_id, cutoff) with feature columns (and labels for training)."""

    frame: pd.DataFrame
    features: list[Feature]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def compute_features(ds: DataSet, settings: Settings, with_labels: bool = False) -> pd.DataFrame:
    """Features for every row of table `spine` (which must exist), as a pandas frame.

    with_labels: also join table `labels` (built by `churnlens.features.labels.build_labels`); the
    join runs in DuckDB so that only one frame is ever materialised in pandas.
    """
    if not ds.derived:
        ds.con.execute(f"CREATE TABLE events_daily AS {events_daily_sql(settings.features)}")
        ds.derived = True
    sql = feature_sql(settings.features, ds.attributes)
    if with_labels:
        cols = ", ".join(f"l.{c}" for c in LABEL_COLUMNS)
        sql = (f"SELECT f.*, {cols} FROM ({sql}) f JOIN labels l "
               "ON l.customer_id = f.customer_id AND l.cutoff = f.cutoff")
    # Through Arrow, strings arrive as categories: a fraction of the memory of Python strings.
    # Streamed in batches so DuckDB never holds the whole result at once.
    reader = ds.con.sql(sql).to_arrow_reader(100_000)
    frame = pa.Table.from_batches(reader).to_pandas(strings_to_categorical=True)
    frame["customer_id"] = frame["customer_id"].astype(str)
    # Sorted here, not in SQL: an ORDER BY would make DuckDB hold the whole result.
    frame = frame.sort_values(["customer_id", "cutoff"], ignore_index=True)
    for f in feature_list(settings.features, ds.attributes):
        if f.kind == "numeric":
            frame[f.name] = frame[f.name].astype("float64")
    return frame


def build_training_set(ds: DataSet, settings: Settings) -> FeatureFrame:
    """Features and labels for every active customer at every cutoff in the history.

    Returns a FeatureFrame whose frame has customer_id, cutoff, the features and the label
    columns of `churnlens.features.labels`. Raises ValueError when no customer is ever active.
    """
    set_cutoffs(ds, cutoff_dates(ds, settings.cutoffs))
    n = build_spine(ds, settings.churn)
    if n == 0:
        raise ValueError("no customer is active at any cutoff: check the churn definition "
                         "and that subscriptions (or events) cover the history")
    build_labels(ds, settings.churn, settings.horizon_days, settings.ltv.horizon_days)
    frame = compute_features(ds, settings, with_labels=True)
    return FeatureFrame(frame, feature_list(settings.features, ds.attributes))


def build_snapshot(ds: DataSet, as_of: str | pd.Timestamp, settings: Settings) -> FeatureFrame:
    """Features of every customer active at AS_OF (one cutoff), for scoring.

    Raises ValueError when AS_OF is not a date or lies after the end of the observed data.
    """
    try:
        as_of = pd.Timestamp(as_of).tz_localize(None).normalize()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"as-of date {as_of!r} is not a date ({exc}); use YYYY-MM-DD") from None
    if as_of > ds.observed_until:
        raise ValueError(
            f"as-of date {as_of.date()} is after the end of the data "
            f"({ds.observed_until.date()}): features would miss records; pick an earlier date"
        )
    set_cutoffs(ds, [as_of])
    build_spine(ds, settings.churn)
    return FeatureFrame(compute_features(ds, settings),
                        feature_list(settings.features, ds.attributes))


def customer_lifetimes(ds: DataSet, settings: Settings) -> pd.DataFrame:
    """Each customer's signup, first churn (if observed) and lifetime in days, for cohorts.

    Returns customer_id, signed_up_at, churned_at (NaT when still a customer), lifetime_days
    (to churn, or to the end of the data) and churned (bool).
    """
    from churnlens.features.spine import build_churn_events

    build_churn_events(ds, settings.churn)
    return ds.con.execute("""
        SELECT c.customer_id, c.signed_up_at, min(e.churned_at) AS churned_at,
               date_diff('second', c.signed_up_at,
                         coalesce(min(e.churned_at), $until)) / 86400.0 AS lifetime_days,
               min(e.churned_at) IS NOT NULL AS churned
        FROM customers c LEFT JOIN churn_events e USING (customer_id)
        GROUP BY 1, 2 ORDER BY 1
    """, {"until": ds.observed_until}).df()
