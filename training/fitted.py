"""The not-fitted error of the training package's estimators, imported only when raised.

The estimators raise scikit-learn's NotFittedError, so callers can catch the error they
know; importing scikit-learn costs about 1.5 s (and scipy.stats with it), which a server
that only unpickles fitted models never needs to pay.
"""

from __future__ import annotations


def not_fitted(message: str) -> Exception:
    """scikit-learn's NotFittedError carrying MESSAGE, to raise."""
    from sklearn.exceptions import NotFittedError

    return NotFittedError(message)
