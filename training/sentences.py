"""Driver sentences: a feature's value in words, beside the typical customer's.

A template per feature (and per pair that reads as one change, such as active days now
against the 30 days before) writes the value as a customer-success team reads it ("1 open
ticket", "renewal in 25 days", "latest NPS 3, down 5"); any other feature reads "<label> is
<value>". Each ends with how the value compares with the typical training customer's
(", below the typical 12", " (most customers: pro)"), the reason it can raise risk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

# Fractions whose sentences show whole percents.
_PERCENT = ("events_trend_30d",)
# Words that lose their "s" after a count of one ("1 open ticket", "1 failed payment").
_PLURALS = ("tickets", "payments", "events", "days", "refunds", "features")


class Columns:
    """Feature values by row position, each column read once (when first asked for) into
    plain Python values, and the typical training value of each feature (None when unknown).

    numbers: float64 arrays of columns the caller has already read from FRAME (the same
    values as FRAME's), so that they are not read twice.
    """

    def __init__(self, frame: pd.DataFrame, labels: dict[str, str],
                 typical: Mapping[str, float | str | None],
                 numbers: Mapping[str, np.ndarray] | None = None):
        self.frame, self.labels, self.typical = frame, labels, typical
        self._numbers = dict(numbers or {})
        self._plain: dict[str, list] = {}
        self._rounded: dict[str, list] = {}
        self._typical_rounded: dict[str, float] = {}
        self._typical_text: dict[str, str] = {}
        self._inputs: dict[str, list[list]] = {}
        self._sentences: dict[tuple, str] = {}
        self._whole: dict[str, list] = {}

    def value(self, name: str, i: int) -> float | str | None:
        """A plain value: float for numbers, str for categories, None when unknown."""
        return self._column(name)[i]

    def sentence(self, name: str, i: int) -> str:
        """`sentence` for row I's NAME, written once per distinct set of the values it reads
        (`reads`; in whole days where it reads only those, `in_whole_days`): a base shares
        most of them, and writing one cost more than the scores of its row."""
        inputs = self._inputs.get(name)
        if inputs is None:
            days = in_whole_days(name)
            inputs = self._inputs[name] = [self._whole_days(n) if n in days else self._column(n)
                                           for n in reads(name)]
        key = (name, *[column[i] for column in inputs])
        text = self._sentences.get(key)
        if text is None:
            text = self._sentences[key] = sentence(self, i, name)
        return text

    def _whole_days(self, name: str) -> list:
        """NAME's values rounded to whole days (None stays None), as keys of `sentence`;
        its plain values when some are not numbers."""
        whole = self._whole.get(name)
        if whole is None:
            plain = self._column(name)
            if all(v is None or isinstance(v, float) for v in plain):
                numbers = np.round(np.array([np.nan if v is None else v for v in plain],
                                            dtype=float))
                out = numbers.astype(object)
                out[np.isnan(numbers)] = None
                whole = out.tolist()
            else:
                whole = plain
            self._whole[name] = whole
        return whole

    def shown_as_typical(self, name: str, i: int) -> bool:
        """Whether row I's value of NAME, a number, reads as the typical value of NAME (a
        number too) in a sentence: equal once both are `rounded`."""
        shown = self._rounded.get(name)
        if shown is None:
            plain = self._column(name)
            numbers = self._numbers.get(name)
            if numbers is None:  # not a float64 column: the numbers among its values
                numbers = np.array([v if isinstance(v, float) else np.nan for v in plain],
                                   dtype=float)
            shown = self._rounded[name] = rounded(name, numbers).tolist()
        if name not in self._typical_rounded:
            self._typical_rounded[name] = float(rounded(name, self.typical[name]))
        return shown[i] == self._typical_rounded[name]

    def typical_shown(self, name: str) -> str:
        """The typical value of NAME (a number) as its sentences write values."""
        shown = self._typical_text.get(name)
        if shown is None:
            shown = self._typical_text[name] = _shown(name)(self.typical[name])
        return shown

    def _column(self, name: str) -> list:
        plain = self._plain.get(name)
        if plain is None:
            plain = self._plain[name] = self._read(name)
        return plain

    def _read(self, name: str) -> list:
        if name not in self.frame.columns:
            return [None] * len(self.frame)
        column = self.frame[name]
        if name not in self._numbers and column.dtype == np.float64:
            self._numbers[name] = column.to_numpy()
        if name in self._numbers:
            numbers = self._numbers[name]
            out = numbers.astype(object)  # Python floats
            out[np.isnan(numbers)] = None
            return out.tolist()
        if isinstance(column.dtype, pd.CategoricalDtype):
            categorical = column.array
            levels = [_plain(v) for v in categorical.categories.to_numpy(dtype=object)]
            return np.array([*levels, None], dtype=object)[categorical.codes].tolist()
        values = column.to_numpy(dtype=object)
        return [None if unknown else v if isinstance(v, str) else float(v)
                for v, unknown in zip(values.tolist(), pd.isna(values).tolist(), strict=True)]


def _plain(v) -> float | str | None:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    return v if isinstance(v, str) else float(v)


def _num(v: float) -> str:
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def _fmt(v: float | str | None) -> str:
    if v is None:
        return "unknown"
    return v if isinstance(v, str) else _num(v)


def _day_count(v: float) -> str:
    n = round(v)
    return f"{n:,} day" if n == 1 else f"{n:,} days"


def _pct(v: float) -> str:
    return f"{round(v * 100):+d}%"


def _is_days(name: str) -> bool:
    return name.startswith("days_") or name.endswith("_days")


def _shown(name: str) -> Callable[[float], str]:
    """How NAME's sentence writes a value: '+3%', '5 days' or a plain number."""
    return _pct if name in _PERCENT else _day_count if _is_days(name) else _num


def rounding(name: str) -> str:
    """How sentences round NAME's values: "percent" (whole percents of a fraction), "days"
    (whole) or "number" (one decimal below 100, whole from 100 on)."""
    return "percent" if name in _PERCENT else "days" if _is_days(name) else "number"


def rounded(name: str, values) -> np.ndarray:
    """VALUES of NAME to the precision its sentence shows them (NaN stays NaN)."""
    return rounded_as(rounding(name), values)


def rounded_as(rule: str, values) -> np.ndarray:
    """VALUES (any shape) rounded by RULE, one of `rounding`'s (NaN stays NaN)."""
    v = np.asarray(values, dtype=float)
    if rule == "percent":
        return np.round(v * 100)
    if rule == "days":
        return np.round(v)
    return np.where(np.abs(v) >= 100, np.round(v), np.round(v, 1))


def _vs(c: Columns, i: int, name: str, of: str | None = None) -> str:
    """How row I's value of NAME (or of OF, the feature whose value the sentence states)
    compares with the typical training customer's, as the tail of a sentence; '' when
    there is no typical value or the value is the typical one (as shown)."""
    name = of or name
    typical, value = c.typical.get(name), c.value(name, i)
    if typical is None or value == typical:
        return ""
    if isinstance(typical, str) or isinstance(value, str):
        return f" (most customers: {_fmt(typical)})"
    if value is None:
        return f" (typical: {c.typical_shown(name)})"
    if c.shown_as_typical(name, i):
        return ""
    return f", {'above' if value > typical else 'below'} the typical {c.typical_shown(name)}"


def _generic(c: Columns, i: int, name: str) -> str:
    # Static attributes are labelled by their column name (acquisition_channel).
    return f"{c.labels[name].replace('_', ' ')} is {_fmt(c.value(name, i))}" + _vs(c, i, name)


def _counted(v: float, label: str) -> str:
    """'2 open tickets', '1 open ticket'."""
    if v == 1:
        words = label.split(" ")
        k = next((j for j, w in enumerate(words) if w in _PLURALS), None)
        if k is not None:
            words[k] = words[k][:-1]
        label = " ".join(words)
    return f"{_num(v)} {label}"


def _count(c: Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    if not isinstance(v, float):
        return _generic(c, i, name)
    if name.startswith("days_"):
        v = float(round(v))  # whole days read better than 27.4
    return _counted(v, c.labels[name]) + _vs(c, i, name)


def _active_days(c: Columns, i: int, name: str) -> str:
    cur, prev = c.value("active_days_30d", i), c.value("active_days_prev_30d", i)
    if cur is None or prev is None or "active_days_30d" not in c.labels:
        return _count(c, i, name)
    label, vs = c.labels["active_days_30d"], _vs(c, i, name, of="active_days_30d")
    if cur == prev:
        return f"{label} steady at {_num(cur)}{vs}"
    verb = "fell" if cur < prev else "rose"
    return f"{label} {verb} from {_num(prev)} to {_num(cur)}{vs}"


def _events_trend(c: Columns, i: int, name: str) -> str:
    trend = c.value("events_trend_30d", i)
    if trend is None or "events_30d" not in c.labels or c.value("events_30d", i) is None:
        return _count(c, i, name) if name != "events_trend_30d" else _generic(c, i, name)
    pct = round(abs(trend) * 100)
    change = (f"{'down' if trend < 0 else 'up'} {pct}% on the 30 before" if pct
              else "unchanged on the 30 before")
    if name == "events_30d":  # the level is what the model used
        return f"{_counted(c.value(name, i), c.labels[name])}, {change}{_vs(c, i, name)}"
    return f"{c.labels['events_30d']} {change}{_vs(c, i, name)}"


def _nps(c: Columns, i: int, name: str) -> str:
    latest, change = c.value("nps_latest", i), c.value("nps_change", i)
    vs = _vs(c, i, name, of="nps_latest")
    if latest is None:
        return f"no NPS answer yet{vs}"
    if change is None or change == 0:
        return f"latest NPS {_num(latest)}{vs}"
    return (f"latest NPS {_num(latest)}, {'down' if change < 0 else 'up'} "
            f"{_num(abs(change))}{vs}")


def _first_value(c: Columns, i: int, name: str) -> str:
    days = c.value("days_to_first_value", i)
    if c.value("reached_first_value", i) == 1 and days is not None:
        return (f"first value took {_day_count(days)}"
                + _vs(c, i, name, of="days_to_first_value"))
    # The value event's name only reaches this module inside the label of value_events_30d.
    event = c.labels.get("value_events_30d", "").removesuffix(" events in 30 days")
    tenure = c.value("tenure_days", i)
    text = f"no first value yet ({event})" if event else "no first value yet"
    text = f"{text} after {_day_count(tenure)}" if tenure is not None else text
    typical = c.typical.get("days_to_first_value")
    return (f"{text}; the typical customer reached it in {_day_count(typical)}"
            if isinstance(typical, float) else text)


def _renewal(c: Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    if not isinstance(v, float):
        return _generic(c, i, name)
    return f"renewal in {_day_count(v)}" + _vs(c, i, name)


def _change(c: Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    if not isinstance(v, float) or v == 0:
        return _generic(c, i, name)
    what = {"mrr_change_90d": "MRR", "seats_change_90d": "seats"}[name]
    return f"{what} {'fell' if v < 0 else 'rose'} by {_num(abs(v))} over 90 days" + _vs(c, i, name)


def _tenure(c: Columns, i: int, name: str) -> str:
    v = c.value(name, i)
    if not isinstance(v, float):
        return _generic(c, i, name)
    return f"tenure of {_day_count(v)}" + _vs(c, i, name)


_COUNTS = ("events_7d", "events_90d", "active_days_7d", "active_days_90d", "event_types_30d",
           "event_types_all_windows", "days_since_last_event", "value_events_30d",
           "failed_payments_90d", "failed_payments_30d", "refunds_90d", "tickets_opened_90d",
           "tickets_high_90d", "tickets_open", "tickets_high_open", "days_since_nps", "seats")
_SENTENCES: dict[str, Callable[[Columns, int, str], str]] = {
    **dict.fromkeys(_COUNTS, _count),
    **dict.fromkeys(("active_days_30d", "active_days_prev_30d", "active_days_trend_30d"),
                    _active_days),
    **dict.fromkeys(("events_30d", "events_trend_30d"), _events_trend),
    **dict.fromkeys(("nps_latest", "nps_change"), _nps),
    **dict.fromkeys(("reached_first_value", "days_to_first_value"), _first_value),
    **dict.fromkeys(("mrr_change_90d", "seats_change_90d"), _change),
    "days_to_renewal": _renewal,
    "tenure_days": _tenure,
}


# The features a template reads beside the one it tells (every template may read that one).
_READS: dict[Callable[[Columns, int, str], str], tuple[str, ...]] = {
    _active_days: ("active_days_30d", "active_days_prev_30d"),
    _events_trend: ("events_trend_30d", "events_30d"),
    _nps: ("nps_latest", "nps_change"),
    _first_value: ("days_to_first_value", "reached_first_value", "tenure_days"),
}
# Templates that read each of their features counted in days (`rounding` "days") only in
# whole days (`_day_count`; `_vs` compares rounded values, and rounding keeps the order).
_WHOLE_DAYS = (_renewal, _tenure, _first_value)


def reads(name: str) -> tuple[str, ...]:
    """The features whose values at a row NAME's sentence reads (NAME first): given the
    model's labels and typical values, equal values of these give equal sentences."""
    return (name, *_READS.get(_SENTENCES.get(name, _generic), ()))


def in_whole_days(name: str) -> frozenset[str]:
    """The features of `reads(name)` that NAME's sentence reads only in whole days."""
    template = _SENTENCES.get(name, _generic)
    if template in _WHOLE_DAYS:
        return frozenset(n for n in reads(name) if rounding(n) == "days")
    if template is _count and name.startswith("days_"):  # `_count` rounds these
        return frozenset((name,))
    return frozenset()


def sentence(columns: Columns, i: int, name: str) -> str:
    """Why feature NAME of row I raises risk, in words, with the typical value beside it."""
    # Sentences with a template (and trend pairs) where one exists, else "<label> is <value>".
    return _SENTENCES.get(name, _generic)(columns, i, name)
