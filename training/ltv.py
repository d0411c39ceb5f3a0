"""Expected lifetime value: the discounted revenue a customer is expected to pay over a horizon.

LTV = sum over months m of S(t_m) * monthly revenue * (1 + rate) ** (-t_m / 365.25), where
S is the survival curve from the cutoff and t_m the middle of month m (`monthly_grid`):
invoices fall on each customer's anchor day, which is spread evenly over the month, so
mid-month is the expected time of month m's payment.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MONTH_DAYS = 365.25 / 12


def monthly_grid(horizon_days: int) -> np.ndarray:
    """Days after the cutoff at which each month's revenue is counted: the mid-months.

    The horizon holds round(horizon_days / MONTH_DAYS) months (at least one): 12 for 365.
    Raises ValueError when horizon_days is not positive.
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    months = max(1, round(horizon_days / MONTH_DAYS))
    return (np.arange(months) + 0.5) * MONTH_DAYS


def monthly_revenue(frame: pd.DataFrame) -> np.ndarray:
    """Revenue per month at the cutoff: mrr, or paid_amount_90d / 3 where mrr is missing.

    A frame without one of the two columns (no subscriptions, or no payments, in the source)
    reads the other alone. A row with neither value stays NaN (its LTV is unknown, not zero),
    and so does every row of a frame with neither column (a source without revenue).
    """
    present = [c for c in ("mrr", "paid_amount_90d") if c in frame.columns]
    unknown = np.full(len(frame), np.nan)
    mrr = frame["mrr"].to_numpy(dtype=float) if "mrr" in present else unknown
    paid = (frame["paid_amount_90d"].to_numpy(dtype=float) / 3.0
            if "paid_amount_90d" in present else unknown)
    return np.where(np.isnan(mrr), paid, mrr)


def expected_ltv(survival: np.ndarray, monthly_revenue: np.ndarray, horizon_days: int,
                 annual_discount_rate: float) -> np.ndarray:
    """Expected discounted revenue over the horizon, one value per row.

    survival: S at `monthly_grid(horizon_days)`, shape (rows, months), values in [0, 1];
    monthly_revenue: shape (rows,). Raises ValueError for mismatched shapes, survival values
    outside [0, 1] or a rate outside [0, 1).
    """
    s = np.asarray(survival, dtype=float)
    revenue = np.asarray(monthly_revenue, dtype=float).ravel()
    grid = monthly_grid(horizon_days)
    if s.ndim != 2 or s.shape != (revenue.size, grid.size):
        raise ValueError(f"survival has shape {s.shape}; expected (rows, months) = "
                         f"({revenue.size}, {grid.size}) for a {horizon_days}-day horizon "
                         "(evaluate the curve at monthly_grid(horizon_days))")
    if np.isnan(s).any() or s.min() < 0 or s.max() > 1:
        raise ValueError("survival values must be probabilities in [0, 1] without NaN")
    if not 0 <= annual_discount_rate < 1:
        raise ValueError(f"annual_discount_rate must be in [0, 1), got {annual_discount_rate}")
    discount = (1.0 + annual_discount_rate) ** (-grid / 365.25)
    return revenue * (s @ discount)


def ltv_from_model(survival_model, frame: pd.DataFrame, horizon_days: int,
                   rate: float) -> np.ndarray:
    """Expected LTV of each row of FRAME from a fitted `churnlens.training.survival.SurvivalModel`.

    Raises the errors of `monthly_revenue`, `expected_ltv` and the model's
    `survival_function` (e.g. missing feature columns).
    """
    grid = monthly_grid(horizon_days)
    survival = survival_model.survival_function(frame, grid)
    return expected_ltv(survival, monthly_revenue(frame), horizon_days, rate)
