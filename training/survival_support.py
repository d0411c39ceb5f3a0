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


def _listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _share(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 else "under 1%"


def _figures(horizons: list[dict]) -> str:
    """'P(90 days) extrapolates', 'P(90 days) and P(180 days) extrapolate'."""
    names = _listing([f"P({h['days']} days)" for h in horizons])
    return f"{names} extrapolate{'s' if len(horizons) == 1 else ''}"


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
            "it assumes that hazard holds in the months ahead and holds each customer's "
            "features at their values at the cutoff")
        limit = f"the tenures the data see (up to {_days(summary['supported_tenure_days'])})"
    else:
        limit = f"the {_days(summary['supported_follow_up_days'])} of follow-up"
    every = [h for h in beyond if h["extrapolated_share"] >= 1]
    some = [h for h in beyond if h["extrapolated_share"] < 1]
    if every:
        why = f"beyond {limit}" if summary["time_axis"] == "tenure" else follow
        notes.append(f"{_figures(every)}: {why}")
    if some:
        shares = _listing([_share(h["extrapolated_share"]) for h in some])
        notes.append(f"{_figures(some)} for {shares} of the training rows: beyond {limit}")
    if remaining_share > 0:
        notes.append(f"expected remaining lifetime (area under S up to {_days(cap_days)}) "
                     f"extrapolates beyond {limit} for {remaining_share:.0%} of the training rows")
    if ltv_share and ltv_horizon_days:
        notes.append(f"LTV from the survival curve over {_days(ltv_horizon_days)} (survival x "
                     f"revenue rate): its later months extrapolate beyond {limit} for "
                     f"{ltv_share:.0%} of the training rows")
    return notes


def horizon_metrics(model, rows, kaplan_meier) -> dict[str, float]:
    """Metrics for the report's table of horizons (`horizon_table`), from a fitted
    `churnlens.training.survival.SurvivalModel` on ROWS (the test slice): per horizon the
    mean predicted P(still a customer), the training Kaplan-Meier (a function days -> S,
    `metrics.kaplan_meier_baseline`; NaN beyond the follow-up) and the share of ROWS whose
    figure lies beyond the model's support; and the follow-up. Keys `survival.horizon_<d>.*`
    and `survival.follow_up_days` (outside the `test.<column>.<metric>` tables)."""
    days = np.array(HORIZONS, dtype=float)
    mean = model.survival_function(rows, days).mean(axis=0)
    km = np.asarray(kaplan_meier(days), dtype=float)
    support = model.supported_days(rows)
    out = {"survival.follow_up_days": float(model.follow_up_days_)}
    for j, h in enumerate(HORIZONS):
        out[f"survival.horizon_{h}.mean_prediction"] = float(mean[j])
        out[f"survival.horizon_{h}.kaplan_meier"] = (float(km[j]) if h <= model.follow_up_days_
                                                     else float("nan"))
        out[f"survival.horizon_{h}.extrapolated_share"] = float(np.mean(support < h))
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
        cls = ' class="extrapolated"' if share > 0.5 else ""
        rows.append(f"<tr{cls}><th>{h} days</th><td>{value('mean_prediction')}</td>"
                    f"<td>{value('kaplan_meier')}</td><td>{html.escape(mark)}</td></tr>")
    return ("<table><tr><th>P(still a customer) at</th><th>model, mean on test</th>"
            "<th>Kaplan-Meier (training)</th><th>extrapolates</th></tr>" + "".join(rows)
            + f'</table><p class="legend">The longest follow-up in training is '
            f"{_days(follow_up)}; a figure beyond the data it was fitted on (the follow-up, or "
            "for survival on tenure the tenures seen at risk) is marked: it is the model's "
            "extrapolation, not something these data could check. Kaplan-Meier is shown only "
            "inside the follow-up.</p>")
