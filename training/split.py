"""Split labelled rows into train, validation, calibration and test slices by time.

Test is the latest labelled cutoffs; calibration comes before them with an embargo (its
label windows end by the first test cutoff, so no calibration label looks into test's
period); validation sits just before calibration; train keeps only cutoffs whose label
windows end by the first validation cutoff. When the history is too short for that (a
one-snapshot CRM export), customers are split instead, by a stable hash of their id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnlens.settings import TrainingSettings

SLICES = ("train", "validation", "calibration", "test")
# Shares of customers per slice when splitting by customer (same order as SLICES).
CUSTOMER_SHARES = (0.60, 0.15, 0.10, 0.15)


@dataclass
class Split:
    """Disjoint slices of the labelled rows, and how they were made.

    survival_train: rows (labelled or not) a survival model may learn from. In a time split:
    every row up to the last train cutoff, with duration_days, event and churned_at censored
    at the first validation cutoff (a churn at or after it becomes event 0). Only those
    columns are censored: its revenue_ltv still looks a year ahead, so fit no LTV on it.
    In a customer split: every row of the train customers.
    boundaries: the cutoffs in each slice, sorted.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    calibration: pd.DataFrame
    test: pd.DataFrame
    survival_train: pd.DataFrame
    method: str  # "time" | "customer"
    boundaries: dict[str, list[pd.Timestamp]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def temporal_split(frame: pd.DataFrame, horizon_days: int, settings: TrainingSettings) -> Split:
    """Split a training frame (customer_id, cutoff, churned, duration_days, event, ...).

    Only rows with a non-null `churned` go into the four slices. Falls back to a split by
    customer (method "customer", with a note) when fewer distinct labelled cutoffs exist
    than test + calibration + validation + 1. Raises ValueError when required columns are
    missing, no row is labelled, or a slice would be empty or hold only one class.
    """
    missing = [c for c in ("customer_id", "cutoff", "churned", "duration_days", "event")
               if c not in frame.columns]
    if missing:
        raise ValueError(f"training frame lacks column(s) {missing}; build it with "
                         "churnlens.features.build.build_training_set")
    labelled = frame[frame["churned"].notna()]
    if labelled.empty:
        raise ValueError(f"none of the {len(frame)} rows has a churn label: no cutoff has its "
                         f"{horizon_days}-day window observed; use a longer history")
    cutoffs = sorted(pd.Timestamp(c) for c in labelled["cutoff"].unique())
    needed = settings.test_cutoffs + settings.calibration_cutoffs + settings.validation_cutoffs
    if len(cutoffs) < needed + 1:
        split = _customer_split(frame, labelled, settings.seed)
        split.notes.append(
            f"split by customer (hash of customer_id, seed {settings.seed}, "
            f"{'/'.join(str(round(s * 100)) for s in CUSTOMER_SHARES)}): only {len(cutoffs)} "
            f"labelled cutoff(s), a time split needs at least {needed + 1}")
    else:
        split = _time_split(frame, labelled, cutoffs, horizon_days, settings)
    for name in SLICES:
        _check_slice(name, getattr(split, name))
    return split


def _time_split(frame: pd.DataFrame, labelled: pd.DataFrame, cutoffs: list[pd.Timestamp],
                horizon_days: int, settings: TrainingSettings) -> Split:
    horizon = pd.Timedelta(days=horizon_days)
    test = cutoffs[-settings.test_cutoffs:]
    embargoed = [c for c in cutoffs if c + horizon <= test[0]]
    calibration = embargoed[-settings.calibration_cutoffs:]
    validation = [c for c in cutoffs if calibration and c < calibration[0]]
    validation = validation[-settings.validation_cutoffs:]
    train = [c for c in cutoffs if validation and c + horizon <= validation[0]]
    bounds = {"train": train, "validation": validation, "calibration": calibration, "test": test}
    for name in ("test", "calibration", "validation", "train"):  # the order they are derived
        if not bounds[name]:
            raise ValueError(
                f"time split leaves the {name} slice without cutoffs: {len(cutoffs)} labelled "
                f"cutoffs from {cutoffs[0].date()} to {cutoffs[-1].date()} are too few for "
                f"{horizon_days}-day embargoes; lower test/validation/calibration_cutoffs")
    notes = [f"split by time: train {train[0].date()}..{train[-1].date()}, validation "
             f"{validation[0].date()}..{validation[-1].date()}, calibration "
             f"{calibration[0].date()}..{calibration[-1].date()}, test "
             f"{test[0].date()}..{test[-1].date()}"]
    slices = {n: labelled[labelled["cutoff"].isin(c)].reset_index(drop=True)
              for n, c in bounds.items()}
    survival = _censor_at(frame[frame["cutoff"] <= train[-1]], validation[0])
    return Split(**slices, survival_train=survival, method="time", boundaries=bounds,
                 notes=notes)


def _censor_at(rows: pd.DataFrame, until: pd.Timestamp) -> pd.DataFrame:
    """Administrative censoring at UNTIL: a churn at or after it is not yet known."""
    out = rows.copy()
    room = (until - out["cutoff"]).dt.total_seconds().to_numpy() / 86400.0
    out["duration_days"] = np.minimum(out["duration_days"].to_numpy(float), room)
    if "churned_at" in out.columns:
        late = out["churned_at"].notna() & (out["churned_at"] >= until)
        out.loc[late, "churned_at"] = pd.NaT
    else:
        # Without the churn date, a churn after UNTIL shows as a duration beyond the room.
        late = pd.Series(rows["duration_days"].to_numpy(float) >= room, index=out.index)
    out.loc[late, "event"] = 0
    return out.reset_index(drop=True)


def customer_hash(customer_ids: pd.Series, seed: int) -> pd.Series:
    """A stable number in [0, 1) per customer id, the same on every machine and run."""
    unique = pd.unique(customer_ids.astype(str))
    values = [int.from_bytes(hashlib.blake2b(f"{seed}:{cid}".encode(), digest_size=8).digest(),
                             "big") / 2.0**64 for cid in unique]
    return customer_ids.astype(str).map(dict(zip(unique, values, strict=True)))


def _customer_split(frame: pd.DataFrame, labelled: pd.DataFrame, seed: int) -> Split:
    edges = np.cumsum(CUSTOMER_SHARES)[:-1]
    slot = np.searchsorted(edges, customer_hash(labelled["customer_id"], seed).to_numpy(),
                           side="right")
    slices = {name: labelled[slot == i].reset_index(drop=True) for i, name in enumerate(SLICES)}
    train_ids = set(slices["train"]["customer_id"].astype(str))
    survival = frame[frame["customer_id"].astype(str).isin(train_ids)].reset_index(drop=True)
    bounds = {name: sorted(pd.Timestamp(c) for c in part["cutoff"].unique())
              for name, part in slices.items()}
    return Split(**slices, survival_train=survival, method="customer", boundaries=bounds)


def _check_slice(name: str, part: pd.DataFrame) -> None:
    if part.empty:
        raise ValueError(f"the {name} slice is empty; the data has too few labelled rows "
                         "or customers to split")
    classes = part["churned"].unique()
    if len(classes) < 2:
        raise ValueError(f"the {name} slice ({len(part)} rows) holds only churned="
                         f"{int(classes[0])}; models need churners and non-churners in "
                         "every slice: use more customers or a longer history")
