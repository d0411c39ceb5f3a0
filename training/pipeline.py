"""`churnlens train`: data source -> registered, evaluated, explained model in MLflow.

Each step is a function of its inputs; `train` only wires them together and logs.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import yaml

from churnlens.features.build import FeatureFrame, build_training_set
from churnlens.features.loading import fingerprint, load_source
from churnlens.settings import Settings
from churnlens.training import plots
from churnlens.training.bundle import ChurnModel
from churnlens.training.evaluation import (
    SURVIVAL_GRID,
    Evaluation,
    evaluate_ltv,
    evaluate_risk,
    evaluate_survival,
    oracle_probabilities,
)
from churnlens.training.reference import reference_distributions
from churnlens.training.report import render
from churnlens.training.risk import RiskModel
from churnlens.training.split import Split, temporal_split
from churnlens.training.survival import SurvivalModel
from churnlens.training.tracking import GateResult, configure, log_model, register_and_gate


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    gate: GateResult
    metrics: dict[str, float]
    report_path: Path
    notes: list[str] = field(default_factory=list)


def fit_model(ff: FeatureFrame, split: Split, settings: Settings) -> ChurnModel:
    """Fit the risk and survival models on their slices and bundle them for scoring."""
    seed = settings.training.seed
    risk = RiskModel(ff.features, settings.training.lightgbm, seed)
    risk.fit(split.train, split.validation, split.calibration)
    survival = SurvivalModel(ff.features, seed=seed).fit(split.survival_train, split.validation)
    reference = reference_distributions(split.train, ff.features, risk.predict_proba(split.test))
    return ChurnModel(
        features=ff.features, risk=risk, survival=survival,
        horizon_days=settings.horizon_days, ltv=settings.ltv, tiers=settings.tiers,
        playbooks=settings.playbooks, top_n=settings.drivers.top_n,
        reference=reference,
    )


def evaluate(model: ChurnModel, ff: FeatureFrame, split: Split, source) -> Evaluation:
    ev = Evaluation(notes=list(split.notes))
    oracle = oracle_probabilities(source, split.test)
    evaluate_risk(model, split.train, split.test, oracle, ev)
    evaluate_survival(model, split.survival_train, split.test, ev)
    evaluate_ltv(model, ff.frame, ev)
    return ev


def make_plots(model: ChurnModel, split: Split, ev: Evaluation) -> dict[str, bytes]:
    """The run's plots as PNG bytes, keyed by name."""
    a = ev.arrays
    scores = {"model": a["p"], "logistic regression": a["p_logistic"]}
    if "p_oracle" in a:
        scores["oracle"] = a["p_oracle"]
    sample = split.test.sample(min(len(split.test), 3000), random_state=0)
    contrib = model.risk.contributions(sample)
    figs = {
        "calibration": plots.calibration(a["y"], a["p"]),
        "gain": plots.gain(a["y"], scores),
        "survival_by_tier": plots.survival_by_tier(
            a["duration"], a["event"], np.asarray(model.tiers_of(a["p"])), a["surv"],
            SURVIVAL_GRID),
        "drivers": plots.driver_summary(contrib, {f.name: f.group for f in model.features}),
    }
    if "ltv_pred" in a:
        figs["ltv_deciles"] = plots.ltv_deciles(a["ltv_actual"], a["ltv_pred"])
    images = {}
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plots.plt.close(fig)
        images[name] = buf.getvalue()
    return images


def _log(settings: Settings, params_path: Path | None, fp: dict, ev: Evaluation,
         images: dict[str, bytes], report_html: str) -> None:
    flat = pd.json_normalize(json.loads(settings.model_dump_json()), sep=".").iloc[0]
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    if params_path is not None and params_path.exists():
        mlflow.log_artifact(str(params_path))
    mlflow.log_dict(fp, "data_fingerprint.json")
    mlflow.set_tags({f"data.{k}": v for k, v in fp.items()})
    mlflow.log_metrics({k: v for k, v in ev.metrics.items() if np.isfinite(v)})
    for name, png in images.items():
        mlflow.log_image(_png_array(png), f"plots/{name}.png")
    mlflow.log_text("\n".join(ev.notes), "notes.txt")
    mlflow.log_text(report_html, "report.html")
    mlflow.log_text(yaml.safe_dump(json.loads(settings.model_dump_json())), "settings.yaml")


def _png_array(png: bytes) -> np.ndarray:
    return plots.plt.imread(io.BytesIO(png), format="png")


def train(settings: Settings, source=None, promote: str = "auto",
          params_path: Path | None = None, log=print) -> TrainResult:
    """Train, evaluate, log to MLflow, register and gate. Returns what happened."""
    source = source or settings.data.source
    t0 = time.perf_counter()
    ds = load_source(source, settings.data.observed_until)
    ff = build_training_set(ds, settings)
    log(f"training set: {len(ff.frame):,} rows, {ff.frame['cutoff'].nunique()} cutoffs "
        f"({time.perf_counter() - t0:.1f} s)")
    split = temporal_split(ff.frame, settings.horizon_days, settings.training)
    log(f"split by {split.method}: train {len(split.train):,}, validation "
        f"{len(split.validation):,}, calibration {len(split.calibration):,}, test "
        f"{len(split.test):,} rows")
    configure(settings.mlflow)
    with mlflow.start_run() as run:
        model = fit_model(ff, split, settings)
        model.info = {"name": settings.mlflow.model_name, "version": None,
                      "run_id": run.info.run_id, "trained_at": pd.Timestamp.now("UTC").isoformat()}
        log(f"models fitted ({time.perf_counter() - t0:.1f} s): risk calibrated by "
            f"{model.risk.calibration_method_}, survival {model.survival.chosen_}")
        ev = evaluate(model, ff, split, source)
        model.info["metrics"] = {k: v for k, v in ev.metrics.items() if k.startswith("test.risk.")}
        images = make_plots(model, split, ev)
        report_html = render(f"churnlens run {run.info.run_name}", ev.metrics, ev.notes, images)
        _log(settings, params_path, fingerprint(ds), ev, images, report_html)
        model_uri = log_model(model, split.test)
        auc = ev.metrics["test.risk.roc_auc"]
        gate = register_and_gate(model_uri, settings.mlflow.model_name, auc, split.test, promote)
        mlflow.set_tags({"promotion": gate.reason, "registered_version": gate.version})
    report_path = Path(settings.paths.work_dir) / "reports" / f"run-{run.info.run_id}.html"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report_html)
    return TrainResult(run.info.run_id, model_uri, gate, ev.metrics, report_path, ev.notes)
