"""The workspace's HTTP side: the page at `/` and the GET endpoints it reads.

A Starlette app that the BentoML service mounts at `/` (BentoML's mount matches only this
app's own routes, so the API endpoints are untouched). Its lifespan builds the
`churnlens.serving.workspace.Workspace` from the service instance once, after the service
has loaded its model and snapshot. Routes:

- `GET /`: the page (HTML with its CSS and script inlined; no external resource, and a
  Content-Security-Policy that forbids any). It holds no data, so it is served without the
  API key; the page asks for the key once and sends it on every call.
- `GET /workspace/meta`: snapshot date, customers, currency, tiers, filterable attributes
  and their levels, sort keys, the features the what-if panel offers.
- `GET /workspace/accounts`: a filtered, sorted page of the at-risk list and the summary
  of the filtered accounts (revenue at risk by renewal month, tier mix).
- `GET /workspace/accounts.csv`: every filtered account, streamed as CSV.
- `GET /workspace/account/{customer_id}`: the score record, a weekly survival curve, the
  feature values, annual revenue and revenue at risk.

List parameters: `tier` (repeatable), `stage`, `attr.NAME=LEVEL` (any category attribute),
`renewal_within` (days), `q` (customer id prefix), `sort`, `offset`, `limit`. Errors answer
`{"error": "PARAMETER: message"}` (400) or 404 for an unknown customer, the service's shape.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Iterator
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from churnlens.serving.core import score_records
from churnlens.serving.workspace import (
    DEFAULT_SORT,
    SORTS,
    Filters,
    QueryError,
    Workspace,
)
from churnlens.training.drivers import TIER_NAMES

PAGE_PATH = "/"
MAX_LIMIT = 500  # rows per list page
CSV_CHUNK = 2_000  # rows whose drivers are scored at once while streaming the download
CSV_COLUMNS = ("customer_id", "churn_probability", "risk_tier", "lifecycle_stage",
               "days_to_renewal", "expected_ltv", "annual_revenue", "revenue_at_risk",
               "main_driver", "playbook")
LIST_PARAMS = {"tier", "stage", "renewal_within", "q", "sort", "offset", "limit"}
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; form-action 'none'; base-uri 'none'")


def _workspace(request: Request) -> Workspace:
    return request.app.state.workspace


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int | None, low: int, high: int | None
         ) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name}: {raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"{low} or more"
        raise QueryError(f"{name}: must be {bound}, got {value}")
    return value


def parse_filters(request: Request) -> Filters:
    """The list filters in REQUEST's query; QueryError names an unknown parameter."""
    params = request.query_params
    unknown = [k for k in params if k not in LIST_PARAMS and not k.startswith("attr.")]
    if unknown:
        raise QueryError(f"{unknown[0]}: unknown parameter; use {sorted(LIST_PARAMS)} or "
                         "attr.NAME=LEVEL")
    tiers = tuple(t for raw in params.getlist("tier") for t in raw.split(",") if t)
    attributes = {k.removeprefix("attr."): v for k, v in params.items()
                  if k.startswith("attr.") and v != ""}
    if params.get("stage"):
        attributes["lifecycle_stage"] = params["stage"]
    return Filters(tiers=tiers, attributes=attributes,
                   renewal_within=_int(request, "renewal_within", None, 0, None),
                   id_prefix=params.get("q", "").strip() or None)


def page(request: Request) -> Response:
    return HTMLResponse(_page_html(), headers={"Content-Security-Policy": CSP,
                                               "Cache-Control": "no-store"})


def meta(request: Request) -> Response:
    ws = _workspace(request)
    model = ws.model
    return JSONResponse({
        "model": model.info_ref, "as_of": str(ws.as_of.date()), "customers": ws.n,
        "currency": model.currency, "horizon_days": model.horizon_days,
        "tiers": TIER_NAMES.tolist(), "attributes": ws.levels(), "sorts": list(SORTS),
        "default_sort": DEFAULT_SORT, "has_renewal": bool(np.isfinite(ws.renewal).any()),
        "editable": ws.editable(), "max_limit": MAX_LIMIT,
        "labels": {f.name: f.label for f in model.features},
    })


def accounts(request: Request) -> Response:
    ws = _workspace(request)
    try:
        keep = ws.mask(parse_filters(request))
        sort = request.query_params.get("sort") or DEFAULT_SORT
        positions = ws.select(keep, sort)
        offset = _int(request, "offset", 0, 0, None)
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
    except QueryError as exc:
        return _error(400, str(exc))
    shown = positions[offset:offset + limit]
    return JSONResponse({"total": int(positions.size), "offset": offset, "limit": limit,
                         "sort": sort, "rows": ws.list_rows(shown),
                         "summary": ws.summary(keep)})


def accounts_csv(request: Request) -> Response:
    ws = _workspace(request)
    try:
        positions = ws.select(ws.mask(parse_filters(request)),
                              request.query_params.get("sort") or DEFAULT_SORT)
    except QueryError as exc:
        return _error(400, str(exc))
    name = f"at-risk-{ws.as_of.date()}.csv"
    return StreamingResponse(_csv_lines(ws, positions), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _csv_lines(ws: Workspace, positions: np.ndarray) -> Iterator[str]:
    """The CSV header, then the rows, CSV_CHUNK at a time (a sync iterator: Starlette runs
    it in a worker thread, so scoring drivers never blocks the event loop)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for start in range(0, positions.size, CSV_CHUNK):
        writer.writerows(ws.list_rows(positions[start:start + CSV_CHUNK]))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def account(request: Request) -> Response:
    ws = _workspace(request)
    cid = request.path_params["customer_id"]
    position = ws.position.get(cid)
    if position is None:
        return _error(404, f"customer_id: {cid!r} is not in the snapshot of "
                           f"{ws.as_of.date()}")
    record = score_records(ws.model, ws.rows.take([position]), num_threads=1)[0]
    row = ws.rows.frame.iloc[position]
    features = [{"name": f.name, "label": f.label, "group": f.group, "kind": f.kind,
                 "value": _plain(row[f.name])} for f in ws.model.features]
    return JSONResponse({"record": record, "curve": ws.curve(position), "features": features,
                         "annual_revenue": _plain(ws.revenue[position]),
                         "revenue_at_risk": _plain(ws.at_risk[position])})


def _plain(value):
    """A JSON value for a frame cell: numbers as float, missing as None, levels as str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float | np.number):
        number = float(value)
        return None if math.isnan(number) else number
    return None if value != value else str(value)  # pd.NA / NaT compare unequal


_PAGE: dict[str, str] = {}


def _page_html() -> str:
    """The page's HTML with its CSS and script inlined, read from the package once."""
    if "html" not in _PAGE:
        static = resources.files("churnlens.serving") / "static"
        html = (static / "workspace.html").read_text(encoding="utf-8")
        _PAGE["html"] = (html.replace("/*WORKSPACE_CSS*/",
                                      (static / "workspace.css").read_text(encoding="utf-8"))
                         .replace("/*WORKSPACE_JS*/",
                                  (static / "workspace.js").read_text(encoding="utf-8")))
    return _PAGE["html"]


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    import bentoml

    service = bentoml.get_current_service()  # set by BentoML before mounted apps start
    app.state.workspace = Workspace(service.model, service.prepared)
    yield


def workspace_app() -> Starlette:
    """The Starlette app of the workspace, to mount at `/` on the BentoML service."""
    return Starlette(routes=[
        Route(PAGE_PATH, page, methods=["GET"]),
        Route("/workspace/meta", meta, methods=["GET"]),
        Route("/workspace/accounts", accounts, methods=["GET"]),
        Route("/workspace/accounts.csv", accounts_csv, methods=["GET"]),
        Route("/workspace/account/{customer_id:path}", account, methods=["GET"]),
    ], lifespan=_lifespan)
