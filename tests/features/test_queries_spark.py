"""One SQL definition: the feature SQL gives the same features on Spark as on DuckDB."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.features.build import compute_features
from churnlens.features.catalog import event_types_of, plan_for_source
from churnlens.features.contract import TABLES
from churnlens.features.loading import load_source
from churnlens.features.queries import events_daily_sql, feature_sql
from churnlens.features.relations import LOADED, drop, from_item
from churnlens.features.sample import generate_sample
from churnlens.features.spine import build_spine, cutoff_relation
from churnlens.settings import ChurnSettings, Settings

pytest.importorskip("pyspark")
from churnlens.serving.spark import java_missing, spark_session, to_spark_sql  # noqa: E402

SETTINGS = Settings(churn={"definition": "contract"})
CUTOFFS = [pd.Timestamp("2026-03-01"), pd.Timestamp("2026-09-01")]


@pytest.fixture(scope="module")
def loaded():
    tables = generate_sample(300, seed=4)
    ds = load_source({k: v for k, v in tables.items() if k != "truth"})
    plan = plan_for_source(ds, SETTINGS.features)
    spine = build_spine(ds.con, cutoff_relation(ds.con, CUTOFFS),
                        ChurnSettings(definition="contract"))
    yield ds, plan, spine
    drop(ds.con, spine)


def test_the_whole_feature_sql_translates_to_spark(loaded):
    ds, plan, _ = loaded
    names = {f.name for f in plan.features}
    assert "purchases" in names and any(f.event_type for f in plan.features)
    sql = to_spark_sql(feature_sql(SETTINGS.features, plan.features, spine="spine",
                                   daily="events_daily"))
    assert "type_login_30d" in sql and "purchase_gap_std_days" in sql and "`segment`" in sql


@pytest.mark.slow
@pytest.mark.skipif(java_missing() is not None, reason=str(java_missing()))
def test_spark_gives_duckdbs_features(loaded, tmp_path):
    ds, plan, spine = loaded
    want = compute_features(ds.con, spine, SETTINGS.features, ds.attributes,
                            features=plan.features)
    spark = spark_session("local[1]")
    try:
        exported = {t: LOADED.of(t) for t in TABLES} | {"spine": from_item(spine)}
        for name, source in exported.items():
            path = tmp_path / f"{name}.parquet"
            ds.con.execute(f"COPY (SELECT * FROM {source} AS whole) TO '{path}' (FORMAT parquet)")
            spark.read.parquet(str(path)).createOrReplaceTempView(name)
        spark.sql(to_spark_sql(events_daily_sql(SETTINGS.features, "events",
                                                event_types_of(plan.features)))
                  ).createOrReplaceTempView("events_daily")
        sql = to_spark_sql(feature_sql(SETTINGS.features, plan.features, spine="spine",
                                       daily="events_daily"))
        got = spark.sql(sql).toPandas()
    finally:
        spark.stop()
    got = got.sort_values(["customer_id", "cutoff"], ignore_index=True)
    assert len(got) == len(want) > 100
    for feature in plan.features:
        if feature.kind == "numeric":
            np.testing.assert_allclose(got[feature.name].astype(float), want[feature.name],
                                       rtol=1e-9, atol=1e-9, err_msg=feature.name)
        else:
            def levels(column: pd.Series) -> list:
                return [None if pd.isna(v) else str(v) for v in column.astype(object)]

            assert levels(got[feature.name]) == levels(want[feature.name]), feature.name
