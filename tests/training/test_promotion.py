"""The promotion floor: a model becomes champion (the first one included) only when it beats
the logistic baseline and the base rate on the test slice; `--promote force` overrides."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from churnlens.training import pipeline
from churnlens.training.evaluation import (
    FLOOR_LOG_LOSS_GAIN,
    FLOOR_OVER_BASE_RATE,
    FLOOR_OVER_LOGISTIC,
    promotion_floor,
)


def metrics(auc: float, logistic: float, loss: float = 0.20, base_loss: float = 0.25) -> dict:
    return {"test.risk.roc_auc": auc, "test.logistic.roc_auc": logistic,
            "test.base_rate.roc_auc": 0.5, "test.risk.log_loss": loss,
            "test.base_rate.log_loss": base_loss}


def test_a_model_that_beats_both_baselines_by_the_margins_clears_the_floor():
    clears, why = promotion_floor(metrics(0.80, 0.80 - FLOOR_OVER_LOGISTIC))
    assert clears and why.startswith("clears the promotion floor: ROC-AUC 0.8000 vs logistic")


@pytest.mark.parametrize(("m", "named"), [
    # The first champion: worse than its own logistic baseline, near no skill.
    (metrics(0.502, 0.568, 0.25, 0.25), ["vs logistic 0.5680", "vs base rate 0.5000",
                                         "log loss 0.2500 vs base rate 0.2500"]),
    (metrics(0.80, 0.8001 + FLOOR_OVER_LOGISTIC), ["vs logistic"]),  # a thin loss
    (metrics(0.5 + FLOOR_OVER_BASE_RATE / 2, 0.4), ["vs base rate 0.5000"]),
    (metrics(0.8, 0.7, 0.25 * (1 - FLOOR_LOG_LOSS_GAIN / 2)), ["log loss"]),
    (metrics(math.nan, 0.7), ["vs logistic", "vs base rate"]),  # e.g. one class in test
])
def test_a_model_short_of_a_margin_is_below_the_floor_and_the_shortfall_is_named(m, named):
    clears, why = promotion_floor(m)
    assert not clears and why.startswith("below the promotion floor on the test slice: ")
    shortfalls = why.split(": ", 1)[1].split("; ")
    assert len(shortfalls) == len(named)
    assert all(text in part for text, part in zip(named, shortfalls, strict=True))


@pytest.mark.slow
def test_a_no_skill_model_is_registered_but_not_promoted(tmp_path, monkeypatch):
    from churnlens.features.sample import generate_sample, write_sample
    from churnlens.settings import Settings
    from churnlens.training.tracking import register_and_gate

    source = tmp_path / "sample"
    write_sample(generate_sample(800, seed=3), source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    real = pipeline.build_training_set

    def shuffled_labels(ds, settings):
        """The real training set with `churned` permuted within each cutoff: no skill."""
        ff = real(ds, settings)
        rng = np.random.default_rng(0)
        labelled = ff.frame["churned"].notna()
        for _, rows in ff.frame[labelled].groupby("cutoff").groups.items():
            ff.frame.loc[rows, "churned"] = rng.permutation(ff.frame.loc[rows, "churned"])
        return ff

    monkeypatch.setattr(pipeline, "build_training_set", shuffled_labels)
    settings = Settings(data={"source": source}, paths={"work_dir": tmp_path / "work"})
    result = pipeline.train(settings, log=lambda *_: None)
    gate = result.gate
    assert not gate.promoted and gate.version == "1"
    assert gate.reason.startswith("below the promotion floor on the test slice: ")
    assert "`--promote force` promotes it anyway" in gate.reason
    assert result.metrics["test.risk.roc_auc"] < 0.5 + FLOOR_OVER_BASE_RATE
    client = MlflowClient()
    assert client.get_model_version("churnlens", "1").run_id == result.run_id
    with pytest.raises(MlflowException, match="champion"):
        client.get_model_version_by_alias("churnlens", "champion")
    assert client.get_run(result.run_id).data.tags["promotion"] == gate.reason
    forced = register_and_gate(result.model_uri, "churnlens", result.metrics, pd.DataFrame(),
                               "force")
    assert forced.promoted and forced.reason.startswith("promotion forced (--promote force); "
                                                        "below the promotion floor")
    assert str(client.get_model_version_by_alias("churnlens", "champion").version) == forced.version
