"""The scoring core: input checks, and one survival curve giving the same numbers as three."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnlens.serving.core import (
    FeatureInputError,
    check_features,
    prepare,
    score_frame,
    score_records,
)
from churnlens.training.tracking import load_bundle

# Scores the session's trained model (trained_env): not in the inner loop (make test-fast).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_and_rows(trained_env):
    import mlflow

    mlflow.set_tracking_uri(trained_env.tracking_uri)
    model = load_bundle(trained_env.model_uri)
    rows = pd.read_parquet(trained_env.snapshot).head(50).reset_index(drop=True)
    return model, rows


def test_scores_equal_the_separate_survival_calls(model_and_rows):
    model, rows = model_and_rows
    scores = score_frame(model, rows)
    surv = model.survival.survival_at(rows)
    for d in ("30", "90", "180", "365"):
        np.testing.assert_allclose(scores[f"survival_{d}"], surv[d], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores["expected_remaining_days"],
                               model.survival.expected_remaining_days(rows), rtol=1e-12)
    np.testing.assert_allclose(scores["expected_ltv"], model.expected_ltv(rows), rtol=1e-12)
    np.testing.assert_allclose(scores["churn_probability"], model.risk.predict_proba(rows))


def test_integer_and_text_numbers_are_coerced_without_touching_the_input(model_and_rows):
    model, rows = model_and_rows
    numeric = [f.name for f in model.features if f.kind == "numeric"]
    whole = rows.copy()
    whole[numeric[0]] = whole[numeric[0]].fillna(0).round().astype("int64")
    as_text = whole.copy()
    as_text[numeric[0]] = as_text[numeric[0]].astype(str).astype(object)
    before = as_text.copy()
    for frame in (whole, as_text):
        checked = check_features(model, frame)
        assert checked[numeric[0]].dtype == np.float64
        np.testing.assert_array_equal(checked[numeric[0]], whole[numeric[0]].astype(float))
    pd.testing.assert_frame_equal(as_text, before)  # the caller's frame is unchanged
    assert check_features(model, rows) is rows  # already clean: no copy at all


def test_bad_numbers_and_missing_columns_are_named(model_and_rows):
    model, rows = model_and_rows
    numeric = next(f.name for f in model.features if f.kind == "numeric")
    bad = rows.astype({numeric: object})
    bad.loc[3, numeric] = "lots"
    with pytest.raises(FeatureInputError, match=rf"feature {numeric} must be a number; "
                                                r"rows \[3\] hold \['lots'\]"):
        score_records(model, bad)
    with pytest.raises(FeatureInputError, match=rf"missing feature column\(s\): {numeric}"):
        score_frame(model, rows.drop(columns=[numeric]))


def test_records_follow_the_input_order_and_carry_the_model(model_and_rows):
    model, rows = model_and_rows
    shuffled = rows.sample(frac=1.0, random_state=3)
    records = score_records(model, shuffled)
    assert [r["customer_id"] for r in records] == [str(c) for c in shuffled["customer_id"]]
    flat = score_frame(model, shuffled)
    assert [r["churn_probability"] for r in records] == flat["churn_probability"].tolist()
    assert all(r["model"]["name"] == model.info["name"] for r in records)
    assert all(len(r["drivers"]) <= model.top_n for r in records)


def test_prepared_rows_score_as_the_frame_does(model_and_rows):
    model, rows = model_and_rows
    prepared = prepare(model, rows)
    assert score_records(model, prepared) == score_records(model, rows)
    picked = score_records(model, prepared.take([7, 2, 7]))
    assert picked == score_records(model, rows.iloc[[7, 2, 7]])


def test_a_matrix_of_the_wrong_width_is_refused(model_and_rows):
    model, rows = model_and_rows
    prepared = prepare(model, rows)
    with pytest.raises(ValueError, match=r"encoded matrix needs shape \(rows, \d+\); got "
                                         r"\(50, 3\) \(build it with RiskModel.encode\)"):
        model.risk.predict_proba(prepared.risk[:, :3])
    with pytest.raises(ValueError, match=r"build it with SurvivalModel.encode"):
        model.survival.survival_function(prepared.survival[:, 1:], [30.0])


def test_the_batch_table_equals_the_records_table(model_and_rows):
    from churnlens.serving.records import records_table, score_table

    model, rows = model_and_rows
    model.info = {**model.info, "version": "3", "name": "churnlens", "run_id": "r1"}
    rows = rows.copy()
    rows.loc[4, "lifecycle_stage"] = None  # a missing stage stays null in both
    rows.loc[5, ["mrr", "paid_amount_90d"]] = np.nan  # unknown LTV stays NaN in both
    expected = records_table(score_records(model, rows))
    table = score_table(model, rows)
    assert table.schema.equals(expected.schema)
    assert table.column_names == expected.column_names
    for name in expected.column_names:
        if name == "expected_ltv":  # holds NaN, which Arrow's equals never counts as equal
            np.testing.assert_array_equal(table[name].to_numpy(), expected[name].to_numpy())
            assert np.isnan(table[name].to_numpy()[5])
        else:
            assert table[name].equals(expected[name]), name
    assert score_table(model, rows.iloc[:0]).num_rows == 0


def test_drivers_are_unchanged_by_the_shap_table(trained_env, model_and_rows):
    # Every record of the sample snapshot, with TreeSHAP by ShapTable and by LightGBM's own
    # pred_contrib: the same drivers in the same order, contributions equal to rounding.
    model, _ = model_and_rows
    rows = pd.read_parquet(trained_env.snapshot)
    by_table = score_records(model, rows)
    model.risk.tree_shap = "lightgbm"
    try:
        by_lightgbm = score_records(model, rows)
    finally:
        del model.risk.tree_shap  # back to the class default, "table"
    assert sum(len(r["drivers"]) for r in by_table) > len(rows)  # drivers to compare

    def without_contributions(records):
        return [{**r, "drivers": [{**d, "contribution": None} for d in r["drivers"]]}
                for r in records]

    assert without_contributions(by_table) == without_contributions(by_lightgbm)
    np.testing.assert_allclose(
        [d["contribution"] for r in by_table for d in r["drivers"]],
        [d["contribution"] for r in by_lightgbm for d in r["drivers"]], rtol=0, atol=1e-9)
