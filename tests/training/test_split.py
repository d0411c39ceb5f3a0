"""The split keeps the future out of training: later cutoffs test, embargoes, no shared rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnlens.features.build import build_training_set
from churnlens.features.loading import load_source
from churnlens.features.sample import generate_sample, write_sample
from churnlens.settings import Settings, TrainingSettings
from churnlens.training.split import SLICES, customer_hash, temporal_split

HORIZON = 90
KEYS = ["customer_id", "cutoff"]


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    src = tmp_path_factory.mktemp("split") / "src"
    write_sample(generate_sample(4000, seed=3), src)
    return build_training_set(load_source(src), Settings()).frame


@pytest.fixture(scope="module")
def split(frame):
    return temporal_split(frame, HORIZON, TrainingSettings(calibration_cutoffs=1))


def _tiny(cutoffs: list[str], churned: list[float | None], n_customers: int = 40
          ) -> pd.DataFrame:
    """N customers at each cutoff; CHURNED gives the label of every row at that cutoff,
    except that every fifth customer takes the other class (so both classes exist)."""
    rows = []
    for c, label in zip(cutoffs, churned, strict=True):
        for k in range(n_customers):
            y = label if label is None or k % 5 else 1.0 - label
            rows.append({"customer_id": f"c{k:03d}", "cutoff": pd.Timestamp(c), "churned": y,
                         "event": 0, "duration_days": 400.0, "churned_at": pd.NaT})
    return pd.DataFrame(rows)


def test_time_split_puts_later_cutoffs_in_later_slices(split):
    assert split.method == "time"
    b = split.boundaries
    assert max(b["train"]) < min(b["validation"])
    assert max(b["validation"]) < min(b["calibration"])
    assert max(b["calibration"]) < min(b["test"])
    assert split.train["cutoff"].max() < split.test["cutoff"].min()
    assert len(b["test"]) == 2 and len(b["validation"]) == 2 and len(b["calibration"]) == 1


def test_test_slice_is_the_latest_labelled_cutoffs(frame, split):
    labelled = sorted(frame.loc[frame["churned"].notna(), "cutoff"].unique())
    assert split.boundaries["test"] == [pd.Timestamp(c) for c in labelled[-2:]]


def test_no_row_in_two_slices_and_only_labelled_rows(split):
    parts = [getattr(split, name)[KEYS] for name in SLICES]
    keys = pd.concat(parts, ignore_index=True)
    assert not keys.duplicated().any()
    for name in SLICES:
        assert getattr(split, name)["churned"].notna().all()


def test_embargo_keeps_label_windows_apart(split):
    horizon = pd.Timedelta(days=HORIZON)
    b = split.boundaries
    assert all(c + horizon <= b["test"][0] for c in b["calibration"])
    assert all(c + horizon <= b["validation"][0] for c in b["train"])


def test_survival_train_is_censored_at_the_validation_start(frame, split):
    first_val = split.boundaries["validation"][0]
    surv = split.survival_train
    assert len(surv) == int((frame["cutoff"] <= split.boundaries["train"][-1]).sum())
    ends = surv["cutoff"] + pd.to_timedelta(surv["duration_days"], unit="D")
    assert (ends <= first_val + pd.Timedelta(seconds=1)).all()
    churns = surv[surv["event"] == 1]
    assert (churns["churned_at"] < first_val).all()
    # Some customers churned after the validation start: they must show as censored there.
    later = frame[(frame["cutoff"] <= split.boundaries["train"][-1])
                  & (frame["churned_at"] >= first_val)]
    assert len(later) > 0
    assert (surv.set_index(KEYS).loc[later.set_index(KEYS).index, "event"] == 0).all()


def test_censoring_of_a_known_customer():
    cutoffs = [f"2024-{m:02d}-01" for m in range(1, 13)]
    frame = _tiny(cutoffs, [0.0] * 12)
    # c001 churns on 2024-08-15; validation starts 2024-08-01 with these settings.
    late = frame["customer_id"] == "c001"
    frame.loc[late, "event"] = 1
    frame.loc[late, "churned_at"] = pd.Timestamp("2024-08-15")
    frame.loc[late, "duration_days"] = (pd.Timestamp("2024-08-15")
                                        - frame.loc[late, "cutoff"]).dt.days.astype(float)
    s = temporal_split(frame, 60, TrainingSettings(test_cutoffs=1, validation_cutoffs=2,
                                                       calibration_cutoffs=1))
    assert s.boundaries["validation"][0] == pd.Timestamp("2024-08-01")
    row = s.survival_train.set_index(KEYS).loc[("c001", pd.Timestamp("2024-01-01"))]
    assert row["event"] == 0
    assert row["duration_days"] == pytest.approx(213.0)  # Jan 1 to Aug 1
    kept = s.survival_train.set_index(KEYS).loc[("c002", pd.Timestamp("2024-06-01"))]
    assert kept["duration_days"] == pytest.approx(61.0)  # censored at Aug 1 too
    assert pd.isna(row["churned_at"])


def test_unlabelled_rows_stay_out_of_the_slices():
    cutoffs = [f"2024-{m:02d}-01" for m in range(1, 13)]
    frame = _tiny(cutoffs, [0.0] * 10 + [None, None])
    s = temporal_split(frame, 30, TrainingSettings())
    assert s.boundaries["test"] == [pd.Timestamp("2024-09-01"), pd.Timestamp("2024-10-01")]
    # With a 30-day horizon monthly cutoffs need no gaps: every labelled row is used once.
    assert sum(len(getattr(s, n)) for n in SLICES) == int(frame["churned"].notna().sum())


def test_one_snapshot_falls_back_to_a_customer_split(frame):
    one = frame[frame["cutoff"] == pd.Timestamp("2026-01-01")]
    s = temporal_split(one, HORIZON, TrainingSettings())
    assert s.method == "customer"
    assert s.notes == ["split by customer (hash of customer_id, seed 42, 60/15/10/15): one "
                       "labelled cutoff (2026-01-01)"]
    ids = [set(getattr(s, name)["customer_id"]) for name in SLICES]
    assert sum(len(i) for i in ids) == len(set().union(*ids)) == len(one)
    shares = np.array([len(i) for i in ids]) / len(one)
    assert shares == pytest.approx([0.60, 0.15, 0.10, 0.15], abs=0.04)
    again = temporal_split(one, HORIZON, TrainingSettings())
    assert again.test["customer_id"].tolist() == s.test["customer_id"].tolist()


def test_customer_hash_is_stable_and_seeded():
    ids = pd.Series(["a", "b", "a"])
    h = customer_hash(ids, seed=1)
    assert h.iloc[0] == h.iloc[2]
    assert h.tolist() == customer_hash(ids, seed=1).tolist()
    assert h.tolist() != customer_hash(ids, seed=2).tolist()
    assert ((h >= 0) & (h < 1)).all()


@settings(max_examples=25, deadline=None)
@given(test=st.integers(1, 3), validation=st.integers(1, 3), calibration=st.integers(1, 2),
       horizon=st.sampled_from([30, 60, 90, 180]))
def test_split_laws_hold_for_any_settings(frame, test, validation, calibration, horizon):
    cfg = TrainingSettings(test_cutoffs=test, validation_cutoffs=validation,
                           calibration_cutoffs=calibration)
    s = temporal_split(frame, horizon, cfg)
    b, gap = s.boundaries, pd.Timedelta(days=horizon)
    assert max(b["train"]) < min(b["test"])
    assert all(c + gap <= b["test"][0] for c in b["calibration"])
    assert all(c + gap <= b["validation"][0] for c in b["train"])
    keys = pd.concat([getattr(s, n)[KEYS] for n in SLICES])
    assert not keys.duplicated().any()


def test_no_labelled_rows_is_an_error():
    frame = _tiny(["2024-01-01", "2024-02-01"], [None, None])
    with pytest.raises(ValueError, match=r"none of the 80 rows has a churn label: no cutoff "
                                         r"\(cutoffs 2024-01-01 to 2024-02-01\) has its 90-day "
                                         r"label window inside the data; lower horizon_days"):
        temporal_split(frame, HORIZON, TrainingSettings())


def test_single_class_slice_of_a_time_split_names_where_churns_are():
    cutoffs = [f"2024-{m:02d}-01" for m in range(1, 13)]
    frame = _tiny(cutoffs, [0.0] * 12)
    frame.loc[frame["cutoff"] >= pd.Timestamp("2024-11-01"), "churned"] = 0.0
    with pytest.raises(ValueError, match=r"test slice \(80 rows\) holds only churned=0 \(cutoffs "
                                         r"2024-11-01 to 2024-12-01\), while churns are recorded "
                                         r"at 10 cutoff\(s\) from 2024-01-01 to 2024-10-01; give "
                                         r"the slice more cutoffs"):
        temporal_split(frame, 30, TrainingSettings())


def test_no_churner_at_all_says_so_not_to_add_history():
    frame = _tiny(["2024-01-01"], [0.0])
    frame["churned"] = 0.0
    with pytest.raises(ValueError, match=r"holds only churned=0: no labelled row of all 40 is a "
                                         r"churner, so no model can be fitted; check "
                                         r"churn.definition"):
        temporal_split(frame, HORIZON, TrainingSettings())


def test_too_few_churners_for_a_customer_split_asks_for_customers():
    frame = _tiny(["2024-01-01"], [0.0], n_customers=200)
    frame["churned"] = 0.0
    frame.loc[0, "churned"] = 1.0
    with pytest.raises(ValueError, match=r"slice \(\d+ rows\) holds only churned=0: the 1 "
                                         r"churners among 200 labelled rows of 200 customers are "
                                         r"too few .* split by customer"):
        temporal_split(frame, HORIZON, TrainingSettings())


def test_too_few_cutoffs_for_the_embargoes_split_by_customer():
    # Six monthly cutoffs: test May-June, calibration February (embargo), validation
    # January, and no cutoff is 90 days before January for training.
    frame = _tiny([f"2024-{m:02d}-01" for m in range(1, 7)], [0.0] * 6)
    s = temporal_split(frame, HORIZON, TrainingSettings(calibration_cutoffs=1))
    assert s.method == "customer"
    assert s.notes == ["split by customer (hash of customer_id, seed 42, 60/15/10/15): 6 "
                       "labelled cutoffs leave the train slice of a time split without cutoffs "
                       "(test_cutoffs 2, calibration_cutoffs 1, validation_cutoffs 2, 90-day "
                       "embargoes)"]
    # Ten months give train a cutoff 90 days before validation: the split is by time again.
    longer = _tiny([f"2024-{m:02d}-01" for m in range(1, 11)], [0.0] * 10)
    by_time = temporal_split(longer, HORIZON, TrainingSettings(calibration_cutoffs=1))
    assert by_time.method == "time" and by_time.boundaries["train"] == [pd.Timestamp("2024-01-01")]


def test_missing_columns_are_named():
    frame = _tiny(["2024-01-01"], [0.0]).drop(columns=["duration_days"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['duration_days'\]"):
        temporal_split(frame, HORIZON, TrainingSettings())
