"""`churnlens sample-data` and `churnlens features`: data in, feature tables out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from churnlens.cli.common import (
    UsageError,
    add_command,
    at_least,
    existing_path,
    iso_date,
    say,
    settings_of,
)


def add_commands(sub, parents) -> None:
    p = add_command(sub, "sample-data", "write a synthetic customer base to try churnlens on",
                    parents, details="A synthetic base in the data contract (parquet) in "
                    "one of three shapes, with the\ngenerator's ground truth (truth.parquet) "
                    "for the evaluation.")
    p.add_argument("--customers", type=at_least(1), default=5000, metavar="N",
                   help="number of customers")
    p.add_argument("--seed", type=at_least(0), default=0, metavar="N",
                   help="random seed")
    p.add_argument("--shape", choices=("subscriptions", "snapshot", "transactions"),
                   default="subscriptions",
                   help="data shape: subscription history (B2B SaaS contracts over years), a "
                        "one-snapshot CRM export, or a purchase log without contracts")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: data.source in the settings, data/sample)")
    p.set_defaults(run=sample_data)

    p = add_command(sub, "features", "build the training set, or a snapshot with --as-of",
                    parents, details="Without --as-of: features and labels of every active "
                    "customer at every cutoff.\nWith --as-of DATE: features of every customer "
                    "active on DATE, the snapshot in\nwhich `churnlens serve` looks customers "
                    "up.")
    p.add_argument("--as-of", type=iso_date, metavar="DATE",
                   help="YYYY-MM-DD: features of every customer active on DATE (default: the "
                        "training set instead)")
    p.add_argument("--source", type=_source_path, metavar="PATH",
                   help="data source folder or .duckdb file (default: data.source in the "
                        "settings); with --engine spark also hdfs://, s3a://, ...")
    p.add_argument("--out", metavar="PATH",
                   help="output parquet (default: training_set.parquet, or with --as-of "
                        "snapshots/features-DATE.parquet, under paths.work_dir: work/); with "
                        "--engine spark a dataset folder")
    p.add_argument("--engine", choices=["local", "spark"], default="local",
                   help="where the features are computed (spark: the snapshot, --as-of)")
    p.add_argument("--master", metavar="URL", help="Spark master URL, with --engine spark "
                                                   "(default: local mode on 127.0.0.1)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --engine spark: replace an existing --out (refused without)")
    p.set_defaults(run=features)


def sample_data(args: argparse.Namespace) -> None:
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; sample data are a folder of parquet "
                         "files: pass a folder")
    settings = settings_of(args)
    from churnlens.features.sample import generate_shape, write_sample

    t0 = time.perf_counter()
    tables = generate_shape(args.shape, args.customers, seed=args.seed,
                            horizon_days=settings.horizon_days,
                            ltv_horizon_days=settings.ltv.horizon_days)
    out = Path(args.out or settings.data.source)
    paths = write_sample(tables, out)
    rows = ", ".join(f"{name} {len(tables[name]):,}" for name in paths)
    say(f"wrote {args.shape} sample data for {args.customers:,} customers to {out} "
        f"({rows}) in {time.perf_counter() - t0:.1f} s")


def _source_path(text: str) -> Path | str:
    """A source that exists, or a URI (hdfs://, s3a://) for Spark to read."""
    return text if "://" in text else existing_path(text)


def features(args: argparse.Namespace) -> None:
    if args.engine == "spark":
        return _features_spark(args)
    if args.master or args.overwrite:
        raise UsageError("--master and --overwrite need --engine spark")
    args.out = None if args.out is None else Path(args.out)
    if args.out is not None and args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; pass the parquet file to write")
    settings = settings_of(args)
    import duckdb

    from churnlens.features.extent import check_as_of
    from churnlens.features.loading import load_source

    source = args.source or settings.data.source
    if not Path(source).exists():
        raise UsageError(f"data source {source} not found: write sample data with `churnlens "
                         "sample-data`, or set data.source in params.yaml (or pass --source)")
    ds = load_source(source, settings.data.observed_until, horizon_days=settings.horizon_days,
                     activity=settings.churn.activity,
                     value_event=settings.features.value_event)
    if args.as_of:
        check_as_of(ds, args.as_of)
    for line in ds.report.lines():
        say(line)
    t0 = time.perf_counter()
    try:
        ff, out, what = _build(ds, args, settings)
    except duckdb.Error as exc:  # a damaged page found only now, or a disk full of spill
        raise OSError(f"DuckDB failed while building the features from {source}: "
                      f"{str(exc).splitlines()[0]}; if the disk is full, free some space; if a "
                      "file of the source is damaged, export it again") from None
    for note in ff.notes:
        say(f"note: {note}")
    _write_parquet(ff.frame, out)
    say(f"wrote {what} to {out} in {time.perf_counter() - t0:.1f} s")


def _features_spark(args: argparse.Namespace) -> None:
    """The snapshot on Spark (`churnlens.serving.spark_features`), written as a dataset."""
    if not args.as_of:
        raise UsageError("--engine spark builds the snapshot (--as-of DATE); the training "
                         "set is built by the local engine")
    settings = settings_of(args)
    source = str(args.source or settings.data.source)
    if "://" not in source and not Path(source).exists():
        raise UsageError(f"data source {source} not found: write sample data with `churnlens "
                         "sample-data`, or set data.source in params.yaml (or pass --source)")
    from churnlens.serving.spark_features import spark_snapshot
    from churnlens.serving.spark_job import session_for

    out = args.out or str(Path(settings.paths.work_dir) / "snapshots"
                          / f"features-{args.as_of}.parquet")
    t0 = time.perf_counter()
    spark, _ = session_for(args.master, log=say)
    try:
        snap = spark_snapshot(spark, source, args.as_of, settings, out,
                              overwrite=args.overwrite, log=say)
    finally:
        spark.stop()
    for note in snap.notes:
        say(f"note: {note}")
    say(f"wrote feature snapshot of {snap.customers:,} customers active on {args.as_of} (ids "
        f"{snap.first} to {snap.last}) to the dataset {snap.out} in "
        f"{time.perf_counter() - t0:.1f} s")


def _build(ds, args: argparse.Namespace, settings):
    """The feature frame `features` writes, where to, and one line on what it holds."""
    from churnlens.features.build import build_snapshot, build_training_set

    work = Path(settings.paths.work_dir)
    if args.as_of:
        ff = build_snapshot(ds, args.as_of, settings)
        if ff.frame.empty:
            raise UsageError(f"no customer is active on {args.as_of}; pick a later date")
        out = Path(args.out or work / "snapshots" / f"features-{args.as_of}.parquet")
        ids = ff.frame["customer_id"]
        return ff, out, (f"feature snapshot of {len(ff.frame):,} customers active on "
                         f"{args.as_of} (ids {ids.min()} to {ids.max()})")
    ff = build_training_set(ds, settings)
    out = Path(args.out or work / "training_set.parquet")
    labelled = int(ff.frame["churned"].notna().sum())
    return ff, out, (f"training set of {len(ff.frame):,} (customer, cutoff) rows over "
                     f"{ff.frame['cutoff'].nunique()} cutoffs, {labelled:,} with a churn label")


def _write_parquet(frame, out: Path) -> None:
    """Write under a temporary name, then rename: readers never see a half-written file.

    On a failed write (a full disk, say) the temporary file is removed and OSError says
    which file and why.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        frame.to_parquet(tmp, index=False)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write {out} ({exc.strerror or exc}); nothing was written "
                      "(the partial file is removed): free some space or pass --out "
                      "elsewhere") from None
    tmp.replace(out)
