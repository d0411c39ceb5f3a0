"""What a training run was, in words: the facts logged as run tags, and the descriptions
the MLflow UI shows on the run and on its registered model version.

The facts are plain strings (MLflow tags), so the HTML report can be rebuilt from any run
(`churnlens.training.report.report_for_run`) with the same wording as at training time.
"""

from __future__ import annotations

import pandas as pd

from churnlens.training.bundle import ChurnModel
from churnlens.training.split import Split

BASELINES = {"logistic": "logistic regression", "kaplan_meier": "Kaplan-Meier"}
CALIBRATIONS = {"none": "none (LightGBM's own probabilities)", "platt": "Platt scaling",
                "isotonic": "isotonic regression"}


def run_facts(source_name: str, customers: int, frame: pd.DataFrame, split: Split,
              model: ChurnModel) -> dict[str, str]:
    """Tags describing the data, the split and the models kept, for the run and report.

    source_name: how the data source is named to a reader (its path); customers: customers
    loaded; frame: the whole training set (customer, cutoff) rows.
    """
    risk, survival = model.risk, model.survival
    test = split.boundaries.get("test", [])
    facts = {
        "data.source": source_name,
        "data.customers_loaded": f"{customers:,}",
        "data.rows": f"{len(frame):,}",
        "data.cutoffs": f"{frame['cutoff'].nunique()}",
        "split.method": split.method,
        "split.rows": ", ".join(f"{name} {len(getattr(split, name)):,}"
                                for name in ("train", "validation", "calibration", "test")),
        "split.test_cutoffs": ", ".join(str(pd.Timestamp(c).date()) for c in test),
        "risk.trees": str(risk.best_iteration_),
        "risk.calibration": risk.calibration_method_,
        "survival.model": survival.chosen_,
    }
    for method, loss in risk.calibration_log_loss_.items():
        facts[f"risk.calibration_log_loss.{method}"] = f"{loss:.5f}"
    if risk.calibration_note_:
        facts["risk.calibration_note"] = risk.calibration_note_
    for name, scores in survival.scores_.items():
        facts[f"survival.validation.{name}"] = (f"IBS {scores['ibs']:.4f}, concordance "
                                                f"{scores['concordance']:.4f}")
    return facts


def _calibration_scores(facts: dict[str, str], kept: str | None) -> tuple[str, dict[str, str]]:
    # Runs from before log loss chose the calibration kept the lowest Brier score instead.
    for metric, label in (("log_loss", "the simplest method within one standard error of "
                           "the lowest log loss"), ("brier", "the lowest Brier score")):
        scores = {k.rsplit(".", 1)[1]: v for k, v in facts.items()
                  if k.startswith(f"risk.calibration_{metric}.")}
        if kept in scores:
            return label, scores
    return "", {}


def calibration_line(facts: dict[str, str]) -> str:
    """Which calibration was kept and why, from `run_facts` tags ('' if they are absent)."""
    kept = facts.get("risk.calibration")
    label, scores = _calibration_scores(facts, kept)
    if not scores:
        return ""
    others = "; ".join(f"{m} {v}" for m, v in scores.items() if m != kept)
    note = facts.get("risk.calibration_note", "")
    return (f"Calibration kept: {CALIBRATIONS.get(kept, kept)}, {label} when fitted "
            f"on one half of the calibration slice and scored on the other ({kept} "
            f"{scores[kept]}{'; ' + others if others else ''}; lower is better)."
            + (f" {note[0].upper()}{note[1:]}." if note else ""))


def survival_line(facts: dict[str, str]) -> str:
    """Which survival model was kept and how the candidates scored on validation."""
    kept = facts.get("survival.model")
    scores = {k.rsplit(".", 1)[1]: v for k, v in facts.items()
              if k.startswith("survival.validation.")}
    if not kept:
        return ""
    detail = "; ".join(f"{n}: {s}" for n, s in scores.items())
    return (f"Survival model kept: {kept}, the lowest integrated Brier score on the "
            f"validation slice (concordance breaks near-ties). {detail}.")


def _vs(metrics: dict[str, float], key: str, model: str, baseline: str, label: str) -> str:
    ours, theirs = metrics.get(f"test.{model}.{key}"), metrics.get(f"test.{baseline}.{key}")
    if ours is None:
        return ""
    if theirs is None:
        return f"{label} {ours:.4f}"
    return (f"{label} {ours:.4f} vs {theirs:.4f} for {BASELINES.get(baseline, baseline)} "
            f"({ours - theirs:+.4f})")


def description(facts: dict[str, str], metrics: dict[str, float], model_name: str,
                version: str | None, promotion: str) -> str:
    """The run's and the model version's description (markdown): what data, what won, by
    how much, and what the promotion gate decided."""
    title = f"{model_name} v{version}" if version else model_name
    data = (f"Trained on {facts['data.source']} ({facts['data.customers_loaded']} customers; "
            f"{facts['data.rows']} customer-cutoff rows over {facts['data.cutoffs']} cutoffs), "
            f"split by {facts['split.method']}: {facts['split.rows']} rows"
            + (f", test cutoffs {facts['split.test_cutoffs']}." if facts["split.test_cutoffs"]
               else "."))
    risk = _vs(metrics, "roc_auc", "risk", "logistic", "test ROC-AUC")
    if "test.oracle.roc_auc" in metrics:
        risk += f"; the generator's true probabilities reach {metrics['test.oracle.roc_auc']:.4f}"
    survival = _vs(metrics, "concordance", "survival", "kaplan_meier", "test concordance")
    ltv = ""
    if "test.ltv.spearman" in metrics:
        ltv = (f"- LTV: Spearman {metrics['test.ltv.spearman']:.4f}, total error "
               f"{metrics['test.ltv.total_error_pct']:+.1f}% (predicted minus realised)\n")
    return (f"**{title}**. {data}\n\n"
            f"- Risk: LightGBM, {facts['risk.trees']} trees, "
            f"{CALIBRATIONS.get(facts['risk.calibration'], facts['risk.calibration'])}; "
            f"{risk}\n"
            f"- Survival: {facts['survival.model']}; {survival}\n"
            f"{ltv}"
            f"- Promotion: {promotion}\n")
