"""Training sets over all cutoffs, and feature snapshots as of one date.

These are the two ways features leave this package; training, the endpoint and the batch
scorer all go through them, so a feature has exactly one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from churnlens.settings import Settings
from features.labels import build_labels
from features.loading import DataSet
from features.queries import Feature, feature_list, feature_sql
from features.spine import build_spine, cutoff_dates, set_cutoffs


@dataclass
class FeatureFrame:
    """Rows keyed by (customer_id, cutoff) with feature columns (and labels for training)."""

    frame: pd.DataFrame
    features: list[Feature]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def compute_features(ds: DataSet, settings: Settings) -> pd.DataFrame:
    """Features for every row of table `spine` (which must exist), as a pandas frame."""
    sql = feature_sql(settings.features, ds.attributes)
    frame = ds.con.execute(sql).df()
    for f in feature_list(settings.features, ds.attributes):
        if f.kind == "numeric":
            frame[f.name] = frame[f.name].astype("float64")
    return frame


def build_training_set(ds: DataSet, settings: Settings) -> FeatureFrame:
    """Features and labels for every active customer at every cutoff in the history.

    Returns a FeatureFrame whose frame has customer_id, cutoff, the features and the label
    columns of `features.labels`. Raises ValueError when no customer is ever active.
    """
    set_cutoffs(ds, cutoff_dates(ds, settings.cutoffs))
    n = build_spine(ds, settings.churn)
    if n == 0:
        raise ValueError("no customer is active at any cutoff: check the churn definition "
                         "and that subscriptions (or events) cover the history")
    feats = compute_features(ds, settings)
    labels = build_labels(ds, settings.churn, settings.horizon_days, settings.ltv.horizon_days)
    frame = feats.merge(labels, on=["customer_id", "cutoff"], how="left", validate="1:1")
    return FeatureFrame(frame, feature_list(settings.features, ds.attributes))


def build_snapshot(ds: DataSet, as_of: str | pd.Timestamp, settings: Settings) -> FeatureFrame:
    """Features of every customer active at AS_OF (one cutoff), for scoring.

    Raises ValueError when AS_OF is not a date or lies after the end of the observed data.
    """
    try:
        as_of = pd.Timestamp(as_of).tz_localize(None)
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
