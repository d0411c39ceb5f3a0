"""Training sets over all cutoffs, and feature snapshots as of one date.

These are the two ways features leave this package; training, the endpoint and the batch
scorer all go through them, so a feature has exactly one definition. The steps pass
relations to each other: cutoffs -> spine -> (daily rollup, labels) -> feature frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churnlens.features.catalog import event_types_of, plan_for_source
from churnlens.features.cutoffs import training_cutoffs
from churnlens.features.event_queries import recent_days
from churnlens.features.labels import LABEL_COLUMNS, build_labels
from churnlens.features.loading import DataSet
from churnlens.features.queries import Feature, events_daily_sql, feature_list, feature_sql
from churnlens.features.relations import LOADED, Sources, drop, from_item, materialise
from churnlens.features.shapes import SHAPE_NAMES, resolve_churn
from churnlens.features.spine import (
    build_churn_events,
    build_spine,
    confirmation_lag_days,
    cutoff_relation,
)
from churnlens.settings import ChurnSettings, FeatureSettings, Settings

ARROW_BATCH_ROWS = 100_000


@dataclass
class FeatureFrame:
    """Rows keyed by (customer_id, cutoff) with feature columns (and labels for training).

    notes: what the build decided that a reader must know (the churn definition in use,
    cutoffs left out and why, features left out and why), one line each, for the caller to
    print or log; left_out: the (feature, reason) pairs of features the source cannot give.
    """

    frame: pd.DataFrame
    features: list[Feature]
    notes: list[str] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def build_events_daily(con: duckdb.DuckDBPyConnection, fs: FeatureSettings,
                       sources: Sources = LOADED, event_types: Sequence[str] = (),
                       cutoff: pd.Timestamp | None = None,
                       types: duckdb.DuckDBPyRelation | None = None) -> duckdb.DuckDBPyRelation:
    """The events of SOURCES rolled up per customer and day (`events_daily_sql`), computed once.

    event_types: the types counted one by one (`churnlens.features.catalog.event_types_of`
    the features that will read the rollup); cutoff: the one cutoff the rollup is read for
    (`feature_sql(..., one_cutoff=True)`): only the days its usage windows read. types: a relation whose `event` column holds the event types of
    SOURCES (`events_daily_sql`'s types), so that the rollup need not find them in every
    event. The relation reads a temporary table (`relations.drop` removes it).
    """
    known = None if types is None else from_item(types)
    sql = (events_daily_sql(fs, sources.events, event_types, types=known) if cutoff is None
           else events_daily_sql(fs, sources.events, event_types,
                                 where=recent_days(fs, cutoff), types=known))
    # Stored in customer order: the usage windows' group-by over the rollup's days ran 3.7x
    # slower over days in hash order (4M groups, each row far from the last) than in order.
    return materialise(con, f"SELECT * FROM ({sql}) AS days ORDER BY customer_id, occurred_at",
                       "events_daily")


def compute_features(con: duckdb.DuckDBPyConnection, spine: duckdb.DuckDBPyRelation,
                     fs: FeatureSettings, attributes: dict[str, str], *,
                     sources: Sources = LOADED, daily: duckdb.DuckDBPyRelation | None = None,
                     labels: duckdb.DuckDBPyRelation | None = None,
                     features: Sequence[Feature] | None = None,
                     event_types: duckdb.DuckDBPyRelation | None = None,
                     summary: str | None = None) -> pd.DataFrame:
    """Features for every row of SPINE (customer_id, cutoff), as a pandas frame.

    features: the columns to build (`churnlens.features.catalog.plan_for_source`, or a
    trained model's list); None: every built-in feature plus ATTRIBUTES (static customer
    columns, name -> "str" | "float"). sources: where the contract tables are; daily: the
    rollup of `build_events_daily` over the same customers with the event types of FEATURES,
    built here (and dropped afterwards) when None; labels: a relation from
    `churnlens.features.labels.build_labels`, joined in DuckDB so that only one frame is ever
    materialised in pandas. event_types: the types of SOURCES' events, for the rollup built
    here (`build_events_daily`'s types); summary: for a SPINE of one cutoff, a
    from-item holding the events' summary at it (`feature_sql`'s; the Spark job's tasks, whose
    SOURCES hold the recent events only). Returns rows sorted by customer_id then cutoff:
    customer_id (str), cutoff, FEATURES (numeric ones float64) and LABEL_COLUMNS if given.
    """
    features = feature_list(fs, attributes) if features is None else features
    cutoffs, first = con.sql(f"SELECT count(DISTINCT cutoff), min(cutoff) "
                             f"FROM {from_item(spine)} AS spine").fetchall()[0]
    one_cutoff = cutoffs == 1
    own_daily = (build_events_daily(con, fs, sources, event_types_of(features),
                                    cutoff=first if one_cutoff else None, types=event_types)
                 if daily is None else None)
    try:
        sql = feature_sql(fs, features, spine=from_item(spine),
                          daily=from_item(daily if daily is not None else own_daily),
                          sources=sources, one_cutoff=one_cutoff, materialized=True,
                          summary=summary)
        if labels is not None:
            columns = ", ".join(f"label.{c}" for c in LABEL_COLUMNS)
            sql = (f"SELECT feature.*, {columns} FROM ({sql}) AS feature "
                   f"JOIN {from_item(labels)} AS label "
                   "ON label.customer_id = feature.customer_id AND label.cutoff = feature.cutoff")
        # In a list that each step empties: an argument stays referenced by its caller until
        # the call returns, and each step frees its input a column at a time as it goes.
        result = [query_arrow(con, sql)]
    finally:
        drop(con, own_daily)
    return arrow_to_frame(sorted_by_key(result), features)


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """The result of SQL as an Arrow table. Through Arrow, strings arrive as categories: a
    fraction of the memory of Python strings. Streamed in batches so DuckDB never holds the
    whole result at once."""
    return con.sql(sql).to_arrow_reader(ARROW_BATCH_ROWS).read_all()


def sorted_by_key(result: list[pa.Table]) -> list[pa.Table]:
    """[the table of RESULT sorted by customer_id then cutoff], taken out of RESULT. Sorted here, not in SQL (an ORDER BY would
    make DuckDB hold the whole result), and in Arrow, whose sort takes a fraction of pandas'
    time: a column at a time, each unsorted column released as its sorted copy is made, so
    the result is never held twice."""
    table = result.pop()
    order = pc.sort_indices(table, sort_keys=[("customer_id", "ascending"),
                                              ("cutoff", "ascending")])
    pool = _arrow_pool()
    names, ordered = table.column_names, []
    for name in names:
        ordered.append(pc.take(table.column(name), order, memory_pool=pool))
        table = table.drop_columns([name])
    return [pa.Table.from_arrays(ordered, names=names)]


def arrow_to_frame(result: list[pa.Table], features: Sequence[Feature]) -> pd.DataFrame:
    """The table of RESULT, taken out of it, as the pandas frame `compute_features` returns."""
    table = result.pop()
    ids = table.column("customer_id").to_numpy(zero_copy_only=False)  # Python str objects
    rest = table.drop_columns(["customer_id"])
    del table
    # Each Arrow column is freed once converted (self_destruct, one block per column), so
    # the result is never whole twice: the 100k training set peaked 4.8 GiB without it. On
    # one thread: the 100k training set's 89 columns took 0.16 s, against 0.5-2 s threaded.
    frame = rest.to_pandas(strings_to_categorical=True, self_destruct=True, split_blocks=True,
                           use_threads=False, memory_pool=_arrow_pool())
    del rest
    frame.insert(0, "customer_id", ids)
    for feature in features:
        if feature.kind == "numeric" and frame[feature.name].dtype != np.float64:
            frame[feature.name] = frame[feature.name].astype("float64")
    return _sorted_categories(frame)


def _arrow_pool() -> pa.MemoryPool:
    """Arrow's jemalloc pool where this pyarrow has it, else its default: the sorted copy
    of the 100k training set (800 MB of new memory) took 1.2-1.4 s from jemalloc against
    2.2-3.2 s from the default mimalloc, four runs each."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # pyarrow built without jemalloc (ArrowNotImplementedError)
        return pa.default_memory_pool()


def _sorted_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """FRAME with every category column's levels in sorted order, in place.

    Arrow's dictionaries list the levels in the order the (parallel) query met them, which
    changes from run to run; sorted, the same data give the same frame and the same file.
    """
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            levels = column.cat.categories
            if not levels.is_monotonic_increasing:
                frame[name] = column.cat.reorder_categories(levels.sort_values())
    return frame


def build_training_set(ds: DataSet, settings: Settings) -> FeatureFrame:
    """Features and labels for every customer at every training cutoff.

    The churn definition is resolved for the data's shape (`resolve_churn`); the cutoffs
    are those whose label windows can show a churn (`churnlens.features.cutoffs`). Returns
    a FeatureFrame whose frame has customer_id, cutoff, the features and the label columns
    of `churnlens.features.labels`, and whose notes say what was decided. Raises
    ValueError, saying what to set, when no cutoff can be labelled or no customer is ever
    in the spine.
    """
    con = ds.con
    churn = resolve_churn(settings.churn, ds)
    dates, notes = training_cutoffs(ds, settings, churn)
    notes = [*churn_notes(settings.churn, churn, ds, settings.horizon_days), *notes]
    plan = plan_for_source(ds, settings.features)
    spine = build_spine(con, cutoff_relation(con, dates), churn)
    labels = None
    try:
        if spine.shape[0] == 0:
            raise ValueError("no customer is active at any cutoff: check the churn definition "
                             "and that subscriptions (or events) cover the history")
        labels = build_labels(con, spine, build_churn_events(con, churn),
                              churn=churn, horizon_days=settings.horizon_days,
                              ltv_horizon_days=settings.ltv.horizon_days,
                              observed_until=ds.observed_until)
        frame = compute_features(con, spine, settings.features, ds.attributes, labels=labels,
                                 features=plan.features)
    finally:
        drop(con, spine, labels)
    return FeatureFrame(frame, plan.features, [*notes, *plan.lines()], plan.left_out)


def churn_notes(asked: ChurnSettings, churn: ChurnSettings, ds: DataSet,
                horizon_days: int) -> list[str]:
    """One line on the churn definition in use (CHURN, resolved from ASKED) for DS's shape."""
    how = "asked" if asked.definition == churn.definition else f"auto for {SHAPE_NAMES[ds.shape]}"
    if churn.definition == "contract":
        grace = ("no grace period: a one-snapshot export's ends are its churns"
                 if ds.shape == "snapshot" else f"grace {churn.grace_days} days")
        what = f"the last subscription ends within the {horizon_days}-day horizon ({grace})"
    else:
        act = "purchase" if churn.activity == "purchases" else "purchase or event"
        what = (f"no {act} in [c, c + {horizon_days} days); every customer with a {act} "
                "before c is in the spine, gone quiet or not")
    return [f"churn ({churn.definition}, {how}): {what}"]


def build_snapshot(ds: DataSet, as_of: str | pd.Timestamp, settings: Settings,
                   features: Sequence[Feature] | None = None) -> FeatureFrame:
    """Features of every customer at AS_OF (one cutoff), for scoring: with contracts those
    with an active subscription, without them every customer with any activity before it.

    features: the columns to build, e.g. a trained model's (None: those the source can give,
    `churnlens.features.catalog.plan_for_source`). Raises ValueError when AS_OF is not a
    date or lies after the end of the observed data.
    """
    try:
        as_of = pd.Timestamp(as_of).tz_localize(None).normalize()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"as-of date {as_of!r} is not a date ({exc}); use YYYY-MM-DD") from None
    if as_of > ds.observed_until:
        raise ValueError(
            f"as-of date {as_of.date()} is after the end of the data "
            f"({ds.observed_until.date()}): features would miss records; pick an earlier date"
        )
    plan = plan_for_source(ds, settings.features) if features is None else None
    features = plan.features if plan is not None else list(features)
    spine = build_spine(ds.con, cutoff_relation(ds.con, [as_of]),
                        resolve_churn(settings.churn, ds))
    try:
        frame = compute_features(ds.con, spine, settings.features, ds.attributes,
                                 features=features)
    finally:
        drop(ds.con, spine)
    return FeatureFrame(frame, features, plan.lines() if plan else [],
                        plan.left_out if plan else [])


def customer_lifetimes(ds: DataSet, settings: Settings) -> pd.DataFrame:
    """Each customer's signup, first churn (if observed) and lifetime in days, for cohorts.

    Returns customer_id, signed_up_at, churned_at (NaT when still a customer), lifetime_days
    (to churn, or to the end of the data) and churned (bool). Only churns confirmed by the
    end of the data count.
    """
    churn = resolve_churn(settings.churn, ds)
    churns = (f"(SELECT * FROM {from_item(build_churn_events(ds.con, churn))} AS churn "
              f"WHERE churned_at + INTERVAL {confirmation_lag_days(churn)} DAY <= $until)")
    return ds.con.execute(f"""
        SELECT customer.customer_id, customer.signed_up_at, min(churn.churned_at) AS churned_at,
               date_diff('second', customer.signed_up_at,
                         coalesce(min(churn.churned_at), $until)) / 86400.0 AS lifetime_days,
               min(churn.churned_at) IS NOT NULL AS churned
        FROM {LOADED.customers} AS customer
        LEFT JOIN {churns} AS churn ON churn.customer_id = customer.customer_id
        GROUP BY customer.customer_id, customer.signed_up_at ORDER BY customer.customer_id
    """, {"until": ds.observed_until}).df()
