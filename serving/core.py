"""Score records: feature rows in, the records of DESIGN.md out.

The numbers come from the scoring core, `churnlens.training.scoring` (re-exported here),
which the MLflow pyfunc calls too; this module adds ids, dates, the model reference and
the drivers, for the endpoint and the batch scorer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnlens.training.bundle import ChurnModel
from churnlens.training.drivers import DriverColumns, explain_columns
from churnlens.training.scoring import (
    SURVIVAL_DAYS,
    FeatureInputError,
    Prepared,
    check_features,
    prepare,
    score_arrays,
    score_frame,
)

__all__ = ["SURVIVAL_DAYS", "FeatureInputError", "Prepared", "Scored", "check_features",
           "prepare", "score_arrays", "score_columns", "score_frame", "score_records"]

def _clean(value):
    """JSON-friendly scalar: numpy types to Python, NaN to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass(frozen=True)
class Scored:
    """Score records as columns: what `score_records` turns into one dict per row, and the
    batch scorer into Arrow columns without building the dicts."""

    customer_id: list[str]
    as_of: list[str]  # YYYY-MM-DD
    lifecycle_stage: list
    scores: dict[str, np.ndarray]  # the columns of `score_frame`
    drivers: DriverColumns  # JSON-friendly values


def score_columns(model: ChurnModel, frame: pd.DataFrame | Prepared,
                  as_of: Iterable | None = None, with_drivers: bool = True,
                  num_threads: int | None = None) -> Scored:
    """The parts of the score records of FRAME's rows, as columns (see `score_records`)."""
    rows = prepare(model, frame)
    checked = rows.frame
    scores = score_arrays(model, rows, num_threads)
    if with_drivers:
        contrib = model.risk.contributions(rows.risk, num_threads=num_threads)
        # JSON-friendly already: explain gives str, float or None values.
        drivers = explain_columns(checked, contrib, model.features, model.playbooks,
                                  model.top_n, typical=model.risk.typical_,
                                  matrix=rows.risk if _risk_in_feature_order(model) else None)
    else:
        drivers = DriverColumns.empty(len(checked))
    return Scored(customer_id=[str(v) for v in checked["customer_id"].tolist()],
                  as_of=_dates(checked["cutoff"] if as_of is None else list(as_of)),
                  lifecycle_stage=[_clean(v) for v in checked["lifecycle_stage"].tolist()],
                  scores=scores, drivers=drivers)


def _risk_in_feature_order(model: ChurnModel) -> bool:
    """Whether the risk model's encoded matrix has a column per feature of MODEL.features,
    in order (what `explain_columns` reads it as)."""
    return model.risk.feature_names == [f.name for f in model.features]


def score_records(model: ChurnModel, frame: pd.DataFrame | Prepared,
                  as_of: Iterable | None = None, with_drivers: bool = True,
                  num_threads: int | None = None) -> list[dict]:
    """Score records (DESIGN.md) for feature rows with customer_id and cutoff columns.

    frame: the rows, or `prepare`d rows. as_of defaults to each row's `cutoff`. Drivers
    come from TreeSHAP contributions of the risk model, grouped and mapped to playbooks.
    """
    c = score_columns(model, frame, as_of, with_drivers, num_threads)
    scores = c.scores
    # Columns are converted to Python values once, not per row: a per-row iterrows/at
    # loop cost more than the models themselves on large batches.
    prob, tier = scores["churn_probability"].tolist(), scores["risk_tier"].tolist()
    surv = [scores[f"survival_{d}"].tolist() for d in SURVIVAL_DAYS]
    remaining = scores["expected_remaining_days"].tolist()
    ltv = scores["expected_ltv"].tolist()
    ref, drivers = model.info_ref, c.drivers.rows()
    return [{
        "customer_id": c.customer_id[i],
        "as_of": c.as_of[i],
        "model": dict(ref),
        "churn_probability": prob[i],
        "horizon_days": model.horizon_days,
        "risk_tier": tier[i],
        "lifecycle_stage": c.lifecycle_stage[i],
        "survival": {d: s[i] for d, s in zip(SURVIVAL_DAYS, surv, strict=True)},
        "expected_remaining_days": remaining[i],
        "expected_ltv": ltv[i],
        "currency": model.currency,
        "drivers": drivers[i],
    } for i in range(len(c.customer_id))]


def _dates(values) -> list[str]:
    """YYYY-MM-DD of each date-like value; each distinct value converted once (a batch
    shares one as-of date, and iterating 10,000 Timestamps cost more than the lookup)."""
    days = _DateStrings()
    if isinstance(values, pd.Series) and not values.isna().any():
        codes, uniques = pd.factorize(values)
        strings = [days(u) for u in uniques]
        return [strings[c] for c in codes]
    return [days(v) for v in values]


class _DateStrings:
    """YYYY-MM-DD of a date-like value, converted once per distinct value (batches share one)."""

    def __init__(self):
        self._seen: dict = {}

    def __call__(self, value) -> str:
        # Equal instants in different zones fall on different dates: the zone is in the key.
        key = (type(value), value, getattr(value, "tzinfo", None))
        try:
            return self._seen[key]
        except KeyError:
            out = self._seen[key] = str(pd.Timestamp(value).date())
            return out
        except TypeError:  # an unhashable value: convert it without caching
            return str(pd.Timestamp(value).date())
