"""`churnlens train` and `churnlens report`: a tracked, registered model and its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from churnlens.cli.common import (
    UsageError,
    add_command,
    existing_path,
    quiet_mlflow,
    require_store,
    run_id,
    say,
    settings_of,
    tool,
    tracking_uri,
)

# The test-slice table printed after training: task -> (metric key -> label), and which
# metric-key prefixes are that task's model and baselines, in column order.
TASKS = {
    "risk": ({"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "brier": "Brier",
              "log_loss": "log loss", "calibration_error": "calibration error",
              "top_decile_lift": "top-decile lift", "top_decile_capture": "top-decile capture"},
             {"risk": "model", "logistic": "logistic", "base_rate": "base rate",
              "bgnbd": "BG/NBD", "bgnbd_alive": "BG/NBD alive", "oracle": "oracle"}),
    "survival": ({"concordance": "concordance", "integrated_brier": "integrated Brier"},
                 {"survival": "model", "kaplan_meier": "Kaplan-Meier"}),
    "LTV": ({"normalized_gini": "normalized Gini", "spearman": "Spearman",
             "decile_mape": "decile MAPE %", "total_error_pct": "total error %"},
            {"ltv": "model", "bgnbd_gg": "BG/NBD+GG", "lightgbm_ltv": "LightGBM"}),
}


CELL = 14  # characters per table column: "Kaplan-Meier" and a signed 4-decimal figure


def add_commands(sub, parents) -> None:
    p = add_command(sub, "train", "train, evaluate, track in MLflow, register, gate champion",
                    parents, details="Writes the run's HTML report too. The champion alias "
                    "moves only when the new\nmodel beats it on the same test rows (see "
                    "--promote).")
    p.add_argument("--source", type=existing_path, metavar="PATH",
                   help="data source folder or .duckdb file (default: data.source in the "
                        "settings)")
    p.add_argument("--promote", choices=["auto", "force", "never"], default="auto",
                   help="auto: the champion alias moves only if the new model beats the "
                        "logistic baseline and the base rate (README: Promotion) and wins on "
                        "the same test rows; force: always; never: register only")
    p.set_defaults(run=train)

    p = add_command(sub, "report", "write the HTML report of a training run again", parents)
    p.add_argument("--run-id", type=run_id, metavar="ID",
                   help="MLflow run id (default: the latest run)")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="output HTML (default: reports/run-ID.html under paths.work_dir: work/)")
    p.set_defaults(run=report)


def train(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    source = args.source or settings.data.source
    if not Path(source).exists():
        raise UsageError(f"data source {source} not found: write sample data with `churnlens "
                         "sample-data`, or set data.source in params.yaml (or pass --source)")
    quiet_mlflow()
    from churnlens.training.pipeline import train as train_model

    params_path = args.params or (Path("params.yaml") if Path("params.yaml").is_file() else None)
    result = train_model(settings, source=source, promote=args.promote,
                         params_path=params_path, log=say)
    for line in metric_table(result.metrics):
        say(line)
    for note in result.notes:
        say(f"note: {note}")
    gate = result.gate
    say(f"registered {settings.mlflow.model_name} v{gate.version} (run {result.run_id}): "
        f"{'promoted to champion' if gate.promoted else 'not promoted'}: {gate.reason}")
    say(f"report: {result.report_path}")
    uri = tracking_uri(settings.mlflow)
    if uri.startswith("sqlite:"):
        store = uri.replace(f"{Path.cwd()}/", "")
        # The runs page, not the UI's front page: MLflow 3 opens that on its GenAI view.
        page = result.runs_url or "http://127.0.0.1:5000"
        say(f"MLflow UI: {tool('mlflow')} ui --backend-store-uri {store}  (then open {page})")


def metric_table(metrics: dict[str, float]) -> list[str]:
    """The test-slice metrics as aligned text: one block per task, the model beside its
    baselines; a baseline or metric that the run did not measure is left out."""
    blocks = []
    for task, (labels, columns) in TASKS.items():
        present = {prefix: name for prefix, name in columns.items()
                   if any(f"test.{prefix}.{key}" in metrics for key in labels)}
        rows = [(label, [metrics.get(f"test.{prefix}.{key}") for prefix in present])
                for key, label in labels.items()
                if any(f"test.{prefix}.{key}" in metrics for prefix in present)]
        if rows:
            blocks.append((task, list(present.values()), rows))
    width = max((len(label) for _, _, rows in blocks for label, _ in rows), default=0)
    lines = ["test slice:"]
    for task, names, rows in blocks:
        lines.append(f"  {task:<{width}}" + "".join(f"{name:>{CELL}}" for name in names))
        for label, values in rows:
            lines.append(f"  {label:<{width}}" + "".join(
                f"{'':>{CELL}}" if v is None else f"{v:>{CELL}.4f}" for v in values))
    return lines


def report(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    uri = tracking_uri(settings.mlflow)
    require_store(uri)
    quiet_mlflow()
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from churnlens.training.report import report_for_run

    # Reading only: no experiment to create, and no model code (LightGBM) to import.
    mlflow.set_tracking_uri(uri)
    found = args.run_id
    try:
        if found is None:
            client = MlflowClient()
            exp = client.get_experiment_by_name(settings.mlflow.experiment)
            runs = client.search_runs([exp.experiment_id], order_by=["start_time DESC"],
                                      max_results=1) if exp else []
            if not runs:
                raise UsageError(f"no training run in {uri}; run `churnlens train` first")
            found = runs[0].info.run_id
        out = Path(args.out or Path(settings.paths.work_dir) / "reports" / f"run-{found}.html")
        say(f"wrote report of run {found} to {report_for_run(found, out)}")
    except MlflowException as exc:
        first = str(exc.message).splitlines()[0]
        raise UsageError(f"cannot report run {found} from {uri}: {first}; omit --run-id for "
                         "the latest run") from None
