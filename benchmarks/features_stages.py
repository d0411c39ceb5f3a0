"""The stage profile of `benchmarks/features.py`: where one training set's time goes.

`profile_build` runs in a fresh process (features.py starts it): one `build_training_set`
with a timer on each of its steps, then each part (CTE) of the feature query alone, on the
same spine and rollup, so the part that holds the query shows; 'joins and export' is the
whole query's time less its parts'. `stage_lines` renders it for features.md.
"""

from __future__ import annotations

import time

# The steps of build_training_set timed by wrapping the functions of churnlens.features.build
# that run them, in the order they run.
STEPS = (("build_spine", "spine"), ("build_labels", "labels"),
         ("build_events_daily", "daily event rollup"), ("query_arrow", "feature query to Arrow"),
         ("sorted_by_key", "sort (Arrow take)"), ("arrow_to_frame", "to pandas"))


def profile_build(folder: str) -> dict:
    """Seconds of each step of one training set of the source in FOLDER, and of each part
    of its feature query run alone (as a temporary table)."""
    from batch_stages import timed_into  # benchmarks/, on the path of features.py's runs

    from churnlens.features import build
    from churnlens.features.catalog import event_types_of, plan_for_source
    from churnlens.features.cutoffs import training_cutoffs
    from churnlens.features.loading import load_source
    from churnlens.features.queries import part_queries
    from churnlens.features.relations import LOADED, drop, from_item
    from churnlens.features.shapes import resolve_churn
    from churnlens.settings import Settings

    steps: dict[str, float] = {}
    settings = Settings()
    t0 = time.perf_counter()
    ds = load_source(folder)
    steps["load source"] = time.perf_counter() - t0
    originals = {name: getattr(build, name) for name, _ in STEPS}
    for name, label in STEPS:
        setattr(build, name, timed_into(steps, label, originals[name]))
    try:
        t0 = time.perf_counter()
        build.build_training_set(ds, settings)
        whole = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(build, name, fn)
    steps["other (cutoffs, plan, notes)"] = whole - sum(
        steps[label] for _, label in STEPS)

    con, fs = ds.con, settings.features
    churn = resolve_churn(settings.churn, ds)
    plan = plan_for_source(ds, fs)
    spine = build.build_spine(con, build.cutoff_relation(con, training_cutoffs(
        ds, settings, churn)[0]), churn)
    daily = build.build_events_daily(con, fs, LOADED, event_types_of(plan.features))
    parts = {}
    try:
        for name, sql in part_queries(fs, plan.features, spine=from_item(spine),
                                      daily=from_item(daily)):
            t0 = time.perf_counter()
            con.execute(f"CREATE TEMP TABLE part_{name} AS {sql}")
            parts[name] = time.perf_counter() - t0
            con.execute(f"DROP TABLE part_{name}")
    finally:
        drop(con, spine, daily)
    return {"seconds": whole + steps["load source"], "steps": steps, "parts": parts}


def stage_lines(profile: dict, n: int, target: float = 30.0) -> list[str]:
    """Markdown for PROFILE (`profile_build`): the steps, then the feature query's parts."""
    steps, parts = profile["steps"], profile["parts"]
    total = profile["seconds"]
    lines = [f"Where the time goes in one training set of {n:,} customers ({total:.1f} s in one "
             "process, "
             f"load average at the end {profile.get('load_average', '?')}; target "
             f"{target:.0f} s):", "", "| step | s | share |", "|---|---|---|"]
    for label, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {seconds:.2f} | {seconds / total:.0%} |")
    query = steps.get("feature query to Arrow", 0.0)
    lines += ["", "The feature query's parts, each run alone on the same spine and rollup "
              "(inside the query they are materialised one by one, then joined to the spine "
              "and the labels and exported to Arrow):", "",
              "| part | s |", "|---|---|"]
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds:.2f} |")
    lines.append(f"| whole query (joins, labels and export included) | {query:.2f} |")
    return lines
