"""`churnlens train`: data source -> registered, evaluated, explained model in MLflow.

Each step is a function of its inputs; `train` only wires them together, says what each
stage did and how long it took, and logs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import yaml

from churnlens.features.build import FeatureFrame, build_training_set
from churnlens.features.loading import DataSet, fingerprint, load_source
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
from churnlens.training.ltv_selection import fit_ltv
from churnlens.training.progress import Stages, boosting_bar, candidates_bar, quiet_third_party
from churnlens.training.reference import reference_distributions
from churnlens.training.report import render, report_title, run_subtitle
from churnlens.training.risk import RiskModel
from churnlens.training.split import Split, temporal_split
from churnlens.training.summary import description, run_facts
from churnlens.training.survival import SurvivalModel
from churnlens.training.tracking import (
    GateResult,
    configure,
    describe,
    log_datasets,
    log_model,
    register_and_gate,
    runs_page,
)


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    gate: GateResult
    metrics: dict[str, float]
    report_path: Path
    notes: list[str] = field(default_factory=list)
    experiment_id: str = ""
    runs_url: str = ""  # the experiment's runs in the MLflow UI (`tracking.runs_page`)


def fit_model(ff: FeatureFrame, split: Split, settings: Settings,
              stages: Stages | None = None, ds: DataSet | None = None) -> ChurnModel:
    """Fit the risk, survival and LTV models on their slices and bundle them for scoring.

    stages: where to say what each model did, with progress bars; None = silently.
    ds: the loaded data (its shape picks the LTV candidates, `ltv_selection.fit_ltv`).
    """
    risk = _fit_risk(ff, split, settings, stages)
    survival = _fit_survival(ff, split, settings.training.seed, stages)
    ltv = fit_ltv(ff.frame, ff.features, survival, settings, ds)
    if stages is not None:
        stages.line("LTV model", ltv.summary, ltv.seconds)
    reference = reference_distributions(split.train, ff.features, risk.predict_proba(split.test))
    return ChurnModel(
        features=ff.features, risk=risk, survival=survival,
        horizon_days=settings.horizon_days, ltv=settings.ltv, tiers=settings.tiers,
        playbooks=settings.playbooks, top_n=settings.drivers.top_n,
        reference=reference, ltv_model=ltv.model,
    )


def _fit_risk(ff: FeatureFrame, split: Split, settings: Settings, stages: Stages | None
              ) -> RiskModel:
    risk = RiskModel(ff.features, settings.training.lightgbm, settings.training.seed)
    if stages is None:
        return risk.fit(split.train, split.validation, split.calibration)
    with boosting_bar("risk: LightGBM") as tick:
        risk.fit(split.train, split.validation, split.calibration, callbacks=[tick])
    stages.line("risk model", f"LightGBM, {risk.best_iteration_} trees (early stopping on "
                f"validation, at most {settings.training.lightgbm.n_estimators})",
                risk.seconds_["boosting"])
    losses = ", ".join(f"{m} {v:.5f}" for m, v in risk.calibration_log_loss_.items())
    stages.line("calibration", f"{risk.calibration_method_} kept (cross-fitted log loss on "
                f"the calibration slice: {losses}"
                + (f"; {risk.calibration_note_}" if risk.calibration_note_ else "") + ")",
                risk.seconds_["calibration"])
    return risk


def _fit_survival(ff: FeatureFrame, split: Split, seed: int, stages: Stages | None
                  ) -> SurvivalModel:
    survival = SurvivalModel(ff.features, seed=seed)
    if stages is None:
        return survival.fit(split.survival_train, split.validation)
    with candidates_bar(survival.candidates_for(split.survival_train)) as (tick, advance):
        def report(name: str, scores: dict) -> None:
            advance(name, scores)
            stages.line(f"survival {name}", f"validation IBS {scores['ibs']:.4f}, "
                        f"concordance {scores['concordance']:.4f}", scores["seconds"])
        survival.fit(split.survival_train, split.validation, callbacks=[tick],
                     on_candidate=report)
    stages.line("survival model", f"{survival.chosen_} kept (lowest validation IBS), time axis: "
                f"{survival.support()['time_axis']}")
    for note in survival.extrapolation_notes():
        stages.log(f"  note: {note}")
    return survival


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
         images: dict[str, bytes], facts: dict[str, str]) -> None:
    flat = pd.json_normalize(json.loads(settings.model_dump_json()), sep=".").iloc[0]
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    if params_path is not None and params_path.exists():
        mlflow.log_artifact(str(params_path))
    mlflow.log_dict(fp, "data_fingerprint.json")
    mlflow.set_tags({f"data.{k}": v for k, v in fp.items()})
    mlflow.set_tags({**facts, "model_name": settings.mlflow.model_name})
    mlflow.log_metrics({k: v for k, v in ev.metrics.items() if np.isfinite(v)})
    for name, png in images.items():
        mlflow.log_image(_png_array(png), f"plots/{name}.png")
    mlflow.log_text("\n".join(ev.notes), "notes.txt")
    mlflow.log_text(yaml.safe_dump(json.loads(settings.model_dump_json())), "settings.yaml")


def _png_array(png: bytes) -> np.ndarray:
    return plots.plt.imread(io.BytesIO(png), format="png")


def train(settings: Settings, source=None, promote: str = "auto",
          params_path: Path | None = None, log=print) -> TrainResult:
    """Train, evaluate, log to MLflow, register and gate. Returns what happened.

    log: called with one line per stage (what it did and its time); progress bars of the
    long stages go to stderr when it is a terminal.
    """
    source = source or settings.data.source
    stages = Stages(log)
    with quiet_third_party():
        with stages("load") as stage:
            ds = load_source(source, settings.data.observed_until,
                             horizon_days=settings.horizon_days, activity=settings.churn.activity,
                             value_event=settings.features.value_event)
            customers = ds.report.rows_kept.get("customers", 0)
            stage.detail = (f"{customers:,} customers from {source}, observed until "
                            f"{ds.observed_until.date()}")
        with stages("training set") as stage:
            ff = build_training_set(ds, settings)
            stage.detail = (f"{len(ff.frame):,} (customer, cutoff) rows over "
                            f"{ff.frame['cutoff'].nunique()} cutoffs, {len(ff.features)} features")
        for note in [*ds.report.brief(), *ff.notes]:
            log(f"  note: {note}")
        with stages("split") as stage:
            split = temporal_split(ff.frame, settings.horizon_days, settings.training)
            stage.detail = (f"by {split.method}: train {len(split.train):,}, validation "
                            f"{len(split.validation):,}, calibration {len(split.calibration):,}"
                            f", test {len(split.test):,} rows")
        with stages("tracking") as stage:
            uri = stage.detail = configure(settings.mlflow)
        with mlflow.start_run() as run:
            result = _tracked(settings, source, promote, params_path, stages, ds, customers,
                              ff, split, run)
    result.experiment_id = run.info.experiment_id
    result.runs_url = runs_page(uri, run.info.experiment_id)
    stages.done(f"run {run.info.run_id}; the runs of experiment {settings.mlflow.experiment} "
                f"in the MLflow UI: {result.runs_url}")
    return result


def _tracked(settings: Settings, source, promote: str, params_path: Path | None,
             stages: Stages, ds, customers: int, ff: FeatureFrame, split: Split, run
             ) -> TrainResult:
    """The stages inside the MLflow run: models, evaluation, plots, logging, registry."""
    name = settings.mlflow.model_name
    model = fit_model(ff, split, settings, stages, ds)
    model.info = {"name": name, "version": None, "run_id": run.info.run_id,
                  "trained_at": pd.Timestamp.now("UTC").isoformat()}
    with stages("evaluation") as stage:
        ev = evaluate(model, ff, split, source)
        m = ev.metrics
        stage.detail = (f"test ROC-AUC {m['test.risk.roc_auc']:.4f} (logistic "
                        f"{m['test.logistic.roc_auc']:.4f}), concordance "
                        f"{m['test.survival.concordance']:.4f}"
                        + (f", LTV Spearman {m['test.ltv.spearman']:.4f}"
                           if "test.ltv.spearman" in m else ""))
    model.info["metrics"] = {k: v for k, v in ev.metrics.items() if k.startswith("test.risk.")}
    with stages("plots") as stage:
        images = make_plots(model, split, ev)
        stage.detail = ", ".join(images)
    origin = "in-memory tables" if isinstance(source, dict) else str(source)
    facts = run_facts(origin, customers, ff.frame, split, model)
    with stages("logging") as stage:
        _log(settings, params_path, fingerprint(ds), ev, images, facts)
        log_datasets({"training": split.train, "validation": split.validation,
                      "calibration": split.calibration, "test": split.test}, source)
        model_uri = log_model(model, split.test)
        stage.detail = (f"params, {len(ev.metrics)} metrics, {len(images)} plots, 4 datasets "
                        f"and the model to run {run.info.run_name}")
    with stages("registry") as stage:
        gate = register_and_gate(model_uri, name, ev.metrics, split.test, promote)
        stage.detail = (f"{name} v{gate.version}: "
                        f"{'promoted to champion' if gate.promoted else 'not promoted'}, "
                        f"{gate.reason}")
    report_path = _report(settings, run, stages, ev, images, facts, gate)
    return TrainResult(run.info.run_id, model_uri, gate, ev.metrics, report_path, ev.notes)


def _report(settings: Settings, run, stages: Stages, ev: Evaluation, images: dict[str, bytes],
            facts: dict[str, str], gate: GateResult) -> Path:
    """Describe the run and its model version, and write the report (logged and to disk)."""
    name = settings.mlflow.model_name
    with stages("report") as stage:
        facts["registered_version"] = gate.version
        text = description(facts, ev.metrics, name, gate.version, gate.reason)
        mlflow.set_tags({"promotion": gate.reason, "registered_version": gate.version})
        describe(run.info.run_id, text, name, gate.version, text)
        report_html = render(report_title(facts, name), ev.metrics, ev.notes, images, facts,
                             run_subtitle(run.info.run_name, run.info.run_id,
                                          run.info.start_time))
        mlflow.log_text(report_html, "report.html")
        path = Path(settings.paths.work_dir) / "reports" / f"run-{run.info.run_id}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report_html)
        stage.detail = f"{path}; the run and v{gate.version} described in MLflow"
    return path
