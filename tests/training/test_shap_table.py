"""ShapTable: LightGBM's exact TreeSHAP by table lookup, equal to `pred_contrib` to 1e-9.

Random models over numeric features with missing values and exact zeros, integer counts
(ties at thresholds) and categorical codes, scored on random rows and on rows exactly on,
and one float step either side of, every threshold; fallback trees, pickling, threads,
both binning paths, and the churnlens risk model on its own encoded rows.
"""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pytest

from churnlens.training import shap_table
from churnlens.training.shap_cells import ZERO_THRESHOLD
from churnlens.training.shap_table import ShapTable

TOL = 1e-9
N_NUM, N_COUNT, N_CAT = 5, 3, 2  # columns: numeric, then counts, then categories


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    num = rng.normal(size=(n, N_NUM))
    num[rng.random(num.shape) < 0.1] = np.nan
    num[rng.random(num.shape) < 0.15] = 0.0
    counts = rng.poisson(2.0, (n, N_COUNT)).astype(float)
    counts[rng.random(counts.shape) < 0.05] = np.nan
    cats = rng.integers(0, 12, (n, N_CAT)).astype(float)
    cats[rng.random(cats.shape) < 0.08] = np.nan
    return np.hstack([num, counts, cats])


def _target(rng: np.random.Generator, x: np.ndarray, objective: str) -> np.ndarray:
    z = (np.nan_to_num(x[:, 0], nan=1.5) - 0.5 * np.nan_to_num(x[:, 5], nan=3.0)
         + np.where(np.isin(x[:, -1], [1, 4, 7]), 1.2, -0.4) + (x[:, 1] == 0) * 0.8
         + np.isnan(x[:, 2]) * 0.7 + 0.5 * np.nan_to_num(x[:, 3]) * (x[:, -2] % 3 == 0))
    if objective == "regression":
        return z + rng.normal(scale=0.3, size=len(z))
    return (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(float)


def _train(seed: int, objective: str = "binary", rounds: int = 25, **params) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = _rows(rng, 2500)
    settings = {"objective": objective, "num_leaves": 7, "max_depth": 3,
                "min_data_in_leaf": 5, "min_data_per_group": 5, "cat_smooth": 1.0,
                "max_cat_to_onehot": 4, "seed": seed, "num_threads": 1,
                "deterministic": True, "verbosity": -1, **params}
    data = lgb.Dataset(x, _target(rng, x, objective),
                       categorical_feature=list(range(N_NUM + N_COUNT, x.shape[1])),
                       params={k: settings[k] for k in ("use_missing", "zero_as_missing")
                               if k in settings})
    return lgb.train(settings, data, num_boost_round=rounds)


def _edge_rows(booster: lgb.Booster, rng: np.random.Generator) -> np.ndarray:
    """Random rows with one feature set on a threshold, a float step either side of it,
    or a value LightGBM treats specially (zero band, NaN, infinities, odd codes)."""
    trees = booster.trees_to_dataframe()
    numeric = trees[trees["decision_type"] == "<="]
    values = {f: [] for f in range(booster.num_feature())}
    for name, t in zip(numeric["split_feature"], numeric["threshold"], strict=True):
        values[int(name.split("_")[1])] += [t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)]
    special = [0.0, -0.0, ZERO_THRESHOLD, -ZERO_THRESHOLD, np.nextafter(ZERO_THRESHOLD, 1),
               1e-36, -1e-40, np.nan, np.inf, -np.inf, 1e300, 2e300]
    codes = [-1.0, -0.5, 0.0, 0.7, 2.5, 11.0, 12.0, 40.0, 1e10]
    rows = []
    for f, vs in values.items():
        extra = codes if f >= N_NUM + N_COUNT else special
        block = _rows(rng, len(vs) + len(extra))
        block[:, f] = vs + extra
        rows.append(block)
    return np.vstack(rows)


def _assert_equal(booster: lgb.Booster, table: ShapTable, x: np.ndarray) -> None:
    expected = booster.predict(x, pred_contrib=True)
    got = table.contributions(x)
    assert got.shape == expected.shape == (len(x), booster.num_feature() + 1)
    assert np.abs(got - expected).max() <= TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("num_leaves", "max_depth"), [(7, 3), (15, 5), (31, -1)])
@pytest.mark.parametrize(("use_missing", "zero_as_missing"),
                         [(True, False), (True, True), (False, False)])
def test_equals_pred_contrib_on_random_and_threshold_rows(seed, num_leaves, max_depth,
                                                           use_missing, zero_as_missing):
    booster = _train(seed, num_leaves=num_leaves, max_depth=max_depth,
                     use_missing=use_missing, zero_as_missing=zero_as_missing)
    table = ShapTable.from_booster(booster)
    assert table.n_trees == booster.num_trees()
    rng = np.random.default_rng(100 + seed)
    _assert_equal(booster, table, np.vstack([_rows(rng, 1500), _edge_rows(booster, rng)]))


@pytest.mark.parametrize("seed", [3, 4])
def test_equals_pred_contrib_for_regression(seed):
    booster = _train(seed, "regression", num_leaves=15, max_depth=5)
    rng = np.random.default_rng(seed)
    _assert_equal(booster, ShapTable.from_booster(booster),
                  np.vstack([_rows(rng, 2000), _edge_rows(booster, rng)]))


def _dumped_splits(booster: lgb.Booster) -> list[dict]:
    out = []

    def walk(node: dict) -> None:
        if "split_index" in node:
            out.append(node)
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def test_models_cover_what_the_table_must_handle():
    zero = _dumped_splits(_train(0, zero_as_missing=True))
    nan = _dumped_splits(_train(1))
    assert {s["decision_type"] for s in nan} == {"<=", "=="}
    assert any(s["decision_type"] == "==" and "||" in s["threshold"] for s in nan)
    assert "Zero" in {s["missing_type"] for s in zero if s["decision_type"] == "<="}
    assert "NaN" in {s["missing_type"] for s in nan if s["decision_type"] == "<="}
    assert {s["default_left"] for s in nan} == {True, False}


def test_per_tree_pred_contrib_adds_up_to_the_whole_model():
    booster = _train(5)
    x = _rows(np.random.default_rng(5), 1000)
    parts = sum(booster.predict(x, pred_contrib=True, start_iteration=t, num_iteration=1)
                for t in range(booster.num_trees()))
    assert np.abs(parts - booster.predict(x, pred_contrib=True)).max() <= TOL


def test_trees_over_the_cap_fall_back_and_stay_equal():
    booster = _train(6, num_leaves=15, max_depth=5)
    cells = ShapTable.from_booster(booster).tree_cells
    cap = int(np.median(cells))
    table = ShapTable.from_booster(booster, max_cells=cap)
    assert table.fallback_trees == tuple(t for t, c in enumerate(cells) if c > cap)
    assert 0 < len(table.fallback_trees) < booster.num_trees()
    rng = np.random.default_rng(6)
    _assert_equal(booster, table, np.vstack([_rows(rng, 2000), _edge_rows(booster, rng)]))
    everything = ShapTable.from_booster(booster, max_cells=1)
    assert len(everything.fallback_trees) == booster.num_trees() - _single_leaf_trees(booster)
    _assert_equal(booster, everything, _rows(rng, 500))


def _single_leaf_trees(booster: lgb.Booster) -> int:
    return sum(t["num_leaves"] == 1 for t in booster.dump_model()["tree_info"])


def test_single_leaf_trees_add_their_value_to_the_bias():
    booster = _train(7, rounds=5, min_data_in_leaf=5000)
    assert _single_leaf_trees(booster) == booster.num_trees()
    _assert_equal(booster, ShapTable.from_booster(booster), _rows(np.random.default_rng(7), 50))


def test_follows_the_best_iteration_like_predict():
    rng = np.random.default_rng(8)
    x, xv = _rows(rng, 2000), _rows(rng, 1000)
    params = {"objective": "binary", "num_leaves": 7, "learning_rate": 0.3, "verbosity": -1,
              "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, _target(rng, x, "binary")), 300,
                        valid_sets=[lgb.Dataset(xv, _target(rng, xv, "binary"))],
                        callbacks=[lgb.early_stopping(5, verbose=False)],
                        keep_training_booster=True)  # else it keeps only the best trees
    assert 0 < booster.best_iteration < booster.num_trees()
    table = ShapTable.from_booster(booster)
    assert table.n_trees == booster.best_iteration
    _assert_equal(booster, table, xv)
    assert ShapTable.from_booster(booster, num_iteration=-1).n_trees == booster.num_trees()


def test_pickle_round_trip_gives_the_same_values():
    booster = _train(9, num_leaves=15, max_depth=5)
    table = ShapTable.from_booster(booster, max_cells=int(np.median(
        ShapTable.from_booster(booster).tree_cells)))
    assert table.fallback_trees
    x = _rows(np.random.default_rng(9), 1500)
    again = pickle.loads(pickle.dumps(table))
    np.testing.assert_array_equal(again.contributions(x), table.contributions(x))
    _assert_equal(booster, again, x)


def test_one_row_at_a_time_threads_and_blocks_agree(monkeypatch):
    booster = _train(1)  # it has a split of missing from present values (threshold inf)
    assert "inf" in booster.model_to_string().split("end of trees")[0]
    table = ShapTable.from_booster(booster)
    rng = np.random.default_rng(10)
    edges = _edge_rows(booster, rng)
    x = np.vstack([edges, _rows(rng, 3 * shap_table.PARALLEL_ROWS)])
    whole = table.contributions(x, num_threads=1)
    _assert_equal(booster, table, x)
    np.testing.assert_array_equal(table.contributions(x, num_threads=2), whole)
    np.testing.assert_array_equal(table.contributions(x), whole)
    # Under LOOP_ROWS rows a block bins by one search over all axes: the same bins.
    few = shap_table.LOOP_ROWS - 1
    small = np.vstack([table.contributions(edges[i:i + few]) for i in range(0, len(edges), few)])
    assert np.abs(small - booster.predict(edges, pred_contrib=True)).max() <= TOL
    singles = np.vstack([table.contributions(x[i:i + 1]) for i in range(0, len(edges), 7)])
    assert np.abs(singles - whole[:len(edges):7]).max() <= 1e-12
    monkeypatch.setattr(shap_table, "CHUNK_ROWS", 7)
    assert np.abs(table.contributions(x[:500]) - whole[:500]).max() <= 1e-12


def test_float32_rows_score_as_lightgbm_reads_them():
    booster = _train(11)
    x = _rows(np.random.default_rng(11), 800).astype(np.float32)
    got = ShapTable.from_booster(booster).contributions(x)
    assert np.abs(got - booster.predict(x, pred_contrib=True)).max() <= TOL


def test_bad_input_is_refused_with_the_fix():
    booster = _train(12, rounds=3)
    table = ShapTable.from_booster(booster)
    with pytest.raises(ValueError, match=r"X needs shape \(rows, 10\).*got \(4, 9\)"):
        table.contributions(np.zeros((4, 9)))
    with pytest.raises(ValueError, match="numeric matrix .* RiskModel.encode"):
        table.contributions(np.array([["a"] * 10]))
    with pytest.raises(ValueError, match="num_threads must be None, 0 .* got -1"):
        table.contributions(np.zeros((2, 10)), num_threads=-1)
    with pytest.raises(ValueError, match="max_cells must be at least 1, got 0"):
        ShapTable.from_booster(booster, max_cells=0)
    x = _rows(np.random.default_rng(12), 300)
    multiclass = lgb.train({"objective": "multiclass", "num_class": 3, "verbosity": -1,
                            "num_threads": 1},
                           lgb.Dataset(x, np.arange(300) % 3), 2)
    with pytest.raises(ValueError, match="one tree per iteration .* has 3 .*pred_contrib"):
        ShapTable.from_booster(multiclass)


def test_equals_pred_contrib_for_the_churnlens_risk_model(tmp_path):
    from churnlens.features.build import build_training_set
    from churnlens.features.loading import load_source
    from churnlens.features.sample import generate_sample, write_sample
    from churnlens.settings import Settings
    from churnlens.training.risk import RiskModel
    from churnlens.training.split import temporal_split

    write_sample(generate_sample(1500, seed=4), tmp_path)
    settings = Settings()
    ff = build_training_set(load_source(tmp_path), settings)
    split = temporal_split(ff.frame, settings.horizon_days, settings.training)
    model = RiskModel(ff.features, settings.training.lightgbm, seed=1).fit(
        split.train, split.validation, split.calibration)
    booster = model.booster_
    kinds = {f.name: f.kind for f in model.features}
    split_on = booster.trees_to_dataframe()
    assert (split_on["decision_type"] == "==").any(), "the model should split on a category"
    assert {kinds[n] for n in split_on["split_feature"].dropna()} == {"numeric", "category"}
    table = ShapTable.from_booster(booster)
    assert table.n_trees == booster.num_trees() and not table.fallback_trees
    rows = model.encode(ff.frame)
    _assert_equal(booster, table, rows)
    _assert_equal(booster, table, _risk_edge_rows(booster, rows))
    contrib = model.contributions(rows[:200])
    np.testing.assert_allclose(table.contributions(rows[:200]), contrib.to_numpy(),
                               rtol=0, atol=TOL)


def _risk_edge_rows(booster: lgb.Booster, rows: np.ndarray) -> np.ndarray:
    """Real rows with one numeric feature moved onto a threshold or a step beside it."""
    trees = booster.trees_to_dataframe()
    names = booster.feature_name()
    numeric = trees[trees["decision_type"] == "<="]
    out = []
    for i, (name, t) in enumerate(zip(numeric["split_feature"], numeric["threshold"],
                                      strict=True)):
        for v in (t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)):
            row = rows[i % len(rows)].copy()
            row[names.index(name)] = v
            out.append(row)
    return np.array(out)
