"""The training reference stored with a model, for drift checks when it scores.

For each numeric feature: its training decile edges, the share of training rows in each bin
between them (ties merge deciles, so bins of counts and flags hold unequal shares) and the
share of missing values; for each category: the share of each level. The churn probability
gets the same numeric entry under SCORE_KEY, from the model's scores on the test slice (the
latest labelled cutoffs, which the model never saw: scores of its own training rows would be
over-confident). `bin_counts` bins values on such an entry; the batch job's drift check
(serving.stats) compares its population with these shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from churnlens.features.queries import Feature

SCORE_KEY = "__score__"  # the reference entry for the churn probability


def bin_counts(values: np.ndarray, ref: dict) -> dict:
    """Counts of VALUES on a reference entry's bins: numeric edges (both ends open) with
    missing values apart, or category levels (missing as "<null>")."""
    if ref["kind"] == "numeric":
        edges = np.asarray(ref["edges"], dtype=float)
        known = values[~np.isnan(values)]
        bins = np.searchsorted(edges[1:-1], known, side="right")
        counts = np.bincount(bins, minlength=max(len(edges) - 1, 1))
        return {"counts": counts.tolist(), "missing": int(len(values) - len(known))}
    levels = pd.Series(values, dtype=object).where(pd.notna(values), "<null>").astype(str)
    return {"levels": {str(k): int(n) for k, n in levels.value_counts().items()}}


def numeric_reference(values: np.ndarray) -> dict:
    """Decile edges of VALUES, the share of known values in each bin, the missing share."""
    values = np.asarray(values, dtype=float)
    known = values[~np.isnan(values)]
    if known.size == 0:
        return {"kind": "numeric", "edges": [], "missing": 1.0}
    edges = np.unique(np.quantile(known, np.linspace(0, 1, 11)))
    entry = {"kind": "numeric", "edges": edges.tolist()}
    counts = np.asarray(bin_counts(known, entry)["counts"], dtype=float)
    entry.update(shares=(counts / counts.sum()).tolist(),
                 missing=float(1 - known.size / max(values.size, 1)))
    return entry


def reference_distributions(train: pd.DataFrame, features: Sequence[Feature],
                            test_scores: np.ndarray | None = None) -> dict:
    """The reference of every feature on TRAIN rows, and of TEST_SCORES under SCORE_KEY."""
    ref = {}
    for f in features:
        col = train[f.name]
        if f.kind == "numeric":
            ref[f.name] = numeric_reference(col.to_numpy(float))
        else:
            shares = col.astype(object).fillna("<null>").value_counts(normalize=True)
            ref[f.name] = {"kind": "category", "shares": shares.to_dict()}
    if test_scores is not None:
        ref[SCORE_KEY] = numeric_reference(test_scores)
    return ref
