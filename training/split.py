"""Split labelled rows into train, validation, calibration and test slices by time.

Test is the latest labelled cutoffs; calibration comes before them with an embargo (its
label windows end by the first test cutoff, so no calibration label looks into test's
period); validation sits just before calibration; train keeps only cutoffs whose label
windows end by the first validation cutoff. When the labelled cutoffs are too few for
that (always with one labelled cutoff, e.g. a one-snapshot CRM export), customers are split
instead, by a stable hash of their id.
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
    customer (method "customer", with a note saying why) exactly when the labelled cutoffs
    cannot give each of the four time slices a cutoff with the embargoes above (one
    labelled cutoff never can). Raises ValueError when required columns are missing, no row
    is labelled, or a slice would be empty or hold only one class; the message says what to
    change for the case at hand.
    """
    missing = [c for c in ("customer_id", "cutoff", "churned", "duration_days", "event")
               if c not in frame.columns]
    if missing:
        raise ValueError(f"training frame lacks column(s) {missing}; build it with "
                         "churnlens.features.build.build_training_set")
    labelled = frame[frame["churned"].notna()]
    if labelled.empty:
        span = sorted(pd.Timestamp(c) for c in frame["cutoff"].unique())
        where = f" (cutoffs {span[0].date()} to {span[-1].date()})" if span else ""
        raise ValueError(
            f"none of the {len(frame)} rows has a churn label: no cutoff{where} has its "
            f"{horizon_days}-day label window inside the data; lower horizon_days, set "
            "data.observed_until to the date the data were exported, or name cutoffs at least "
            "horizon_days before the end in cutoffs.dates")
    cutoffs = sorted(pd.Timestamp(c) for c in labelled["cutoff"].unique())
    bounds, empty = _time_bounds(cutoffs, horizon_days, settings)
    if empty:
        split = _customer_split(frame, labelled, settings.seed)
        why = (f"one labelled cutoff ({cutoffs[0].date()})" if len(cutoffs) == 1 else
               f"{len(cutoffs)} labelled cutoffs leave the {empty} slice of a time split "
               f"without cutoffs (test_cutoffs {settings.test_cutoffs}, calibration_cutoffs "
               f"{settings.calibration_cutoffs}, validation_cutoffs "
               f"{settings.validation_cutoffs}, {horizon_days}-day embargoes)")
        split.notes.append(
            f"split by customer (hash of customer_id, seed {settings.seed}, "
            f"{'/'.join(str(round(s * 100)) for s in CUSTOMER_SHARES)}): {why}")
    else:
        split = _time_split(frame, labelled, bounds)
    for name in SLICES:
        _check_slice(name, getattr(split, name), split, labelled)
    return split


def _time_bounds(cutoffs: list[pd.Timestamp], horizon_days: int, settings: TrainingSettings
                 ) -> tuple[dict[str, list[pd.Timestamp]], str | None]:
    """The cutoffs of each time slice, and the first slice left without any (None: none)."""
    horizon = pd.Timedelta(days=horizon_days)
    test = cutoffs[-settings.test_cutoffs:]
    embargoed = [c for c in cutoffs if test and c + horizon <= test[0]]
    calibration = embargoed[-settings.calibration_cutoffs:]
    validation = [c for c in cutoffs if calibration and c < calibration[0]]
    validation = validation[-settings.validation_cutoffs:]
    train = [c for c in cutoffs if validation and c + horizon <= validation[0]]
    bounds = {"train": train, "validation": validation, "calibration": calibration, "test": test}
    empty = next((name for name in ("test", "calibration", "validation", "train")
                  if not bounds[name]), None)  # in the order they are derived
    return bounds, empty


def _time_split(frame: pd.DataFrame, labelled: pd.DataFrame,
                bounds: dict[str, list[pd.Timestamp]]) -> Split:
    train, validation = bounds["train"], bounds["validation"]
    calibration, test = bounds["calibration"], bounds["test"]
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


def _check_slice(name: str, part: pd.DataFrame, split: Split, labelled: pd.DataFrame) -> None:
    """Every slice needs rows of both classes; the message fits the split and the data."""
    customers = labelled["customer_id"].nunique()
    if part.empty:
        raise ValueError(f"the {name} slice is empty: {len(labelled):,} labelled rows of "
                         f"{customers:,} customers are too few to split by {split.method}; "
                         "use more customers")
    classes = part["churned"].unique()
    if len(classes) > 1:
        return
    only, churners = int(classes[0]), int(labelled["churned"].sum())
    head = f"the {name} slice ({len(part):,} rows) holds only churned={only}"
    if churners in (0, len(labelled)):
        every = "no" if churners == 0 else "every"
        raise ValueError(
            f"{head}: {every} labelled row of all {len(labelled):,} is a churner, so no model "
            "can be fitted; check churn.definition and horizon_days, and that the source "
            "records the churns (subscriptions.ended_at, or the purchases and activity)")
    if split.method == "customer":
        raise ValueError(
            f"{head}: the {churners:,} churners among {len(labelled):,} labelled rows of "
            f"{customers:,} customers are too few for every slice of the split by customer "
            "to hold both classes; use more customers or a longer horizon_days")
    with_churn = sorted(labelled.loc[labelled["churned"] == 1, "cutoff"].unique())
    cuts = split.boundaries[name]
    raise ValueError(
        f"{head} (cutoffs {cuts[0].date()} to {cuts[-1].date()}), while churns are recorded "
        f"at {len(with_churn)} cutoff(s) from {pd.Timestamp(with_churn[0]).date()} to "
        f"{pd.Timestamp(with_churn[-1]).date()}; give the slice more cutoffs (training."
        "test_cutoffs / calibration_cutoffs / validation_cutoffs; train takes what is left) or "
        "use more customers; if the data cannot show churns at the other cutoffs, name the "
        "ones that can in cutoffs.dates")
