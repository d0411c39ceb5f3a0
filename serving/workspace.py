"""The customer-success workspace's data: every snapshot account scored once, then queried.

`Workspace` takes the scores of the service's whole snapshot (probability, tier, survival,
expected LTV: scored, or read from a score file, `churnlens.serving.workspace_scores`) and
keeps the columns the at-risk list shows as numpy arrays, with each sort order and the
sorted ids computed once. A filtered, sorted page is then a
boolean mask and an index gather over those arrays (a few milliseconds for a million
accounts; benchmarks/workspace.py), never a pandas sort per request. Main drivers come
from the score file, else are computed only for the rows a page or a download shows
(`main_drivers`: TreeSHAP contributions and the drivers' sentences, without the survival
model). The HTTP side is
`churnlens.serving.workspace_app`.

Revenue at risk is the batch summary's (`churnlens.serving.stats.annual_revenue`): churn
probability x annual revenue (MRR x 12, else the expected revenue over the LTV horizon,
annualised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from churnlens.serving.core import Prepared
from churnlens.serving.stats import annual_revenue
from churnlens.serving.workspace_scores import Scores, score_snapshot
from churnlens.training.bundle import ChurnModel
from churnlens.training.drivers import TIER_NAMES, explain

LIST_COLUMNS = ("customer_id", "churn_probability", "risk_tier", "lifecycle_stage",
                "days_to_renewal", "expected_ltv", "annual_revenue", "revenue_at_risk",
                "main_driver", "playbook")
SORTS = {  # sort key -> descending?
    "revenue_at_risk": True, "churn_probability": True, "expected_ltv": True,
    "days_to_renewal": False, "customer_id": False,
}
DEFAULT_SORT = "revenue_at_risk"
MONTHS_SHOWN = 12  # renewal months in the chart; later renewals are summed in one bar
DRIVER_CHUNK = 20_000  # rows whose main drivers are computed at once (a CSV download)
SMALL_BATCH = 256  # fewer rows: one thread (OpenMP start-up costs more than it saves)
CURVE_DAYS = np.arange(0, 366, 7, dtype=float)  # the account page's survival curve
# Driver groups a customer-success team can move (the what-if panel offers their features);
# contract terms, tenure, revenue and static attributes are not theirs to change.
EDITABLE_GROUPS = ("onboarding", "usage", "support", "billing", "sentiment")


class QueryError(ValueError):
    """A list query the workspace cannot answer; the message leads with the parameter."""


@dataclass(frozen=True)
class Filters:
    """Which accounts the list shows: every given condition must hold.

    tiers: risk tiers allowed (empty: any); attributes: category feature -> level (the
    lifecycle stage is one); renewal_within: days to renewal at most this; id_prefix: the
    customer id starts with it.
    """

    tiers: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    renewal_within: int | None = None
    id_prefix: str | None = None

    def empty(self) -> bool:
        return not (self.tiers or self.attributes or self.renewal_within is not None
                    or self.id_prefix)


class Workspace:
    """The snapshot's accounts as arrays, ready for filtered, sorted pages.

    model: the served ChurnModel; rows: the service's prepared snapshot; scores: their
    scores by position (None: scored here, about 10 s per 100,000 accounts on two cores;
    `snapshot_as_of` and `text_ids` give what a score file is checked against).
    """

    def __init__(self, model: ChurnModel, rows: Prepared, scores: Scores | None = None) -> None:
        self.model = model
        self.rows = rows
        frame = rows.frame
        self.n = len(frame)
        self.ids = frame["customer_id"].to_numpy(dtype=object)
        self.as_of = snapshot_as_of(rows)
        given = scores if scores is not None else score_snapshot(model, rows)
        self._driver_text, self._driver_playbook = given.driver_text, given.driver_playbook
        scores = given.columns
        self.prob = np.asarray(scores["churn_probability"], dtype=float)
        self.tier = pd.Categorical(scores["risk_tier"],
                                   categories=TIER_NAMES.tolist()).codes.astype(np.int8)
        self.ltv = np.asarray(scores["expected_ltv"], dtype=float)
        self.remaining = np.asarray(scores["expected_remaining_days"], dtype=float)
        text_ids = text_ids_of(rows)
        records = pa.table({"customer_id": pa.array(text_ids.tolist()),
                            "expected_ltv": pa.array(self.ltv)})
        self.revenue, _ = annual_revenue(frame, records, model.ltv.horizon_days)
        self.at_risk = self.prob * self.revenue
        self.renewal = (frame["days_to_renewal"].to_numpy(dtype=float)
                        if "days_to_renewal" in frame.columns else np.full(self.n, np.nan))
        self.categories = {f.name: _codes(frame[f.name]) for f in model.features
                           if f.kind == "category" and f.name in frame.columns}
        self.month, self.month_labels = _renewal_months(self.as_of, self.renewal)
        # The summary's (renewal month, tier) cell of each account, and its weight.
        month = np.where(self.month >= 0, self.month, len(self.month_labels))
        self.cell = (month * len(TIER_NAMES) + self.tier).astype(np.int32)
        self.risk_weight = np.nan_to_num(self.at_risk)
        self._everyone: dict | None = None
        self.orders = {key: _order(self._sort_values(key, text_ids), desc)
                       for key, desc in SORTS.items()}
        self.id_order = self.orders["customer_id"]
        self.text_ids = text_ids
        self.sorted_ids = text_ids[self.id_order]
        self.position = {cid: i for i, cid in enumerate(self.ids)}

    def _sort_values(self, key: str, text_ids: np.ndarray) -> np.ndarray:
        if key == "customer_id":
            return text_ids
        return {"revenue_at_risk": self.at_risk, "churn_probability": self.prob,
                "expected_ltv": self.ltv, "days_to_renewal": self.renewal}[key]

    def levels(self) -> dict[str, list[str]]:
        """Each category attribute's levels, as the filters offer them."""
        return {name: list(levels) for name, (_, levels) in self.categories.items()}

    def mask(self, filters: Filters) -> np.ndarray | None:
        """Which accounts pass FILTERS (None: all). Raises QueryError on an unknown tier,
        attribute or level, or a negative renewal window."""
        if filters.empty():
            return None
        keep = np.ones(self.n, dtype=bool)
        if filters.tiers:
            unknown = [t for t in filters.tiers if t not in TIER_NAMES]
            if unknown:
                raise QueryError(f"tier: {unknown} not a risk tier; use {TIER_NAMES.tolist()}")
            allowed = np.isin(TIER_NAMES, filters.tiers)  # a lookup table by tier code
            keep &= allowed[self.tier]
        for name, level in filters.attributes.items():
            if name not in self.categories:
                raise QueryError(f"{name}: not a category attribute of this model; use one "
                                 f"of {sorted(self.categories)}")
            codes, levels = self.categories[name]
            if level not in levels:
                raise QueryError(f"{name}: {level!r} is not a level in the snapshot; use one "
                                 f"of {list(levels)}")
            keep &= codes == levels.index(level)
        if filters.renewal_within is not None:
            if filters.renewal_within < 0:
                raise QueryError(f"renewal_within: must be 0 or more days, got "
                                 f"{filters.renewal_within}")
            keep &= self.renewal <= filters.renewal_within  # NaN (no renewal) is False
        if filters.id_prefix:
            keep &= self._prefix_mask(filters.id_prefix)
        return keep

    def _prefix_mask(self, prefix: str) -> np.ndarray:
        """Accounts whose id starts with PREFIX, by binary search over the sorted ids."""
        lo = np.searchsorted(self.sorted_ids, prefix, side="left")
        hi = np.searchsorted(self.sorted_ids, prefix + "\U0010ffff", side="left")
        out = np.zeros(self.n, dtype=bool)
        out[self.id_order[lo:hi]] = True
        return out

    def select(self, keep: np.ndarray | None, sort: str = DEFAULT_SORT) -> np.ndarray:
        """Positions of the accounts in KEEP (None: all), in SORT's order."""
        if sort not in SORTS:
            raise QueryError(f"sort: {sort!r} is not a sort key; use one of {list(SORTS)}")
        order = self.orders[sort]
        return order if keep is None else order[keep[order]]

    def list_rows(self, positions: np.ndarray) -> list[dict]:
        """The at-risk list's rows for POSITIONS (LIST_COLUMNS), with each main driver."""
        return self.list_table(positions).to_pylist()

    def list_table(self, positions: np.ndarray) -> pa.Table:
        """The at-risk list's LIST_COLUMNS for POSITIONS as an Arrow table (null where
        unknown), built column by column: the CSV download is written from it."""
        positions = np.asarray(positions, dtype=np.intp)
        text, playbook = self.driver_columns(positions)
        stage = self.categories.get("lifecycle_stage")
        if stage is None:
            stages = pa.nulls(len(positions), pa.string())
        else:
            codes = stage[0][positions]
            stages = pa.DictionaryArray.from_arrays(
                pa.array(codes, mask=codes < 0), pa.array(stage[1], pa.string())
            ).cast(pa.string())
        def number(a: np.ndarray) -> pa.Array:
            return pa.array(a[positions], pa.float64(), from_pandas=True)  # NaN: null
        return pa.table({
            "customer_id": pa.array(self.text_ids[positions], pa.string()),
            "churn_probability": pa.array(self.prob[positions], pa.float64()),
            "risk_tier": pa.array(TIER_NAMES[self.tier[positions]], pa.string()),
            "lifecycle_stage": stages,
            "days_to_renewal": number(self.renewal), "expected_ltv": number(self.ltv),
            "annual_revenue": number(self.revenue), "revenue_at_risk": number(self.at_risk),
            "main_driver": text, "playbook": playbook,
        })

    def driver_columns(self, positions: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """The main driver's text and playbook of each of POSITIONS (null: no driver)."""
        if self._driver_text is not None:
            take = pa.array(np.asarray(positions, dtype=np.int64))
            return self._driver_text.take(take), self._driver_playbook.take(take)
        drivers = self.main_drivers(positions)
        return (pa.array([d and d["text"] for d in drivers], pa.string()),
                pa.array([d and d["playbook"] for d in drivers], pa.string()))

    def main_drivers(self, positions: np.ndarray) -> list[dict | None]:
        """Each account's strongest driver, as {"text", "playbook"} (None when nothing
        raises its risk): the score file's, else the scoring core's first driver (the
        risk model's TreeSHAP contributions and `explain`, DRIVER_CHUNK rows at a time)."""
        if self._driver_text is not None:
            texts, books = (c.to_pylist() for c in self.driver_columns(positions))
            return [None if t is None else {"text": t, "playbook": b}
                    for t, b in zip(texts, books, strict=True)]
        out: list[dict | None] = []
        model = self.model
        for start in range(0, len(positions), DRIVER_CHUNK):
            rows = self.rows.take(positions[start:start + DRIVER_CHUNK])
            threads = 1 if len(rows) < SMALL_BATCH else None
            contrib = model.risk.contributions(rows.risk, num_threads=threads)
            drivers = explain(rows.frame, contrib, model.features, model.playbooks, 1,
                              typical=model.risk.typical_)
            out += [{"text": d[0]["text"], "playbook": d[0]["playbook"]} if d else None
                    for d in drivers]
        return out

    def summary(self, keep: np.ndarray | None) -> dict:
        """Revenue at risk by renewal month and the tier mix, over the accounts in KEEP
        (None: all, computed once). One bincount over (month, tier) cells gives both."""
        if keep is None:
            if self._everyone is None:
                self._everyone = self._summary(self.cell, self.risk_weight)
            return self._everyone
        return self._summary(self.cell[keep], self.risk_weight[keep])

    def _summary(self, cell: np.ndarray, weight: np.ndarray) -> dict:
        tiers, months = len(TIER_NAMES), len(self.month_labels)
        shape = (months + 1, tiers)  # the last month row: no renewal date
        counts = np.bincount(cell, minlength=shape[0] * tiers).reshape(shape)
        risk = np.bincount(cell, weights=weight, minlength=shape[0] * tiers).reshape(shape)
        return {
            "customers": int(cell.size),
            "revenue_at_risk": float(risk.sum()),
            "by_renewal_month": [{"month": m, "revenue_at_risk": float(v)} for m, v in
                                 zip(self.month_labels, risk[:months].sum(axis=1), strict=True)],
            "no_renewal_date": {"customers": int(counts[months].sum()),
                                "revenue_at_risk": float(risk[months].sum())},
            "tiers": [{"tier": str(t), "customers": int(c), "revenue_at_risk": float(r)}
                      for t, c, r in zip(TIER_NAMES, counts.sum(axis=0), risk.sum(axis=0),
                                         strict=True)],
        }

    def curve(self, position: int) -> list[dict]:
        """The account's survival curve: P(still a customer) every week for a year."""
        surv, _ = self.model.survival.survival_and_remaining(
            self.rows.survival[[position]], CURVE_DAYS)
        return [{"day": int(d), "survival": float(s)} for d, s in zip(CURVE_DAYS, surv[0],
                                                                      strict=True)]

    def editable(self) -> list[str]:
        """Features the what-if panel offers: numeric ones of the groups CS can move."""
        return [f.name for f in self.model.features
                if f.kind == "numeric" and f.group in EDITABLE_GROUPS]


def snapshot_as_of(rows: Prepared) -> pd.Timestamp:
    """The snapshot's date: its latest cutoff."""
    return pd.Timestamp(rows.frame["cutoff"].max()).normalize()


def text_ids_of(rows: Prepared) -> np.ndarray:
    """The customer ids as fixed-width text (numpy sorts and searches it)."""
    return rows.frame["customer_id"].to_numpy(dtype=object).astype(str)


def _codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1: missing) and sorted levels of a category column."""
    values = column.astype("string")
    levels = sorted(values.dropna().unique().tolist())
    codes = pd.Categorical(values, categories=levels).codes.astype(np.int32)
    return codes, levels


def _order(values: np.ndarray, descending: bool) -> np.ndarray:
    """Positions sorted by VALUES (missing last), ties in snapshot order."""
    if values.dtype.kind in "US":
        return np.argsort(values, kind="stable")
    key = -values if descending else values
    return np.argsort(np.where(np.isnan(key), np.inf, key), kind="stable")


def _renewal_months(as_of: pd.Timestamp, days: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each account's renewal month as an index into the labels (-1: no renewal date): the
    MONTHS_SHOWN months from AS_OF's, then one "later" bucket."""
    start = as_of.year * 12 + as_of.month - 1
    known = ~np.isnan(days)
    dates = as_of + pd.to_timedelta(np.where(known, days, 0), unit="D")
    index = (dates.year.to_numpy() * 12 + dates.month.to_numpy() - 1) - start
    index = np.clip(index, 0, MONTHS_SHOWN)
    labels = [f"{(start + k) // 12}-{(start + k) % 12 + 1:02d}" for k in range(MONTHS_SHOWN)]
    return np.where(known, index, -1).astype(np.int32), [*labels, "later"]
