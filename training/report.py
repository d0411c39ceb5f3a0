"""A self-contained HTML report of a training run: metric table, notes and plots.

`render` takes plain data (so it can be rebuilt from any MLflow run); `report_for_run`
fetches that data from the tracking store.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from mlflow.tracking import MlflowClient

PLOT_TITLES = {
    "calibration": "Calibration",
    "gain": "Cumulative gain and lift",
    "survival_by_tier": "Survival by risk tier",
    "drivers": "Driver summary",
    "ltv_deciles": "LTV by decile",
}


def _metric_table(metrics: dict[str, float]) -> str:
    """Rows = metric, columns = model, from keys like `test.risk.roc_auc`."""
    models: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "test":
            continue
        models.setdefault(parts[1], {})[parts[2]] = value
    names = sorted({m for d in models.values() for m in d})
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for metric in names:
        cells = "".join(
            f"<td>{models[m][metric]:.4f}</td>" if metric in models[m] else "<td></td>"
            for m in models)
        rows.append(f"<tr><th>{html.escape(metric)}</th>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def render(title: str, metrics: dict[str, float], notes: list[str],
           images: dict[str, bytes]) -> str:
    """The report as one HTML string with the PNG plots inlined."""
    figures = []
    for name, png in images.items():
        data = base64.b64encode(png).decode()
        caption = html.escape(PLOT_TITLES.get(name, name))
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ddd; padding: 4px 10px; text-align: right; }}
th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 1rem; vertical-align: top; }}
img {{ max-width: 520px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Notes</h2><ul>{items}</ul>
<h2>Test-slice metrics</h2>{_metric_table(metrics)}
<h2>Plots</h2>{''.join(figures)}
</body></html>
"""


def report_for_run(run_id: str, out: Path) -> Path:
    """Rebuild the HTML report of an MLflow run from its metrics, notes and plot artifacts."""
    client = MlflowClient()
    run = client.get_run(run_id)
    local = Path(client.download_artifacts(run_id, "plots"))
    images = {p.stem: p.read_bytes() for p in sorted(local.glob("*.png"))}
    notes_path = Path(client.download_artifacts(run_id, "notes.txt"))
    notes = notes_path.read_text().splitlines()
    title = f"churnlens run {run.info.run_name} ({run_id})"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(title, run.data.metrics, notes, images))
    return out
