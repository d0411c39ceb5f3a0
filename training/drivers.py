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
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature
from churnlens.settings import DRIVER_GROUPS, PlaybookSettings, TierSettings
from churnlens.training.sentences import Columns, rounded, rounded_as, rounding

TIER_NAMES = np.array(["low", "medium", "high", "critical"])
# A driver raises the log-odds of churning by at least this much (the odds by about 5%):
# below it a TreeSHAP attribution is the trees' noise, and a customer-success team would be
# sent to act on a value that barely moves the risk ("first value took 1 day" at +0.016).
MIN_CONTRIBUTION = 0.05
DIRECTION = "raises risk"  # every driver's direction: only risk-raising groups are drivers
# Layouts of recently seen (features, typical) pairs (a model's), by the identity of the two
# objects; an entry is used only while both still equal the copies it keeps, so that a list
# or mapping changed in place, or a new object at a recycled address, gets a new layout.
# Module-level rather than on a model, so that nothing of it is ever pickled.
_LAYOUTS: dict[tuple[int, int], _Layout] = {}
_MAX_LAYOUTS = 16
_NO_TYPICAL: Mapping[str, float | str | None] = MappingProxyType({})


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


@dataclass(frozen=True)
class _Layout:
    """What `explain` needs of a feature list and its typical values, worked out once."""

    features: list[Feature]  # copies of the pair the layout was built for
    typical: dict[str, float | str | None]
    names: list[str]
    groups: list[str]  # the driver groups present, in DRIVER_GROUPS order
    members: list[np.ndarray]  # per group, the positions of its features in `names`
    labels: dict[str, str]
    # Numeric features with a typical value, per `rounding` rule: (rule, positions in
    # `names`, names, the typical values as sentences show them).
    numeric: list[tuple[str, np.ndarray, list[str], np.ndarray]]
    categories: list[tuple[int, str, str]]  # (position, name, typical level as str)

    @classmethod
    def build(cls, features: list[Feature], typical: Mapping[str, float | str | None]
              ) -> _Layout:
        """Raises ValueError naming the groups of FEATURES that are not driver groups."""
        unknown = sorted({f.group for f in features} - set(DRIVER_GROUPS))
        if unknown:
            raise ValueError(f"feature group(s) {unknown} are not driver groups "
                             f"{list(DRIVER_GROUPS)}; fix the feature list")
        groups = [g for g in DRIVER_GROUPS if any(f.group == g for f in features)]
        rules: dict[str, list[int]] = {}
        categories = []
        for j, f in enumerate(features):
            t = typical.get(f.name)
            if t is None:
                continue
            if f.kind == "category":
                categories.append((j, f.name, str(t)))
            else:
                rules.setdefault(rounding(f.name), []).append(j)
        numeric = []
        for rule, js in rules.items():
            names = [features[j].name for j in js]
            shown = np.array([rounded(n, typical[n]) for n in names], dtype=float)
            numeric.append((rule, np.array(js, dtype=np.intp), names, shown))
        members = [np.array([j for j, f in enumerate(features) if f.group == g])
                   for g in groups]
        return cls(list(features), dict(typical), [f.name for f in features], groups,
                   members, {f.name: f.label for f in features}, numeric, categories)


def _layout(features: list[Feature], typical: Mapping[str, float | str | None]) -> _Layout:
    key = (id(features), id(typical))
    found = _LAYOUTS.get(key)
    if found is not None and found.features == features and found.typical == typical:
        return found
    built = _Layout.build(features, typical)
    if len(_LAYOUTS) >= _MAX_LAYOUTS:
        _LAYOUTS.pop(next(iter(_LAYOUTS), None), None)  # the oldest entry
    _LAYOUTS[key] = built
    return built


def _check_inputs(frame: pd.DataFrame, contributions: pd.DataFrame, features: list[Feature],
                  top_n: int) -> None:
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if len(frame) != len(contributions):
        raise ValueError(f"frame has {len(frame)} rows but contributions has "
                         f"{len(contributions)}; pass contributions of the same rows")
    for what, table in (("contributions lack", contributions), ("frame lacks", frame)):
        present = set(table.columns)
        missing = [f.name for f in features if f.name not in present]
        if missing:
            raise ValueError(f"{what} {len(missing)} feature column(s): {missing}")


def _contribution_values(contributions: pd.DataFrame, names: list[str]) -> np.ndarray:
    """(rows, features) in NAMES order (a view when the columns start with NAMES)."""
    if contributions.columns[:len(names)].tolist() == names:
        # RiskModel.contributions' columns: the features in order, then "bias".
        return contributions.to_numpy(dtype=float)[:, :len(names)]
    return contributions[names].to_numpy(dtype=float)


def _at_typical(frame: pd.DataFrame, layout: _Layout, matrix: np.ndarray | None = None
                ) -> tuple[np.ndarray, dict]:
    """(rows, features): True where a row's value is the typical one as its sentence shows
    it (such a value cannot say why it raises risk); and the float64 columns read.

    matrix: the rows' numeric values as (rows, features) in `layout.names` order (the risk
    model's encoded matrix), read instead of FRAME's columns: one row's 80 column reads
    from a frame cost more than its scores."""
    # Column-major: each column is written in one contiguous piece.
    out = np.zeros((len(frame), len(layout.names)), dtype=bool, order="F")
    numbers = {}
    for rule, positions, names, typical in layout.numeric:
        if matrix is not None:
            values = matrix[:, positions]
            numbers.update((name, values[:, k]) for k, name in enumerate(names))
            out[:, positions] = rounded_as(rule, values) == typical
            continue
        values = np.empty((len(frame), len(names)), order="F")
        for k, name in enumerate(names):
            column = frame[name]
            if column.dtype == np.float64:  # checked rows: read as is, no NA conversion
                values[:, k] = numbers[name] = column.to_numpy()
            else:
                values[:, k] = column.to_numpy(dtype="float64", na_value=np.nan)
        out[:, positions] = rounded_as(rule, values) == typical
    for j, name, level in layout.categories:
        out[:, j] = _is_level(frame[name], level)
    return out, numbers


def _is_level(column: pd.Series, level: str) -> np.ndarray:
    """Known values of COLUMN that read as LEVEL (compared as str)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categorical = column.array  # codes and levels without building Series
        levels = np.array([str(c) == level for c in categorical.categories] + [False])
        return levels[categorical.codes]
    values = column.to_numpy(dtype=object)
    return ~pd.isna(values) & (values.astype(str) == level)


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
    return explain_columns(frame, contributions, features, playbooks, top_n, typical).rows()


@dataclass(frozen=True)
class DriverColumns:
    """The drivers of many rows as flat columns, one entry per driver: row i's drivers are
    entries offsets[i] to offsets[i + 1], largest first. `rows` gives `explain`'s dicts;
    the batch scorer builds its Arrow column straight from these lists."""

    offsets: np.ndarray  # int64, rows + 1
    name: list[str]
    feature: list[str]
    value: list  # float, str or None
    contribution: list[float]
    text: list[str]
    playbook: list[str]

    def rows(self) -> list[list[dict]]:
        """Each row's drivers as dicts (see `explain`)."""
        drivers = [{"name": n, "feature": f, "value": v, "contribution": c,
                    "direction": DIRECTION, "text": t, "playbook": p}
                   for n, f, v, c, t, p in zip(self.name, self.feature, self.value,
                                               self.contribution, self.text, self.playbook,
                                               strict=True)]
        bounds = self.offsets.tolist()
        return [drivers[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @classmethod
    def empty(cls, rows: int) -> DriverColumns:
        """No driver for any of ROWS rows."""
        return cls(np.zeros(rows + 1, dtype=np.int64), [], [], [], [], [], [])


def explain_columns(frame: pd.DataFrame, contributions: pd.DataFrame,
                    features: list[Feature], playbooks: PlaybookSettings, top_n: int,
                    typical: Mapping[str, float | str | None] | None = None,
                    matrix: np.ndarray | None = None) -> DriverColumns:
    """`explain`'s drivers as flat columns (`DriverColumns`), without a dict per driver.

    matrix: FRAME's rows as the risk model encodes them (`RiskModel.encode`: a column per
    feature in FEATURES order, numeric ones the float64 values of FRAME's), read instead of
    FRAME's numeric columns."""
    _check_inputs(frame, contributions, features, top_n)
    typical = typical if typical else _NO_TYPICAL
    layout = _layout(features, typical)
    values = _contribution_values(contributions, layout.names)
    if matrix is not None and matrix.shape != (len(frame), len(features)):
        raise ValueError(f"matrix has shape {matrix.shape}; the rows' encoded matrix has "
                         f"({len(frame)}, {len(features)})")
    at_typical, numbers = _at_typical(frame, layout, matrix)
    members = layout.members
    totals = np.column_stack([values[:, m].sum(axis=1) for m in members])
    telling = np.where((values > 0) & ~at_typical, values, 0.0)
    # Per row and group, the position (in `names`) of the feature that tells it.
    by_group = [telling[:, m] for m in members]
    top_feature = np.column_stack([m[np.argmax(t, axis=1)]
                                   for m, t in zip(members, by_group, strict=True)])
    told = np.column_stack([t.max(axis=1) > 0 for t in by_group])
    listed = told & (totals >= MIN_CONTRIBUTION)
    order = np.argsort(-np.where(listed, totals, -np.inf), axis=1, kind="stable")[:, :top_n]
    columns = Columns(frame, layout.labels, typical, numbers)
    return _drivers(layout, playbooks, columns, listed, order, top_feature, totals)


def _drivers(layout: _Layout, playbooks: PlaybookSettings, columns: Columns,
             listed: np.ndarray, order: np.ndarray, top_feature: np.ndarray,
             totals: np.ndarray) -> DriverColumns:
    """The drivers of each row from `explain`'s arrays: the listed groups in ORDER."""
    # Listed groups sort before the others (-inf), so each row's drivers are a prefix of
    # its ORDER; nonzero walks them row by row, largest first.
    rows, ranks = np.nonzero(np.take_along_axis(listed, order, axis=1))
    group = order[rows, ranks]
    feature = top_feature[rows, group]
    names, groups = layout.names, layout.groups
    books = [getattr(playbooks, g) for g in groups]
    row_list, group_list = rows.tolist(), group.tolist()
    told = [names[j] for j in feature.tolist()]
    return DriverColumns(
        offsets=np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(listed)))]),
        name=[groups[g] for g in group_list],
        feature=told,
        value=[columns.value(n, i) for n, i in zip(told, row_list, strict=True)],
        contribution=totals[rows, group].tolist(),
        text=[columns.sentence(n, i) for n, i in zip(told, row_list, strict=True)],
        playbook=[books[g] for g in group_list])
