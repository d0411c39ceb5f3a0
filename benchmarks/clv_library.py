"""pymc-marketing's CLV module against churnlens' own BG/NBD and Gamma-Gamma (training/purchase.py).

Both fit the same customers simulated from known parameters (the published CDNOW values,
T spread over a 13-week acquisition window, 39 weeks of holdout): parameters recovered,
predicted purchases, P(alive) and P(purchase in the holdout) against what the simulation
did, fit and import times, and what the library adds to the project's install. The
library half runs in a separate interpreter (a scratch venv with pymc-marketing, never the
project's): this script calls itself there with --library-half. Without that interpreter
the library half is skipped with a message. With --cdnow, both also fit the CDNOW summary
(x, t_x, T in weeks, mean repeat spend) and are compared with the published estimates.

    python benchmarks/clv_library.py [--customers 20000] [--library-python /tmp/clv-venv/bin/python]
        [--cdnow cdnow_customers_summary_with_transactions.csv] [--resolve]

--resolve asks uv (dry run) which packages pymc-marketing would add to the project's venv.
Writes benchmarks/results/clv_library.json and clv_library.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clv_library_report import BGNBD, GAMMA_GAMMA, GROUPS, HOLDOUT, render

RESULTS = Path(__file__).resolve().parent / "results"
IMPORT_OWN = "import churnlens.training.purchase, churnlens.training.rfm"
IMPORT_LIBRARY = "import pymc_marketing.clv"
IMPORT_SHARED = "import pandas, scipy.special, sklearn.exceptions"  # the project imports these anyway


def import_seconds(jobs: dict[str, tuple[str, str]], repeats: int = 3) -> dict[str, float]:
    """Median wall time of each (interpreter, statement) in fresh interpreters, start-up
    excluded; the jobs take turns so that a change in the machine's load hits all alike."""
    runs: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (python, statement) in jobs.items():
            code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
            runs[name].append(float(subprocess.run([python, "-c", code], capture_output=True,
                                                   text=True, check=True).stdout.split()[-1]))
    return {name: statistics.median(values) for name, values in runs.items()}


def library_half(work: Path) -> None:
    """Fit pymc-marketing's models on the files in WORK; write WORK/library.json and csv."""
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import pandas as pd
    from pymc_extras.prior import Prior
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    out: dict = {"version": __import__("pymc_marketing").__version__}
    flat = {name: Prior("HalfFlat") for name in BGNBD}
    sim = pd.read_csv(work / "sim.csv")
    data = sim[["customer_id", "frequency", "recency", "T"]]
    for label, config in (("mle", flat), ("default_priors", None)):
        fits = []
        for _ in range(2):  # the first fit compiles the model (cold pytensor cache)
            model = BetaGeoModel(model_config=config)
            start = time.perf_counter()
            model.fit(data=data, method="map", progressbar=False)
            fits.append(time.perf_counter() - start)
        post = model.fit_result
        out[label] = {"fit_seconds": fits,
                      "params": {k: float(post[k].values.ravel()[0]) for k in BGNBD}}
        if label == "mle":
            start = time.perf_counter()
            predictions = pd.DataFrame({
                "expected": model.expected_purchases(data, future_t=HOLDOUT).values.ravel(),
                "p_alive": model.expected_probability_alive(data).values.ravel(),
                "p_purchase": 1 - model.expected_probability_no_purchase(
                    HOLDOUT, data).values.ravel()})
            out[label]["predict_seconds"] = time.perf_counter() - start
            predictions.to_csv(work / "library_predictions.csv", index=False)
            grid = pd.read_csv(work / "grid.csv")
            stress = model.expected_purchases(grid.drop(columns="t"), future_t=grid["t"])
            out["stress_values"] = [None if np.isnan(v) else float(v) for v in stress.values.ravel()]
    repeat = sim[sim["frequency"] > 0]
    spend = pd.read_csv(work / "spend.csv")
    gg_data = pd.DataFrame({"customer_id": repeat["customer_id"], "frequency": repeat["frequency"],
                            "monetary_value": spend["monetary_value"].to_numpy()})
    gg = GammaGammaModel()
    start = time.perf_counter()
    gg.fit(data=gg_data, method="map", progressbar=False)
    out["gamma_gamma"] = {"fit_seconds": time.perf_counter() - start,
                          "params": {k: float(gg.fit_result[k].values.ravel()[0])
                                     for k in GAMMA_GAMMA}}
    if (work / "cdnow.csv").exists():
        cdnow = pd.read_csv(work / "cdnow.csv")
        model = BetaGeoModel(model_config=flat)
        model.fit(data=cdnow[["customer_id", "frequency", "recency", "T"]], method="map",
                  progressbar=False)
        out["cdnow"] = {k: float(model.fit_result[k].values.ravel()[0]) for k in BGNBD}
    (work / "library.json").write_text(json.dumps(out, indent=2))


def simulate(work: Path, customers: int):
    """Simulated customers and grid files for both halves; returns (sim, spend, grid)."""
    import numpy as np
    import pandas as pd

    from churnlens.training.rfm import simulate_bgnbd, simulate_gamma_gamma

    ages = np.random.default_rng(1).uniform(26.0, 39.0, customers)
    sim = simulate_bgnbd(customers, **BGNBD, T=ages, horizon=HOLDOUT, seed=2)
    sim.insert(0, "customer_id", np.arange(customers))
    spend = simulate_gamma_gamma(sim.loc[sim["frequency"] > 0, "frequency"], **GAMMA_GAMMA, seed=3)
    # Heavy buyers, long ages and long horizons: where the textbook hyp2f1 form overflows.
    grid = pd.DataFrame([(x, 0.9 * age, age, t) for x in (50, 200, 1000) for age in (40.0, 200.0)
                         for t in (39.0, 520.0, 5200.0)], columns=["frequency", "recency", "T", "t"])
    grid.insert(0, "customer_id", np.arange(len(grid)))
    sim.to_csv(work / "sim.csv", index=False)
    spend.to_csv(work / "spend.csv", index=False)
    grid.to_csv(work / "grid.csv", index=False)
    return sim, spend, grid


def measure_own(sim, spend, grid) -> tuple[dict, dict]:
    """Fit churnlens' models: (figures, per-customer predictions)."""
    from churnlens.training.purchase import BetaGeo, GammaGamma

    x, t_x, T = (sim[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    fits = []
    for _ in range(3):
        start = time.perf_counter()
        model = BetaGeo().fit(x, t_x, T)
        fits.append(time.perf_counter() - start)
    start = time.perf_counter()
    predictions = {"expected": model.expected_purchases(HOLDOUT, x, t_x, T),
                   "p_alive": model.p_alive(x, t_x, T),
                   "p_purchase": model.p_purchase_within(HOLDOUT, x, t_x, T)}
    predict_seconds = time.perf_counter() - start
    repeat = sim["frequency"].to_numpy() > 0
    start = time.perf_counter()
    gg = GammaGamma().fit(x[repeat], spend["monetary_value"])
    gg_seconds = time.perf_counter() - start
    stress = model.expected_purchases(grid["t"], grid["frequency"], grid["recency"], grid["T"])
    figures = {"fit_seconds": statistics.median(fits), "predict_seconds": predict_seconds,
               "params": model.params_, "se": model.params_se_, "converged": model.converged_,
               "gamma_gamma": {"fit_seconds": gg_seconds, "params": gg.params_, "se": gg.params_se_,
                               "expected_spend_mean": float(gg.expected_spend(
                                   x[repeat], spend["monetary_value"]).mean())},
               "stress_values": [float(v) for v in stress]}
    return figures, predictions


def by_group(sim, predictions: dict) -> list[dict]:
    """Predicted against simulated, per group of repeat-purchase counts."""
    import numpy as np

    rows = []
    for low, high in GROUPS:
        rows_in = ((sim["frequency"] >= low) & (sim["frequency"] <= high)).to_numpy()
        buys = (sim["future"].to_numpy()[rows_in] > 0)
        rows.append({"x": f"{low}" if low == high else (f"{low}+" if high > 1e6 else f"{low}-{high}"),
                     "customers": int(rows_in.sum()),
                     "purchases_real": float(sim["future"].to_numpy()[rows_in].mean()),
                     "purchases_pred": float(np.mean(predictions["expected"][rows_in])),
                     "buy_real": float(buys.mean()),
                     "buy_se": float(np.sqrt(buys.mean() * (1 - buys.mean()) / rows_in.sum())),
                     "buy_pred": float(np.mean(predictions["p_purchase"][rows_in])),
                     "alive_real": float(sim["alive"].to_numpy()[rows_in].mean()),
                     "alive_pred": float(np.mean(predictions["p_alive"][rows_in]))})
    return rows


def install_figures(python: str) -> dict:
    """Size of what pymc-marketing brings, from the distributions in ITS interpreter.

    "added" counts the distributions that the project's own venv does not hold.
    """
    from importlib.metadata import distributions

    code = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name'].lower()"
            ".replace('_', '-'): sum((f.size or 0) for f in (d.files or [])) for d in "
            "m.distributions()}))")
    theirs = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    ours = {d.metadata["Name"].lower().replace("_", "-") for d in distributions()}
    added = {name: size for name, size in theirs.items() if name not in ours}
    return {"distributions": len(theirs), "total_mb": sum(theirs.values()) / 2**20,
            "added": sorted(added), "added_mb": sum(added.values()) / 2**20}


def resolve_into_project() -> list[str]:
    """What `uv pip install pymc-marketing` would change in the project's venv (dry run)."""
    venv = Path(sys.executable).parent
    done = subprocess.run([str(venv / "uv"), "pip", "install", "--dry-run", "--python",
                           sys.executable, "pymc-marketing"], capture_output=True, text=True)
    return [line.strip() for line in (done.stdout + done.stderr).splitlines()
            if line.strip()[:2] in ("+ ", "- ")]


def install_library(venv: Path) -> float:
    """Create VENV and pip install pymc-marketing into it; returns the seconds taken."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "pymc-marketing"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def fit_cdnow(path: Path, work: Path) -> dict:
    """Own BG/NBD and Gamma-Gamma on the CDNOW summary; writes WORK/cdnow.csv for the library."""
    import pandas as pd

    from churnlens.training.purchase import BetaGeo, GammaGamma

    cdnow = pd.read_csv(path)
    cdnow = pd.DataFrame({"customer_id": cdnow["ID"], "frequency": cdnow["x"],
                          "recency": cdnow["t_x"], "T": cdnow["T"], "zbar": cdnow["zbar"]})
    cdnow.to_csv(work / "cdnow.csv", index=False)
    model = BetaGeo().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    repeat = cdnow[cdnow["frequency"] > 0]
    gg = GammaGamma().fit(repeat["frequency"], repeat["zbar"])
    return {"customers": len(cdnow), "params": model.params_, "se": model.params_se_,
            "log_likelihood": model.log_likelihood_, "gamma_gamma": gg.params_,
            "gamma_gamma_se": gg.params_se_, "repeat_customers": len(repeat)}


def run_library(python: str, work: Path) -> dict:
    """The library half in its own interpreter, with a fresh pytensor compile cache."""
    env = dict(os.environ, PYTENSOR_FLAGS=f"compiledir={work / 'pytensor'}")
    subprocess.run([python, __file__, "--library-half", str(work)], check=True, env=env)
    return json.loads((work / "library.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--library-python", default="/tmp/clv-venv/bin/python")
    parser.add_argument("--install", action="store_true",
                        help="create the library venv afresh and time the install")
    parser.add_argument("--resolve", action="store_true")
    parser.add_argument("--cdnow", type=Path)
    parser.add_argument("--library-half", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.library_half:
        library_half(args.library_half)
        return

    import numpy as np
    import pandas as pd

    work = Path(tempfile.mkdtemp(prefix="churnlens-clv-"))
    sim, spend, grid = simulate(work, args.customers)
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "load_average": os.getloadavg()[0]},
                     "customers": args.customers, "holdout_weeks": HOLDOUT,
                     "truth": {"bgnbd": BGNBD, "gamma_gamma": GAMMA_GAMMA},
                     "realised": {"purchases_mean": float(sim["future"].mean()),
                                  "buy_share": float((sim["future"] > 0).mean()),
                                  "alive_share": float(sim["alive"].mean()),
                                  "true_spend_mean": float(spend["mean_spend"].mean())}}
    own, own_predictions = measure_own(sim, spend, grid)
    own["groups"] = by_group(sim, own_predictions)
    results["own"] = own
    if args.cdnow:
        results["cdnow_own"] = fit_cdnow(args.cdnow, work)
    python = args.library_python
    if args.install:
        venv = work / "library-venv"
        results["install_seconds"] = install_library(venv)
        python = str(venv / "bin" / "python")
    if not Path(python).exists():
        print(f"pymc-marketing half skipped: no interpreter at {python}; create one with "
              "`python3.11 -m venv /tmp/clv-venv && /tmp/clv-venv/bin/pip install pymc-marketing`")
    else:
        library = run_library(python, work)
        library["install"] = install_figures(python)
        predictions = pd.read_csv(work / "library_predictions.csv")
        library["groups"] = by_group(sim, {c: predictions[c].to_numpy() for c in predictions})
        library["max_abs_difference"] = {c: float(np.max(np.abs(predictions[c].to_numpy()
                                                                - own_predictions[c])))
                                         for c in predictions}
        results["library"] = library
    jobs = {"own": (sys.executable, IMPORT_OWN), "shared": (sys.executable, IMPORT_SHARED)}
    if "library" in results:
        jobs["library"] = (python, IMPORT_LIBRARY)
    results["import_seconds"] = import_seconds(jobs)
    if args.resolve:
        results["resolve_into_project"] = resolve_into_project()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clv_library.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)  # the library venv of --install is ~0.8 GB
    markdown = render(results, grid)
    (RESULTS / "clv_library.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
