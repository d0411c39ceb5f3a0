"""The `churnlens` command: one sub-command per stage, each a thin layer over library calls.

Settings are read once here (params.yaml) and passed down. Expected failures (bad settings,
bad data, bad arguments) print one clear message and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from churnlens.settings import Settings, SettingsError, load_settings


class UsageError(ValueError):
    """A command-line argument is wrong; the message says how to fix it."""


def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_sample_data(args: argparse.Namespace, settings: Settings) -> None:
    from churnlens.features.sample import generate_sample, write_sample

    if args.customers < 1:
        raise UsageError("--customers must be at least 1")
    t0 = time.perf_counter()
    tables = generate_sample(args.customers, seed=args.seed, horizon_days=settings.horizon_days)
    out = Path(args.out or settings.data.source)
    paths = write_sample(tables, out)
    rows = ", ".join(f"{name} {len(tables[name]):,}" for name in paths)
    _say(f"wrote sample data for {args.customers:,} customers to {out} "
         f"({rows}) in {time.perf_counter() - t0:.1f} s")


def _load(settings: Settings, source: str | None):
    from churnlens.features.loading import load_source

    ds = load_source(source or settings.data.source, settings.data.observed_until)
    for line in ds.report.lines():
        _say(line)
    return ds


def cmd_features(args: argparse.Namespace, settings: Settings) -> None:
    from churnlens.features.build import build_snapshot, build_training_set

    ds = _load(settings, args.source)
    work = Path(settings.paths.work_dir)
    t0 = time.perf_counter()
    if args.as_of:
        ff = build_snapshot(ds, args.as_of, settings)
        out = Path(args.out or work / "snapshots" / f"features-{ff.frame['cutoff'].max():%Y-%m-%d}.parquet")
        what = f"feature snapshot of {len(ff.frame):,} active customers as of {args.as_of}"
    else:
        ff = build_training_set(ds, settings)
        out = Path(args.out or work / "training_set.parquet")
        labelled = int(ff.frame["churned"].notna().sum())
        what = (f"training set of {len(ff.frame):,} (customer, cutoff) rows over "
                f"{ff.frame['cutoff'].nunique()} cutoffs, {labelled:,} with a churn label")
    if ff.frame.empty:
        raise UsageError(f"no customer is active as of {args.as_of}; pick a date inside the data")
    _write_parquet(ff.frame, out)
    _say(f"wrote {what} to {out} in {time.perf_counter() - t0:.1f} s")


def _write_parquet(frame, out: Path) -> None:
    """Write under a temporary name, then rename: readers never see a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(out)


def cmd_train(args: argparse.Namespace, settings: Settings) -> None:
    from churnlens.training.pipeline import train

    result = train(settings, source=args.source, promote=args.promote,
                   params_path=Path(args.params), log=_say)
    m = result.metrics
    _say("test slice:")
    for key, label in [("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"), ("brier", "Brier"),
                       ("calibration_error", "calibration error"),
                       ("top_decile_lift", "top-decile lift")]:
        row = f"  {label:<18} model {m[f'test.risk.{key}']:.4f}"
        row += f"  logistic {m[f'test.logistic.{key}']:.4f}"
        if f"test.oracle.{key}" in m:
            row += f"  oracle {m[f'test.oracle.{key}']:.4f}"
        _say(row)
    for key in ("concordance", "integrated_brier"):
        _say(f"  survival {key:<10} model {m[f'test.survival.{key}']:.4f}  "
             f"kaplan-meier {m[f'test.kaplan_meier.{key}']:.4f}")
    if "test.ltv.spearman" in m:
        _say(f"  LTV spearman {m['test.ltv.spearman']:.4f}  gini {m['test.ltv.normalized_gini']:.4f}")
    for note in result.notes:
        _say(f"note: {note}")
    gate = result.gate
    _say(f"registered {settings.mlflow.model_name} v{gate.version} (run {result.run_id}): "
         f"{'promoted to champion' if gate.promoted else 'not promoted'}: {gate.reason}")
    _say(f"report: {result.report_path}")
    _say("MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open "
         "http://127.0.0.1:5000)")


def cmd_report(args: argparse.Namespace, settings: Settings) -> None:
    from mlflow.tracking import MlflowClient

    from churnlens.training.report import report_for_run
    from churnlens.training.tracking import configure

    configure(settings.mlflow)
    run_id = args.run_id
    if run_id is None:
        client = MlflowClient()
        exp = client.get_experiment_by_name(settings.mlflow.experiment)
        runs = client.search_runs([exp.experiment_id], order_by=["start_time DESC"],
                                  max_results=1) if exp else []
        if not runs:
            raise UsageError("no training run found; run `churnlens train` first")
        run_id = runs[0].info.run_id
    out = Path(args.out or Path(settings.paths.work_dir) / "reports" / f"run-{run_id}.html")
    _say(f"wrote report of run {run_id} to {report_for_run(run_id, out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="churnlens",
        description="Predict which customers will churn, when, what they are worth, and why.",
    )
    parser.add_argument("--params", default="params.yaml", help="settings file (params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample-data", help="write a synthetic customer base in the data contract")
    p.add_argument("--customers", type=int, default=5000, help="number of customers")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", help="output folder (default: data.source in params.yaml)")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("features", help="build the training set, or a snapshot with --as-of")
    p.add_argument("--as-of", help="date (YYYY-MM-DD): features of customers active then")
    p.add_argument("--source", help="data source (default: data.source in params.yaml)")
    p.add_argument("--out", help="output parquet path")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("train", help="train, evaluate, log to MLflow, register, gate")
    p.add_argument("--source", help="data source (default: data.source in params.yaml)")
    p.add_argument("--promote", choices=["auto", "force", "never"], default="auto",
                   help="auto: champion alias moves only if the new model wins on the same "
                        "test rows; force: always; never: register only")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="write the HTML report of a training run")
    p.add_argument("--run-id", help="MLflow run id (default: the latest run)")
    p.add_argument("--out", help="output HTML path")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("score", help="score every customer active on a date into parquet")
    p.add_argument("--as-of", required=True, help="date (YYYY-MM-DD) of the feature snapshot")
    p.add_argument("--out", required=True, help="output parquet path")
    p.add_argument("--model-uri", help="MLflow model URI (default: models:/NAME@champion)")
    p.add_argument("--source", help="data source (default: data.source in params.yaml)")
    p.add_argument("--chunk-size", type=int, help="customers per part (default: batch.chunk_size)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted job")
    p.add_argument("--engine", choices=["local", "spark"], default="local")
    p.add_argument("--master", help="Spark master URL (default: local mode)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("serve", help="serve scores over HTTP for customer-success tools")
    p.add_argument("--host", help="interface to bind (default: serving.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: serving.port)")
    p.add_argument("--model-uri", help="MLflow model URI (default: models:/NAME@champion)")
    p.add_argument("--snapshot", help="feature snapshot parquet (default: the newest "
                                      "work/snapshots/features-*.parquet)")
    p.set_defaults(func=cmd_serve)
    return parser


def cmd_score(args: argparse.Namespace, settings: Settings) -> None:
    from churnlens.serving.batch import BatchJob, run_batch
    from churnlens.serving.stats import drift_warning, summary_lines
    from churnlens.training.tracking import configure

    if args.master and args.engine != "spark":
        raise UsageError("--master needs --engine spark")
    configure(settings.mlflow)
    job = BatchJob(
        as_of=args.as_of, out=Path(args.out), source=args.source, resume=args.resume,
        model_uri=args.model_uri or f"models:/{settings.mlflow.model_name}@champion",
        chunk_size=args.chunk_size or settings.batch.chunk_size,
        psi_threshold=settings.batch.psi_threshold, engine=args.engine, master=args.master)
    r = run_batch(job, settings, log=_say)
    _say(f"wrote {r.customers:,} score records to {r.out} in {r.seconds:.1f} s "
         f"({r.chunks} chunks, {r.chunks_resumed} resumed); drift: {r.drift_path}")
    for line in summary_lines(r.stats, r.currency):
        _say(line)
    warning = drift_warning(r.drift)
    if warning:
        print(f"churnlens score: warning: {warning}", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import os

    if args.snapshot:
        snapshot = Path(args.snapshot)
    else:
        found = sorted((Path(settings.paths.work_dir) / "snapshots").glob("features-*.parquet"))
        if not found:
            raise UsageError(f"no feature snapshot in {Path(settings.paths.work_dir) / 'snapshots'}"
                             "; write one with `churnlens features --as-of DATE` or pass "
                             "--snapshot PATH")
        snapshot = found[-1]  # ISO dates in the names: the last sorted is the newest
    if not snapshot.is_file():
        raise UsageError(f"--snapshot {snapshot} not found; write one with "
                         "`churnlens features --as-of DATE`")
    host = args.host or settings.serving.host
    port = args.port or settings.serving.port
    model_uri = args.model_uri or f"models:/{settings.mlflow.model_name}@champion"
    env = {
        **os.environ,
        "CHURNLENS_MODEL_URI": model_uri,
        "CHURNLENS_SNAPSHOT": str(snapshot.resolve()),
        "CHURNLENS_MAX_PAGE_SIZE": str(settings.serving.max_page_size),
        # The store `train` wrote to (training.tracking.configure's rule), fixed before
        # BentoML's workers start in other directories.
        "MLFLOW_TRACKING_URI": (os.environ.get("MLFLOW_TRACKING_URI")
                                or settings.mlflow.tracking_uri
                                or f"sqlite:///{Path.cwd() / 'mlflow.db'}"),
    }
    _say(f"serving {model_uri} with {snapshot} on http://{host}:{port} "
         f"(OpenAPI: http://{host}:{port}/docs.json)")
    cmd = [sys.executable, "-m", "bentoml", "serve", "churnlens.serving.service:ChurnService",
           "--host", host, "--port", str(port)]
    # exec: BentoML becomes this process, so Ctrl+C and SIGTERM reach it directly.
    os.execve(sys.executable, cmd, env)


def main(argv: list[str] | None = None) -> int:
    from churnlens.features.loading import DataError

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.params)
        args.func(args, settings)
    except (SettingsError, DataError, UsageError, ValueError) as exc:
        print(f"churnlens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
