"""The scoring core: feature rows in, score records out.

The endpoint, the batch scorer and the MLflow pyfunc all call `score_frame` /
`score_records`, so every path gives the same numbers for the same feature row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnlens.training.bundle import ChurnModel
from churnlens.training.drivers import explain, risk_tier
from churnlens.training.ltv import expected_ltv, monthly_grid, monthly_revenue

SURVIVAL_DAYS = ("30", "90", "180", "365")


class FeatureInputError(ValueError):
    """Feature rows given for scoring are missing columns or hold values of the wrong type."""


def check_features(model: ChurnModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Check and coerce feature rows: every model feature present, numerics numeric.

    Returns a frame (sharing the columns that need no change) with numeric features as
    float64 (None/NaN stays NaN: LightGBM and the survival model treat it as unknown, which
    is what a null means). Raises FeatureInputError naming the missing or malformed columns
    and the offending rows. The input frame is never modified.
    """
    missing = [f.name for f in model.features if f.name not in frame.columns]
    if missing:
        raise FeatureInputError(f"missing feature column(s): {', '.join(missing)}")
    dtypes = frame.dtypes
    changed = {}
    for f in model.features:
        dtype = dtypes[f.name]
        if f.kind != "numeric":
            if not (isinstance(dtype, pd.CategoricalDtype) or dtype == np.dtype(object)
                    or pd.api.types.is_string_dtype(dtype)):
                changed[f.name] = frame[f.name].astype("string").astype(object)
        elif dtype == np.float64:
            continue  # the common case (snapshots, batch chunks): nothing to do
        elif isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            changed[f.name] = frame[f.name].astype("float64")
        else:
            changed[f.name] = _to_float(f.name, frame[f.name])
    if not changed:
        return frame
    out = frame.copy(deep=False)
    for name, values in changed.items():
        out[name] = values
    return out


def _to_float(name: str, col: pd.Series) -> pd.Series:
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        rows = list(col.index[bad][:3])
        raise FeatureInputError(
            f"feature {name} must be a number; rows {rows} hold {list(col[bad][:3])}")
    return values.astype("float64")


@dataclass(frozen=True)
class Prepared:
    """Checked feature rows with the risk and survival models' input matrices.

    Built once by `prepare` for rows that are scored often (a server's snapshot); `take`
    picks rows by position without encoding them again.
    """

    frame: pd.DataFrame
    risk: np.ndarray
    survival: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    def take(self, positions: Sequence[int]) -> Prepared:
        idx = np.asarray(positions, dtype=np.intp)
        return Prepared(self.frame.iloc[idx], self.risk[idx], self.survival[idx])


def prepare(model: ChurnModel, frame: pd.DataFrame | Prepared) -> Prepared:
    """Check FRAME (`check_features`) and encode it for both models, once."""
    if isinstance(frame, Prepared):
        return frame
    checked = check_features(model, frame)
    return Prepared(checked, model.risk.encode(checked), model.survival.encode(checked))


def _scores(model: ChurnModel, rows: Prepared, num_threads: int | None
            ) -> dict[str, np.ndarray]:
    """The score columns of prepared rows; the survival model predicts once."""
    checked = rows.frame
    prob = model.risk.predict_proba(rows.risk, num_threads=num_threads)
    days = np.array([float(d) for d in SURVIVAL_DAYS])
    months = monthly_grid(model.ltv.horizon_days)
    curve, remaining = model.survival.survival_and_remaining(rows.survival,
                                                             np.concatenate([days, months]))
    surv, monthly = curve[:, :days.size], curve[:, days.size:]
    out = {"churn_probability": prob, "risk_tier": risk_tier(prob, model.tiers)}
    for j, d in enumerate(SURVIVAL_DAYS):
        out[f"survival_{d}"] = surv[:, j]
    out["expected_remaining_days"] = remaining
    out["expected_ltv"] = expected_ltv(monthly, monthly_revenue(checked),
                                       model.ltv.horizon_days, model.ltv.annual_discount_rate)
    return out


def score_frame(model: ChurnModel, frame: pd.DataFrame | Prepared,
                num_threads: int | None = None) -> pd.DataFrame:
    """Scores for feature rows as flat columns (one row per input row, same order).

    Columns: churn_probability, risk_tier, survival_30/90/180/365,
    expected_remaining_days, expected_ltv. Raises FeatureInputError on bad input.
    """
    rows = prepare(model, frame)
    return pd.DataFrame(_scores(model, rows, num_threads), index=rows.frame.index)


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
    drivers: list[list[dict]]  # per row, JSON-friendly values


def score_columns(model: ChurnModel, frame: pd.DataFrame | Prepared,
                  as_of: Iterable | None = None, with_drivers: bool = True,
                  num_threads: int | None = None) -> Scored:
    """The parts of the score records of FRAME's rows, as columns (see `score_records`)."""
    rows = prepare(model, frame)
    checked = rows.frame
    scores = _scores(model, rows, num_threads)
    if with_drivers:
        contrib = model.risk.contributions(rows.risk, num_threads=num_threads)
        # JSON-friendly already: explain gives str, float or None values.
        drivers = explain(checked, contrib, model.features, model.playbooks, model.top_n)
    else:
        drivers = [[] for _ in range(len(checked))]
    return Scored(customer_id=[str(v) for v in checked["customer_id"].tolist()],
                  as_of=_dates(checked["cutoff"] if as_of is None else list(as_of)),
                  lifecycle_stage=[_clean(v) for v in checked["lifecycle_stage"].tolist()],
                  scores=scores, drivers=drivers)


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
    ref = model.info_ref
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
        "drivers": c.drivers[i],
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
