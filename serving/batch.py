"""Batch scoring: one score record per active customer as of a date, written as parquet.

The job plans chunks of sorted customer ids, and for each chunk computes the features (the
same queries as training, restricted to the chunk), scores them with the scoring core and
writes the chunk as its own parquet part under ``OUT.parts/``. Memory therefore grows with
the chunk, not with the base; a part is renamed into place only when complete, so a killed
job resumes (``resume=True``) from the parts it finished. The parts are then combined into
``OUT.tmp`` and renamed to ``OUT``, so a reader never sees a half-written file.

Each part has a small JSON beside it with what the summary and the drift check need
(tier counts, revenue at risk, the top accounts, per-feature histograms on the training
reference's bins), so a resumed job never re-reads finished chunks' features.

Two engines compute a chunk: ``local`` (DuckDB + pandas in this process) and ``spark``
(Spark SQL translated from the same DuckDB SQL, scoring through ``mapInPandas``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnlens.settings import Settings
from features.build import compute_features
from features.contract import TABLES
from features.loading import DataSet, load_source
from features.queries import events_daily_sql, feature_sql
from features.spine import build_spine, set_cutoffs
from serving.core import SURVIVAL_DAYS, Scored, score_columns, score_records
from training.bundle import ChurnModel

MANIFEST_FORMAT = 1
SCORE_KEY = "__score__"  # model.reference entry for the churn probability's distribution
TOP_ACCOUNTS = 10
DUCKDB_MEMORY_LIMIT = "1GB"  # DuckDB's limit while scoring chunks (loading uses its own)
SCORE_ROWS = 10_000  # rows scored at once inside a chunk
_EPS = 1e-4  # share floor in PSI: an empty bin would otherwise give an infinite term

_DRIVER = pa.struct([
    ("name", pa.string()), ("feature", pa.string()),
    ("value", pa.float64()), ("category", pa.string()),
    ("contribution", pa.float64()), ("direction", pa.string()),
    ("text", pa.string()), ("playbook", pa.string()),
])
RECORD_SCHEMA = pa.schema([
    ("customer_id", pa.string()),
    ("as_of", pa.date32()),
    ("model", pa.struct([("name", pa.string()), ("version", pa.string()),
                         ("run_id", pa.string())])),
    ("churn_probability", pa.float64()),
    ("horizon_days", pa.int32()),
    ("risk_tier", pa.string()),
    ("lifecycle_stage", pa.string()),
    ("survival", pa.struct([(d, pa.float64()) for d in SURVIVAL_DAYS])),
    ("expected_remaining_days", pa.float64()),
    ("expected_ltv", pa.float64()),
    ("currency", pa.string()),
    ("drivers", pa.list_(_DRIVER)),
])


class BatchError(ValueError):
    """The batch job cannot run as asked; the message says why and what to do."""


Log = Callable[[str], None]


def record_row(record: dict) -> dict:
    """A score record (serving.core) in RECORD_SCHEMA's layout.

    as_of becomes a date, the model version a string, and a driver's value is split by type:
    ``value`` holds numbers, ``category`` holds category levels (parquet needs one type).
    """
    row = dict(record)
    row["as_of"] = date.fromisoformat(record["as_of"])
    row["model"] = {k: None if v is None else str(v) for k, v in record["model"].items()}
    row["drivers"] = [
        {**d, "value": None if isinstance(d["value"], str) else d["value"],
         "category": d["value"] if isinstance(d["value"], str) else None}
        for d in record["drivers"]
    ]
    return row


def records_table(records: list[dict]) -> pa.Table:
    """Score records as an Arrow table with RECORD_SCHEMA."""
    return pa.Table.from_pylist([record_row(r) for r in records], schema=RECORD_SCHEMA)


def score_table(model: ChurnModel, frame: pd.DataFrame) -> pa.Table:
    """FRAME's score records as an Arrow table with RECORD_SCHEMA, equal to
    ``records_table(score_records(model, frame))`` but built from columns, without a dict
    per record (a third of the scoring time on large chunks). Scored in slices of
    SCORE_ROWS: the survival curves of a slice take ~6 kB a row."""
    tables = [_columns_table(model, score_columns(model, frame.iloc[i:i + SCORE_ROWS]))
              for i in range(0, len(frame), SCORE_ROWS)]
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def _columns_table(model: ChurnModel, c: Scored) -> pa.Table:
    n, sc = len(c.customer_id), c.scores
    ref = {k: None if v is None else str(v) for k, v in model.info_ref.items()}
    model_type, surv_type = RECORD_SCHEMA.field("model").type, RECORD_SCHEMA.field("survival").type
    offsets, flat = [0], []
    for row in c.drivers:
        for d in row:
            v = d["value"]
            flat.append({**d, "value": None if isinstance(v, str) else v,
                         "category": v if isinstance(v, str) else None})
        offsets.append(len(flat))
    days = {s: date.fromisoformat(s) for s in set(c.as_of)}
    columns = {
        "customer_id": pa.array(c.customer_id, pa.string()),
        "as_of": pa.array([days[s] for s in c.as_of], pa.date32()),
        "model": pa.array([ref] * n, model_type),
        "churn_probability": pa.array(sc["churn_probability"], pa.float64()),
        "horizon_days": pa.array(np.full(n, model.horizon_days), pa.int32()),
        "risk_tier": pa.array(sc["risk_tier"].tolist(), pa.string()),
        "lifecycle_stage": pa.array(c.lifecycle_stage, pa.string()),
        "survival": pa.StructArray.from_arrays(
            [pa.array(sc[f"survival_{d}"], pa.float64()) for d in SURVIVAL_DAYS],
            fields=list(surv_type)),
        "expected_remaining_days": pa.array(sc["expected_remaining_days"], pa.float64()),
        "expected_ltv": pa.array(sc["expected_ltv"], pa.float64()),
        "currency": pa.array([model.currency] * n, pa.string()),
        "drivers": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                            pa.array(flat, _DRIVER)),
    }
    return pa.Table.from_pydict(columns, schema=RECORD_SCHEMA)


def table_records(table: pa.Table) -> list[dict]:
    """Rows of a scores table back as score records (the inverse of `records_table`)."""
    out = []
    for row in table.select(RECORD_SCHEMA.names).to_pylist():
        row["as_of"] = row["as_of"].isoformat()
        for d in row["drivers"]:
            category = d.pop("category")
            if category is not None:
                d["value"] = category
        out.append(row)
    return out


def load_model(model_uri: str) -> ChurnModel:
    """Load the ChurnModel behind MODEL_URI, its registry name/version/run_id filled in.

    A ``models:/NAME@ALIAS`` URI is resolved to its version first, so an alias that moves
    while the job runs cannot mix two models. Raises BatchError when nothing loads.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from training.tracking import load_bundle

    ref: dict = {}
    uri = model_uri
    try:
        if model_uri.startswith("models:/"):
            name, _, tail = model_uri.removeprefix("models:/").rstrip("/").partition("/")
            name, _, alias = name.partition("@")
            client = MlflowClient()
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, tail))
            ref = {"name": name, "version": str(mv.version), "run_id": mv.run_id}
            uri = f"models:/{name}/{mv.version}"
        model = load_bundle(uri)
    except (MlflowException, FileNotFoundError) as exc:
        msg = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise BatchError(f"cannot load model {model_uri}: {msg}; train one with "
                         "`churnlens train` or pass --model-uri") from None
    model.info = {**model.info, **ref}
    if model.info.get("version") is not None:
        model.info["version"] = str(model.info["version"])
    return model


def parse_as_of(value: str, observed_until: pd.Timestamp) -> pd.Timestamp:
    """The as-of date as a UTC midnight; BatchError when not a date or after the data."""
    try:
        as_of = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise BatchError(f"as-of date {value!r} is not a date ({exc}); use YYYY-MM-DD") from None
    if pd.isna(as_of):
        raise BatchError(f"as-of date {value!r} is not a date; use YYYY-MM-DD")
    as_of = as_of.tz_localize(None).normalize() if as_of.tz is None else (
        as_of.tz_convert("UTC").tz_localize(None).normalize())
    if as_of > observed_until:
        raise BatchError(f"as-of date {as_of.date()} is after the end of the data "
                         f"({observed_until.date()}): features would miss records")
    return as_of


@dataclass(frozen=True)
class Chunk:
    """Customers [first, last] (sorted ids) scored together and written as one part."""

    index: int
    first: str
    last: str
    count: int
    digest: str  # sha256 of the chunk's ids, one per line: same ids <=> same digest

    @property
    def part(self) -> str:
        return f"part-{self.index:05d}"


def plan_chunks(ids: pa.Array, chunk_size: int) -> list[Chunk]:
    """Consecutive chunks of CHUNK_SIZE over sorted customer ids (deterministic)."""
    chunks = []
    for i, start in enumerate(range(0, len(ids), chunk_size)):
        part = ids[start:start + chunk_size].to_pylist()
        digest = hashlib.sha256("\n".join(part).encode()).hexdigest()
        chunks.append(Chunk(i, part[0], part[-1], len(part), digest))
    return chunks


def _manifest(as_of: pd.Timestamp, model: ChurnModel, model_uri: str, source: str,
              observed_until: pd.Timestamp, chunk_size: int, chunks: list[Chunk]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "as_of": str(as_of.date()),
        "model": {"uri": model_uri, **model.info_ref},
        "source": source,
        "observed_until": str(observed_until.date()),
        "chunk_size": chunk_size,
        "customers": sum(c.count for c in chunks),
        "chunks": [c.__dict__ for c in chunks],
    }


def check_manifest(found: dict, wanted: dict, parts: Path) -> None:
    """Raise BatchError naming every difference between a resumed job and the one on disk."""
    keys = [("as_of", "as-of date"), ("source", "data source"),
            ("observed_until", "end of data"), ("chunk_size", "chunk size")]
    diffs = [f"{label}: {found.get(k)!r} on disk, {wanted[k]!r} now"
             for k, label in keys if found.get(k) != wanted[k]]
    for k in ("name", "version", "run_id"):
        if found.get("model", {}).get(k) != wanted["model"][k]:
            diffs.append(f"model {k}: {found.get('model', {}).get(k)!r} on disk, "
                         f"{wanted['model'][k]!r} now")
    if not diffs and found.get("chunks") != wanted["chunks"]:
        diffs.append("the active customers differ (the data changed since the first run)")
    if diffs:
        raise BatchError(
            f"cannot resume: {parts} belongs to a different job ({'; '.join(diffs)}); "
            f"rerun with the same settings, or delete {parts} to start afresh")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _bin_counts(values: np.ndarray, ref: dict) -> dict:
    """Counts of VALUES on a reference's bins: numeric edges (ends open) or category levels."""
    if ref["kind"] == "numeric":
        edges = np.asarray(ref["edges"], dtype=float)
        known = values[~np.isnan(values)]
        bins = np.searchsorted(edges[1:-1], known, side="right")
        counts = np.bincount(bins, minlength=max(len(edges) - 1, 1))
        return {"counts": counts.tolist(), "missing": int(len(values) - len(known))}
    levels = pd.Series(values, dtype=object).where(pd.notna(values), "<null>").astype(str)
    return {"levels": {str(k): int(n) for k, n in levels.value_counts().items()}}


def chunk_stats(features: pd.DataFrame, records: pa.Table, reference: dict) -> dict:
    """What the summary and drift check need from one chunk (merged by `merge_stats`).

    features: the chunk's feature rows (with customer_id and mrr); records: its scores.
    Revenue at risk of a customer = churn probability x MRR x 12 (annual recurring revenue
    expected to leave within the horizon).
    """
    scores = records.select(["customer_id", "churn_probability", "risk_tier"]).to_pandas()
    mrr = features.set_index("customer_id")["mrr"].astype(float)
    scores["arr"] = mrr.reindex(scores["customer_id"]).fillna(0.0).to_numpy() * 12
    scores["at_risk"] = scores["churn_probability"] * scores["arr"]
    tiers = scores.groupby("risk_tier")[["at_risk"]].agg(["size", "sum"])["at_risk"]
    drivers = records.column("drivers").to_pylist()
    scores["driver"] = [f"{d[0]['name']}: {d[0]['text']}" if d else "-" for d in drivers]
    top = scores.sort_values(["churn_probability", "customer_id"], ascending=[False, True])
    hist = {}
    for name, ref in reference.items():
        if name == SCORE_KEY:
            hist[name] = _bin_counts(scores["churn_probability"].to_numpy(float), ref)
        elif name in features.columns:
            col = features[name]
            values = col.to_numpy(float) if ref["kind"] == "numeric" else col.to_numpy(object)
            hist[name] = _bin_counts(values, ref)
    return {
        "customers": len(scores),
        "tiers": {t: {"customers": int(r["size"]), "revenue_at_risk": float(r["sum"])}
                  for t, r in tiers.iterrows()},
        "top": top.head(TOP_ACCOUNTS)[["customer_id", "churn_probability", "risk_tier",
                                       "arr", "driver"]].to_dict("records"),
        "histograms": hist,
    }


def merge_stats(parts: list[dict]) -> dict:
    """Chunk stats added up into the job's stats (same shape as one chunk's)."""
    out: dict = {"customers": 0, "tiers": {}, "top": [], "histograms": {}}
    for s in parts:
        out["customers"] += s["customers"]
        for t, r in s["tiers"].items():
            acc = out["tiers"].setdefault(t, {"customers": 0, "revenue_at_risk": 0.0})
            acc["customers"] += r["customers"]
            acc["revenue_at_risk"] += r["revenue_at_risk"]
        out["top"] = sorted(out["top"] + s["top"], key=lambda a: (-a["churn_probability"],
                                                                  a["customer_id"]))[:TOP_ACCOUNTS]
        for name, h in s["histograms"].items():
            acc = out["histograms"].setdefault(name, {})
            if "counts" in h:
                prev = acc.get("counts", [0] * len(h["counts"]))
                acc["counts"] = [a + b for a, b in zip(prev, h["counts"], strict=True)]
                acc["missing"] = acc.get("missing", 0) + h["missing"]
            else:
                levels = acc.setdefault("levels", {})
                for level, n in h["levels"].items():
                    levels[level] = levels.get(level, 0) + n
    return out


def psi(actual: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    a = np.clip(np.asarray(actual, float), _EPS, None)
    e = np.clip(np.asarray(expected, float), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _numeric_drift(name: str, hist: dict, ref: dict) -> dict:
    counts = np.asarray(hist["counts"], float)
    total, missing = counts.sum(), hist["missing"]
    out = {"kind": "numeric", "missing_share": float(missing / max(total + missing, 1))}
    if "shares" in ref:
        expected = np.asarray(ref["shares"], float)
        if len(expected) != len(counts):
            raise BatchError(f"model.reference[{name!r}] has {len(expected)} bin shares for "
                             f"{len(counts)} bins between {len(ref['edges'])} edges")
    elif len(ref["edges"]) == 11:
        expected = np.full(10, 0.1)  # ten distinct decile edges: a tenth of training each
    else:
        out["note"] = (f"training deciles tie ({len(ref['edges']) - 1} distinct bins of 10) "
                       "and the reference has no bin shares")
        return out
    if "missing" in ref:  # nulls as their own bin, when the reference knows their share
        counts, expected = np.append(counts, missing), np.append(expected * (1 - ref["missing"]),
                                                                 ref["missing"])
    if counts.sum() == 0:
        out["note"] = "no known value in this batch"
        return out
    out.update(psi=psi(counts / counts.sum(), expected), shares=(counts / counts.sum()).tolist(),
               reference_shares=expected.tolist())
    return out


def _category_drift(hist: dict, ref: dict) -> dict:
    levels = sorted(set(hist["levels"]) | set(ref["shares"]))
    counts = np.array([hist["levels"].get(v, 0) for v in levels], float)
    expected = np.array([ref["shares"].get(v, 0.0) for v in levels], float)
    shares = counts / max(counts.sum(), 1)
    return {"kind": "category", "psi": psi(shares, expected),
            "shares": dict(zip(levels, shares.tolist(), strict=True)),
            "reference_shares": dict(zip(levels, expected.tolist(), strict=True))}


def drift_report(stats: dict, reference: dict, threshold: float) -> dict:
    """PSI of each feature and of the score against the training reference.

    Features whose reference cannot give bin shares, and the score when the reference has
    no ``__score__`` entry, are listed under "skipped" with the reason.
    """
    out: dict = {"psi_threshold": threshold, "features": {}, "score": None, "skipped": {}}
    for name, ref in reference.items():
        hist = stats["histograms"].get(name)
        if hist is None:
            out["skipped"][name] = "not among the computed features"
            continue
        d = (_numeric_drift(name, hist, ref) if ref["kind"] == "numeric"
             else _category_drift(hist, ref))
        if "note" in d:
            out["skipped"][name] = d["note"]
        if name == SCORE_KEY:
            out["score"] = d
        else:
            out["features"][name] = d
    if SCORE_KEY not in reference:
        out["skipped"][SCORE_KEY] = ("model.reference has no '__score__' entry (decile edges "
                                     "of the training churn probability): score PSI skipped")
    out["over_threshold"] = sorted(
        n for n, d in [*out["features"].items(), ("churn_probability", out["score"] or {})]
        if d.get("psi") is not None and d["psi"] > threshold)
    return out


def drift_warning(drift: dict) -> str | None:
    """One line naming what drifted past the threshold, or None."""
    over = drift["over_threshold"]
    if not over:
        return None
    values = drift["features"] | {"churn_probability": drift["score"] or {}}
    named = ", ".join(f"{n} ({values[n]['psi']:.2f})" for n in over)
    return f"PSI over {drift['psi_threshold']} against the training reference: {named}"


def summary_lines(stats: dict, currency: str) -> list[str]:
    """Customers and revenue at risk per tier, and the top accounts with their main driver."""
    lines = [f"{'tier':<9} {'customers':>10} {'revenue at risk':>18}"]
    for tier in ("critical", "high", "medium", "low"):
        r = stats["tiers"].get(tier, {"customers": 0, "revenue_at_risk": 0.0})
        lines.append(f"{tier:<9} {r['customers']:>10,} {r['revenue_at_risk']:>14,.0f} {currency}")
    lines.append("revenue at risk = churn probability x MRR x 12, summed over the tier")
    lines.append(f"top {TOP_ACCOUNTS} accounts at risk:")
    for a in stats["top"]:
        lines.append(f"  {a['customer_id']:<12} p={a['churn_probability']:.3f} "
                     f"{a['risk_tier']:<8} ARR {a['arr']:>10,.0f}  {a['driver']}")
    return lines


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LocalEngine:
    """Features from DuckDB (the loaded DataSet), scored in this process.

    The feature SQL reads tables by name: schema `chunk` shadows each one with a view of the
    chunk's customers, so every query reads one chunk only. Features depend only on a
    customer's own rows, so the restriction is exact. `events_daily` is rolled up per chunk
    too (never for the whole base), which is exact while there are at most 64 event types:
    each type then has its own bit whatever the numbering, so breadth counts do not change.
    Beyond 64 types the bits are shared as numbered over the whole base, so the rollup is
    built once for the whole base instead.
    """

    name = "local"

    def __init__(self, ds: DataSet, settings: Settings, model: ChurnModel,
                 memory_limit: str | None = DUCKDB_MEMORY_LIMIT):
        self.ds, self.settings, self.model = ds, settings, model
        self.was_derived = ds.derived
        con = ds.con
        if memory_limit:
            # From here DuckDB needs memory for one chunk only: under a lower limit it moves
            # the loaded tables to its temp folder instead of holding all of them, so peak
            # memory does not grow with the base.
            con.execute(f"SET memory_limit = '{memory_limit}'")
        types = con.execute("SELECT count(DISTINCT event) FROM main.events").fetchall()[0][0]
        self.daily_per_chunk = types <= 64
        if not self.daily_per_chunk and not ds.derived:
            con.execute(f"CREATE TABLE main.events_daily AS "
                        f"{events_daily_sql(settings.features)}")
        ds.derived = True  # compute_features must not build the rollup itself
        con.execute("CREATE SCHEMA IF NOT EXISTS chunk")

    def features(self, chunk: Chunk) -> pd.DataFrame:
        """Feature rows of the chunk's customers, exactly as `build_snapshot` gives them."""
        con, between = self.ds.con, f"BETWEEN {_quote(chunk.first)} AND {_quote(chunk.last)}"
        views = list(TABLES) + ([] if self.daily_per_chunk else ["events_daily"])
        for t in views:
            con.execute(f"CREATE OR REPLACE VIEW chunk.{t} AS "
                        f"SELECT * FROM main.{t} WHERE customer_id {between}")
        con.execute(f"CREATE OR REPLACE TABLE chunk.spine AS "
                    f"SELECT * FROM main.spine WHERE customer_id {between}")
        con.execute("SET search_path = 'chunk,main'")
        try:
            if self.daily_per_chunk:
                con.execute(f"CREATE OR REPLACE TABLE chunk.events_daily AS "
                            f"{events_daily_sql(self.settings.features)}")
            return compute_features(self.ds, self.settings)
        finally:
            con.execute("SET search_path = 'main'")

    def score(self, chunk: Chunk) -> tuple[pa.Table, pd.DataFrame]:
        frame = self.features(chunk)
        return score_table(self.model, frame), frame

    def close(self) -> None:
        """Drop the chunk tables; the DataSet itself belongs to the caller."""
        self.ds.con.execute("DROP SCHEMA IF EXISTS chunk CASCADE")
        self.ds.derived = self.was_derived


@lru_cache(maxsize=1)
def _spark_dialect():
    from sqlglot.dialects.spark import Spark

    class SparkNestedCtes(Spark):
        """Spark 3+ accepts WITH inside subqueries; sqlglot's Spark (from Hive) hoists them
        to the top, where the feature SQL's inner names (v, n) would clash."""

        class Generator(Spark.Generator):
            EXPRESSIONS_WITHOUT_NESTED_CTES: set = set()

    return SparkNestedCtes


def _duckdb_semantics(node):
    """Rewrite one DuckDB expression whose Spark translation would change its result."""
    from sqlglot import exp

    if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.UBIGINT:
        # Bit masks: a signed 64-bit long holds the same bits (Spark has no unsigned types).
        return exp.DataType.build("BIGINT")
    if isinstance(node, exp.Div):
        # DuckDB's `/` is floating-point; Spark would use DECIMAL for 86400.0 and round.
        # Changed in place: a returned new node would not have its children rewritten.
        node.set("this", exp.cast(node.this, "DOUBLE"))
        return node
    if isinstance(node, exp.DateDiff):
        unit = node.unit.name.upper() if node.unit else "DAY"
        if unit == "SECOND":
            # DuckDB counts second boundaries crossed (floor b - floor a); Spark's datediff
            # truncates the difference. unix_seconds floors, which is DuckDB's count.
            def secs(e):
                return exp.func("unix_seconds", exp.cast(e, "TIMESTAMP"))
            return exp.Paren(this=exp.Sub(this=secs(node.this), expression=secs(node.expression)))
        if unit != "MICROSECOND":
            raise BatchError(f"date_diff('{unit.lower()}', ...) has no exact Spark translation "
                             "here; use 'second' or 'microsecond' in features/queries.py")
    return node


def to_spark_sql(sql: str) -> str:
    """Translate feature SQL from DuckDB to Spark SQL (sqlglot), keeping DuckDB's results."""
    import sqlglot

    tree = sqlglot.parse_one(sql, read="duckdb").transform(_duckdb_semantics)
    return tree.sql(dialect=_spark_dialect())


def spark_session(master: str | None):
    """A Spark session: local mode on 127.0.0.1 without UI by default, UTC in any case."""
    from pyspark.sql import SparkSession

    local = master is None or master.startswith("local")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need this venv
    builder = SparkSession.builder.appName("churnlens-score")
    if master:
        builder = builder.master(master)
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (builder.config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.shuffle.partitions", "4"))
    spark = (builder.config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _numeric_columns(frame: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    # The typing compute_features applies: ids as str, numeric features as float64.
    frame["customer_id"] = frame["customer_id"].astype(str)
    for name in numeric:
        frame[name] = frame[name].astype("float64")
    return frame


class SparkEngine:
    """Features as Spark SQL over the loaded tables, scored by mapInPandas.

    The cleaned DuckDB tables (validated by features.loading) and the spine are exported
    once to parquet, sorted by customer id so a chunk's range filter skips row groups.
    """

    name = "spark"

    def __init__(self, ds: DataSet, settings: Settings, model: ChurnModel,
                 master: str | None = None, spark=None):
        self.model, self.settings = model, settings
        self.owns_session = spark is None
        self.spark = spark or spark_session(master)
        self.tmp = Path(tempfile.mkdtemp(prefix="churnlens-spark-"))
        self.sql = to_spark_sql(feature_sql(settings.features, ds.attributes))
        for t in (*TABLES, "spine", "cutoffs"):
            order = "" if t == "cutoffs" else " ORDER BY customer_id"
            path = self.tmp / f"{t}.parquet"
            ds.con.execute(f"COPY (SELECT * FROM main.{t}{order}) TO '{path}' (FORMAT parquet)")
            self.spark.read.parquet(str(path)).createOrReplaceTempView(f"{t}__all")
            self.spark.table(f"{t}__all").createOrReplaceTempView(t)
        daily = self.spark.sql(to_spark_sql(events_daily_sql(settings.features)))
        (daily.repartitionByRange(4, "customer_id").sortWithinPartitions("customer_id")
         .write.parquet(str(self.tmp / "events_daily")))
        daily = self.spark.read.parquet(str(self.tmp / "events_daily"))
        daily.createOrReplaceTempView("events_daily__all")
        daily.createOrReplaceTempView("events_daily")
        self.model_bytes = self.spark.sparkContext.broadcast(pickle.dumps(model))
        self.carried = [f.name for f in model.features] + (
            [] if "mrr" in model.feature_names else ["mrr"])

    def _output_schema(self):
        from pyspark.sql.pandas.types import from_arrow_schema

        kinds = {f.name: f.kind for f in self.model.features}
        extra = [pa.field(f"_f_{n}", pa.string() if kinds.get(n) == "category" else pa.float64())
                 for n in self.carried]
        return from_arrow_schema(pa.schema([*RECORD_SCHEMA, *extra]))

    def score(self, chunk: Chunk) -> tuple[pa.Table, pd.DataFrame]:
        from pyspark.sql import functions as F

        for t in (*TABLES, "spine", "events_daily"):
            (self.spark.table(f"{t}__all")
             .where(F.col("customer_id").between(chunk.first, chunk.last))
             .createOrReplaceTempView(t))
        frame = self.spark.sql(self.sql)
        tasks = self.spark.sparkContext.defaultParallelism
        scored = frame.repartition(tasks).mapInPandas(
            _score_partition(self.model_bytes, self.carried, self.model), self._output_schema())
        table = scored.toArrow().sort_by("customer_id")
        records = table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
        features = table.select([f"_f_{n}" for n in self.carried]).to_pandas()
        features.columns = self.carried
        features.insert(0, "customer_id", records.column("customer_id").to_pandas())
        return records, features

    def close(self) -> None:
        if self.owns_session:
            self.spark.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _score_partition(model_bytes, carried: list[str], model: ChurnModel):
    numeric = [f.name for f in model.features if f.kind == "numeric"]
    numeric += [n for n in carried if n not in {f.name for f in model.features}]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Loaded once per task from the broadcast bytes, not once per batch.
        m: ChurnModel = pickle.loads(model_bytes.value)
        for frame in batches:
            if frame.empty:
                continue
            frame = _numeric_columns(frame, numeric)
            rows = pd.DataFrame([record_row(r) for r in score_records(m, frame, num_threads=1)],
                                columns=RECORD_SCHEMA.names)
            for n in carried:
                rows[f"_f_{n}"] = frame[n].to_numpy()
            yield rows

    return run


@dataclass(frozen=True)
class BatchJob:
    """What to score, with what, and where to write it."""

    as_of: str
    out: Path
    model_uri: str
    chunk_size: int
    psi_threshold: float
    source: str | None = None
    resume: bool = False
    engine: str = "local"
    master: str | None = None


@dataclass
class BatchResult:
    out: Path
    drift_path: Path
    customers: int
    chunks: int
    chunks_resumed: int
    seconds: float
    currency: str
    stats: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)


def parts_dir(out: Path) -> Path:
    """The work folder beside OUT holding the parts and the manifest."""
    return out.with_name(out.name + ".parts")


def drift_path(out: Path) -> Path:
    return out.with_suffix(".drift.json")


def _open_parts(job: BatchJob, manifest: dict, log: Log) -> Path:
    parts = parts_dir(job.out)
    path = parts / "manifest.json"
    if path.exists():
        if not job.resume:
            raise BatchError(f"{parts} holds an unfinished job: pass --resume to finish it, or "
                             f"delete {parts} to start afresh")
        check_manifest(json.loads(path.read_text()), manifest, parts)
        return parts
    if job.resume:
        log(f"note: nothing to resume at {parts}; starting afresh")
    parts.mkdir(parents=True, exist_ok=True)
    _write_json(path, manifest)
    return parts


def _score_chunks(engine, chunks: list[Chunk], parts: Path, reference: dict,
                  progress: bool) -> int:
    """Score every chunk whose part is missing; return how many were already done."""
    from tqdm import tqdm

    done = {c.index for c in chunks if (parts / f"{c.part}.parquet").exists()}
    todo = [c for c in chunks if c.index not in done]
    bar = tqdm(total=sum(c.count for c in chunks),
               initial=sum(c.count for c in chunks if c.index in done),
               unit=" customers", file=sys.stderr, disable=not progress, smoothing=0.1)
    with bar:
        for chunk in todo:
            records, features = engine.score(chunk)
            if records.num_rows != chunk.count:
                raise BatchError(f"chunk {chunk.index} gave {records.num_rows} records for "
                                 f"{chunk.count} customers; the spine and features disagree")
            # Stats first, part last: a part that exists always has its stats beside it.
            _write_json(parts / f"{chunk.part}.stats.json",
                        chunk_stats(features, records, reference))
            tmp = parts / f"{chunk.part}.parquet.tmp"
            pq.write_table(records, tmp)
            tmp.replace(parts / f"{chunk.part}.parquet")
            bar.update(chunk.count)
            del records, features
            _release_free_memory()
    return len(done)


def _release_free_memory() -> None:
    """Hand the allocator's free pages back to the system between chunks (glibc only).

    Each chunk frees its features and records, but glibc keeps the freed pages and the next
    chunk's allocations land beside them; without this the 1M-customer job's RSS crept from
    ~1.4 to ~2.0 GiB over its chunks.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass  # not glibc (macOS, musl): nothing to trim


def _combine(chunks: list[Chunk], parts: Path, out: Path, manifest: dict) -> None:
    """Concatenate the parts (one at a time) into OUT.tmp, then rename it to OUT."""
    tmp = out.with_name(out.name + ".tmp")
    meta = {b"churnlens": json.dumps({k: manifest[k] for k in
                                       ("as_of", "model", "customers")}).encode()}
    with pq.ParquetWriter(tmp, RECORD_SCHEMA.with_metadata(meta)) as writer:
        for c in chunks:
            part = pq.read_table(parts / f"{c.part}.parquet")
            writer.write_table(part.replace_schema_metadata(meta))
    tmp.replace(out)


def run_batch(job: BatchJob, settings: Settings, log: Log = print, progress: bool = True,
              spark=None) -> BatchResult:
    """Score every customer active at JOB.as_of into JOB.out (see the module docstring).

    Raises BatchError (bad arguments, nothing to score, a resume that does not match the
    unfinished job) and DataError (bad input data).
    """
    t0 = time.perf_counter()
    if job.chunk_size < 1:
        raise BatchError(f"chunk size must be at least 1, got {job.chunk_size}")
    if job.engine not in ("local", "spark"):
        raise BatchError(f"engine must be local or spark, not {job.engine!r}")
    model = load_model(job.model_uri)
    source = str(job.source or settings.data.source)
    ds = load_source(source, settings.data.observed_until)
    try:
        for line in ds.report.lines():
            log(line)
        as_of = parse_as_of(job.as_of, ds.observed_until)
        set_cutoffs(ds, [as_of])
        if build_spine(ds, settings.churn) == 0:
            raise BatchError(f"no customer is active as of {as_of.date()}; pick a date inside "
                             f"the data (it ends {ds.observed_until.date()})")
        ids = ds.con.sql("SELECT customer_id FROM spine ORDER BY customer_id").to_arrow_table()
        chunks = plan_chunks(ids.column(0).combine_chunks(), job.chunk_size)
        del ids
        manifest = _manifest(as_of, model, job.model_uri, str(Path(source).resolve()),
                             ds.observed_until, job.chunk_size, chunks)
        log(f"{manifest['customers']:,} customers active on {as_of.date()}, scored by "
            f"{model.info.get('name')} v{model.info.get('version')} in {len(chunks)} chunk(s) "
            f"of up to {job.chunk_size:,} on the {job.engine} engine")
        job.out.parent.mkdir(parents=True, exist_ok=True)
        parts = _open_parts(job, manifest, log)
        engine = (SparkEngine(ds, settings, model, job.master, spark) if job.engine == "spark"
                  else LocalEngine(ds, settings, model))
        try:
            resumed = _score_chunks(engine, chunks, parts, model.reference, progress)
        finally:
            engine.close()
    finally:
        ds.con.close()
    stats = merge_stats([json.loads((parts / f"{c.part}.stats.json").read_text())
                         for c in chunks])
    drift = drift_report(stats, model.reference, job.psi_threshold)
    drift.update(as_of=manifest["as_of"], model=manifest["model"], customers=stats["customers"])
    _write_json(drift_path(job.out), drift)
    _combine(chunks, parts, job.out, manifest)
    shutil.rmtree(parts)
    return BatchResult(job.out, drift_path(job.out), stats["customers"], len(chunks), resumed,
                       time.perf_counter() - t0, model.currency, stats, drift)
