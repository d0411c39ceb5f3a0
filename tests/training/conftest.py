"""Fixtures shared by the training tests: one survival fit on the sample data."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.fixtures_model import built_once


def _censor(frame: pd.DataFrame, boundary: pd.Timestamp) -> pd.DataFrame:
    """Administrative censoring: nothing observed after BOUNDARY."""
    end = frame["cutoff"] + pd.to_timedelta(frame["duration_days"], unit="D")
    late = end > boundary
    return frame.assign(
        duration_days=np.where(late, (boundary - frame["cutoff"]).dt.total_seconds() / 86400,
                               frame["duration_days"]),
        event=np.where(late, 0, frame["event"]))


def _temporal_split(frame: pd.DataFrame):
    """Test: the last 2 labelled cutoffs. Train: cutoffs with cutoff + 90 d <= last labelled
    - 4 months, less the last 3, which validate; each slice censored where the next begins."""
    labelled = np.sort(frame.loc[frame["churned"].notna(), "cutoff"].unique())
    end = pd.Timestamp(labelled[-1]) - pd.DateOffset(months=4)
    eligible = np.sort(frame.loc[frame["cutoff"] + pd.Timedelta(days=90) <= end, "cutoff"].unique())
    test = frame[frame["cutoff"].isin(labelled[-2:])]
    validation = _censor(frame[frame["cutoff"].isin(eligible[-3:])], pd.Timestamp(labelled[-2]))
    train = _censor(frame[frame["cutoff"].isin(eligible[:-3])], pd.Timestamp(eligible[-3]))
    return train, validation, test


def _fitted_sample():
    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    from churnlens.features.sample import generate_sample, write_sample
    from churnlens.settings import Settings
    from churnlens.training.survival import SurvivalModel

    with tempfile.TemporaryDirectory() as tmp:
        write_sample(generate_sample(4000, seed=3), Path(tmp) / "src")
        ff = build_training_set(load_source(Path(tmp) / "src"), Settings())
    train, validation, test = _temporal_split(ff.frame)
    model = SurvivalModel(ff.features, seed=42).fit(train, validation)
    return ff.features, ff.frame, train, validation, test, model


@pytest.fixture(scope="session")
def survival_sample(tmp_path_factory):
    """(features, frame, train, validation, test, model) from 4000 sample customers, seed 3.

    Built once per run, so that the survival and LTV tests, whichever worker runs them,
    share one sample and one fit (about a minute).
    """
    return built_once(tmp_path_factory, "survival-sample", _fitted_sample)
