"""The workspace's HTTP side: the page at `/` and the GET endpoints it reads.

A Starlette app that the BentoML service mounts at `/` (BentoML's mount matches only this
app's own routes, so the API endpoints are untouched). Its lifespan starts building the
`churnlens.serving.workspace.Workspace` from the service instance in a background thread
(`Building`), so the server is ready (`/readyz`, the scoring API) at once: scoring a
100,000-account snapshot takes about 10 s on two cores, a million accounts minutes. Given a
score file (CHURNLENS_SCORES, `churnlens serve --scores`), the build reads it instead
(checked at start-up: same model version and as-of date as the snapshot, else the server
does not start). While the build runs, each /workspace/* endpoint answers 503 with a
Retry-After header and `{"error", "preparing": {"done", "total", "stage"}}`; the page shows
that progress and retries. Routes:

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
import functools
import io
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from churnlens.serving import workspace_cache
from churnlens.serving.core import score_records
from churnlens.serving.workspace import (
    DEFAULT_SORT,
    LIST_COLUMNS,
    SORTS,
    Filters,
    QueryError,
    Workspace,
    snapshot_as_of,
    text_ids_of,
)
from churnlens.serving.workspace_scores import (
    ENV_SCORES,
    Progress,
    ScoreFileError,
    check_score_file,
    read_score_file,
    score_snapshot,
)
from churnlens.training.drivers import TIER_NAMES

PAGE_PATH = "/"
MAX_LIMIT = 500  # rows per list page
CSV_CHUNK = 20_000  # rows whose main drivers are computed at once while streaming the CSV
RETRY_AFTER_S = 2  # what a 503 asks the client to wait while the workspace is prepared
LIST_PARAMS = {"tier", "stage", "renewal_within", "q", "sort", "offset", "limit"}
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; form-action 'none'; base-uri 'none'")
logger = logging.getLogger("bentoml.churnlens")


class Building:
    """The workspace built in a background thread: `workspace` once done, `error` (a
    message) if it failed, `progress` meanwhile.

    model, rows: the service's model and prepared snapshot; scores: a score file to read
    instead of scoring (None: score the snapshot). cache, snapshot: the folder that keeps
    the scores of earlier starts (`churnlens.serving.workspace_cache`) and the snapshot
    file they are keyed on (either None: no cache).
    """

    def __init__(self, model, rows, scores: str | None = None, cache: Path | None = None,
                 snapshot: str | None = None) -> None:
        self.model, self.rows, self.scores = model, rows, scores
        self.cache, self.snapshot = cache, snapshot
        self.progress = Progress(total=len(rows), stage=(  # no path: clients read it
            "reading the score file" if scores else "scoring the snapshot"))
        self.workspace: Workspace | None = None
        self.error: str | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="churnlens-workspace", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """Build the workspace; a failure is kept as `error` (the endpoints answer it)."""
        t0 = time.perf_counter()
        try:
            if self.scores:
                scores = read_score_file(self.scores, self.model, text_ids_of(self.rows),
                                         snapshot_as_of(self.rows), on_read=self._read)
            else:
                scores, how = self._scored()
            self.progress.stage = "sorting the list"
            self.workspace = Workspace(self.model, self.rows, scores)
        except (ValueError, OSError, MemoryError, ArithmeticError) as exc:
            self.error = str(exc)
            logger.error("workspace: not available: %s", exc)
            return
        self.progress.done = self.progress.total
        logger.info("workspace ready: %d accounts %s in %.1f s", self.progress.total,
                    "from " + self.scores if self.scores else how, time.perf_counter() - t0)

    def _scored(self):
        """The snapshot's scores, from the cache when it has them, and how they came."""
        if self.cache is None or self.snapshot is None:
            return score_snapshot(self.model, self.rows, self.progress), "scored"
        path = workspace_cache.cache_path(self.cache, self.model, self.snapshot)
        scores = workspace_cache.load(path, len(self.rows))
        if scores is not None:
            return scores, f"from the cache {path}"
        scores = score_snapshot(self.model, self.rows, self.progress)
        workspace_cache.save(path, scores)
        return scores, "scored (kept in the cache)"

    def _read(self) -> None:
        self.progress.done = self.progress.total
        self.progress.stage = "checking the score file"

    def not_ready(self) -> JSONResponse:
        """The answer of a workspace endpoint until the workspace is built."""
        if self.error is not None:
            return _error(500, f"workspace: not available: {self.error}")
        p = self.progress
        return JSONResponse(
            {"error": f"workspace: being prepared ({p.stage}): {p.done:,} of {p.total:,} "
                      f"accounts done; retry in {RETRY_AFTER_S} s",
             "preparing": {"done": p.done, "total": p.total, "stage": p.stage}},
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _needs_workspace(handler: Callable[[Request, Workspace], Response]):
    """HANDLER(request, workspace), or the 503 of `Building.not_ready` until it is built."""
    @functools.wraps(handler)
    def endpoint(request: Request) -> Response:
        state = request.app.state
        ws = getattr(state, "workspace", None) or state.building.workspace
        return state.building.not_ready() if ws is None else handler(request, ws)
    return endpoint


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


@_needs_workspace
def meta(request: Request, ws: Workspace) -> Response:
    model = ws.model
    return JSONResponse({
        "model": model.info_ref, "as_of": str(ws.as_of.date()), "customers": ws.n,
        "currency": model.currency, "horizon_days": model.horizon_days,
        "tiers": TIER_NAMES.tolist(), "attributes": ws.levels(), "sorts": list(SORTS),
        "default_sort": DEFAULT_SORT, "has_renewal": bool(np.isfinite(ws.renewal).any()),
        "editable": ws.editable(), "max_limit": MAX_LIMIT,
        "labels": {f.name: f.label for f in model.features},
    })


@_needs_workspace
def accounts(request: Request, ws: Workspace) -> Response:
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


@_needs_workspace
def accounts_csv(request: Request, ws: Workspace) -> Response:
    try:
        positions = ws.select(ws.mask(parse_filters(request)),
                              request.query_params.get("sort") or DEFAULT_SORT)
    except QueryError as exc:
        return _error(400, str(exc))
    name = f"at-risk-{ws.as_of.date()}.csv"
    return StreamingResponse(_csv_lines(ws, positions), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _csv_lines(ws: Workspace, positions: np.ndarray) -> Iterator[bytes]:
    """The CSV header, then the rows, CSV_CHUNK at a time, written by Arrow from the list's
    columns (Python's csv module formatted floats at about 20,000 rows/s). A sync
    iterator: Starlette runs it in a worker thread, so computing drivers never blocks
    the event loop."""
    header = ",".join(f'"{name}"' for name in LIST_COLUMNS) + "\n"
    yield header.encode()
    options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    for start in range(0, positions.size, CSV_CHUNK):
        buffer = io.BytesIO()
        pa_csv.write_csv(ws.list_table(positions[start:start + CSV_CHUNK]), buffer, options)
        yield buffer.getvalue()


@_needs_workspace
def account(request: Request, ws: Workspace) -> Response:
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
    scores = os.environ.get(ENV_SCORES) or None
    if scores:  # a wrong file stops the start-up with its message, not a silent fallback
        try:
            check_score_file(scores, service.model, snapshot_as_of(service.prepared))
        except ScoreFileError as exc:
            logger.error("%s", exc)
            raise
    app.state.building = Building(service.model, service.prepared, scores,
                                  cache=service.workspace_cache, snapshot=service.snapshot_path)
    app.state.building.start()
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
