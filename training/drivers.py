"""Readable churn drivers from TreeSHAP contributions, and risk tiers from probabilities.

Contributions of the features in one driver group (usage, support, billing, revenue, ...)
are added up; a group whose total raises the customer's risk (by at least
MIN_CONTRIBUTION) becomes a driver, largest first, told by its feature that raises risk
most with a value other than the typical customer's (`churnlens.training.sentences`: "active
days in the last 30 fell from 18 to 4, below the typical 12"), and paired with the playbook
action that params.yaml gives the group. A feature's group is its `Feature.group`, set where
the feature is defined; nothing here ties a feature name to a group. A TreeSHAP
contribution measures a value against the model's average customer, so a value equal to the
typical one tells no reason and tells no driver (no billing playbook for a customer with no
failed payment and no refund, when the typical customer has none).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.settings import DRIVER_GROUPS, PlaybookSettings, TierSettings
from churnlens.training.sentences import Columns, rounded, sentence

TIER_NAMES = np.array(["low", "medium", "high", "critical"])
# A driver raises the log-odds of churning by at least this much (the odds by about 5%):
# below it a TreeSHAP attribution is the trees' noise, and a customer-success team would be
# sent to act on a value that barely moves the risk ("first value took 1 day" at +0.016).
MIN_CONTRIBUTION = 0.05


def risk_tier(probs, tiers: TierSettings) -> np.ndarray:
    """Tier name per churn probability: at or above a threshold gets that tier.

    probs: array-like of probabilities in [0, 1]. Returns an array of str ("low",
    "medium", "high", "critical"). Raises ValueError on missing or out-of-range values.
    """
    p = np.asarray(probs, dtype=float).ravel()
    bad = np.isnan(p) | (p < 0) | (p > 1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {p.size} probabilities are missing or outside "
                         f"[0, 1] (first: {p[bad][0]!r}); tiers need probabilities")
    edges = np.array([tiers.medium, tiers.high, tiers.critical])
    return TIER_NAMES[np.searchsorted(edges, p, side="right")]


def _group_layout(features: list[Feature]) -> list[str]:
    unknown = sorted({f.group for f in features} - set(DRIVER_GROUPS))
    if unknown:
        raise ValueError(f"feature group(s) {unknown} are not driver groups "
                         f"{list(DRIVER_GROUPS)}; fix the feature list")
    return [g for g in DRIVER_GROUPS if any(f.group == g for f in features)]


def _check_inputs(frame: pd.DataFrame, contributions: pd.DataFrame, features: list[Feature],
                  top_n: int) -> None:
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if len(frame) != len(contributions):
        raise ValueError(f"frame has {len(frame)} rows but contributions has "
                         f"{len(contributions)}; pass contributions of the same rows")
    names = [f.name for f in features]
    for what, table in (("contributions lack", contributions), ("frame lacks", frame)):
        missing = [n for n in names if n not in table.columns]
        if missing:
            raise ValueError(f"{what} {len(missing)} feature column(s): {missing}")


def _at_typical(frame: pd.DataFrame, features: list[Feature],
                typical: Mapping[str, float | str | None]) -> np.ndarray:
    """(rows, features): True where a row's value is the typical one as its sentence shows
    it; such a value cannot say why it raises risk."""
    out = np.zeros((len(frame), len(features)), dtype=bool)
    for j, f in enumerate(features):
        t = typical.get(f.name)
        if t is None:
            continue
        column = frame[f.name]
        if f.kind == "category":
            out[:, j] = column.notna().to_numpy() & (column.astype(str).to_numpy() == str(t))
        else:
            values = column.to_numpy(dtype="float64", na_value=np.nan)
            out[:, j] = rounded(f.name, values) == rounded(f.name, t)
    return out


def explain(frame: pd.DataFrame, contributions: pd.DataFrame, features: list[Feature],
            playbooks: PlaybookSettings, top_n: int,
            typical: Mapping[str, float | str | None] | None = None) -> list[list[dict]]:
    """Up to TOP_N risk-raising drivers per row of FRAME, largest first.

    contributions: TreeSHAP values per feature (log-odds; rows aligned with FRAME by
    position, e.g. `RiskModel.contributions`). typical: the typical training value per
    feature (`RiskModel.typical_`), which sentences compare with; None: no comparison.
    A group is a driver when its total is at least MIN_CONTRIBUTION and one of its features
    raises risk (> 0) with a value other than the typical one: the largest such feature
    tells it. Each driver is a dict with name (the group), feature, value (float, str or
    None), contribution (the group total), direction ("raises risk"), text and playbook
    (the group's, from PLAYBOOKS). Raises ValueError on misaligned inputs, missing columns,
    an unknown group or top_n < 1.
    """
    _check_inputs(frame, contributions, features, top_n)
    names = [f.name for f in features]
    groups = _group_layout(features)
    values = contributions[names].to_numpy(dtype=float)
    members = [np.array([j for j, f in enumerate(features) if f.group == g]) for g in groups]
    totals = np.column_stack([values[:, m].sum(axis=1) for m in members])
    telling = np.where((values > 0) & ~_at_typical(frame, features, typical or {}), values, 0.0)
    # Per row and group, the position (in `names`) of the feature that tells it.
    top_feature = np.column_stack([m[np.argmax(telling[:, m], axis=1)] for m in members])
    told = np.column_stack([telling[:, m].max(axis=1) > 0 for m in members])
    listed = told & (totals >= MIN_CONTRIBUTION)
    order = np.argsort(-np.where(listed, totals, -np.inf), axis=1, kind="stable")[:, :top_n]
    columns = Columns(frame, {f.name: f.label for f in features}, typical or {})
    out = []
    for i in range(len(frame)):
        drivers = []
        for g in order[i]:
            if not listed[i, g]:
                break
            name = names[top_feature[i, g]]
            drivers.append({
                "name": groups[g], "feature": name, "value": columns.value(name, i),
                "contribution": float(totals[i, g]), "direction": "raises risk",
                "text": sentence(columns, i, name), "playbook": getattr(playbooks, groups[g]),
            })
        out.append(drivers)
    return out
