"""`churnlens score` and `churnlens serve`: score records in batch, or over HTTP."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from churnlens.cli.common import (
    UsageError,
    add_command,
    at_least,
    existing_file,
    existing_path,
    iso_date,
    model_uri,
    port,
    quiet_mlflow,
    require_store,
    say,
    settings_of,
    tracking_uri,
)

CHAMPION = "models:/{name}@champion"


def add_commands(sub, parents) -> None:
    p = add_command(sub, "score", "score every customer active on a date into parquet",
                    parents, details="Chunked (bounded memory), written atomically, resumable "
                    "with --resume; local or\non Apache Spark. One job at a time per --out "
                    "(OUT.lock); every part is checked\nbefore it is used. Prints revenue at "
                    "risk per tier; writes a drift report\nbeside the output.")
    p.add_argument("--as-of", type=iso_date, required=True, metavar="DATE",
                   help="YYYY-MM-DD: score the customers active on DATE")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output parquet: a file (local engine), a dataset folder (spark; any "
                        "path the executors can write: hdfs://, s3a://)")
    p.add_argument("--model-uri", type=model_uri, metavar="URI",
                   help="MLflow model URI (default: models:/NAME@champion, NAME from the "
                        "settings' mlflow.model_name)")
    p.add_argument("--source", type=source_path, metavar="PATH",
                   help="data source folder or .duckdb file (default: data.source in the "
                        "settings); with --engine spark also hdfs://, s3a://, ...")
    p.add_argument("--chunk-size", type=at_least(1), metavar="N",
                   help="customers per part (default: batch.chunk_size in the settings)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="finish an interrupted job")
    again.add_argument("--overwrite", action="store_true",
                       help="replace an existing --out (spark refuses one without it; the "
                            "local engine replaces its file in any case)")
    p.add_argument("--engine", choices=["local", "spark"], default="local",
                   help="where the job runs")
    p.add_argument("--master", metavar="URL", help="Spark master URL, with --engine spark (default: local "
                                    "mode on 127.0.0.1)")
    p.add_argument("--notify", type=_webhook, metavar="URL",
                   help="after the batch, POST the accounts that moved into high or critical "
                        "risk since the previous score file of the model in --out's folder "
                        "(Slack-compatible JSON); retried, never fails the batch (default: no alert)")
    p.set_defaults(run=score)

    p = add_command(sub, "serve", "serve scores over HTTP for customer-success tools",
                    parents, details="A BentoML service with the model and the feature snapshot "
                    "checked and loaded once\n(a bad one ends the command with one message); set "
                    "CHURNLENS_API_KEY to require a\nkey. Ctrl+C or SIGTERM stops it after the "
                    "calls in flight.")
    p.add_argument("--host", help="interface to bind (default: serving.host in the settings, "
                                  "127.0.0.1)")
    p.add_argument("--port", type=port, metavar="N", help="port (default: serving.port in the settings, 3000)")
    p.add_argument("--model-uri", type=model_uri, metavar="URI",
                   help="MLflow model URI (default: models:/NAME@champion, NAME from the "
                        "settings' mlflow.model_name)")
    p.add_argument("--snapshot", type=existing_file, metavar="PATH",
                   help="feature snapshot parquet (default: the newest "
                        "snapshots/features-*.parquet under paths.work_dir: work/)")
    p.add_argument("--registry-timeout", type=positive_seconds, default=10.0,
                   metavar="SECONDS", help="give up start-up when the MLflow store does not "
                                           "answer within this many seconds")
    p.add_argument("--scores", type=existing_file, metavar="PATH",
                   help="a `churnlens score` file of the snapshot's date and the served model: "
                        "the workspace reads it instead of scoring the snapshot (default: none, "
                        "the workspace scores the snapshot)")
    p.set_defaults(run=serve)


def score(args: argparse.Namespace) -> None:
    if args.master and args.engine != "spark":
        raise UsageError("--master needs --engine spark")
    spark = args.engine == "spark"
    if spark and args.notify:
        raise UsageError("--notify reads the whole score file on this machine: use it with "
                         "the local engine (the spark engine writes a dataset on the cluster)")
    if not spark and Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; pass the parquet file to write")
    settings = settings_of(args)
    source = args.source or settings.data.source
    if "://" not in str(source) and not Path(source).exists():
        raise UsageError(f"data source {source} not found: set data.source in params.yaml "
                         "or pass --source")
    store = tracking_uri(settings.mlflow)
    require_store(store)
    quiet_mlflow()
    from churnlens.serving.batch import BatchJob, run_batch
    from churnlens.serving.stats import drift_warning, summary_lines

    if store.startswith("sqlite:///"):
        # Read without MLflow (`serving.batch.load_model`), which then needs only the store.
        os.environ["MLFLOW_TRACKING_URI"] = store
    else:  # a tracking server: MLflow says at once when it does not answer
        from churnlens.training.tracking import configure

        configure(settings.mlflow)
    job = BatchJob(
        as_of=args.as_of, out=args.out if spark else Path(args.out),
        source=None if args.source is None else str(args.source), resume=args.resume,
        overwrite=args.overwrite,
        model_uri=args.model_uri or CHAMPION.format(name=settings.mlflow.model_name),
        chunk_size=args.chunk_size or settings.batch.chunk_size,
        psi_threshold=settings.batch.psi_threshold, engine=args.engine, master=args.master)
    r = run_batch(job, settings, log=say)
    say(f"wrote {r.customers:,} score records to {r.out} in {r.seconds:.1f} s "
        f"({r.chunks} chunks, {r.chunks_resumed} resumed); drift: {r.drift_path}")
    for line in summary_lines(r.stats, r.currency):
        say(line)
    warning = drift_warning(r.drift)
    if warning:
        print(f"churnlens score: warning: {warning}", file=sys.stderr, flush=True)
    if args.notify:
        from churnlens.serving.notify import notify_batch

        notify_batch(r.out, args.notify, log=say)


def source_path(text: str) -> Path | str:
    """A source that exists, or a URI (hdfs://, s3a://) for Spark to read."""
    return text if "://" in text else existing_path(text)


def _webhook(text: str) -> str:
    from churnlens.serving.notify import webhook_url

    return webhook_url(text)


def serve(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    snapshot = args.snapshot or _newest_snapshot(Path(settings.paths.work_dir) / "snapshots")
    host = args.host or settings.serving.host
    port_number = args.port or settings.serving.port
    uri = args.model_uri or CHAMPION.format(name=settings.mlflow.model_name)
    store = tracking_uri(settings.mlflow)
    if uri.startswith("models:/"):
        require_store(store)
    if not _loopback(host) and not os.environ.get("CHURNLENS_API_KEY"):
        print(f"churnlens serve: warning: listening on {host} without an API key: anyone "
              "who can reach this machine can read every customer's score; set "
              "CHURNLENS_API_KEY", file=sys.stderr, flush=True)
    # BentoML's usage tracking stays off unless the user opts in (BENTOML_DO_NOT_TRACK=False).
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # An unreachable tracking server fails within the timeout instead of minutes of retries.
    # (the request's own timeout is a backstop: the fetching child is stopped at the limit)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(round(args.registry_timeout) + 5))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    if args.scores:  # read by the workspace (churnlens.serving.workspace_scores.ENV_SCORES)
        os.environ["CHURNLENS_SCORES"] = str(args.scores.resolve())
    os.environ.update({"MLFLOW_TRACKING_URI": store,
                       "CHURNLENS_MAX_PAGE_SIZE": str(settings.serving.max_page_size)})
    quiet_mlflow()
    from churnlens.serving.server import serve as run_server
    from churnlens.serving.startup import ServeConfig

    config = ServeConfig(model_uri=uri, snapshot=str(snapshot.resolve()),
                         cache_dir=Path(settings.paths.work_dir).resolve() / "cache" / "models",
                         registry_timeout_s=args.registry_timeout)
    # No line before start-up succeeds: a failure is one line (the server says where the
    # page and the API docs are once the model and snapshot are checked).
    run_server(config, "127.0.0.1" if host == "localhost" else host, port_number, log=say)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _newest_snapshot(folder: Path) -> Path:
    found = sorted(folder.glob("features-*.parquet"))
    if not found:
        raise UsageError(f"no feature snapshot in {folder}; write one with `churnlens features "
                         "--as-of DATE` or pass --snapshot PATH")
    return found[-1]  # ISO dates in the names: the last sorted is the newest
