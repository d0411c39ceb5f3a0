"""Calibrators of the risk model's log-odds, and the choice between them.

Three candidates map the booster's raw log-odds z to a churn probability: no calibration
(the booster's own sigmoid), Platt scaling (a logistic curve a * z + b) and isotonic
regression (a non-decreasing step function of z, linear between its steps). Each is scored
by its cross-fitted log loss on the calibration slice, and the simplest one within one
standard error of the lowest is kept (the one-standard-error rule of Breiman et al.'s CART
and Hastie et al.'s Elements of Statistical Learning, section 7.10), among those that score
no worse than no calibration: calibrating never scores worse there than leaving the model
alone, and a gain smaller than its own noise does not buy a calibrator that may not carry
to new customers. Every probability that leaves the risk model goes through `bounded`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from churnlens.training.fitted import not_fitted

# No probability of exactly 0 or 1 leaves the model: a customer-success team reads 0 as
# "certain to stay", and one such customer who churns makes the log loss infinite. 1e-4 is
# below any churn rate a horizon of weeks shows, so the bound never moves a real estimate.
P_MIN, P_MAX = 1e-4, 1 - 1e-4
# Isotonic regression is tried only on a calibration slice with at least this many rows and
# churners. Its steps pool neighbouring scores until they are monotone, so with few churners
# each step rests on a handful of events and its flat ends give probabilities of 0 and 1;
# Niculescu-Mizil and Caruana (ICML 2005, "Predicting good probabilities with supervised
# learning") found it worse than Platt scaling below about 1,000 calibration rows. With
# 2-fold cross-fitting each half then still holds about 500 rows and 50 churners.
ISOTONIC_MIN_ROWS = 1000
ISOTONIC_MIN_CHURNERS = 100
METHODS = ("none", "platt", "isotonic")  # simplest first


def bounded(p: np.ndarray) -> np.ndarray:
    """Probabilities P clipped into [P_MIN, P_MAX]: never exactly 0 or 1, NaN kept."""
    return np.clip(np.asarray(p, dtype=float), P_MIN, P_MAX)


class _Calibrator:
    """Shared machinery: input checks, `n_rows_`, and the one not-fitted path.

    Not a scikit-learn estimator (scikit-learn is imported only to fit): a served model's
    calibrator unpickles with numpy alone.
    """

    def fit(self, z, y) -> _Calibrator:
        """Learn the map from log-odds Z (1-d) to P(churn) on 0/1 outcomes Y; returns self.

        Raises ValueError on mismatched lengths, non-finite Z or Y outside {0, 1}.
        """
        z, y = np.asarray(z, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
        if z.size != y.size or z.size == 0:
            raise ValueError(f"calibration needs as many outcomes as scores, at least one; "
                             f"got {z.size} scores and {y.size} outcomes")
        if not np.isfinite(z).all():
            raise ValueError(f"{int((~np.isfinite(z)).sum())} of {z.size} calibration scores "
                             "are not finite; calibrate raw booster log-odds")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("calibration outcomes must hold only 0 and 1")
        self._fit(z, y)
        self.n_rows_ = int(z.size)
        return self

    def predict(self, z) -> np.ndarray:
        """P(churn) for log-odds Z, as a 1-d array (unbounded: see `bounded`).

        Raises sklearn's NotFittedError before `fit`.
        """
        if not hasattr(self, "n_rows_"):
            raise not_fitted(f"This {type(self).__name__} instance is not fitted yet; call "
                             "fit with log-odds and outcomes first")
        return self._predict(np.asarray(z, dtype=float))

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class NoCalibration(_Calibrator):
    """The booster's own probabilities, sigmoid(z): nothing to learn."""

    method = "none"

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        pass

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return expit(z)


class PlattCalibrator(_Calibrator):
    """sigmoid(a_ * z + b_), a_ and b_ fitted by unpenalised logistic regression on z."""

    method = "platt"

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        if np.unique(y).size < 2:
            raise ValueError(f"Platt scaling needs churners and non-churners; all {y.size} "
                             f"outcomes are {int(y[0])}")
        # Unpenalised: the slope and intercept are the calibration, not something to shrink.
        from sklearn.linear_model import LogisticRegression

        fitted = LogisticRegression(C=np.inf).fit(z.reshape(-1, 1), y.astype(int))
        self.a_, self.b_ = float(fitted.coef_[0, 0]), float(fitted.intercept_[0])

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return expit(self.a_ * z + self.b_)


class IsotonicCalibrator(_Calibrator):
    """A non-decreasing step function of z through the points (x_, y_), linear between
    them and flat beyond the ends."""

    method = "isotonic"

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y)
        self.x_, self.y_ = fitted.X_thresholds_, fitted.y_thresholds_

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return np.interp(z, self.x_, self.y_)


CALIBRATORS = {"none": NoCalibration, "platt": PlattCalibrator, "isotonic": IsotonicCalibrator}


def from_sklearn(estimator) -> _Calibrator:
    """The calibrator equal to a fitted scikit-learn LogisticRegression on z (Platt) or
    IsotonicRegression, which risk models pickled before this module held.

    Raises TypeError for any other object.
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if isinstance(estimator, LogisticRegression):
        out = PlattCalibrator()
        out.a_, out.b_ = float(estimator.coef_[0, 0]), float(estimator.intercept_[0])
    elif isinstance(estimator, IsotonicRegression):
        out = IsotonicCalibrator()
        out.x_, out.y_ = estimator.X_thresholds_, estimator.y_thresholds_
    else:
        raise TypeError(f"cannot read a calibrator from {type(estimator).__name__}; retrain "
                        "the model with churnlens train")
    out.n_rows_ = 0  # unknown: the old estimator did not record it
    return out


def isotonic_allowed(y: np.ndarray) -> str:
    """'' when outcomes Y are enough for isotonic regression, else why not (a sentence)."""
    rows, churners = int(len(y)), int(np.sum(y))
    if rows >= ISOTONIC_MIN_ROWS and churners >= ISOTONIC_MIN_CHURNERS:
        return ""
    return (f"isotonic not tried: the calibration slice holds {rows:,} rows and {churners:,} "
            f"churners; it needs at least {ISOTONIC_MIN_ROWS:,} and {ISOTONIC_MIN_CHURNERS:,}")


def cross_fitted_losses(z, y, groups, methods, seed: int) -> dict[str, np.ndarray]:
    """Per-row log loss of each method in METHODS, each row scored by a calibrator fitted on
    the other of 2 folds (a group, e.g. a customer, stays in one fold; folds keep the churn
    rate). Probabilities are `bounded`, as served. Raises ValueError as `fit`.
    """
    z, y = np.asarray(z, dtype=float), np.asarray(y, dtype=int)
    from sklearn.model_selection import StratifiedGroupKFold

    folds = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
    oof = {method: np.empty(len(y)) for method in methods}
    for fit_idx, out_idx in folds.split(z, y, groups=groups):
        for method in methods:
            calibrator = CALIBRATORS[method]().fit(z[fit_idx], y[fit_idx])
            oof[method][out_idx] = calibrator.predict(z[out_idx])
    return {m: -np.where(y == 1, np.log(bounded(p)), np.log1p(-bounded(p)))
            for m, p in oof.items()}


def one_standard_error_choice(losses: dict[str, np.ndarray]) -> tuple[str, str]:
    """The simplest method (METHODS order) whose mean loss is within one standard error of
    the lowest (the error of the per-row paired difference) and no worse than "none"'s.

    losses: per-row losses of each method on the same rows, "none" among them. Returns
    (method, '' or a sentence on why a method with a lower mean was passed over).
    """
    means = {m: float(v.mean()) for m, v in losses.items()}
    best = min(means, key=means.get)
    for method in (m for m in METHODS if m in losses and means[m] <= means["none"]):
        diff = losses[method] - losses[best]
        error = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        if means[method] <= means[best] + error:
            break
    if method == best:
        return method, ""
    return method, (f"{best} scored {means[method] - means[best]:.5f} lower than {method}, "
                    f"within one standard error ({error:.5f}), so the simpler {method} is kept")


def choose_calibrator(z, y, groups, seed: int, method: str = "auto"
                      ) -> tuple[_Calibrator, dict[str, float], str]:
    """The calibrator to keep for log-odds Z and outcomes Y, refitted on all rows.

    method: "auto" (`one_standard_error_choice` among "none", "platt" and, when
    `isotonic_allowed`, "isotonic") or one of those names to force it (scored all the
    same). Returns (fitted calibrator, mean cross-fitted log loss per method tried, notes
    on the choice: a method not tried, a lower score passed over; or ''). Raises
    ValueError for an unknown method or bad inputs.
    """
    if method != "auto" and method not in CALIBRATORS:
        raise ValueError(f"calibration method {method!r} is unknown; use auto or one of "
                         f"{list(CALIBRATORS)}")
    too_few = isotonic_allowed(np.asarray(y))
    tried = [m for m in METHODS if m != "isotonic" or not too_few or method == "isotonic"]
    losses = cross_fitted_losses(z, y, groups, tried, seed)
    kept, passed_over = (one_standard_error_choice(losses) if method == "auto"
                         else (method, f"{method} forced"))
    notes = [too_few if "isotonic" not in tried else "", passed_over]
    return (CALIBRATORS[kept]().fit(z, y), {m: float(v.mean()) for m, v in losses.items()},
            "; ".join(n for n in notes if n))
