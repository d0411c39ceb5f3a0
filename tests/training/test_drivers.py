"""Drivers: readable sentences beside the typical value, only groups that raise risk told by
an unusual value, top_n, playbooks by group; risk tiers; behaviour of a fitted model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from churnlens.features.build import build_training_set
from churnlens.features.loading import load_source
from churnlens.features.queries import feature_list
from churnlens.features.sample import generate_sample, write_sample
from churnlens.settings import FeatureSettings, PlaybookSettings, Settings, TierSettings
from churnlens.training.drivers import MIN_CONTRIBUTION, explain, explain_columns, risk_tier
from churnlens.training.risk import RiskModel
from churnlens.training.sentences import Columns, reads, sentence
from churnlens.training.split import temporal_split

FEATURES = feature_list(FeatureSettings(), {"segment": "str"})
NAMES = [f.name for f in FEATURES]
PLAYBOOKS = PlaybookSettings()


def _frame(*rows: dict) -> pd.DataFrame:
    """Rows of a neutral customer (zeros, known categories) with the given overrides."""
    base = {f.name: (0.0 if f.kind == "numeric" else "x") for f in FEATURES}
    base.update(tenure_days=400.0, reached_first_value=1.0, days_to_first_value=5.0)
    return pd.DataFrame([{**base, **row} for row in rows])


def _contrib(n: int, **values: list[float] | float) -> pd.DataFrame:
    """Contributions of zero except the given features (a value per row or one for all)."""
    out = pd.DataFrame(0.0, index=range(n), columns=[*NAMES, "bias"])
    for name, v in values.items():
        out[name] = v
    return out


def _top(row: dict, feature: str) -> dict:
    return explain(_frame(row), _contrib(1, **{feature: 0.5}), FEATURES, PLAYBOOKS, 3)[0][0]


@pytest.mark.parametrize(("feature", "row", "text"), [
    ("active_days_30d", {"active_days_30d": 4.0, "active_days_prev_30d": 18.0},
     "active days in the last 30 fell from 18 to 4"),
    ("active_days_trend_30d", {"active_days_30d": 4.0, "active_days_prev_30d": 18.0},
     "active days in the last 30 fell from 18 to 4"),
    ("events_trend_30d", {"events_trend_30d": -0.62},
     "product events in the last 30 days down 62% on the 30 before"),
    ("events_30d", {"events_30d": 9.0, "events_trend_30d": 0.0},
     "9 product events in the last 30 days, unchanged on the 30 before"),
    ("tickets_high_open", {"tickets_high_open": 2.0}, "2 open high-priority tickets"),
    ("tickets_open", {"tickets_open": 1.0}, "1 open ticket"),
    ("nps_latest", {"nps_latest": 3.0, "nps_change": -5.0}, "latest NPS 3, down 5"),
    ("nps_change", {"nps_latest": 3.0, "nps_change": np.nan}, "latest NPS 3"),
    ("nps_latest", {"nps_latest": np.nan, "nps_change": np.nan}, "no NPS answer yet"),
    ("failed_payments_90d", {"failed_payments_90d": 2.0}, "2 failed payments in 90 days"),
    ("reached_first_value", {"reached_first_value": 0.0, "days_to_first_value": np.nan,
                             "tenure_days": 40.2},
     "no first value yet (report_created) after 40 days"),
    ("days_to_renewal", {"days_to_renewal": 25.4}, "renewal in 25 days"),
    ("days_since_nps", {"days_since_nps": 27.4}, "27 days since the last NPS answer"),
    ("mrr_change_90d", {"mrr_change_90d": -150.0}, "MRR fell by 150 over 90 days"),
    ("csat_180d", {"csat_180d": 2.5}, "mean CSAT over 180 days is 2.5"),
    ("csat_180d", {"csat_180d": np.nan}, "mean CSAT over 180 days is unknown"),
    ("plan", {"plan": "starter"}, "plan is starter"),
])
def test_sentences_for_known_inputs(feature, row, text):
    assert _top(row, feature)["text"] == text


def test_a_driver_carries_group_feature_value_and_playbook():
    driver = _top({"tickets_high_open": 2.0}, "tickets_high_open")
    assert driver == {"name": "support", "feature": "tickets_high_open", "value": 2.0,
                      "contribution": 0.5, "direction": "raises risk",
                      "text": "2 open high-priority tickets",
                      "playbook": PLAYBOOKS.support}


def test_missing_and_category_values_are_plain():
    assert _top({"csat_180d": np.nan}, "csat_180d")["value"] is None
    assert _top({"plan": "starter"}, "plan")["value"] == "starter"
    frame = _frame({"plan": "starter"}).astype({"plan": "category"})
    assert explain(frame, _contrib(1, plan=0.5), FEATURES, PLAYBOOKS, 1)[0][0]["value"] == "starter"


def test_group_total_and_its_largest_feature():
    contrib = _contrib(1, tickets_open=0.2, tickets_high_open=0.3, csat_180d=-0.1,
                       events_30d=0.35)
    drivers = explain(_frame({}), contrib, FEATURES, PLAYBOOKS, 3)[0]
    assert [d["name"] for d in drivers] == ["support", "usage"]
    assert drivers[0]["contribution"] == pytest.approx(0.4)
    assert drivers[0]["feature"] == "tickets_high_open"


def test_only_risk_raising_groups_and_top_n():
    contrib = _contrib(2, tickets_open=[0.4, -0.4], events_30d=[0.3, -0.3],
                       failed_payments_90d=[0.2, -0.2], nps_latest=[0.1, -0.1])
    top2, none = explain(_frame({}, {}), contrib, FEATURES, PLAYBOOKS, 2)
    assert [d["name"] for d in top2] == ["support", "usage"]
    assert none == []


def test_playbook_text_comes_from_settings():
    playbooks = PlaybookSettings(billing="Call finance today")
    contrib = _contrib(1, failed_payments_90d=0.7)
    driver = explain(_frame({"failed_payments_90d": 1.0}), contrib, FEATURES, playbooks, 1)[0][0]
    assert driver["playbook"] == "Call finance today"
    assert driver["text"] == "1 failed payment in 90 days"


@settings(max_examples=50, deadline=None)
@given(values=arrays(np.float64, (5, len(NAMES)),
                     # Multiples of 1/64: group sums are exact in any order of addition.
                     elements=st.integers(-128, 128).map(lambda k: k / 64)),
       top_n=st.integers(1, 8), at_typical=st.sets(st.sampled_from(NAMES)))
def test_drivers_are_the_largest_group_totals_told_by_a_risk_raising_unusual_value(
        values, top_n, at_typical):
    contrib = pd.DataFrame(values, columns=NAMES).assign(bias=-3.0)
    frame = _frame(*[{}] * 5)
    typical = {n: frame.at[0, n] for n in at_typical}  # these features' values are typical
    groups = {f.name: f.group for f in FEATURES}
    totals = contrib[NAMES].T.groupby(groups).sum().T
    for i, drivers in enumerate(explain(frame, contrib, FEATURES, PLAYBOOKS, top_n, typical)):
        telling = contrib.loc[i, NAMES].where(
            (contrib.loc[i, NAMES] > 0) & ~contrib.columns[:-1].isin(list(at_typical)))
        told = telling.groupby(groups).max().notna()
        row = totals.iloc[i]
        expected = row[(row >= MIN_CONTRIBUTION) & told[row.index]].sort_values(ascending=False)
        assert len(drivers) == min(top_n, len(expected))
        got = [d["contribution"] for d in drivers]
        assert got == pytest.approx(expected.iloc[:len(drivers)].tolist())
        for d in drivers:
            members = [n for n, g in groups.items() if g == d["name"]]
            assert d["feature"] not in at_typical and contrib.at[i, d["feature"]] > 0
            assert contrib.at[i, d["feature"]] == telling[members].max()


def test_a_group_below_the_minimum_contribution_is_no_driver():
    contrib = _contrib(2, tickets_open=[MIN_CONTRIBUTION, MIN_CONTRIBUTION * 0.9])
    drivers = explain(_frame({"tickets_open": 1.0}, {"tickets_open": 1.0}), contrib, FEATURES,
                      PLAYBOOKS, 3)
    assert [len(d) for d in drivers] == [1, 0]


TYPICAL = {"days_to_first_value": 5.2, "days_to_renewal": 120.0, "active_days_30d": 12.0,
           "events_30d": 40.0, "events_trend_30d": 0.03, "plan": "pro", "csat_180d": 4.1,
           "failed_payments_90d": 0.0, "failed_payments_30d": 0.0, "refunds_90d": 0.0,
           "nps_latest": 8.0, "paid_amount_90d": 420.0, "tenure_days": 170.4}


def _told(row: dict, feature: str) -> dict | None:
    drivers = explain(_frame(row), _contrib(1, **{feature: 0.5}), FEATURES, PLAYBOOKS, 3, TYPICAL)
    return drivers[0][0] if drivers[0] else None


@pytest.mark.parametrize(("feature", "row", "text"), [
    ("days_to_first_value", {"days_to_first_value": 0.7},
     "first value took 1 day, below the typical 5 days"),
    ("reached_first_value", {"reached_first_value": 0.0, "days_to_first_value": np.nan,
                             "tenure_days": 40.2},
     "no first value yet (report_created) after 40 days; the typical customer reached it in "
     "5 days"),
    ("days_to_renewal", {"days_to_renewal": 25.4}, "renewal in 25 days, below the typical "
     "120 days"),
    ("active_days_trend_30d", {"active_days_30d": 4.0, "active_days_prev_30d": 18.0,
                               "active_days_trend_30d": -14.0},
     "active days in the last 30 fell from 18 to 4, below the typical 12"),
    ("events_trend_30d", {"events_trend_30d": -0.62},
     "product events in the last 30 days down 62% on the 30 before, below the typical +3%"),
    ("events_30d", {"events_30d": 9.0, "events_trend_30d": 0.0},
     "9 product events in the last 30 days, unchanged on the 30 before, below the typical 40"),
    ("plan", {"plan": "starter"}, "plan is starter (most customers: pro)"),
    ("csat_180d", {"csat_180d": np.nan}, "mean CSAT over 180 days is unknown (typical: 4.1)"),
    ("nps_latest", {"nps_latest": np.nan}, "no NPS answer yet (typical: 8)"),
    ("failed_payments_90d", {"failed_payments_90d": 2.0},
     "2 failed payments in 90 days, above the typical 0"),
    ("paid_amount_90d", {"paid_amount_90d": 0.0},
     "amount paid in the last 90 days is 0, below the typical 420"),
    ("tenure_days", {"tenure_days": 2000.0}, "tenure of 2,000 days, above the typical 170 days"),
])
def test_sentences_say_how_the_value_compares_with_the_typical_customer(feature, row, text):
    assert _told(row, feature)["text"] == text


@pytest.mark.parametrize(("feature", "row"), [
    ("failed_payments_90d", {"failed_payments_90d": 0.0}),
    ("refunds_90d", {"refunds_90d": 0.0}),
    ("plan", {"plan": "pro"}),
    ("days_to_first_value", {"days_to_first_value": 5.4}),  # shown as 5 days, as typical
])
def test_a_typical_value_tells_no_driver(feature, row):
    assert _told(row, feature) is None


def test_no_failed_payment_and_no_refund_never_gets_the_billing_playbook():
    # Billing contributions that would outweigh every other group: with typical values
    # (none failed, none refunded) they tell nothing, and the group is no driver.
    contrib = _contrib(1, failed_payments_90d=0.9, failed_payments_30d=0.4, refunds_90d=0.2,
                       tickets_open=0.1)
    drivers = explain(_frame({"tickets_open": 2.0}), contrib, FEATURES, PLAYBOOKS, 3, TYPICAL)[0]
    assert [d["name"] for d in drivers] == ["support"]
    # One refund tells the billing group, with its whole total.
    drivers = explain(_frame({"refunds_90d": 1.0}), contrib, FEATURES, PLAYBOOKS, 3, TYPICAL)[0]
    assert drivers[0]["name"] == "billing" and drivers[0]["feature"] == "refunds_90d"
    assert drivers[0]["contribution"] == pytest.approx(1.5)
    assert drivers[0]["text"] == "1 refund in 90 days, above the typical 0"


def test_paid_amounts_are_revenue_signals_and_groups_come_from_the_feature_list():
    driver = _told({"paid_amount_90d": 0.0}, "paid_amount_90d")
    assert (driver["name"], driver["playbook"]) == ("revenue", PLAYBOOKS.revenue)
    assert driver["playbook"] != PLAYBOOKS.billing
    # The playbook follows the group a feature list gives, whatever the feature's name.
    regrouped = [replace(f, group="account") if f.name == "failed_payments_90d" else f
                 for f in FEATURES]
    contrib = _contrib(1, failed_payments_90d=0.5)
    driver = explain(_frame({"failed_payments_90d": 2.0}), contrib, regrouped, PLAYBOOKS, 3)[0][0]
    assert (driver["name"], driver["playbook"]) == ("account", PLAYBOOKS.account)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Test rows of a small sample, their contributions and drivers from a fitted model."""
    src = tmp_path_factory.mktemp("drivers") / "src"
    write_sample(generate_sample(1500, seed=5), src)
    ff = build_training_set(load_source(src), Settings())
    split = temporal_split(ff.frame, Settings().horizon_days, Settings().training)
    model = RiskModel(ff.features, Settings().training.lightgbm).fit(
        split.train, split.validation, split.calibration)
    rows = split.test.reset_index(drop=True)
    contrib = model.contributions(rows)
    drivers = explain(rows, contrib, ff.features, PLAYBOOKS, 3, model.typical_)
    return rows, contrib, drivers, model


def test_every_driver_of_a_fitted_model_raises_risk_by_an_unusual_value(fitted):
    rows, contrib, drivers, model = fitted
    listed = [(i, d) for i, row in enumerate(drivers) for d in row]
    assert len(listed) > len(rows)  # most customers have something that raises their risk
    for i, d in listed:
        assert d["contribution"] >= MIN_CONTRIBUTION and contrib.at[i, d["feature"]] > 0
        typical, value = model.typical_[d["feature"]], d["value"]
        assert value != typical
        assert not isinstance(value, float) or round(value, 1) != round(typical, 1)
    # "first value took 1 day" said no more; now each says how it compares with the typical.
    first_value = [d["text"] for _, d in listed if d["feature"] == "days_to_first_value"]
    assert first_value and all("the typical" in t for t in first_value)
    assert not any("below the typical" in t for t in first_value)  # monotone in the model


def test_a_fitted_model_gives_no_billing_playbook_without_failed_payments_or_refunds(fitted):
    rows, _, drivers, _ = fitted
    clean = (rows[["failed_payments_90d", "failed_payments_30d", "refunds_90d"]] == 0).all(axis=1)
    billing = [i for i, row in enumerate(drivers) for d in row if d["playbook"] == PLAYBOOKS.billing]
    assert billing  # failed payments do drive churn in the sample
    assert not clean.iloc[billing].any()
    assert {d["name"] for row in drivers for d in row if "paid" in d["feature"]} <= {"revenue"}


def test_explain_rejects_bad_inputs():
    frame = _frame({})
    with pytest.raises(ValueError, match="frame has 1 rows but contributions has 2"):
        explain(frame, _contrib(2), FEATURES, PLAYBOOKS, 3)
    with pytest.raises(ValueError, match=r"contributions lack 1 feature column\(s\): \['mrr'\]"):
        explain(frame, _contrib(1).drop(columns=["mrr"]), FEATURES, PLAYBOOKS, 3)
    with pytest.raises(ValueError, match=r"frame lacks 1 feature column\(s\): \['seats'\]"):
        explain(frame.drop(columns=["seats"]), _contrib(1), FEATURES, PLAYBOOKS, 3)
    with pytest.raises(ValueError, match="top_n must be at least 1"):
        explain(frame, _contrib(1), FEATURES, PLAYBOOKS, 0)


def test_risk_tiers_at_the_thresholds():
    tiers = TierSettings(medium=0.1, high=0.25, critical=0.5)
    got = risk_tier([0.0, 0.0999, 0.1, 0.3, 0.5, 1.0], tiers)
    assert got.tolist() == ["low", "low", "medium", "high", "critical", "critical"]
    assert got.tolist() == [tiers.tier(p) for p in [0.0, 0.0999, 0.1, 0.3, 0.5, 1.0]]


def test_risk_tier_rejects_missing_probabilities():
    with pytest.raises(ValueError, match=r"1 of 2 probabilities are missing or outside \[0, 1\]"):
        risk_tier(np.array([0.2, np.nan]), TierSettings())


# The last commit of the per-row implementation, the oracle of the vectorised one.
ORACLE_COMMIT = "0020238"


def _oracle_explain(tmp_path):
    """`explain` of ORACLE_COMMIT's training/drivers.py and sentences.py (git show), loaded
    under other module names beside the current ones."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    names = {"sentences": "churnlens_oracle_sentences", "drivers": "churnlens_oracle_drivers"}
    for stem, module in names.items():
        shown = subprocess.run(["git", "-C", str(repo), "show",
                                f"{ORACLE_COMMIT}:training/{stem}.py"],
                               capture_output=True, text=True)
        if shown.returncode != 0:  # a shallow clone or an unpacked sdist has no history
            pytest.skip(f"the oracle needs commit {ORACLE_COMMIT} in git: {shown.stderr.strip()}")
        source = shown.stdout
        source = source.replace("from churnlens.training.sentences import",
                                f"from {names['sentences']} import")
        path = tmp_path / f"{module}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(module, path)
        sys.modules[module] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[module])
    return sys.modules[names["drivers"]].explain


def _varied(rows: pd.DataFrame, model: RiskModel, seed: int) -> pd.DataFrame:
    """ROWS with a share of values missing, set to the typical value or nudged around the
    point where sentences round, categories as pandas categories: every sentence branch."""
    rng = np.random.default_rng(seed)
    out = rows.copy()
    for f in model.features:
        col = out[f.name]
        if f.kind == "category":
            out[f.name] = col.where(rng.random(len(col)) > 0.1).astype("category")
            continue
        typical = model.typical_.get(f.name)
        if typical is not None:
            col = col.where(rng.random(len(col)) > 0.15, typical)
            nudged = typical + rng.choice([-0.05, 0.049, 0.5], len(col))
            col = col.where(rng.random(len(col)) > 0.1, nudged)
        out[f.name] = col.where(rng.random(len(col)) > 0.1)
    return out


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_drivers_equal_the_per_row_implementation(fitted, tmp_path, seed):
    rows, contrib, drivers, model = fitted
    old_explain = _oracle_explain(tmp_path)
    if seed is not None:
        rows = _varied(rows, model, seed)
        contrib = model.contributions(rows)
        drivers = explain(rows, contrib, model.features, PLAYBOOKS, 3, model.typical_)
    for typical in (model.typical_, None):
        new = drivers if typical is model.typical_ else explain(rows, contrib, model.features,
                                                                 PLAYBOOKS, 3, typical)
        old = old_explain(rows, contrib, model.features, PLAYBOOKS, 3, typical)
        assert sum(map(len, new)) > len(rows)
        assert new == old
        # Same floats to the last bit, same Python types (the records are JSON-encoded).
        pairs = [(a, b) for r, s in zip(new, old, strict=True) for a, b in zip(r, s, strict=True)]
        assert all(a["contribution"].hex() == b["contribution"].hex()
                   and type(a["value"]) is type(b["value"]) for a, b in pairs)
    # One row at a time (the endpoint's case) too. (A one-row group total may differ from
    # the same row's in a batch in the last bit, as before: numpy sums a lone row in
    # another order.)
    for i in range(0, len(rows), max(1, len(rows) // 40)):
        one = [rows.iloc[[i]], contrib.iloc[[i]], model.features, PLAYBOOKS, 3, model.typical_]
        assert explain(*one) == old_explain(*one)


class _Recording(Columns):
    """Columns that note every feature a sentence reads."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def value(self, name, i):
        self.read.add(name)
        return super().value(name, i)

    def shown_as_typical(self, name, i):
        self.read.add(name)
        return super().shown_as_typical(name, i)


def _days_rows(n: int, seed: int) -> pd.DataFrame:
    """N rows with each numeric feature drawn around its typical value, at half days (where
    rounding to whole days ties), at whole numbers, missing or infinite."""
    rng = np.random.default_rng(seed)
    frame = _frame(*[{}] * n)
    for f in FEATURES:
        if f.kind != "numeric":
            continue
        centre = TYPICAL.get(f.name, 3.0)
        values = np.round(centre + rng.normal(0, 3, n) * 2) / 2  # whole and half values
        values = np.where(rng.random(n) < 0.3, values + rng.uniform(-0.6, 0.6, n), values)
        values[rng.random(n) < 0.1] = np.nan
        values[rng.random(n) < 0.01] = np.inf
        frame[f.name] = values
    frame["reached_first_value"] = rng.integers(0, 2, n).astype(float)
    return frame


@pytest.mark.parametrize("typical", [TYPICAL, {}])
def test_a_sentence_written_once_per_value_set_equals_the_sentence_of_its_row(typical):
    frame = _days_rows(3000, seed=3)
    labels = {f.name: f.label for f in FEATURES}
    written = 0
    for f in FEATURES:
        if f.kind != "numeric":
            continue
        shared, recording = Columns(frame, labels, typical), _Recording(frame, labels, typical)
        for i in range(len(frame)):
            try:
                expected = sentence(recording, i, f.name)
            except OverflowError:  # infinite days have no sentence, cached or not
                with pytest.raises(OverflowError):
                    shared.sentence(f.name, i)
                continue
            assert shared.sentence(f.name, i) == expected, (f.name, i)
        # The cache is keyed by what `reads` names: a sentence reading more would be wrong.
        assert recording.read <= set(reads(f.name)), f.name
        written += len(shared._sentences)
    assert written < 0.5 * len(frame) * sum(f.kind == "numeric" for f in FEATURES)


@pytest.mark.parametrize("seed", [None, 4])
def test_drivers_read_from_the_encoded_matrix_equal_those_read_from_the_frame(fitted, seed):
    rows, contrib, drivers, model = fitted
    if seed is not None:  # missing values, typical values and values at rounding edges
        rows = _varied(rows, model, seed)
        contrib = model.contributions(rows)
    args = (rows, contrib, model.features, PLAYBOOKS, 3, model.typical_)
    from_matrix = explain_columns(*args, matrix=model.encode(rows))
    assert len(from_matrix.text) > len(rows)
    assert from_matrix.rows() == explain(*args)
    with pytest.raises(ValueError, match="shape"):
        explain_columns(*args, matrix=model.encode(rows)[:, 1:])
