"""Evaluation metrics for the risk, survival and LTV models, and the baselines beside them.

Every metric is a pure function of arrays that returns a dict of floats (NaN where a
metric is undefined for the data given, e.g. no customer followed up to 180 days); the two
tables feed the plots. Inputs are validated at the door: ValueError names the argument,
the sizes and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index
from scipy.stats import spearmanr
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

IBS_RANGE_DAYS = (30.0, 365.0)


def _array(name: str, values, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: metrics need at least one row")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} values but the first argument has {n}; "
                         "pass arrays of the same rows")
    if np.isnan(arr).any():
        raise ValueError(f"{name} has {int(np.isnan(arr).sum())} missing values of {arr.size}; "
                         "drop unlabelled rows before scoring")
    return arr


def _labels_and_probs(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = _array("y", y)
    p = _array("p", p, y.size)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1")
    if len(np.unique(y)) < 2:
        raise ValueError(f"y holds a single class ({int(y[0])}) in all {y.size} rows; "
                         "ranking metrics need both churners and non-churners")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"p must be probabilities in [0, 1]; got [{p.min():.3g}, {p.max():.3g}]")
    return y, p


def _quantile_bins(p: np.ndarray, bins: int) -> np.ndarray:
    """Bin ids 0..k-1 of roughly equal size by quantiles of p; equal p share a bin."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.unique(np.searchsorted(edges, p, side="left"), return_inverse=True)[1]


def classification_metrics(y, p) -> dict[str, float]:
    """Discrimination and calibration of churn probabilities P against 0/1 outcomes Y.

    calibration_error is the mean |observed rate - mean prediction| over 10 quantile bins of
    P, weighted by bin size; top_decile_* use the 10% of rows with the highest P, with rows
    tied at the cut sharing the places left (`top_share_churners`), so a constant score has
    lift 1 whatever the row order. Raises ValueError for length mismatches, missing values, a single class in Y, or P
    outside [0, 1].
    """
    y, p = _labels_and_probs(y, p)
    table = calibration_table(y, p, bins=10)
    k = int(np.ceil(y.size / 10))
    caught = top_share_churners(y, p, k)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "calibration_error": float(np.average((table["observed"] - table["predicted"]).abs(),
                                              weights=table["n"])),
        "top_decile_lift": float(caught / k / y.mean()),
        "top_decile_capture": float(caught / y.sum()),
    }


def top_share_churners(y: np.ndarray, p: np.ndarray, k: int) -> float:
    """Expected churners among the K rows of highest P, ties at the cut taken at random.

    Rows scored above the K-th highest score count fully; the rows tied with it fill the
    places left, each with the same share, so they count their mean outcome per place.
    """
    threshold = np.partition(p, p.size - k)[p.size - k]
    above, tied = p > threshold, p == threshold
    places = k - int(above.sum())
    return float(y[above].sum() + places * y[tied].mean())


def calibration_table(y, p, bins: int = 10) -> pd.DataFrame:
    """Mean prediction and observed rate per quantile bin of P (rows from low to high P).

    Columns: bin, n, predicted, observed. Raises ValueError as `classification_metrics`.
    """
    y, p = _labels_and_probs(y, p)
    frame = pd.DataFrame({"bin": _quantile_bins(p, bins), "y": y, "p": p})
    out = frame.groupby("bin").agg(n=("y", "size"), predicted=("p", "mean"), observed=("y", "mean"))
    return out.reset_index()


def lift_table(y, p, bins: int = 10) -> pd.DataFrame:
    """Churn rate and lift per quantile bin of P, from the riskiest bin (bin 1) down.

    Columns: bin, n, min_p, max_p, churners, rate, lift (rate / overall rate),
    cumulative_capture (share of all churners in this bin and the riskier ones).
    Raises ValueError as `classification_metrics`.
    """
    y, p = _labels_and_probs(y, p)
    ids = _quantile_bins(p, bins)
    frame = pd.DataFrame({"bin": ids.max() - ids + 1, "y": y, "p": p})
    out = frame.groupby("bin").agg(n=("y", "size"), min_p=("p", "min"), max_p=("p", "max"),
                                   churners=("y", "sum"), rate=("y", "mean")).reset_index()
    out["lift"] = out["rate"] / y.mean()
    out["cumulative_capture"] = out["churners"].cumsum() / y.sum()
    return out


def _censoring_survival(duration: np.ndarray, event: np.ndarray):
    """Kaplan-Meier of the censoring time, G(t) and its left limit G(t-), as functions."""
    times, idx = np.unique(duration, return_inverse=True)
    at_risk = np.cumsum(np.bincount(idx)[::-1])[::-1]
    censored = np.bincount(idx, weights=1.0 - event)
    steps = np.cumprod(1.0 - censored / at_risk)

    def at(t: np.ndarray, left: bool = False) -> np.ndarray:
        k = np.searchsorted(times, t, side="left" if left else "right")
        return np.concatenate([[1.0], steps])[k]
    return at


def _survival_inputs(duration, event, surv, grid_days):
    d = _array("duration", duration)
    e = _array("event", event, d.size)
    if (d < 0).any():
        raise ValueError(f"duration has {int((d < 0).sum())} negative values; durations are "
                         "days from the cutoff and must be >= 0")
    if not np.isin(e, (0, 1)).all():
        raise ValueError("event must hold only 0 (censored) and 1 (churn observed)")
    if e.sum() == 0:
        raise ValueError(f"all {d.size} rows are censored: survival metrics need observed churn")
    grid = _array("grid_days", grid_days)
    if (np.diff(grid) <= 0).any():
        raise ValueError("grid_days must be strictly increasing")
    s = np.asarray(surv, dtype=float)
    if s.shape != (d.size, grid.size):
        raise ValueError(f"survival values have shape {s.shape}; expected (rows, grid days) = "
                         f"({d.size}, {grid.size})")
    if np.isnan(s).any() or s.min() < 0 or s.max() > 1:
        raise ValueError("survival values must be probabilities in [0, 1] without NaN")
    return d, e, s, grid


def _curve_at(s: np.ndarray, grid: np.ndarray, t: float) -> np.ndarray:
    """Each row's curve at day t, linear between grid days."""
    if not grid[0] <= t <= grid[-1]:
        raise ValueError(f"day {t} lies outside grid_days [{grid[0]}, {grid[-1]}]")
    if grid.size == 1:
        return s[:, 0]
    k = min(np.searchsorted(grid, t, side="right") - 1, grid.size - 2)
    w = (t - grid[k]) / (grid[k + 1] - grid[k])
    return s[:, k] * (1 - w) + s[:, k + 1] * w


def _integrated_brier(d, e, s, grid, cens) -> float:
    """IPCW Brier score (Graf et al. 1999) averaged over the observed part of 30-365 days."""
    lo, hi = IBS_RANGE_DAYS
    keep = (grid >= lo) & (grid <= hi) & (grid < d.max()) & (cens(grid) > 0)
    if not keep.any():
        return float("nan")
    times, st = grid[keep], s[:, keep]
    dead = (d[:, None] <= times) & (e[:, None] == 1)
    alive = d[:, None] > times
    g_event = np.maximum(cens(d, left=True), 1e-12)[:, None]
    scores = (st**2 * dead / g_event + (1 - st) ** 2 * alive / cens(times)).mean(axis=0)
    if times.size == 1:
        return float(scores[0])
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


def _time_auc(d, e, risk: np.ndarray, t: float, cens) -> float:
    """Cumulative/dynamic AUC at t: churned by t (IPC-weighted) against still customers at t."""
    cases = (d <= t) & (e == 1)
    controls = np.sort(risk[d > t])
    if not cases.any() or controls.size == 0:
        return float("nan")
    w = 1.0 / np.maximum(cens(d[cases], left=True), 1e-12)
    below = np.searchsorted(controls, risk[cases], side="left")
    ties = np.searchsorted(controls, risk[cases], side="right") - below
    return float(np.sum(w * (below + 0.5 * ties)) / (w.sum() * controls.size))


def survival_metrics(duration, event, surv, grid_days: Sequence[float], risk_scores,
                     train_duration=None, train_event=None) -> dict[str, float]:
    """Concordance, IPCW integrated Brier (30-365 days) and time-dependent AUC at 90/180 days.

    duration, event: observed days from cutoff and 1 = churn observed / 0 = censored.
    surv: predicted survival, shape (rows, len(grid_days)), on increasing grid_days that
    cover 90 and 180. risk_scores: higher = churns sooner (used for the concordance; the
    time AUCs use 1 - S(t)). The censoring distribution is the Kaplan-Meier of
    (train_duration, train_event) when given, as in scikit-survival; by default that of the
    evaluated rows themselves, which is right when censoring is administrative and differs
    between time slices. The Brier score is integrated over grid days in 30-365 that lie
    before the longest follow-up; a metric is NaN when no row is followed long enough.
    Raises ValueError for mismatched shapes, negative durations, all rows censored.
    """
    d, e, s, grid = _survival_inputs(duration, event, surv, grid_days)
    risk = _array("risk_scores", risk_scores, d.size)
    if (train_duration is None) != (train_event is None):
        raise ValueError("pass both train_duration and train_event, or neither")
    if train_duration is None:
        cens = _censoring_survival(d, e)
    else:
        td = _array("train_duration", train_duration)
        cens = _censoring_survival(td, _array("train_event", train_event, td.size))
    return {
        "concordance": float(concordance_index(d, -risk, e)),
        "integrated_brier": _integrated_brier(d, e, s, grid, cens),
        "time_auc_90": _time_auc(d, e, 1 - _curve_at(s, grid, 90.0), 90.0, cens),
        "time_auc_180": _time_auc(d, e, 1 - _curve_at(s, grid, 180.0), 180.0, cens),
    }


def _gini(actual: np.ndarray, order_by: np.ndarray) -> float:
    order = np.lexsort((np.arange(actual.size), -order_by))
    cum = np.cumsum(actual[order]) / actual.sum()
    return float(cum.mean() - (actual.size + 1) / (2 * actual.size))


def ltv_metrics(actual, predicted) -> dict[str, float]:
    """How well predicted lifetime values rank and add up to realised ones.

    normalized_gini: Gini of ACTUAL ordered by PREDICTED over the Gini of the perfect order
    (1 = perfect ranking); spearman: rank correlation; decile_mape: mean absolute % error of
    the totals in 10 quantile bins of PREDICTED; total_error_pct: 100 * (sum predicted -
    sum actual) / sum actual. Raises ValueError for mismatched lengths or a zero actual total.
    """
    a = _array("actual", actual)
    p = _array("predicted", predicted, a.size)
    if a.sum() == 0:
        raise ValueError(f"actual values sum to 0 over {a.size} rows; percentage errors are "
                         "undefined")
    frame = pd.DataFrame({"bin": _quantile_bins(p, 10), "a": a, "p": p}).groupby("bin").sum()
    nonzero = frame["a"] != 0
    ape = ((frame["p"] - frame["a"]).abs() / frame["a"].abs())[nonzero]
    return {
        "normalized_gini": _gini(a, p) / _gini(a, a),
        "spearman": float(spearmanr(a, p).statistic),
        "decile_mape": float(100 * ape.mean()),
        "total_error_pct": float(100 * (p.sum() - a.sum()) / a.sum()),
    }


def kaplan_meier_baseline(train_duration, train_event) -> Callable[[Sequence[float]], np.ndarray]:
    """Population survival (no covariates) from training rows: a function days -> S(days).

    Raises ValueError for mismatched lengths, negative durations or all rows censored.
    """
    d = _array("train_duration", train_duration)
    e = _array("train_event", train_event, d.size)
    if (d < 0).any() or e.sum() == 0:
        raise ValueError(f"train rows need durations >= 0 and at least one churn; got "
                         f"{int((d < 0).sum())} negative and {int(e.sum())} churns of {d.size}")
    kmf = KaplanMeierFitter().fit(d, e)

    def survival(days: Sequence[float]) -> np.ndarray:
        return kmf.survival_function_at_times(np.asarray(days, dtype=float)).to_numpy()
    return survival


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Category columns as plain strings, a missing value as its own level "<missing>"."""
    return frame.astype(object).where(frame.notna(), "<missing>").astype(str)


def logistic_baseline(train: pd.DataFrame, features) -> Pipeline:
    """Logistic regression of `churned` on every feature, fitted as a data scientist would.

    features: the `Feature` list. Numeric features are median-imputed and standardised,
    category features one-hot encoded (a missing value is a level of its own); imputer,
    scaler and encoder are fitted on TRAIN, and a level TRAIN never showed gets no column
    (all zeros) when predicting. Rows whose churn label is unobserved (NA) are not used.
    Returns the fitted Pipeline (`predict_proba` on frames holding the feature columns).
    Raises ValueError for missing columns or when the labelled rows hold a single class.
    """
    numeric = [f.name for f in features if f.kind == "numeric"]
    categories = [f.name for f in features if f.kind == "category"]
    missing = [c for c in [*numeric, *categories, "churned"] if c not in train.columns]
    if missing:
        raise ValueError(f"train frame lacks columns {missing}")
    labelled = train[train["churned"].notna()]
    y = labelled["churned"].astype(int)
    if y.nunique() < 2:
        raise ValueError(f"the {len(labelled)} labelled train rows hold a single class; "
                         "logistic regression needs churners and non-churners")
    columns = [("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                                     ("scale", StandardScaler())]), numeric)]
    if categories:
        columns.append(("category", Pipeline([
            ("text", FunctionTransformer(_as_text)),
            ("one_hot", OneHotEncoder(handle_unknown="ignore"))]), categories))
    model = Pipeline([("columns", ColumnTransformer(columns)),
                      ("logistic", LogisticRegression(max_iter=2000))])
    return model.fit(labelled[numeric + categories], y)
