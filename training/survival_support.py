"""How far the survival model's training data reach, and where its figures go beyond them.

A survival curve is estimated only as far as customers were followed: the longest
follow-up from the cutoff (on the cutoff axis) or the tenures seen at risk (on the tenure
axis, `churnlens.training.tenure`). `reach` measures it; the functions
below turn a fitted model's reach into the run's notes, the /model_info summary and the
report's table of survival horizons, which flag every figure that extrapolates.
"""

from __future__ import annotations

import html

import numpy as np

HORIZONS = (30, 90, 180, 365)  # the P(still a customer) points of every score record
# A curve rests on the data only as far as this many customers are followed: with fewer,
# one churn moves S by 2% or more and the standard error of S near 0.5 exceeds 0.07.
MIN_AT_RISK = 50


def reach(exit: np.ndarray, min_rows: int = MIN_AT_RISK) -> float:
    """The largest time that at least MIN_ROWS rows are observed at or beyond: the
    MIN_ROWS-th largest EXIT (each row's end of observation, days on one time axis).

    On the cutoff axis these rows are still at risk at that time, so the Kaplan-Meier curve
    rests on them; on the tenure axis it is the range of tenures the data see. With fewer
    rows than MIN_ROWS, all of them are asked for; 0.0 for no rows.
    """
    stop = np.sort(np.asarray(exit, float))
    if stop.size == 0:
        return 0.0
    return float(stop[-min(min_rows, stop.size)])


def _days(value: float) -> str:
    return f"{value:,.0f} days"


def support_summary(time_axis: str, follow_up: float, supported: float,
                    supported_tenure: float | None, shares: dict[int, float]) -> dict:
    """The model's reach as plain data (for /model_info): the time axis, the follow-up,
    and per horizon the share of training rows whose figure lies beyond the reach."""
    return {
        "time_axis": time_axis, "follow_up_days": follow_up,
        "supported_follow_up_days": supported, "supported_tenure_days": supported_tenure,
        "horizons": [{"days": h, "extrapolated_share": shares[h],
                      "extrapolates": shares[h] > 0.5} for h in HORIZONS],
    }


def extrapolation_notes(summary: dict, remaining_share: float, cap_days: float,
                        ltv_share: float | None = None, ltv_horizon_days: int | None = None
                        ) -> list[str]:
    """The run's notes on what the survival figures rest on, from `support_summary`.

    remaining_share: share of training rows whose area under S up to CAP_DAYS (the expected
    remaining lifetime) reaches beyond the support; ltv_share: the same for the last month
    of the LTV horizon.
    """
    follow = (f"the longest follow-up is {_days(summary['follow_up_days'])} (at least "
              f"{MIN_AT_RISK} customers followed up to {_days(summary['supported_follow_up_days'])})")
    beyond = [h for h in summary["horizons"] if h["extrapolated_share"] > 0]
    notes = []
    if summary["time_axis"] == "tenure":
        notes.append(
            f"survival on tenure: {follow}, shorter than the {HORIZONS[-1]}-day horizon, so "
            "P(still a customer t days on) is S(tenure + t) / S(tenure), with the hazard at "
            "each tenure learned from the customers at that tenure in the window (at least "
            f"{MIN_AT_RISK} seen at tenures up to {_days(summary['supported_tenure_days'])}); "
            "it assumes that hazard holds in the months ahead")
        limit = f"the tenures the data see (up to {_days(summary['supported_tenure_days'])})"
    else:
        limit = f"the {_days(summary['supported_follow_up_days'])} of follow-up"
    for h in beyond:
        share = h["extrapolated_share"]
        whom = "" if share >= 1 else f" for {share:.0%} of the training rows"
        why = f"it reaches beyond {limit}" if summary["time_axis"] == "tenure" else follow
        notes.append(f"P({h['days']} days) extrapolates{whom}: {why}")
    if remaining_share > 0:
        notes.append(f"expected remaining lifetime (area under S up to {_days(cap_days)}) "
                     f"extrapolates beyond {limit} for {remaining_share:.0%} of the training rows")
    if ltv_share and ltv_horizon_days:
        notes.append(f"LTV over {_days(ltv_horizon_days)}: its later months extrapolate "
                     f"beyond {limit} for {ltv_share:.0%} of the training rows")
    return notes


def horizon_metrics(mean_survival: np.ndarray, kaplan_meier: np.ndarray, shares: np.ndarray,
                    follow_up: float) -> dict[str, float]:
    """Metrics (`survival.horizon_<d>.*`, `survival.follow_up_days`) for the report's table
    of horizons: the mean predicted P(still a customer) on the test rows, the training
    Kaplan-Meier inside the follow-up (NaN beyond) and the share of test rows beyond the
    support. All arrays follow HORIZONS."""
    out = {"survival.follow_up_days": float(follow_up)}
    for j, h in enumerate(HORIZONS):
        out[f"survival.horizon_{h}.mean_prediction"] = float(mean_survival[j])
        out[f"survival.horizon_{h}.kaplan_meier"] = (float(kaplan_meier[j]) if h <= follow_up
                                                     else float("nan"))
        out[f"survival.horizon_{h}.extrapolated_share"] = float(shares[j])
    return out


def horizon_table(metrics: dict[str, float]) -> str:
    """The report's table of survival horizons from `horizon_metrics` values ('' without
    them): each horizon's mean prediction, Kaplan-Meier and whether it extrapolates."""
    follow_up = metrics.get("survival.follow_up_days")
    if follow_up is None:
        return ""
    rows = []
    for h in HORIZONS:
        def value(name: str, h=h) -> str:
            v = metrics.get(f"survival.horizon_{h}.{name}")
            return "" if v is None or v != v else f"{v:.4f}"
        share = metrics.get(f"survival.horizon_{h}.extrapolated_share", 0.0)
        mark = ("no" if share == 0 else "yes" if share >= 1
                else f"for {share:.0%} of the test rows")
        cls = ' class="extrapolated"' if share > 0 else ""
        rows.append(f"<tr{cls}><th>{h} days</th><td>{value('mean_prediction')}</td>"
                    f"<td>{value('kaplan_meier')}</td><td>{html.escape(mark)}</td></tr>")
    return ("<table><tr><th>P(still a customer) at</th><th>model, mean on test</th>"
            "<th>Kaplan-Meier (training)</th><th>extrapolates</th></tr>" + "".join(rows)
            + f'</table><p class="legend">The longest follow-up in training is '
            f"{_days(follow_up)}; a figure beyond the data it was fitted on (the follow-up, or "
            "for survival on tenure the tenures seen at risk) is marked: it is the model's "
            "extrapolation, not something these data could check. Kaplan-Meier is shown only "
            "inside the follow-up.</p>")
