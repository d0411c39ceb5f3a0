"""Purchase-process models for businesses without contracts: BG/NBD and Gamma-Gamma spend.

BG/NBD (Fader, Hardie and Lee 2005, "Counting your customers the easy way"): while alive, a
customer buys at rate lambda ~ Gamma(r, alpha); after each repeat purchase they drop out with
probability p ~ Beta(a, b). Gamma-Gamma (Fader, Hardie and Lee 2005, "RFM and CLV"): each
purchase's amount is Gamma(p, nu) with nu ~ Gamma(q, v) per customer, independent of the
purchase process. Both are fitted by maximum likelihood on the per-customer summary that
`churnlens.training.rfm.rfm_summary` computes: x repeat purchases, recency t_x (time of the
last purchase after the first), age T (time from the first purchase to the cutoff) and m,
the mean amount of the repeat purchases. Times are in any one unit (days or weeks); t in
the predictions is in the same unit. `expected_revenue` combines the two over a horizon.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.special import betaln, digamma, gammaln, hyp2f1, logsumexp

from churnlens.training.fitted import not_fitted
from churnlens.training.ltv import MONTH_DAYS

LOG_BOUND = 15.0  # parameters are searched in [e^-15, e^15]: far beyond any real data


def _as_array(values, name: str, where: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    bad = ~np.isfinite(array)
    if array.size == 0:
        raise ValueError(f"{where}: {name} is empty; pass one value per customer")
    if bad.any():
        raise ValueError(f"{where}: {name} holds {int(bad.sum())} missing or infinite value(s) "
                         f"(first at position {int(np.flatnonzero(bad)[0])}); drop or fill them")
    return array


def _check(bad: np.ndarray, where: str, what: str) -> None:
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{where}: {int(bad.sum())} customer(s) {what} (positions {first})")


def _rfm_arrays(x, t_x, T, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float arrays of frequency, recency and age, broadcast to one shape."""
    x, t_x, T = (_as_array(v, n, where) for v, n in ((x, "x"), (t_x, "t_x"), (T, "T")))
    try:
        x, t_x, T = np.broadcast_arrays(x, t_x, T)
    except ValueError:
        raise ValueError(f"{where}: x, t_x and T have lengths {x.size}, {t_x.size}, {T.size}; "
                         "pass one value per customer for each") from None
    _check((x < 0) | (x != np.round(x)), where,
           "have a frequency x that is not a whole number >= 0")
    _check((t_x < 0) | (t_x > T), where, "have a recency t_x outside [0, T]")
    _check((x == 0) & (t_x != 0), where, "have x = 0 repeat purchases but recency t_x != 0")
    return x, t_x, T


def _fit_log_params(neg_loglik, start: np.ndarray, penalizer: float, max_iter: int):
    """Minimise a mean negative log-likelihood over log-parameters with L-BFGS-B.

    neg_loglik(params) returns (value, gradient in params). An L2 penalty on the
    log-parameters (`penalizer`) keeps degenerate data from running to a bound.
    Returns the optimiser result, the mean log-likelihood at its optimum (without the
    penalty) and the Hessian of the penalised objective in log-parameters (central
    differences of the analytic gradient), from which `_store` takes standard errors.
    """
    from scipy.optimize import minimize  # fitting only: scoring code need not import it

    if not penalizer >= 0 or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"penalizer must be >= 0 and max_iter a whole number >= 1, got "
                         f"penalizer={penalizer}, max_iter={max_iter}")

    def objective(theta):
        params = np.exp(theta)
        value, grad = neg_loglik(params)
        return value + penalizer * theta @ theta, grad * params + 2 * penalizer * theta

    result = minimize(objective, start, jac=True, method="L-BFGS-B",
                      bounds=[(-LOG_BOUND, LOG_BOUND)] * start.size,
                      options={"maxiter": max_iter})
    step = 1e-5
    hessian = np.empty((start.size, start.size))
    for i in range(start.size):
        shift = np.zeros(start.size)
        shift[i] = step
        hessian[i] = (objective(result.x + shift)[1] - objective(result.x - shift)[1]) / (2 * step)
    hessian = (hessian + hessian.T) / 2
    return result, -float(neg_loglik(np.exp(result.x))[0]), hessian


class _Estimator:
    """Shared machinery: parameter names, the not-fitted path, the fit bookkeeping."""

    _params: tuple[str, ...] = ()

    def __init__(self, penalizer: float = 0.0, max_iter: int = 1000):
        self.penalizer = penalizer
        self.max_iter = max_iter

    def _check_fitted(self) -> None:
        if not hasattr(self, f"{self._params[0]}_"):
            raise not_fitted(f"{type(self).__name__} is not fitted yet; call fit first")

    def _store(self, result, mean_loglik: float, hessian: np.ndarray, n: int) -> None:
        params = np.exp(result.x)
        for name, value in zip(self._params, params, strict=True):
            setattr(self, f"{name}_", float(value))
        try:
            cov = np.linalg.inv(hessian * n)
            se = params * np.sqrt(np.clip(np.diag(cov), 0, None))
        except np.linalg.LinAlgError:
            se = np.full(params.size, np.nan)
        self.params_se_ = dict(zip(self._params, se.tolist(), strict=True))
        self.log_likelihood_ = mean_loglik * n
        at_bound = [n for n, v in zip(self._params, result.x, strict=True)
                    if abs(v) >= LOG_BOUND - 1e-6]
        self.converged_ = bool(result.success) and not at_bound
        self.n_customers_ = n
        if not self.converged_:
            warnings.warn(f"{type(self).__name__}.fit did not converge ({result.message}; "
                          f"parameters at a bound: {at_bound or 'none'}); the data may not "
                          "identify the model: try more customers or penalizer > 0",
                          RuntimeWarning, stacklevel=3)

    @property
    def params_(self) -> dict[str, float]:
        """The fitted parameters by name. Raises NotFittedError before `fit`."""
        self._check_fitted()
        return {name: getattr(self, f"{name}_") for name in self._params}


class BetaGeo(_Estimator):
    """BG/NBD purchase model; `fit(x, t_x, T)` learns r_, alpha_, a_, b_.

    penalizer: weight of an L2 penalty on the log-parameters, added to the mean negative
    log-likelihood per customer (0 = plain maximum likelihood); max_iter: L-BFGS-B
    iterations; `fit` rejects a negative penalizer or max_iter < 1 (ValueError) and warns
    (RuntimeWarning) when it did not converge. After `fit`: params_se_ (standard errors from the observed
    information), log_likelihood_, converged_ (False when the optimiser stopped early or a
    parameter ran to its bound), n_customers_.
    """

    _params = ("r", "alpha", "a", "b")

    def fit(self, x, t_x, T) -> BetaGeo:
        """Fit by maximum likelihood; x: repeat purchases, t_x: recency, T: age, per customer.

        Returns self. Raises ValueError for empty, missing or infinite values, fractional or
        negative x, t_x outside [0, T], or t_x != 0 where x = 0.
        """
        x, t_x, T = _rfm_arrays(x, t_x, T, "BetaGeo.fit")
        rows, counts = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
        weights = counts / counts.sum()
        ux, ut_x, uT = rows.T

        def neg_loglik(params):
            ll, grad = self._loglik_and_grad(params, ux, ut_x, uT)
            return -(weights @ ll), -(weights @ grad)

        rate = max(x.mean(), 0.1) / max(T.mean(), 1e-9)
        start = np.log([1.0, 1.0 / rate, 1.0, 1.0])
        self._store(*_fit_log_params(neg_loglik, start, self.penalizer, self.max_iter), x.size)
        return self

    @staticmethod
    def _loglik_and_grad(params, x, t_x, T):
        """Per-customer log-likelihood (FHL 2005 eq. 6, in log space) and its gradient."""
        r, alpha, a, b = params
        repeat = x > 0
        base = gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
        stay = betaln(a, b + x) - (r + x) * np.log(alpha + T)
        drop = np.where(repeat, betaln(a + 1, b + np.maximum(x, 1) - 1)
                        - (r + x) * np.log(alpha + t_x), -np.inf)
        mix = logsumexp(np.stack([stay, drop]), axis=0)
        w_stay, w_drop = np.exp(stay - mix), np.exp(drop - mix)
        d_ab = digamma(a + b)
        d_r = (digamma(r + x) - digamma(r) + np.log(alpha)
               - w_stay * np.log(alpha + T) - w_drop * np.log(alpha + t_x))
        d_alpha = r / alpha - (r + x) * (w_stay / (alpha + T) + w_drop / (alpha + t_x))
        d_a = (w_stay * (d_ab - digamma(a + b + x))
               + w_drop * (digamma(a + 1) - digamma(a) + d_ab - digamma(a + b + x)))
        d_b_drop = np.where(repeat, digamma(b + np.maximum(x, 1) - 1), 0.0)
        d_b = (w_stay * (digamma(b + x) - digamma(b) + d_ab - digamma(a + b + x))
               + w_drop * (d_b_drop - digamma(b) + d_ab - digamma(a + b + x)))
        return base + mix, np.column_stack([d_r, d_alpha, d_a, d_b])

    def p_alive(self, x, t_x, T) -> np.ndarray:
        """P(the customer has not dropped out by T | x, t_x, T) (FHL 2008 note); 1 for x = 0.

        Raises NotFittedError before `fit`, ValueError for bad inputs as `fit`.
        """
        self._check_fitted()
        x, t_x, T = _rfm_arrays(x, t_x, T, "BetaGeo.p_alive")
        log_odds = (np.log(self.a_) - np.log(self.b_ + np.maximum(x, 1) - 1)
                    + (self.r_ + x) * (np.log(self.alpha_ + T) - np.log(self.alpha_ + t_x)))
        return np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(log_odds, 700.0))), 1.0)

    def p_purchase_within(self, t, x, t_x, T) -> np.ndarray:
        """P(at least one purchase in (T, T + t] | x, t_x, T): a churn score is 1 minus it.

        An alive customer's next purchase comes at rate lambda, whose posterior given alive
        is Gamma(r + x, alpha + T); a dropped-out one never buys. So the answer is
        p_alive * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x)).
        Raises NotFittedError before `fit`, ValueError for bad inputs or negative t.
        """
        alive = self.p_alive(x, t_x, T)
        x, _, T = _rfm_arrays(x, t_x, T, "BetaGeo.p_purchase_within")
        t, x, T = np.broadcast_arrays(self._horizon(t, "p_purchase_within"), x, T)
        return alive * -np.expm1(-(self.r_ + x) * np.log1p(t / (self.alpha_ + T)))

    def expected_purchases(self, t, x, t_x, T) -> np.ndarray:
        """Expected purchases in (T, T + t] given x, t_x, T (FHL 2005 eq. 10).

        Raises NotFittedError before `fit`, ValueError for bad inputs or negative t.
        """
        alive = self.p_alive(x, t_x, T)
        x, _, T = _rfm_arrays(x, t_x, T, "BetaGeo.expected_purchases")
        t, x, T = np.broadcast_arrays(self._horizon(t, "expected_purchases"), x, T)
        return alive * self._purchases_if_alive(t, x, T)

    def expected_purchases_new(self, t) -> np.ndarray:
        """Expected purchases in (0, t] of a new customer, after the first (FHL 2005 eq. 9).

        Raises NotFittedError before `fit`, ValueError for negative t.
        """
        self._check_fitted()
        t = self._horizon(t, "expected_purchases_new")
        return self._purchases_if_alive(t, np.zeros_like(t), np.zeros_like(t))

    @staticmethod
    def _horizon(t, name: str) -> np.ndarray:
        t = _as_array(t, "t", f"BetaGeo.{name}")
        if (t < 0).any():
            raise ValueError(f"BetaGeo.{name}: t must be >= 0, got {t[t < 0][:3].tolist()}")
        return t

    def _purchases_if_alive(self, t, x, T) -> np.ndarray:
        """E[purchases in (T, T + t] | alive at T] = E_p[(1 - (1 + p s) ** -(r + x)) / p].

        Here s = t / (alpha + T) and p ~ Beta(a, b + x), the dropout posterior. The paper's
        closed form (a + b + x - 1) / (a - 1) * [1 - (1 - z) ** (r + x) 2F1(r + x, b + x;
        a + b + x - 1; z)], z = s / (1 + s), overflows once r + x is large and z near 1
        (lifetimes and pymc-marketing return NaN there). Euler's transformation turns it into
        (1 + s) ** (1 - a) 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z), whose numerator
        parameters do not grow with x. Within 1e-4 of a = 1 (0 / 0) it is interpolated between
        a = 1 -+ 1e-4; any value outside the integrand's range [0, (r + x) s] is recomputed by
        adaptive quadrature of the integral.
        """
        r, alpha, b = self.r_, self.alpha_, self.b_
        s = t / (alpha + T)
        sides = [self.a_] if abs(self.a_ - 1) >= 1e-4 else [1 - 1e-4, 1 + 1e-4]
        with np.errstate(all="ignore"):
            at = [(a + b + x - 1) / (a - 1) * (1 - np.exp((1 - a) * np.log1p(s))
                  * hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, s / (1 + s))) for a in sides]
        value = at[0] if len(at) == 1 else at[0] + (self.a_ - sides[0]) / 2e-4 * (at[1] - at[0])
        bad = ~np.isfinite(value) | (value < -1e-9) | (value > (r + x) * s * (1 + 1e-9))
        for i in np.flatnonzero(bad):
            value.flat[i] = self._integral_if_alive(s.flat[i], x.flat[i])
        return np.clip(value, 0.0, None)

    def _integral_if_alive(self, s: float, x: float) -> float:
        """The integral of `_purchases_if_alive` by adaptive quadrature over p."""
        from scipy.integrate import quad  # a rare fallback: scoring code need not import it

        r, a, b = self.r_, self.a_, self.b_ + x
        log_norm = betaln(a, b)

        def integrand(p):
            log_density = (a - 1) * np.log(p) + (b - 1) * np.log1p(-p) - log_norm
            return np.exp(log_density) * -np.expm1(-(r + x) * np.log1p(p * s)) / p

        hints = sorted({min(max(v, 1e-12), 1 - 1e-12) for v in (a / (a + b), 1 / max(s, 1))})
        return float(quad(integrand, 0.0, 1.0, points=hints, limit=200)[0])


class GammaGamma(_Estimator):
    """Gamma-Gamma spend model; `fit(x, m)` learns p_, q_, v_ (v is the paper's gamma).

    Same arguments and fit attributes as `BetaGeo`. The model assumes spend independent of
    purchase frequency; check the correlation of x and m before relying on it.
    """

    _params = ("p", "q", "v")

    @staticmethod
    def _spend_arrays(x, m, where: str, repeat_only: bool):
        x, m = _as_array(x, "x", where), np.asarray(m, dtype=float).ravel()
        if x.size != m.size:
            raise ValueError(f"{where}: x and m have lengths {x.size} and {m.size}; "
                             "pass one value per customer for each")
        if not repeat_only:  # m of a customer without repeat purchases is unused (NaN is fine)
            m = np.where(x == 0, 1.0, m)
        m = _as_array(m, "m", where)
        if repeat_only:
            _check(x < 1, where, "have x < 1 repeat purchases; fit on customers with x >= 1")
        _check((x < 0) | (x != np.round(x)), where, "have x that is not a whole number >= 0")
        _check((x > 0) & (m <= 0), where, "have a mean repeat spend m <= 0; leave them out "
               "(refunds exceeding purchases) or fix the amounts")
        return x, m

    def fit(self, x, m) -> GammaGamma:
        """Fit by maximum likelihood on x >= 1 repeat purchases with mean repeat spend m > 0.

        Returns self. Raises ValueError for empty, missing or infinite values, x < 1,
        fractional x, m <= 0 or mismatched lengths.
        """
        x, m = self._spend_arrays(x, m, "GammaGamma.fit", repeat_only=True)
        log_m, log_x = np.log(m), np.log(x)

        def neg_loglik(params):
            p, q, v = params
            px = p * x
            log_total = np.log(v + m * x)
            ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v)
                  + (px - 1) * log_m + px * log_x - (px + q) * log_total)
            d_pq = digamma(px + q)
            grad = np.column_stack([x * (d_pq - digamma(px) + log_m + log_x - log_total),
                                    d_pq - digamma(q) + np.log(v) - log_total,
                                    q / v - (px + q) / (v + m * x)])
            return -ll.mean(), -grad.mean(axis=0)

        start = np.log([1.0, 2.0, float(np.median(m))])
        self._store(*_fit_log_params(neg_loglik, start, self.penalizer, self.max_iter), x.size)
        return self

    def expected_spend(self, x, m) -> np.ndarray:
        """Expected amount of a future purchase given x repeat purchases of mean m.

        p (v + x m) / (p x + q - 1): a weighted mean of the population mean p v / (q - 1)
        and m; for x = 0 it is the population mean (m is ignored and may be NaN). Raises
        NotFittedError before `fit`, ValueError for fractional or negative x, m <= 0 where
        x > 0, and when q <= 1 for an x = 0 customer (the population mean is infinite).
        """
        self._check_fitted()
        x, m = self._spend_arrays(x, m, "GammaGamma.expected_spend", repeat_only=False)
        denominator = self.p_ * x + self.q_ - 1
        _check(denominator <= 0, "GammaGamma.expected_spend",
               f"have an infinite expected spend (q = {self.q_:.3g} <= 1)")
        return self.p_ * (self.v_ + x * np.where(x > 0, m, 0.0)) / denominator


def expected_revenue(bgnbd: BetaGeo, gg: GammaGamma, rfm: pd.DataFrame, horizon_days: float,
                     annual_discount_rate: float, unit_days: float | None = None) -> np.ndarray:
    """Discounted expected revenue of each customer over the next `horizon_days`.

    rfm: `rfm_summary` output (frequency, recency, T, monetary_value; its attrs["unit_days"]
    says the time unit, or pass unit_days). The horizon is cut into round(horizon /
    30.44 days) equal months; month k's expected purchases E[Y(end_k)] - E[Y(start_k)]
    times the expected spend are discounted from the middle of the month by
    (1 + rate) ** (-days / 365.25), as `churnlens.training.ltv` discounts subscription revenue.
    Raises ValueError for a missing column or unit, a non-positive horizon or a rate outside
    [0, 1), and the models' errors.
    """
    missing = [c for c in ("frequency", "recency", "T", "monetary_value") if c not in rfm]
    if missing:
        raise ValueError(f"expected_revenue: rfm lacks column(s) {missing}; build it with "
                         "churnlens.training.rfm.rfm_summary")
    unit_days = unit_days if unit_days is not None else rfm.attrs.get("unit_days")
    if unit_days is None:
        raise ValueError("expected_revenue: rfm.attrs has no 'unit_days'; pass unit_days=")
    if not horizon_days > 0:
        raise ValueError(f"expected_revenue: horizon_days must be positive, got {horizon_days}")
    if not 0 <= annual_discount_rate < 1:
        raise ValueError(f"expected_revenue: annual_discount_rate must be in [0, 1), "
                         f"got {annual_discount_rate}")
    x, t_x, T = (rfm[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    months = max(1, round(horizon_days / MONTH_DAYS))
    edges = np.linspace(0.0, horizon_days, months + 1)
    cumulative = np.column_stack([bgnbd.expected_purchases(edge / unit_days, x, t_x, T)
                                  for edge in edges[1:]])
    per_month = np.diff(cumulative, axis=1, prepend=0.0)
    discount = (1.0 + annual_discount_rate) ** (-(edges[:-1] + edges[1:]) / 2 / 365.25)
    return (per_month @ discount) * gg.expected_spend(x, rfm["monetary_value"])
