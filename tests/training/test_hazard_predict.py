"""The discrete-time hazard's prediction: person-period rows built in place (`_expand_all`)
give the hazards of the gather-and-stack path (`_expand` over repeated rows) exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.features.catalog import Feature
from churnlens.training.hazard import N_INTERVALS, DiscreteHazard

FEATURES = [Feature("events_30d", "numeric", "usage", "events in 30 days"),
            Feature("days_to_renewal", "numeric", "contract", "days to renewal"),
            Feature("plan", "category", "contract", "plan")]


@pytest.fixture(scope="module")
def fitted() -> tuple[DiscreteHazard, pd.DataFrame]:
    rng = np.random.default_rng(3)
    n = 3_000
    frame = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "events_30d": np.where(rng.random(n) < 0.1, np.nan, rng.poisson(20, n)).astype(float),
        "days_to_renewal": rng.uniform(0, 365, n),
        "plan": rng.choice(["basic", "pro", None], n, p=[0.6, 0.3, 0.1]),
    })
    rate = 0.002 + 0.004 * (frame["events_30d"].fillna(5) < 15)
    churn_day = rng.exponential(1 / rate)
    censor_day = rng.uniform(30, 400, n)
    duration = np.minimum(churn_day, censor_day)
    event = (churn_day <= censor_day).astype(int)
    return DiscreteHazard(seed=1).fit(frame, FEATURES, duration, event), frame


def _gathered(model: DiscreteHazard, x: np.ndarray) -> np.ndarray:
    """The hazards as `hazards` computed them before `_expand_all`."""
    rows = np.repeat(np.arange(len(x)), N_INTERVALS)
    k = np.tile(np.arange(N_INTERVALS), len(x))
    threads = 1 if len(rows) < 12_000 else 0
    h = model.booster_.predict(model._expand(x, rows, k), num_threads=threads)
    return np.clip(h.reshape(len(x), N_INTERVALS), 1e-6, 1 - 1e-6)


@pytest.mark.parametrize("rows", [1, 7, 2_999])
def test_hazards_equal_the_gathered_expansion(fitted, rows):
    model, frame = fitted
    x = model.encode(frame.iloc[:rows])
    want = _gathered(model, x)
    np.testing.assert_allclose(model.hazards(x), want, rtol=0, atol=1e-12)
    assert np.array_equal(model._expand_all(x), model._expand(
        x, np.repeat(np.arange(rows), N_INTERVALS), np.tile(np.arange(N_INTERVALS), rows)),
        equal_nan=True)
    assert want.std() > 0  # a model that tells rows and intervals apart


def test_float64_matrix_is_expanded_in_float64(fitted):
    model, frame = fitted
    x = model.encode(frame.iloc[:50]).astype(np.float64) + 1e-9  # not a float32 value
    assert model._expand_all(x).dtype == np.float64
    np.testing.assert_allclose(model.hazards(x), _gathered(model, x), rtol=0, atol=1e-12)
