"""Argument checks shared by the sample generators: integers in range, and the end date."""

from __future__ import annotations

import numpy as np
import pandas as pd


def check_integers(checks: list[tuple[str, object, int, int | None]]) -> None:
    """Raise ValueError for the first (name, value, low, high) whose value is not an integer
    in [low, high] (high None: no upper bound); booleans are not integers."""
    for name, value, lo, hi in checks:
        if (not isinstance(value, int | np.integer) or isinstance(value, bool) or value < lo
                or (hi is not None and value > hi)):
            bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
            raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")


def end_date(end, default: pd.Timestamp | None = None) -> pd.Timestamp:
    """END (or DEFAULT when END is None) as a tz-naive UTC midnight between 1980 and 2200.

    Raises ValueError naming the argument and an example when it is not one.
    """
    try:
        ts = default if end is None else pd.Timestamp(end)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"end must be a timestamp such as '2026-11-01', got {end!r}") from exc
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts is pd.NaT or ts != ts.normalize() or not 1980 <= ts.year <= 2200:
        raise ValueError(f"end must be a midnight between 1980 and 2200 such as '2026-11-01', "
                         f"got {end!r}")
    return ts
