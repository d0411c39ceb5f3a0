"""A self-contained HTML report of a training run: metrics by task, notes and plots.

`render` takes plain data (so it can be rebuilt from any MLflow run); `report_for_run`
fetches that data from the tracking store. Metric keys are `test.<column>.<metric>`
(`churnlens.training.evaluation`); each metric belongs to one task, so a new baseline's
column lands in its task's table by its metrics alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from churnlens.training.summary import calibration_line, survival_line
from churnlens.training.survival_support import horizon_table

PLOT_TITLES = {
    "calibration": "Calibration",
    "gain": "Cumulative gain and lift",
    "survival_by_tier": "Survival by risk tier",
    "drivers": "Driver summary",
    "ltv_deciles": "LTV by decile",
}

# task -> metric -> (label, what it measures, with its unit and which way is better)
TASKS: dict[str, dict[str, tuple[str, str]]] = {
    "Risk: P(churn within the horizon)": {
        "roc_auc": ("ROC-AUC", "chance a churner is ranked above a non-churner; 0.5 = random, "
                    "higher is better"),
        "pr_auc": ("PR-AUC", "average precision; the churn rate = random, higher is better"),
        "brier": ("Brier", "mean squared error of the probability; lower is better"),
        "log_loss": ("log loss", "lower is better"),
        "calibration_error": ("calibration error", "mean |observed rate - mean prediction| "
                              "over 10 bins of the score, in probability; lower is better"),
        "top_decile_lift": ("top-decile lift", "churn rate in the riskiest 10% over the "
                            "overall rate; 1 = random (tied scores share the cut)"),
        "top_decile_capture": ("top-decile capture", "share of all churners in the riskiest "
                               "10%; 0.1 = random"),
    },
    "Survival: time to churn": {
        "concordance": ("concordance", "pairs of customers ordered right by expected "
                        "lifetime; 0.5 = random, higher is better"),
        "integrated_brier": ("integrated Brier", "censoring-weighted Brier score of S(t) "
                             "averaged over 30-365 days; lower is better"),
        "time_auc_90": ("AUC at 90 days", "churned by day 90 vs still a customer; higher is "
                        "better (empty when no row is followed that long)"),
        "time_auc_180": ("AUC at 180 days", "as at 90 days, for day 180"),
    },
    "LTV: revenue over the LTV horizon": {
        "normalized_gini": ("normalized Gini", "realised revenue ordered by predicted LTV, "
                            "over the perfect order's; 1 = perfect"),
        "spearman": ("Spearman", "rank correlation of predicted and realised revenue"),
        "decile_mape": ("decile MAPE %", "mean absolute error of the totals of 10 bins of "
                        "predicted LTV, in % of realised; lower is better"),
        "total_error_pct": ("total error %", "predicted minus realised total, in % of "
                            "realised: 0 = unbiased, negative = predicts too little"),
    },
}
# Column names and what each is; the model's own column comes first in its task.
COLUMNS = {
    "risk": ("model", "LightGBM after the calibration kept (see below; none when no "
             "calibration scored better): the probability the model serves"),
    "risk_uncalibrated": ("model, uncalibrated", "the same LightGBM before calibration"),
    "survival": ("model", "the survival model kept (see below)"),
    "ltv": ("model", "the LTV model kept (see the notes): survival curve x revenue rate "
            "with contracts, else the better of the two below; undiscounted here"),
    "bgnbd_gg": ("BG/NBD + Gamma-Gamma", "expected purchases x expected spend, fitted on "
                 "the purchase histories before the checked cutoff"),
    "lightgbm_ltv": ("LightGBM Tweedie", "regression of the realised revenue, trained on "
                     "the windows that end by the checked cutoff"),
    "logistic": ("logistic", "logistic regression on every feature: numeric ones "
                 "median-imputed and standardised, categories one-hot encoded"),
    "base_rate": ("base rate", "every customer gets the training churn rate"),
    "kaplan_meier": ("Kaplan-Meier", "one population survival curve, no features"),
    "bgnbd": ("BG/NBD", "1 - P(a purchase within the horizon), BG/NBD fitted on the test "
              "cutoff's purchase histories (data without contracts)"),
    "bgnbd_alive": ("BG/NBD P(alive)", "1 - P(still alive), same fit; a customer without "
                    "a repeat purchase counts as alive"),
    "oracle": ("oracle", "the sample generator's true churn probabilities: the best any "
               "model can do on these data (sample data only)"),
}


def _grouped(metrics: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """task -> column -> metric -> value, from keys like `test.risk.roc_auc`."""
    task_of = {metric: task for task, table in TASKS.items() for metric in table}
    out: dict[str, dict[str, dict[str, float]]] = {task: {} for task in TASKS}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "test" and parts[2] in task_of:
            out[task_of[parts[2]]].setdefault(parts[1], {})[parts[2]] = value
    order = list(COLUMNS)
    return {task: dict(sorted(cols.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
        for task, cols in out.items() if cols}


def metric_frames(metrics: dict[str, float]) -> dict[str, pd.DataFrame]:
    """The report's tables as frames, task -> (metric label x column label), for notebooks;
    a metric no column measured is left out, one a column lacks is NaN."""
    frames = {}
    for task, columns in _grouped(metrics).items():
        labels = {metric: label for metric, (label, _) in TASKS[task].items()
                  if any(metric in values for values in columns.values())}
        frames[task] = pd.DataFrame(
            {COLUMNS.get(c, (c.replace("_", " "), ""))[0]: [values.get(m) for m in labels]
             for c, values in columns.items()}, index=pd.Index(labels.values(), name="metric"))
    return frames


def _cell(value: float | None) -> str:
    if value is None or value != value:  # absent, or NaN: not measurable on these data
        return "<td></td>"
    return f"<td>{value:.4f}</td>"


def _task_table(task: str, columns: dict[str, dict[str, float]], choice: str) -> str:
    """TASK's table, what each of its columns is, and the line saying which model was kept."""
    names = {c: COLUMNS.get(c, (c.replace("_", " "), ""))[0] for c in columns}
    head = "".join(f"<th>{html.escape(names[c])}</th>" for c in columns)
    rows = []
    for metric, (label, meaning) in TASKS[task].items():
        if not any(metric in values for values in columns.values()):
            continue
        cells = "".join(_cell(values.get(metric)) for values in columns.values())
        rows.append(f"<tr><th>{html.escape(label)}</th>{cells}"
                    f'<td class="meaning">{html.escape(meaning)}</td></tr>')
    legend = "; ".join(f"<b>{html.escape(names[c])}</b>: {html.escape(COLUMNS[c][1])}"
                       for c in columns if c in COLUMNS)
    return (f"<h3>{html.escape(task)}</h3><table><tr><th>metric</th>{head}"
            f'<th class="meaning">what it measures</th></tr>{"".join(rows)}</table>'
            f'<p class="legend">{legend}</p>'
            + (f"<p>{html.escape(choice)}</p>" if choice else ""))


def render(title: str, metrics: dict[str, float], notes: list[str],
           images: dict[str, bytes], facts: dict[str, str] | None = None,
           subtitle: str = "") -> str:
    """The report as one HTML string with the PNG plots inlined.

    metrics: `test.<column>.<metric>` values; facts: the run's `run_facts` tags (for the
    calibration and survival choices); subtitle: a line under the title (run name, date).
    """
    facts = facts or {}
    grouped = _grouped(metrics)
    choices = {"Risk": calibration_line(facts), "Survival": survival_line(facts)}
    tables = "".join(_task_table(task, cols, choices.get(task.split(":")[0], ""))
                     + (horizon_table(metrics) if task.startswith("Survival") else "")
                     for task, cols in grouped.items())
    figures = []
    for name, png in images.items():
        data = base64.b64encode(png).decode()
        caption = html.escape(PLOT_TITLES.get(name, name))
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1rem; }}
th, td {{ border: 1px solid #ddd; padding: 4px 10px; text-align: right; }}
th:first-child, .meaning {{ text-align: left; }}
tr.extrapolated td {{ color: #a33; }}
td.meaning {{ color: #555; font-size: 0.85rem; max-width: 420px; }}
.subtitle, .legend {{ color: #555; }}
figure {{ display: inline-block; margin: 1rem; vertical-align: top; }}
img {{ max-width: 520px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="subtitle">{html.escape(subtitle)}</p>
<h2>Notes</h2><ul>{items}</ul>
<h2>Test-slice metrics</h2>
<p>Each task's model beside its baselines, on the same test rows: the latest fully labelled
cutoffs, never seen in training. An empty cell could not be measured on these rows.</p>
{tables}
<h2>Plots</h2>{''.join(figures)}
</body></html>
"""


def report_title(facts: dict[str, str], model_name: str) -> str:
    """'churnlens v3' once the run's model is registered, else 'churnlens (unregistered)'."""
    version = facts.get("registered_version")
    return f"{model_name} v{version}" if version else f"{model_name} (not registered)"


def report_for_run(run_id: str, out: Path) -> Path:
    """Rebuild the HTML report of an MLflow run from its metrics, tags, notes and plots."""
    client = MlflowClient()
    run = client.get_run(run_id)
    local = Path(client.download_artifacts(run_id, "plots"))
    images = {p.stem: p.read_bytes() for p in sorted(local.glob("*.png"))}
    notes_path = Path(client.download_artifacts(run_id, "notes.txt"))
    notes = notes_path.read_text().splitlines()
    tags = run.data.tags
    title = report_title(tags, tags.get("model_name", "churnlens"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(title, run.data.metrics, notes, images, tags,
                          subtitle=run_subtitle(run.info.run_name, run_id, run.info.start_time)))
    return out


def run_subtitle(run_name: str, run_id: str, start_time_ms: int | None) -> str:
    """'MLflow run <name> (<id>), started <UTC time>'."""
    when = ("" if start_time_ms is None else
            f", started {pd.Timestamp(start_time_ms, unit='ms', tz='UTC'):%Y-%m-%d %H:%M} UTC")
    return f"MLflow run {run_name} ({run_id}){when}"
