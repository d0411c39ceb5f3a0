"""The cutoffs a training set uses: regular or given, and only those whose labels are observable.

A cutoff c is a training cutoff only when its label window can show a churn. The data can
show one only from `churnlens.features.shapes.observable_from` on (the first recorded
subscription end; without contracts, the first activity): the latest
cutoff at or before that moment is kept, with every later one, and the earlier ones are
left out with a note naming them and why. A one-snapshot export thus keeps exactly the
cutoff of its last period, whatever the regular cutoffs before it.
"""

from __future__ import annotations

import pandas as pd

from churnlens.features.loading import DataSet
from churnlens.features.shapes import observable_from
from churnlens.features.spine import confirmation_lag_days, cutoff_dates, first_signup
from churnlens.settings import ChurnSettings, Settings

LISTED = 6  # cutoffs named one by one in a note; more are given as a range


def given_or_regular(ds: DataSet, settings: Settings) -> list[pd.Timestamp]:
    """`cutoffs.dates` when set, else regular cutoffs from the first signup to the end.

    Raises ValueError for a given date at or after the end of the data, or (regular
    cutoffs) when the data span no full period.
    """
    if not settings.cutoffs.dates:
        return cutoff_dates(first_signup(ds.con), ds.observed_until, settings.cutoffs)
    dates = [pd.Timestamp(d) for d in settings.cutoffs.dates]
    late = [d for d in dates if d >= ds.observed_until]
    if late:
        raise ValueError(
            f"cutoffs.dates: {len(late)} date(s) ({_named(late)}) at or after the end of the "
            f"data ({ds.observed_until.date()}, data.observed_until): a cutoff needs records "
            "before it and a label window after it; remove them or set data.observed_until")
    return dates


def training_cutoffs(ds: DataSet, settings: Settings,
                     churn: ChurnSettings) -> tuple[list[pd.Timestamp], list[str]]:
    """The cutoffs whose label windows can show a churn, and notes on those left out.

    churn: the resolved churn settings (`churnlens.features.shapes.resolve_churn`).
    Returns (cutoffs, notes). Raises ValueError, saying what to set, when the data show no
    churn at all or when no kept cutoff has its label window inside the data.
    """
    dates = given_or_regular(ds, settings)
    horizon = settings.horizon_days
    moment, why = observable_from(ds.con, churn.definition, horizon, churn.activity)
    if moment is None:
        raise ValueError(_never_message(ds, churn, why))
    before = [c for c in dates if c <= moment]
    start = before[-1] if before else dates[0]
    kept, dropped = [c for c in dates if c >= start], [c for c in dates if c < start]
    notes = []
    if dropped:
        notes.append(
            f"left out {len(dropped)} cutoff(s) ({_named(dropped)}): the data can show a churn "
            f"only from {moment:%Y-%m-%d} ({why}), so their label windows cannot hold one; "
            f"training cutoffs start at {start.date()}")
    lag = confirmation_lag_days(churn)
    window = pd.Timedelta(days=horizon + lag)
    if not any(c + window <= ds.observed_until for c in kept):
        raise ValueError(_unlabelled_message(ds, start, horizon, lag, moment, why))
    return kept, notes


def _named(dates: list[pd.Timestamp]) -> str:
    if len(dates) <= LISTED:
        return ", ".join(str(d.date()) for d in dates)
    return f"{dates[0].date()} to {dates[-1].date()}"


def _never_message(ds: DataSet, churn: ChurnSettings, why: str) -> str:
    if churn.definition == "contract":
        return (f"the data can show no churn: {why} ({ds.observed_until.date()}); if the "
                "export records ends after that date, set data.observed_until to the export "
                "date, else the source needs subscriptions.ended_at of the churners")
    other = "any" if churn.activity == "purchases" else "purchases"
    return (f"the data can show no churn: {why}; set churn.activity: {other}, or add the "
            "purchases (payments with status paid) or events")


def _unlabelled_message(ds: DataSet, start: pd.Timestamp, horizon: int, lag: int,
                        moment: pd.Timestamp, why: str) -> str:
    until = ds.observed_until
    room = (until - start).days - lag
    grace = f" plus the {lag}-day churn.grace_days" if lag else ""
    fixes = [f"horizon_days to at most {room}"] if room >= 1 else []
    fixes += [f"cutoffs.dates to a date at least {horizon + lag} days before the end "
              f"(e.g. [{(until - pd.Timedelta(days=horizon + lag)).date()}])",
              "data.observed_until to the export date, if the data were exported later"]
    return (f"no training cutoff can be labelled: the data can show a churn only from "
            f"{moment:%Y-%m-%d} ({why}) and end on {until.date()}, but the {horizon}-day label "
            f"window (horizon_days){grace} of the first such cutoff, {start.date()}, ends on "
            f"{(start + pd.Timedelta(days=horizon + lag)).date()}; set "
            + ", or ".join(fixes))
