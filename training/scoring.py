"""The scoring core: feature rows in, score columns out, from a trained `ChurnModel`.

Below training's pipeline and serving alike: the MLflow pyfunc (`churnlens.training.pyfunc`),
the promotion gate, the endpoint and the batch scorer (through `churnlens.serving.core`,
which turns these columns into score records) all call `score_frame` / `score_arrays`, so
every path gives the same numbers for the same feature row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnlens.training.bundle import ChurnModel
from churnlens.training.drivers import risk_tier
from churnlens.training.ltv import monthly_grid

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


def score_arrays(model: ChurnModel, rows: Prepared, num_threads: int | None = None
                 ) -> dict[str, np.ndarray]:
    """The score columns of prepared rows as arrays (`score_frame` without the frame);
    the survival model predicts once for its four points, the LTV months and the area."""
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
    out["expected_ltv"] = model.expected_ltv(checked, monthly_survival=monthly)
    return out


def score_frame(model: ChurnModel, frame: pd.DataFrame | Prepared,
                num_threads: int | None = None) -> pd.DataFrame:
    """Scores for feature rows as flat columns (one row per input row, same order).

    Columns: churn_probability, risk_tier, survival_30/90/180/365,
    expected_remaining_days, expected_ltv. Raises FeatureInputError on bad input.
    """
    rows = prepare(model, frame)
    return pd.DataFrame(score_arrays(model, rows, num_threads), index=rows.frame.index)
