"""Exact TreeSHAP of a LightGBM booster by table lookup, at close to prediction cost.

Within one tree, LightGBM's path-dependent TreeSHAP values of a row depend on the row only
through the side it takes at each split. Along each feature a tree splits on, values fall
into a few cells (the intervals between its thresholds, or its categories, with zero and
missing apart where LightGBM treats them apart); one cell per feature makes a cell of the
tree, and every row in that cell gets the same SHAP values from that tree. So at load time
LightGBM itself is asked for each tree's values once per cell (`pred_contrib` on one
representative row per cell, that tree alone), and at scoring time each row's cell is found
by binary search per feature and its values are looked up, vectorised over rows and trees.
A tree with more cells than a cap (a deep tree) is left to LightGBM's `pred_contrib`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
from scipy import sparse

from churnlens.training.shap_cells import (
    ZERO_THRESHOLD,
    Axis,
    by_feature,
    local_cells,
    model_splits,
)

MAX_CELLS = 4096
# Rows per block: the (pairs x rows) index and value blocks stay in the CPU caches.
CHUNK_ROWS = 512
# Below this many rows one thread is faster than starting a pool.
PARALLEL_ROWS = 4096
# From this many rows a block searches axis by axis (see ShapTable._bins).
LOOP_ROWS = 64


@dataclass
class _Tree:
    """One tabulated tree: per axis it splits on, the cell of each bin and a bin per cell."""

    index: int
    axes: list[int]  # slots into ShapTable._axes
    luts: list[np.ndarray]  # per axis: local cell of each bin
    rep_bins: list[np.ndarray]  # per axis: one bin per local cell

    @property
    def cells(self) -> int:
        return math.prod(len(r) for r in self.rep_bins)


class ShapTable:
    """LightGBM's exact TreeSHAP contributions of one booster, tabulated per tree.

    Build it with `ShapTable.from_booster`; `contributions` then equals the booster's
    `predict(X, pred_contrib=True)` (to rounding: sums taken in another order). Attributes:
    n_features, n_trees (trees covered), tree_cells (cells of each tree), fallback_trees
    (indices of the trees left to LightGBM's pred_contrib: more cells than the cap),
    n_cells (table rows of the tabulated trees). Picklable; holds a copy of the booster
    only when some tree falls back.
    """

    def __init__(self, n_features: int, axes: list[Axis], trees: list[_Tree],
                 tables: list[np.ndarray], bias: float, tree_cells: list[int],
                 fallback_trees: list[int], booster: lgb.Booster | None):
        self.n_features = n_features
        self.n_trees = len(trees) + len(fallback_trees)
        self.tree_cells = tuple(tree_cells)
        self.fallback_trees = tuple(fallback_trees)
        self.n_cells = sum(t.cells for t in trees)
        self._axes, self._bias, self._booster = axes, bias, booster
        self._fallback_runs = _runs(fallback_trees)
        self._pack(trees, tables)

    @classmethod
    def from_booster(cls, booster: lgb.Booster, num_iteration: int | None = None,
                     max_cells: int = MAX_CELLS) -> ShapTable:
        """Tabulate the trees of BOOSTER (binary or regression: one tree per iteration).

        num_iteration: how many iterations, as in `Booster.predict` (None: the booster's best
        iteration if it has one, else all). max_cells: a tree with more cells than this is
        left to LightGBM's pred_contrib. Raises ValueError for several trees per iteration
        (multiclass) or max_cells < 1; LightGBMError where LightGBM has no TreeSHAP
        (linear trees).
        """
        if booster.num_model_per_iteration() != 1:
            raise ValueError(f"ShapTable covers one tree per iteration (binary, regression); "
                             f"this booster has {booster.num_model_per_iteration()} (multiclass):"
                             " use booster.predict(X, pred_contrib=True)")
        if max_cells < 1:
            raise ValueError(f"max_cells must be at least 1, got {max_cells}")
        if num_iteration is None:
            num_iteration = booster.best_iteration if booster.best_iteration > 0 else -1
        model = booster.model_to_string(num_iteration=num_iteration)
        splits = [by_feature(t) for t in model_splits(model)]
        # A tree's cell count needs only its own splits: other trees' thresholds cut its
        # cells finer but never into cells with different decisions.
        counts = [math.prod(len(local_cells(Axis(f, s), s)[1]) for f, s in tree.items())
                  for tree in splits]
        keep = [t for t, c in enumerate(counts) if c <= max_cells]
        fallback = [t for t, c in enumerate(counts) if c > max_cells]
        features = sorted({f for t in keep for f in splits[t]})
        axes = [Axis(f, [s for t in keep for s in splits[t].get(f, [])]) for f in features]
        slot = {f: i for i, f in enumerate(features)}
        trees, tables, bias = [], [], 0.0
        for t in keep:
            used = sorted(splits[t], key=slot.get)
            cells = [local_cells(axes[slot[f]], splits[t][f]) for f in used]
            tree = _Tree(t, [slot[f] for f in used], [c[0] for c in cells],
                         [c[1] for c in cells])
            table, expected = _tree_table(booster, tree, axes, booster.num_feature())
            trees.append(tree)
            tables.append(table)
            bias += expected
        copy = lgb.Booster(model_str=booster.model_to_string()) if fallback else None
        return cls(booster.num_feature(), axes, trees, tables, bias, counts, fallback, copy)

    def _pack(self, trees: list[_Tree], tables: list[np.ndarray]) -> None:
        """Arrays for `_block`, one entry per (tree, feature) pair, trees in order.

        A pair's lookup turns a bin into that feature's share of the tree's cell index
        (mixed radix); `_cells` adds a tree's shares, and the first share also carries the
        tree's offset into the values. `_spread` adds the pairs' values per feature.
        """
        slot, offset, luts, vals, cells, shift, features = [], [], [], [], [], [], []
        lut_size = vals_size = 0
        for tree, table in zip(trees, tables, strict=True):
            if not tree.axes:
                continue  # a single-leaf tree: its expected value is in the bias
            radix = 1
            for k, (axis, lut, reps) in enumerate(zip(tree.axes, tree.luts, tree.rep_bins,
                                                      strict=True)):
                luts.append(lut * radix + (vals_size if k == 0 else 0))
                slot.append(axis)
                offset.append(lut_size)
                lut_size += len(lut)
                cells.append(len(vals))
                shift.append(k * tree.cells)  # the tree's column k starts k * cells on
                features.append(self._axes[axis].feature)
                radix *= len(reps)
            vals.append(table.T.ravel())
            vals_size += table.size
        pairs = np.arange(len(slot))
        self._lut = np.concatenate(luts).astype(np.intp) if luts else np.zeros(0, np.intp)
        self._vals = np.concatenate(vals) if vals else np.zeros(0)
        self._pair_slot = np.asarray(slot, np.intp)
        self._pair_offset = np.asarray(offset, np.intp)[:, None]
        self._pair_tree = np.asarray(cells, np.intp)
        self._pair_shift = np.asarray(shift, np.intp)[:, None]
        # Sparse sums run as one tight loop each, where numpy's reduceat over the pairs
        # took ten times longer.
        self._cells = sparse.csr_array((np.ones(len(slot), np.intp), (cells, pairs)),
                                       shape=(len(vals), len(slot)))
        self._out_features, rows = np.unique(np.asarray(features, np.intp), return_inverse=True)
        self._spread = sparse.csr_array((np.ones(len(slot)), (rows.ravel(), pairs)),
                                        shape=(len(self._out_features), len(slot)))
        # Every axis's edges in one sorted complex array (axis + 1j * edge): numpy orders
        # complex numbers by real part, then imaginary part, so one binary search finds
        # each value's bin on its own axis.
        edges = [a.edges for a in self._axes]
        self._edges = np.empty(sum(map(len, edges)), complex)  # not i + 1j * e: 1j * inf is nan
        self._edges.real = np.repeat(np.arange(len(edges)), [len(e) for e in edges])
        self._edges.imag = np.concatenate(edges or [np.zeros(0)])
        counts = np.array([len(a.edges) for a in self._axes], np.intp)
        self._edge_start = (np.cumsum(counts) - counts)[:, None]
        self._edge_count = counts[:, None]
        self._axis_ids = np.arange(len(self._axes), dtype=float)[:, None]
        self._numeric_rows = np.array([[not a.categorical] for a in self._axes], bool)
        self._categorical = np.array([i for i, a in enumerate(self._axes) if a.categorical],
                                     np.intp)
        self._axis_features = np.array([a.feature for a in self._axes], np.intp)

    def contributions(self, X: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """TreeSHAP contributions of each row of X: (rows, n_features + 1), bias last.

        X: the matrix the booster predicts on (category codes as floats, NaN for missing).
        num_threads: None: one thread under PARALLEL_ROWS rows, else every core; 0: every
        core; k: k threads. Raises ValueError on a matrix of the wrong shape or type.
        """
        x = _matrix(X, self.n_features)
        out = np.zeros((len(x), self.n_features + 1))
        threads = _threads(len(x), num_threads)
        starts = range(0, len(x), CHUNK_ROWS)
        if self._pair_slot.size:
            def block(s: int) -> None:
                self._block(x[s:s + CHUNK_ROWS], out[s:s + CHUNK_ROWS])
            if threads > 1 and len(starts) > 1:
                with ThreadPoolExecutor(min(threads, len(starts))) as pool:
                    list(pool.map(block, starts))
            else:
                for s in starts:
                    block(s)
        out[:, -1] += self._bias
        for start, count in self._fallback_runs:
            out += self._booster.predict(x, pred_contrib=True, start_iteration=start,
                                         num_iteration=count, num_threads=threads)
        return out

    def _block(self, x: np.ndarray, out: np.ndarray) -> None:
        bins = self._bins(x.T[self._axis_features])
        idx = np.take(bins, self._pair_slot, axis=0)
        idx += self._pair_offset
        cell = self._cells @ np.take(self._lut, idx)  # (trees, rows): index into _vals
        idx = np.take(cell, self._pair_tree, axis=0)
        idx += self._pair_shift
        out[:, self._out_features] = (self._spread @ np.take(self._vals, idx)).T

    def _bins(self, cols: np.ndarray) -> np.ndarray:
        """Each value's bin on its axis (see Axis): cols and result are (axes, rows)."""
        cat = self._categorical
        if cat.size:
            cols[cat] = np.trunc(cols[cat])  # LightGBM casts a category to int
        if cols.shape[1] >= LOOP_ROWS:
            # A search per axis over its few edges: three times faster per value than one
            # search over all axes' edges, but 2 us a call.
            bins = np.empty(cols.shape, np.intp)
            for i, axis in enumerate(self._axes):
                bins[i] = np.searchsorted(axis.edges, cols[i], side="left")
        else:
            # One search: numpy orders complex numbers by real part, then imaginary part.
            keys = np.empty(cols.shape, complex)
            keys.real = self._axis_ids
            keys.imag = cols
            bins = np.searchsorted(self._edges, keys, side="left") - self._edge_start
        if cat.size:  # a code no split names is "other"
            start, count = self._edge_start[cat], self._edge_count[cat]
            at = np.minimum(bins[cat] + start, start + count - 1)
            bins[cat] = np.where(self._edges.imag[at] == cols[cat], bins[cat], count)
        zero = np.abs(cols) <= ZERO_THRESHOLD  # zero as LightGBM reads it (never NaN)
        zero &= self._numeric_rows  # a category's zero is code 0
        np.copyto(bins, self._edge_count + 1, where=zero)
        np.copyto(bins, self._edge_count + 2, where=np.isnan(cols))
        return bins


def _tree_table(booster: lgb.Booster, tree: _Tree, axes: list[Axis], n_features: int
                ) -> tuple[np.ndarray, float]:
    """LightGBM's SHAP values of one tree for a row per cell: (cells, used features), bias."""
    cell = np.arange(tree.cells)
    rows = np.zeros((tree.cells, n_features))
    radix = 1
    for slot, reps in zip(tree.axes, tree.rep_bins, strict=True):
        rows[:, axes[slot].feature] = axes[slot].values[reps[(cell // radix) % len(reps)]]
        radix *= len(reps)
    contrib = booster.predict(rows, pred_contrib=True, start_iteration=tree.index,
                              num_iteration=1, num_threads=1)
    used = [axes[s].feature for s in tree.axes]
    others = np.delete(contrib[:, :-1], used, axis=1)
    if np.any(others != 0) or np.any(contrib[:, -1] != contrib[0, -1]):
        raise RuntimeError(f"LightGBM's TreeSHAP of tree {tree.index} credits features the "
                           "tree does not split on, or varies its expected value by row: "
                           "this LightGBM differs from 4.7; use pred_contrib")
    return contrib[:, used], float(contrib[0, -1])


def _runs(trees: list[int]) -> list[tuple[int, int]]:
    """Consecutive tree indices as (start, count) runs, one pred_contrib call each."""
    runs: list[tuple[int, int]] = []
    for t in trees:
        if runs and runs[-1][0] + runs[-1][1] == t:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((t, 1))
    return runs


def _matrix(X: np.ndarray, n_features: int) -> np.ndarray:
    try:
        x = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("X must be a numeric matrix as the booster reads it (category codes "
                         f"as floats, NaN for missing; RiskModel.encode builds it): {exc}"
                         ) from None
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"X needs shape (rows, {n_features}), one column per model feature; "
                         f"got {x.shape}")
    return x


def _threads(n_rows: int, num_threads: int | None) -> int:
    if num_threads is not None and num_threads < 0:
        raise ValueError(f"num_threads must be None, 0 (every core) or a positive count, got "
                         f"{num_threads}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if num_threads is None:
        return 1 if n_rows < PARALLEL_ROWS else cores or 1
    return num_threads or cores or 1
