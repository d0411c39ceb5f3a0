"""MLflow set-up (experiment kind, data inputs, the runs link) and what training prints."""

from __future__ import annotations

import logging
import os
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from churnlens.settings import MlflowSettings
from churnlens.training.progress import Stages, quiet_third_party
from churnlens.training.tracking import EXPERIMENT_KIND, configure, log_datasets, runs_page

# Real MLflow runs in a local store (about 10 s of imports and store set-up): make test only.
pytestmark = pytest.mark.slow


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return tmp_path


def test_the_experiment_is_a_model_training_one_and_a_chosen_kind_is_kept(store):
    settings = MlflowSettings(experiment="churn-test")
    configure(settings)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("churn-test")
    key, kind = EXPERIMENT_KIND
    assert experiment.tags[key] == kind == "custom_model_development"
    assert "Model training" in experiment.tags["mlflow.note.content"]
    client.set_experiment_tag(experiment.experiment_id, key, "genai_development")
    configure(settings)  # someone switched it in the UI: that choice stays
    assert client.get_experiment(experiment.experiment_id).tags[key] == "genai_development"


def test_slices_are_logged_as_dataset_inputs_with_a_digest_of_every_row(store):
    configure(MlflowSettings(experiment="churn-test"))
    frame = pd.DataFrame({"customer_id": ["a", "b", "c"], "mrr": [1.0, 2.0, np.nan],
                          "churned": [0, 1, 0]})
    changed = frame.assign(mrr=[1.0, 2.0, 3.0])
    with mlflow.start_run() as run:
        log_datasets({"training": frame, "test": changed}, store / "sample")
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert set(by_context) == {"training", "test"}
    assert by_context["training"].digest != by_context["test"].digest
    assert len(by_context["training"].digest) == 16
    assert (store / "sample").as_uri() in by_context["training"].source
    assert '"num_rows": 3' in by_context["training"].profile


@pytest.mark.parametrize(("uri", "page"), [
    ("sqlite:///mlflow.db", "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"),
    ("https://mlflow.example.com/", "https://mlflow.example.com/#/experiments/7/runs?"
                                    "workflowType=machine_learning"),
])
def test_the_runs_link_opens_the_runs_of_the_experiment(uri, page):
    assert runs_page(uri, "7") == page


def test_stage_lines_name_the_stage_its_result_and_its_time():
    lines = []
    stages = Stages(lines.append)
    with stages("load") as stage:
        stage.detail = "3 customers"
    stages.line("survival weibull_aft", "IBS 0.0805", 12.34)
    stages.line("survival model", "weibull_aft kept")
    assert re.fullmatch(r"load {19}3 customers  \(\d+\.\d s\)", lines[0])
    assert lines[1] == "survival weibull_aft   IBS 0.0805  (12.3 s)"
    assert lines[2] == "survival model         weibull_aft kept"


def test_third_party_noise_is_quiet_inside_and_restored_after(monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    logger = logging.getLogger("mlflow")
    before = logger.level
    with quiet_third_party():
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
        assert not logger.isEnabledFor(logging.INFO)
        assert logger.isEnabledFor(logging.WARNING)
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    assert logger.level == before
