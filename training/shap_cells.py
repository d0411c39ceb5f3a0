"""The cells of LightGBM trees: their splits, read from the model string, and the bins
along each feature that every split respects.

ShapTable (training/shap_table.py) tabulates a tree's TreeSHAP values per cell; this module
says what a cell is, with LightGBM's own decision rules (tree.h `NumericalDecision`,
`CategoricalDecision`, and the dense-row reader that reads |x| <= kZeroThreshold as 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LightGBM's kZeroThreshold is the float literal 1e-35f stored in a double: |x| <= it is
# zero to LightGBM (its dense-row reader drops such values, so they predict as 0.0).
ZERO_THRESHOLD = float(np.float32(1e-35))


@dataclass(frozen=True)
class Split:
    """One split node of a tree, as LightGBM decides it."""

    feature: int
    categorical: bool
    threshold: float  # numeric split: left when value <= threshold
    categories: frozenset[int]  # categorical split: left when the code is in the set
    missing: int  # 0 None, 1 Zero, 2 NaN (LightGBM's missing_type)
    default_left: bool


def model_splits(model: str) -> list[list[Split]]:
    """Every split of every tree of a LightGBM model string, tree by tree.

    The model string, not `dump_model`: its JSON writes an infinite threshold (a split of
    missing from present values) as 1e300, which would put values above 1e300 on the
    wrong side.
    """
    trees: list[dict[str, str]] = []
    for line in model[:model.index("end of trees")].splitlines():
        if line.startswith("Tree="):
            trees.append({})
        elif trees and "=" in line:
            key, value = line.split("=", 1)
            trees[-1][key] = value
    return [_tree_splits(t) for t in trees]


def _tree_splits(tree: dict[str, str]) -> list[Split]:
    """The splits of one tree's `key=value` lines (none for a single-leaf tree)."""
    bounds = [int(v) for v in tree.get("cat_boundaries", "").split()]
    words = [int(v) for v in tree.get("cat_threshold", "").split()]
    out = []
    for feature, threshold, kind in zip(tree["split_feature"].split(), tree["threshold"].split(),
                                        tree["decision_type"].split(), strict=True):
        kind = int(kind)  # bit 0 categorical, bit 1 default left, bits 2-3 missing type
        categories: frozenset[int] = frozenset()
        if kind & 1:  # the threshold indexes the split's bitset of left-going codes
            i = int(float(threshold))
            categories = frozenset(32 * w + b for w, word in enumerate(words[bounds[i]:bounds[i + 1]])
                                   for b in range(32) if word >> b & 1)
        out.append(Split(int(feature), bool(kind & 1), float(threshold), categories,
                          (kind >> 2) & 3, bool(kind & 2)))
    return out


class Axis:
    """One feature's bins: the finest cells that all the tabulated trees' splits respect.

    Numeric: intervals (t[i-1], t[i]] of the sorted thresholds t, then zero, then NaN.
    Categorical: each code that some split names, then every other code (twice, to keep
    NaN at the same place as numeric axes: last), then NaN. `values` holds one value per bin.
    """

    def __init__(self, feature: int, splits: list[Split]):
        self.feature = feature
        self.categorical = splits[0].categorical
        if self.categorical:
            self.edges = np.array(sorted(set().union(*(s.categories for s in splits))), float)
            other = self.edges[-1] + 1.0  # a code in no split: goes right, like any other
            self.values = np.array([*self.edges, other, other, np.nan])
        else:
            self.edges = np.unique([s.threshold for s in splits])
            self.values = np.array([*_interval_values(self.edges), 0.0, np.nan])

    def decisions(self, splits: list[Split]) -> np.ndarray:
        """(bins, splits) codes: 1 left, 0 right, 2 for a categorical NaN (kept apart)."""
        v = self.values
        if self.categorical:
            out = np.array([[c in s.categories for s in splits] for c in v[:-1]], np.int8)
            return np.vstack([out.reshape(len(v) - 1, len(splits)),
                              np.full((1, len(splits)), 2, np.int8)])
        cols = []
        for s in splits:
            fv = np.where(np.isnan(v) & (s.missing != 2), 0.0, v)
            special = ((s.missing == 1) & (np.abs(fv) <= ZERO_THRESHOLD)) | (
                (s.missing == 2) & np.isnan(fv))
            cols.append(np.where(special, s.default_left, fv <= s.threshold))
        return np.column_stack(cols).astype(np.int8)


def _interval_values(edges: np.ndarray) -> list[float]:
    """A value inside each interval (lo, hi] that LightGBM does not read as zero."""
    out = []
    for lo, hi in zip([-np.inf, *edges], [*edges, np.inf], strict=True):
        tries = (hi, hi - 1.0, lo + 1.0, np.nextafter(lo, np.inf), np.nextafter(hi, -np.inf))
        fits = [c for c in tries if lo < c <= hi and np.isfinite(c) and abs(c) > ZERO_THRESHOLD]
        # An interval inside the zero band holds no value LightGBM reads as non-zero.
        out.append(fits[0] if fits else 0.0)
    return out


def by_feature(splits: list[Split]) -> dict[int, list[Split]]:
    """SPLITS grouped by feature, in order of first use."""
    out: dict[int, list[Split]] = {}
    for s in splits:
        out.setdefault(s.feature, []).append(s)
    return out


def local_cells(axis: Axis, splits: list[Split]) -> tuple[np.ndarray, np.ndarray]:
    """Bins with the same decisions at every split of one tree share a cell.

    Returns (cell of each bin of AXIS, one bin per cell).
    """
    _, first, inverse = np.unique(axis.decisions(splits), axis=0, return_index=True,
                                  return_inverse=True)
    return inverse.ravel().astype(np.intp), first.astype(np.intp)
