"""The markdown table of benchmarks/clv_library.py, and the published CDNOW figures it cites."""

from __future__ import annotations

BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # FHL 2005, CDNOW
GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}  # FHL 2005 "RFM and CLV", CDNOW
HOLDOUT = 39.0  # weeks
GROUPS = [(0, 0), (1, 1), (2, 3), (4, 7), (8, 10**9)]


def _params_row(name: str, truth: float, own: dict, library: dict | None) -> str:
    cells = [name, f"{truth:g}", f"{own['params'][name]:.4f} ± {own['se'][name]:.4f}"]
    if library:
        cells += [f"{library['mle']['params'][name]:.4f}",
                  f"{library['default_priors']['params'][name]:.4f}"]
    return "| " + " | ".join(cells) + " |"


def render(results: dict, grid) -> str:
    """The results as a markdown page."""
    own, library = results["own"], results.get("library")
    lib_name = f"pymc-marketing {library['version']}" if library else "pymc-marketing (skipped)"
    lines = ["# BG/NBD + Gamma-Gamma: pymc-marketing against churnlens' own implementation", "",
             f"{results['customers']:,} customers simulated from BG/NBD r, alpha, a, b = "
             f"{', '.join(f'{v:g}' for v in BGNBD.values())} (ages 26-39 weeks, "
             f"{HOLDOUT:g}-week holdout) with Gamma-Gamma spend p, q, v = "
             f"{', '.join(f'{v:g}' for v in GAMMA_GAMMA.values())}; Python "
             f"{results['machine']['python']}, {results['machine']['cpus']} cores shared with other "
             f"jobs (load average {results['machine']['load_average']:.1f} at the start: "
             "compare times within one run, not across runs). "
             "`python benchmarks/clv_library.py` writes this page.", "",
             "## Cost", "", f"| | churnlens (training/purchase.py, scipy) | {lib_name} |",
             "|---|---|---|"]
    if library:
        inst = library["install"]
        lines += [f"| packages added to the project's venv | 0 | {len(inst['added'])} "
                  f"({inst['added_mb']:.0f} MB; whole venv {inst['distributions']} "
                  f"distributions, {inst['total_mb']:.0f} MB) |"]
        if "install_seconds" in results:
            lines += [f"| install into a fresh venv | - | {results['install_seconds']:.0f} s |"]
        mle, prior = library["mle"]["fit_seconds"], library["default_priors"]["fit_seconds"]
        imports = results["import_seconds"]
        lines += [f"| import (pandas, scipy.special, sklearn alone: {imports['shared']:.2f} s) | "
                  f"{imports['own']:.2f} s | {imports['library']:.2f} s |",
                  f"| BG/NBD fit, maximum likelihood | {own['fit_seconds']:.2f} s | "
                  f"{mle[0]:.1f} s first (compiles), {mle[1]:.1f} s second (MAP, flat priors) |",
                  f"| BG/NBD fit, library default priors | - | {prior[0]:.1f} s / {prior[1]:.1f} s |",
                  f"| Gamma-Gamma fit | {own['gamma_gamma']['fit_seconds']:.2f} s | "
                  f"{library['gamma_gamma']['fit_seconds']:.1f} s |",
                  f"| predict 3 scores x {results['customers']:,} | {own['predict_seconds']:.2f} s "
                  f"| {library['mle']['predict_seconds']:.2f} s |"]
    else:
        lines += [f"| import | {results['import_seconds']['own']:.2f} s | - |",
                  f"| BG/NBD fit | {own['fit_seconds']:.2f} s | - |"]
    lines += ["", "## Parameters recovered", "",
              "| parameter | truth | churnlens ± s.e. | library MLE | library default priors |"
              if library else "| parameter | truth | churnlens ± s.e. |",
              "|---|---|---|---|---|" if library else "|---|---|---|"]
    lines += [_params_row(name, truth, own, library) for name, truth in BGNBD.items()]
    gg = own["gamma_gamma"]
    for name, truth in GAMMA_GAMMA.items():
        cells = [name, f"{truth:g}", f"{gg['params'][name]:.3f} ± {gg['se'][name]:.3f}"]
        if library:
            cells += [f"{library['gamma_gamma']['params'][name]:.3f}", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Predictions against the simulation, by repeat purchases x", "",
              "Holdout purchases (mean), share buying at least once in the holdout (± its "
              "standard error), share still alive at T: simulated, churnlens, library.", "",
              "| x | customers | purchases sim / own / lib | buy share sim (± s.e.) / own / lib "
              "| alive sim / own / lib |", "|---|---|---|---|---|"]
    lib_groups = library["groups"] if library else [None] * len(own["groups"])
    for mine, theirs in zip(own["groups"], lib_groups, strict=True):
        def trio(key, g=mine, t=theirs):
            return f"{g[key + '_real']:.3f} / {g[key + '_pred']:.3f} / " + (
                f"{t[key + '_pred']:.3f}" if t else "-")
        buy = trio("buy").replace(" /", f" (± {mine['buy_se']:.3f}) /", 1)
        lines.append(f"| {mine['x']} | {mine['customers']:,} | {trio('purchases')} | {buy} | "
                     f"{trio('alive')} |")
    if library:
        diff = library["max_abs_difference"]
        nan = sum(v is None for v in library["stress_values"])
        lines += ["", "Largest per-customer difference, churnlens vs library (same data): "
                  + ", ".join(f"{k} {v:.2g}" for k, v in diff.items()) + ".", "",
                  f"Stress grid ({len(grid)} heavy buyers: x in 50, 200, 1000; T in 40, 200 "
                  "weeks; t up to 5,200 weeks): library expected_purchases NaN in "
                  f"{nan} of {len(grid)}, churnlens in "
                  f"{sum(v != v for v in own['stress_values'])}."]
    if "cdnow_own" in results:
        cd = results["cdnow_own"]
        lines += ["", f"## CDNOW ({cd['customers']:,} customers, weeks)", "",
                  "| parameter | published | churnlens ± s.e. | library MLE |", "|---|---|---|---|"]
        for name, value in BGNBD.items():
            theirs = f"{library['cdnow'][name]:.4f}" if library and "cdnow" in library else "-"
            lines.append(f"| {name} | {value:g} | {cd['params'][name]:.4f} ± "
                         f"{cd['se'][name]:.4f} | {theirs} |")
        for name, value in GAMMA_GAMMA.items():
            lines.append(f"| {name} (Gamma-Gamma, {cd['repeat_customers']} repeat buyers) | "
                         f"{value:g} | {cd['gamma_gamma'][name]:.3f} ± "
                         f"{cd['gamma_gamma_se'][name]:.3f} | - |")
        lines += ["", f"BG/NBD log-likelihood {cd['log_likelihood']:.1f}."]
    if library:
        zero_own, zero_lib = own["groups"][0], library["groups"][0]
        gap = max(abs(library["mle"]["params"][k] - own["params"][k]) / own["se"][k] for k in BGNBD)
        lines += ["", "## Reading", "",
                  f"Both reach the same maximum-likelihood estimates (largest gap {gap:.3f} of "
                  "churnlens' standard errors) and the same expected purchases and P(alive). "
                  f"The library costs {len(library['install']['added'])} more packages "
                  f"({library['install']['added_mb']:.0f} MB: pymc, pytensor, numba, arviz, ...) "
                  f"and {library['mle']['fit_seconds'][0]:.0f} s for a first fit against "
                  f"{own['fit_seconds']:.1f} s; its `1 - expected_probability_no_purchase` "
                  f"gives customers without repeat purchases {zero_lib['buy_pred']:.3f} where the "
                  f"simulation shows {zero_own['buy_real']:.3f} ± {zero_own['buy_se']:.3f} "
                  f"(churnlens {zero_own['buy_pred']:.3f}), and its expected_purchases is NaN on "
                  f"{sum(v is None for v in library['stress_values'])} of {len(grid)} heavy-buyer "
                  "rows."]
    if results.get("resolve_into_project"):
        lines += ["", "`uv pip install --dry-run pymc-marketing` into the project's venv: "
                  + ", ".join(results["resolve_into_project"]) + "."]
    return "\n".join(lines) + "\n"
