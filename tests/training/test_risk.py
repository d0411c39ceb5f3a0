"""The risk model: discrimination, calibration, serialisation and behaviour (Made-With-ML)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from churnlens.features.build import build_training_set
from churnlens.features.loading import load_source
from churnlens.features.sample import generate_sample, write_sample
from churnlens.settings import Settings
from churnlens.training.metrics import logistic_baseline
from churnlens.training.risk import MONOTONE, RiskModel
from churnlens.training.split import temporal_split


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    src = tmp_path_factory.mktemp("risk") / "src"
    tables = generate_sample(4000, seed=3)
    write_sample(tables, src)
    ff = build_training_set(load_source(src), Settings())
    split = temporal_split(ff.frame, 90, Settings().training)
    return ff, split, tables["truth"]


@pytest.fixture(scope="module")
def model(data) -> RiskModel:
    ff, split, _ = data
    return RiskModel(ff.features, Settings().training.lightgbm, seed=42).fit(
        split.train, split.validation, split.calibration)


@pytest.fixture(scope="module")
def test_rows(data) -> pd.DataFrame:
    return data[1].test


def _auc(frame: pd.DataFrame, p) -> float:
    return roc_auc_score(frame["churned"].astype(int), p)


def test_auc_beats_chance_and_the_one_hot_logistic_baseline(data, model, test_rows):
    ff, split, _ = data
    logistic = logistic_baseline(split.train, ff.features)
    auc = _auc(test_rows, model.predict_proba(test_rows))
    assert auc > 0.75
    assert auc > _auc(test_rows, logistic.predict_proba(test_rows)[:, 1]) + 0.01


def test_auc_is_close_to_the_oracle(data, model, test_rows):
    truth = data[2]
    oracle = test_rows[["customer_id", "cutoff"]].merge(truth, on=["customer_id", "cutoff"],
                                                         how="left")["true_churn_prob"]
    assert oracle.notna().all()
    assert _auc(test_rows, model.predict_proba(test_rows)) > _auc(test_rows, oracle) - 0.05


def test_calibrated_mean_matches_the_test_churn_rate(model, test_rows):
    p = model.predict_proba(test_rows)
    assert ((p > 0) & (p < 1)).all()
    assert p.mean() == pytest.approx(test_rows["churned"].mean(), abs=0.015)


def test_the_kept_calibration_is_no_worse_than_none(model, test_rows):
    scores = model.calibration_log_loss_
    assert set(scores) == {"none", "platt", "isotonic"}  # 4,000+ rows, 250+ churners
    assert scores[model.calibration_method_] <= scores["none"]
    y = test_rows["churned"].astype(int)
    kept = log_loss(y, model.predict_proba(test_rows))
    none = log_loss(y, model.predict_raw(test_rows))
    print(f"calibration {model.calibration_method_}: cross-fitted {scores}; test log loss "
          f"kept {kept:.5f}, none {none:.5f}")
    assert kept <= none + 1e-12


def test_booster_is_compact(model):
    assert model.booster_.num_trees() == model.best_iteration_ <= 400


def test_pickled_model_gives_identical_predictions(model, test_rows):
    loaded = pickle.loads(pickle.dumps(model))
    assert np.array_equal(loaded.predict_proba(test_rows), model.predict_proba(test_rows))
    assert loaded.contributions(test_rows.head(50)).equals(model.contributions(test_rows.head(50)))


def test_contributions_equal_lightgbm_pred_contrib_and_the_table_is_not_pickled(model,
                                                                                test_rows):
    table = model.contributions(test_rows)  # by ShapTable, built on this first call
    assert model.shap_table() is not None and model.shap_table_note_ == ""
    exact = model.booster_.predict(model.encode(test_rows), pred_contrib=True)
    np.testing.assert_allclose(table.to_numpy(), exact, rtol=0, atol=1e-9)
    loaded = pickle.loads(pickle.dumps(model))
    assert "_shap_table" not in loaded.__dict__  # rebuilt from the booster, never stored
    loaded.tree_shap = "lightgbm"
    np.testing.assert_array_equal(loaded.contributions(test_rows).to_numpy(), exact)
    loaded.tree_shap = "treeshap"
    with pytest.raises(ValueError, match=r"tree_shap='treeshap' is unknown; use one of "
                                         r"\('table', 'lightgbm'\)"):
        loaded.contributions(test_rows.head(1))


def test_retraining_with_the_same_seed_is_identical(data, model, test_rows):
    # ... also with a progress callback, which sees every boosting round and changes nothing.
    ff, split, _ = data
    rounds = []
    params = Settings().training.lightgbm
    again = RiskModel(ff.features, params, seed=42).fit(
        split.train, split.validation, split.calibration,
        callbacks=[lambda env: rounds.append(env.iteration)])
    assert np.array_equal(again.predict_proba(test_rows), model.predict_proba(test_rows))
    stopped = min(params.n_estimators, again.best_iteration_ + params.early_stopping_rounds)
    assert rounds == list(range(stopped))
    assert set(again.seconds_) == {"boosting", "calibration"}


def test_small_and_large_batches_agree(model, test_rows):
    whole = model.predict_proba(test_rows)  # > 1000 rows: all threads
    page = model.predict_proba(test_rows.head(100))  # one thread
    np.testing.assert_allclose(page, whole[:100], rtol=0, atol=1e-12)


def test_contributions_add_up_to_the_raw_log_odds(model, test_rows):
    rows = test_rows.head(100)
    contrib = model.contributions(rows)
    assert list(contrib.columns) == [*model.feature_names, "bias"]
    assert contrib.index.equals(rows.index)
    np.testing.assert_allclose(contrib.sum(axis=1), model.predict_logit(rows), atol=1e-9)
    raw = model.predict_raw(rows)
    np.testing.assert_allclose(raw, 1 / (1 + np.exp(-model.predict_logit(rows))))


def test_more_unresolved_high_priority_tickets_never_lower_risk(model, test_rows):
    base = model.predict_proba(test_rows)
    for extra in (1, 3):
        more = test_rows.copy()
        more["tickets_high_open"] += extra
        more["tickets_open"] += extra  # a high-priority ticket is also an open ticket
        assert (model.predict_proba(more) >= base).all()


def test_a_quicker_first_value_never_raises_risk(model, test_rows):
    onboarded = test_rows[test_rows["reached_first_value"] == 1]
    base = model.predict_proba(onboarded)
    for days in (0.5, 3.0):
        quicker = onboarded.assign(
            days_to_first_value=np.minimum(onboarded["days_to_first_value"], days))
        assert (model.predict_proba(quicker) <= base).all()


def _collapse_usage(frame: pd.DataFrame) -> pd.DataFrame:
    """No product use in any window, trends recomputed as the feature queries define them."""
    out = frame.copy()
    prev_events = (out["events_30d"] + 1) / (out["events_trend_30d"] + 1) - 1
    out["events_trend_30d"] = 1 / (prev_events + 1) - 1
    out["active_days_trend_30d"] = -out["active_days_prev_30d"]
    for w in Settings().features.windows:
        out[f"events_{w}d"] = 0.0
        out[f"active_days_{w}d"] = 0.0
    return out


def test_collapsing_usage_never_lowers_risk(model, test_rows):
    collapsed = _collapse_usage(test_rows)
    assert (collapsed["events_30d"] == 0).all() and (collapsed["active_days_90d"] == 0).all()
    assert (collapsed["events_trend_30d"] <= test_rows["events_trend_30d"] + 1e-12).all()
    assert (model.predict_proba(collapsed) >= model.predict_proba(test_rows)).all()


def test_monotone_constraints_cover_the_directional_features(model):
    constrained = {n for n, c in zip(model.feature_names,
                                     model._lgb_params()["monotone_constraints"], strict=True)
                   if c}
    assert constrained == set(MONOTONE) & set(model.feature_names)


def test_renaming_customer_ids_changes_no_prediction(model, test_rows):
    renamed = test_rows.assign(customer_id="X" + test_rows["customer_id"].str[::-1])
    assert np.array_equal(model.predict_proba(renamed), model.predict_proba(test_rows))
    assert model.contributions(renamed.head(20)).equals(model.contributions(test_rows.head(20)))


def test_prepare_keeps_training_levels_and_maps_unseen_to_missing(model, test_rows):
    rows = test_rows.head(3).copy()
    rows["plan"] = rows["plan"].astype(object)
    rows.loc[rows.index[0], "plan"] = "galactic"
    rows.loc[rows.index[1], "plan"] = None
    x = model.prepare(rows)
    assert list(x["plan"].cat.categories) == model.categories_["plan"]
    assert x["plan"].isna().tolist()[:2] == [True, True]
    assert x.dtypes[[f.name for f in model.features if f.kind == "numeric"]].eq("float64").all()


def test_prepare_names_missing_columns(model, test_rows):
    with pytest.raises(ValueError, match=r"lacks 2 feature column\(s\): \['mrr', 'plan'\]"):
        model.prepare(test_rows.drop(columns=["plan", "mrr"]))


def test_prepare_rejects_text_in_a_numeric_feature(model, test_rows):
    rows = test_rows.head(2).assign(mrr=["12", "a lot"])
    with pytest.raises(ValueError, match="feature mrr must be numeric"):
        model.prepare(rows)


def test_unfitted_model_says_so(data, test_rows):
    with pytest.raises(ValueError, match="not fitted"):
        RiskModel(data[0].features, Settings().training.lightgbm).predict_proba(test_rows)


def test_fit_rejects_unlabelled_or_single_class_slices(data):
    ff, split, _ = data
    m = RiskModel(ff.features, Settings().training.lightgbm)
    unlabelled = split.validation.assign(churned=np.nan)
    with pytest.raises(ValueError, match="validation frame has .* rows without a churn label"):
        m.fit(split.train, unlabelled, split.calibration)
    with pytest.raises(ValueError, match="train frame holds a single class"):
        m.fit(split.train.assign(churned=0.0), split.validation, split.calibration)
