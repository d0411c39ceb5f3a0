"""What a batch job learns from its chunks: the summary and the drift check.

Each chunk's `chunk_stats` (tier counts, revenue at risk, top accounts, feature histograms
on the training reference's bins) is saved beside its part, so a resumed job never re-reads
finished chunks; `merge_stats` adds them up, `summary_lines` prints the summary and
`drift_report` gives the population stability index of each feature and of the score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from churnlens.training.reference import SCORE_KEY, bin_counts

TOP_ACCOUNTS = 10
_EPS = 1e-4  # share floor in PSI: an empty bin would otherwise give an infinite term


def annual_revenue(features: pd.DataFrame, records: pa.Table, ltv_horizon_days: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Each record's annual revenue, and whether it was read from MRR.

    MRR x 12 where the customer has MRR; else the record's expected revenue over the LTV
    horizon (`expected_ltv`), annualised by 365 / LTV_HORIZON_DAYS when the horizon is not a
    year; 0 where neither is known. features: rows with customer_id (and mrr when the source
    has subscriptions), keyed like RECORDS.
    """
    ids = records.column("customer_id").to_pylist()
    if "mrr" in features.columns:
        mrr = features.set_index("customer_id")["mrr"].astype(float).reindex(ids).to_numpy()
    else:
        mrr = np.full(len(ids), np.nan)
    by_mrr = ~np.isnan(mrr)
    expected = records.column("expected_ltv").to_numpy(zero_copy_only=False).astype(float)
    yearly = expected * (365.0 / ltv_horizon_days)
    value = np.where(by_mrr, mrr * 12, np.nan_to_num(yearly, nan=0.0))
    return value, by_mrr


def chunk_stats(features: pd.DataFrame, records: pa.Table, reference: dict,
                ltv_horizon_days: int = 365) -> dict:
    """What the summary and drift check need from one chunk (merged by `merge_stats`).

    features: the chunk's feature rows (customer_id, the features, mrr where the source has
    it); records: its scores; ltv_horizon_days: the model's LTV horizon. Revenue at risk of a
    customer = churn probability x annual revenue (`annual_revenue`: MRR x 12, else the
    expected revenue over the LTV horizon, annualised), the revenue expected to leave.
    """
    scores = records.select(["customer_id", "churn_probability", "risk_tier"]).to_pandas()
    scores["annual_revenue"], by_mrr = annual_revenue(features, records, ltv_horizon_days)
    scores["at_risk"] = scores["churn_probability"] * scores["annual_revenue"]
    tiers = scores.groupby("risk_tier")[["at_risk"]].agg(["size", "sum"])["at_risk"]
    top = scores.sort_values(["churn_probability", "customer_id"],
                             ascending=[False, True]).head(TOP_ACCOUNTS)
    # The top driver of the top accounts only: all of a chunk's drivers as Python dicts cost
    # more than the rest of its stats.
    drivers = records.column("drivers").take(pa.array(top.index.to_numpy())).to_pylist()
    top = top.assign(driver=[f"{d[0]['name']}: {d[0]['text']}" if d else "-" for d in drivers])
    hist = {}
    for name, ref in reference.items():
        if name == SCORE_KEY:
            hist[name] = bin_counts(scores["churn_probability"].to_numpy(float), ref)
        elif name in features.columns:
            col = features[name]
            values = col.to_numpy(float) if ref["kind"] == "numeric" else col.to_numpy(object)
            hist[name] = bin_counts(values, ref)
    return {
        "customers": len(scores),
        "tiers": {t: {"customers": int(r["size"]), "revenue_at_risk": float(r["sum"])}
                  for t, r in tiers.iterrows()},
        "valued_by": {"mrr": int(by_mrr.sum()), "expected_revenue": int((~by_mrr).sum())},
        "ltv_horizon_days": ltv_horizon_days,
        "top": top[["customer_id", "churn_probability", "risk_tier", "annual_revenue",
                     "driver"]].to_dict("records"),
        "histograms": hist,
    }


def merge_stats(parts: list[dict]) -> dict:
    """Chunk stats added up into the job's stats (same shape as one chunk's)."""
    out: dict = {"customers": 0, "tiers": {}, "top": [], "histograms": {},
                 "valued_by": {"mrr": 0, "expected_revenue": 0}}
    for s in parts:
        out["customers"] += s["customers"]
        for basis, n in s.get("valued_by", {}).items():
            out["valued_by"][basis] += n
        out["ltv_horizon_days"] = s.get("ltv_horizon_days", 365)
        for t, r in s["tiers"].items():
            acc = out["tiers"].setdefault(t, {"customers": 0, "revenue_at_risk": 0.0})
            acc["customers"] += r["customers"]
            acc["revenue_at_risk"] += r["revenue_at_risk"]
        out["top"] = sorted(out["top"] + s["top"], key=lambda a: (-a["churn_probability"],
                                                                  a["customer_id"]))[:TOP_ACCOUNTS]
        for name, h in s["histograms"].items():
            acc = out["histograms"].setdefault(name, {})
            if "counts" in h:
                prev = acc.get("counts", [0] * len(h["counts"]))
                acc["counts"] = [a + b for a, b in zip(prev, h["counts"], strict=True)]
                acc["missing"] = acc.get("missing", 0) + h["missing"]
            else:
                levels = acc.setdefault("levels", {})
                for level, n in h["levels"].items():
                    levels[level] = levels.get(level, 0) + n
    return out


def psi(actual: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    a = np.clip(np.asarray(actual, float), _EPS, None)
    e = np.clip(np.asarray(expected, float), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _numeric_drift(name: str, hist: dict, ref: dict) -> dict:
    counts = np.asarray(hist["counts"], float)
    total, missing = counts.sum(), hist["missing"]
    out = {"kind": "numeric", "missing_share": float(missing / max(total + missing, 1))}
    if "shares" in ref:
        expected = np.asarray(ref["shares"], float)
        if len(expected) != len(counts):
            raise ValueError(f"model.reference[{name!r}] has {len(expected)} bin shares for "
                             f"{len(counts)} bins between {len(ref['edges'])} edges")
    elif not ref["edges"]:
        out["note"] = "no known value in training"
        return out
    elif len(ref["edges"]) == 11:
        expected = np.full(10, 0.1)  # ten distinct decile edges: a tenth of training each
    else:
        out["note"] = (f"training deciles tie ({len(ref['edges']) - 1} distinct bins of 10) "
                       "and the reference has no bin shares")
        return out
    if "missing" in ref:  # nulls as their own bin, when the reference knows their share
        counts, expected = np.append(counts, missing), np.append(expected * (1 - ref["missing"]),
                                                                 ref["missing"])
    if counts.sum() == 0:
        out["note"] = "no known value in this batch"
        return out
    out.update(psi=psi(counts / counts.sum(), expected), shares=(counts / counts.sum()).tolist(),
               reference_shares=expected.tolist())
    return out


def _category_drift(hist: dict, ref: dict) -> dict:
    levels = sorted(set(hist["levels"]) | set(ref["shares"]))
    counts = np.array([hist["levels"].get(v, 0) for v in levels], float)
    expected = np.array([ref["shares"].get(v, 0.0) for v in levels], float)
    shares = counts / max(counts.sum(), 1)
    return {"kind": "category", "psi": psi(shares, expected),
            "shares": dict(zip(levels, shares.tolist(), strict=True)),
            "reference_shares": dict(zip(levels, expected.tolist(), strict=True))}


def drift_report(stats: dict, reference: dict, threshold: float) -> dict:
    """PSI of each feature and of the score against the training reference.

    Features whose reference cannot give bin shares, and the score when the reference has
    no ``__score__`` entry, are listed under "skipped" with the reason.
    """
    out: dict = {"psi_threshold": threshold, "features": {}, "score": None, "skipped": {}}
    for name, ref in reference.items():
        hist = stats["histograms"].get(name)
        if hist is None:
            out["skipped"][name] = "not among the computed features"
            continue
        d = (_numeric_drift(name, hist, ref) if ref["kind"] == "numeric"
             else _category_drift(hist, ref))
        if "note" in d:
            out["skipped"][name] = d["note"]
        if name == SCORE_KEY:
            out["score"] = d
        else:
            out["features"][name] = d
    if SCORE_KEY not in reference:
        out["skipped"][SCORE_KEY] = ("model.reference has no '__score__' entry (decile edges "
                                     "of the training churn probability): score PSI skipped")
    out["over_threshold"] = sorted(
        n for n, d in [*out["features"].items(), ("churn_probability", out["score"] or {})]
        if d.get("psi") is not None and d["psi"] > threshold)
    return out


def drift_warning(drift: dict) -> str | None:
    """One line naming what drifted past the threshold, or None."""
    over = drift["over_threshold"]
    if not over:
        return None
    values = drift["features"] | {"churn_probability": drift["score"] or {}}
    named = ", ".join(f"{n} ({values[n]['psi']:.2f})" for n in over)
    return f"PSI over {drift['psi_threshold']} against the training reference: {named}"


def revenue_basis(stats: dict) -> str:
    """What 'revenue at risk' multiplies the churn probability by, for STATS' customers."""
    valued = stats.get("valued_by", {})
    by_mrr, expected = valued.get("mrr", 0), valued.get("expected_revenue", 0)
    horizon = stats.get("ltv_horizon_days", 365)
    ltv = (f"expected revenue over the {horizon}-day LTV horizon"
           + ("" if horizon == 365 else f", annualised (x 365/{horizon})"))
    if not expected:
        return "churn probability x MRR x 12"
    if not by_mrr:
        return f"churn probability x {ltv}"
    return (f"churn probability x MRR x 12 ({by_mrr:,} customers), else x {ltv} "
            f"({expected:,} without MRR)")


def summary_lines(stats: dict, currency: str) -> list[str]:
    """Customers and revenue at risk per tier, and the top accounts with their main driver."""
    lines = [f"revenue at risk = {revenue_basis(stats)}, summed over the tier",
             f"{'tier':<9} {'customers':>10} {'revenue at risk':>18}"]
    for tier in ("critical", "high", "medium", "low"):
        r = stats["tiers"].get(tier, {"customers": 0, "revenue_at_risk": 0.0})
        lines.append(f"{tier:<9} {r['customers']:>10,} {r['revenue_at_risk']:>14,.0f} {currency}")
    lines.append(f"top {TOP_ACCOUNTS} accounts at risk (annual revenue as above):")
    for a in stats["top"]:
        lines.append(f"  {a['customer_id']:<12} p={a['churn_probability']:.3f} "
                     f"{a['risk_tier']:<8} {a['annual_revenue']:>10,.0f} {currency}  "
                     f"{a['driver']}")
    return lines
