"""Evaluation plots, each a function from test-slice arrays to a matplotlib Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402

TIER_ORDER = ("low", "medium", "high", "critical")
TIER_COLORS = {"low": "#2b8a3e", "medium": "#e8a200", "high": "#e8590c", "critical": "#c92a2a"}


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> plt.Figure:
    """Observed churn rate against mean predicted probability, by predicted-risk bin."""
    frame = pd.DataFrame({"y": y, "p": p})
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), bins, labels=False)
    table = frame.groupby("bin").agg(pred=("p", "mean"), obs=("y", "mean"), n=("y", "size"))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    top = max(table["pred"].max(), table["obs"].max()) * 1.05
    ax.plot([0, top], [0, top], ls="--", c="grey", lw=1, label="perfect")
    ax.plot(table["pred"], table["obs"], "o-", label="model (deciles)")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate",
           title="Calibration on the test slice")
    ax.legend()
    return fig


def gain(y: np.ndarray, scores: dict[str, np.ndarray]) -> plt.Figure:
    """Cumulative gain: share of churners caught when contacting the top x% by risk."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    x = np.linspace(0, 1, 101)
    for name, p in scores.items():
        order = np.argsort(-p, kind="stable")
        caught = np.cumsum(y[order]) / max(y.sum(), 1)
        share = np.arange(1, len(y) + 1) / len(y)
        ax.plot(share, caught, label=name)
        lift = np.interp(x[1:], share, caught) / x[1:]
        ax2.plot(x[1:], lift, label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="random")
    ax.set(xlabel="share of customers contacted (highest risk first)",
           ylabel="share of churners caught", title="Cumulative gain")
    ax2.axhline(1, ls="--", c="grey", lw=1)
    ax2.set(xlabel="share of customers contacted", ylabel="lift", title="Lift")
    ax.legend()
    return fig


def survival_by_tier(duration: np.ndarray, event: np.ndarray, tiers: np.ndarray,
                     predicted: np.ndarray, grid: np.ndarray) -> plt.Figure:
    """Kaplan-Meier per risk tier (steps) against the mean predicted curve (dashed)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if grid[0] > 0:  # every curve starts at 1 on day 0
        grid = np.concatenate([[0.0], grid])
        predicted = np.hstack([np.ones((len(predicted), 1)), predicted])
    for tier in TIER_ORDER:
        mask = tiers == tier
        if mask.sum() < 5:
            continue
        km = KaplanMeierFitter().fit(duration[mask], event[mask])
        sf = km.survival_function_
        ax.step(sf.index, sf.iloc[:, 0], where="post", c=TIER_COLORS[tier],
                label=f"{tier} (n={mask.sum():,})")
        ax.plot(grid, predicted[mask].mean(axis=0), ls="--", c=TIER_COLORS[tier])
    ax.set(xlabel="days from cutoff", ylabel="share still a customer", xlim=(0, grid.max()),
           title="Observed (Kaplan-Meier) vs predicted (dashed) survival by tier")
    ax.legend(fontsize=8)
    return fig


def driver_summary(contributions: pd.DataFrame, groups: dict[str, str], top: int = 15
                   ) -> plt.Figure:
    """Mean absolute TreeSHAP contribution per feature, coloured by driver group."""
    mean_abs = contributions.drop(columns=["bias"], errors="ignore").abs().mean()
    mean_abs = mean_abs.sort_values().tail(top)
    palette = plt.get_cmap("tab10")
    names = sorted(set(groups.values()))
    colors = [palette(names.index(groups.get(f, names[0])) % 10) for f in mean_abs.index]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(mean_abs) + 1.2))
    ax.barh(mean_abs.index, mean_abs.values, color=colors)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette(i % 10)) for i in range(len(names))]
    ax.legend(handles, names, fontsize=8, loc="lower right")
    ax.set(xlabel="mean |contribution| to churn log-odds", title="What drives churn risk")
    fig.tight_layout()
    return fig


def ltv_deciles(actual: np.ndarray, predicted: np.ndarray) -> plt.Figure:
    """Mean predicted vs realised LTV by decile of predicted LTV."""
    frame = pd.DataFrame({"a": actual, "p": predicted})
    frame["decile"] = pd.qcut(frame["p"].rank(method="first"), 10, labels=False) + 1
    table = frame.groupby("decile").mean()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    width = 0.4
    ax.bar(table.index - width / 2, table["p"], width, label="predicted")
    ax.bar(table.index + width / 2, table["a"], width, label="realised")
    ax.set(xlabel="decile of predicted LTV", ylabel="mean revenue in the LTV window",
           title="Expected LTV vs realised revenue", yscale="log")
    ax.legend()
    return fig


def cohort_retention(lifetimes: pd.DataFrame, freq: str = "QS", min_customers: int = 30
                     ) -> plt.Figure:
    """Kaplan-Meier retention curves by signup cohort (quarters by default).

    lifetimes: customer_id, signed_up_at, lifetime_days, churned (churnlens.features.build).
    Cohorts of fewer than MIN_CUSTOMERS are left out (their curves are noise). Colours run
    from the oldest cohort (dark) to the newest (light), and the legend sits beside the plot
    in that order, so a dozen cohorts stay readable.
    """
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    periods = lifetimes["signed_up_at"].dt.tz_localize(None).dt.to_period(freq[0])
    groups = [(period, rows) for period, rows in lifetimes.groupby(periods)
              if len(rows) >= min_customers]
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(groups), 1)))
    for (period, rows), colour in zip(groups, colours, strict=False):
        km = KaplanMeierFitter().fit(rows["lifetime_days"] / 30.4375, rows["churned"])
        sf = km.survival_function_
        label = f"{period.year} Q{period.quarter}" if freq[0] == "Q" else str(period)
        ax.step(sf.index, sf.iloc[:, 0], where="post", lw=1.4, color=colour,
                label=f"{label}  (n={len(rows):,})")
    ax.set(xlabel="months since signup", ylabel="share still a customer",
           title="Retention by signup cohort", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(title="signup cohort", fontsize=8, title_fontsize=9, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
