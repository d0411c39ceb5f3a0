"""The churnlens HTTP service: score records for customer-success tools, over BentoML.

`churnlens serve` starts it (or `python -m bentoml serve serving.service:ChurnService`). It
loads, once, the model (env CHURNLENS_MODEL_URI, default the registry's champion) and the
feature snapshot written by `churnlens features --as-of` (env CHURNLENS_SNAPSHOT), then
scores customers by id or from explicit feature values with the scoring core the batch
scorer uses (`serving.core.score_records`), so both give the same records.

Endpoints (POST, JSON): /score_customer (adaptive batching), /score_page, /what_if and
/model_info. BentoML adds /livez, /readyz, /metrics (Prometheus) and /docs.json (OpenAPI).
Every error body is `{"error": message}`, the message led by the field at fault
("customers[0].customer_id: ..."), which is the error schema BentoML publishes in
/docs.json; a 5xx body never says more than that something failed. With env
CHURNLENS_API_KEY set, every endpoint but the health checks needs `Authorization: Bearer
KEY` or `X-API-Key: KEY`.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import math
import os
from datetime import date
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Literal

import bentoml
import pandas as pd
from bentoml.exceptions import InvalidArgument, NotFound
from bentoml.validators import ContentType
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, field_validator

from churnlens.settings import ServingSettings
from serving.batching import MicroBatcher
from serving.core import FeatureInputError, Prepared, check_features, prepare, score_records

ENV_MODEL_URI = "CHURNLENS_MODEL_URI"
ENV_SNAPSHOT = "CHURNLENS_SNAPSHOT"
ENV_API_KEY = "CHURNLENS_API_KEY"
ENV_MAX_PAGE_SIZE = "CHURNLENS_MAX_PAGE_SIZE"
DEFAULT_MODEL_URI = "models:/churnlens@champion"
MAX_PER_CALL = 100  # customers in one /score_customer call; pages go to /score_page
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)
MAX_BATCH = 256  # customers scored together when concurrent /score_customer calls merge
SMALL_BATCH = 256  # fewer rows: one LightGBM thread (OpenMP start-up costs more than it saves)
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz"})

logger = logging.getLogger("bentoml.churnlens")
BATCH_SIZE = bentoml.metrics.Histogram(
    name="churnlens_score_customer_batch_size",
    documentation="customers scored together in one /score_customer batch (concurrent calls "
                  "merged by adaptive batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

CustomerId = Annotated[str, Field(min_length=1, max_length=128,
                                  description="customer id, as in the data source",
                                  examples=["C000002"])]
# Strict: a numeric feature given "12" or true is a client mistake, not something to guess.
FeatureValue = (Annotated[float, Strict(), AllowInfNan(False)] | Annotated[str, Strict()]
                | None)
WITH_DRIVERS = Field(True, description="explain the score with up to top_n drivers "
                                       "(TreeSHAP); false is faster")


# ---------------------------------------------------------------- client errors


class UnknownCustomer(NotFound):
    """404: customer ids that are not in the loaded feature snapshot."""

    def __init__(self, ids: list[str], field: str = "customer_id"):
        shown = ", ".join(repr(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
        super().__init__(f"{field}: unknown customer id(s) {shown} ({len(ids)} in all): not "
                         "active in the feature snapshot the service loaded")


class FieldError(InvalidArgument):
    """400: a field holds a value the model cannot take; the message starts with the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")


class _Snapshot:
    """Ids in the loaded snapshot, for validating /score_customer bodies.

    BentoML validates a body before the service sees it and passes pydantic no context. An
    unknown id must still be refused per request before adaptive batching merges requests,
    or one bad id would fail every request of its batch; so the service registers its ids
    here once, at start-up. Until then every id passes.
    """

    ids: frozenset[str] | None = None


# ---------------------------------------------------------------- request models


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerRequest(_Request):
    """One customer to score from the feature snapshot."""

    model_config = ConfigDict(json_schema_extra={"example": {"customer_id": "C000002"}})

    customer_id: CustomerId
    with_drivers: bool = WITH_DRIVERS

    @field_validator("customer_id")
    @classmethod
    def _known(cls, value: str) -> str:
        if _Snapshot.ids is not None and value not in _Snapshot.ids:
            raise UnknownCustomer([value])
        return value


class CustomerBatch(_Request):
    """Body of /score_customer: usually one customer; concurrent calls are batched."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "customers": [{"customer_id": "C000002"}]}})

    customers: list[CustomerRequest] = Field(
        min_length=1, max_length=MAX_PER_CALL,
        description=f"customers to score (at most {MAX_PER_CALL}; use /score_page for more)")


FEATURE_EXAMPLE = {
    "tenure_days": 912.0, "lifecycle_stage": "renewal", "events_30d": 41.0,
    "active_days_30d": 9.0, "mrr": 1180.0, "seats": 14.0, "plan": "growth",
    "days_to_renewal": 21.0, "tickets_open": 2.0, "nps_latest": None, "...": "...",
}


class FeatureRow(_Request):
    """A customer described by explicit feature values instead of the snapshot."""

    customer_id: CustomerId
    as_of: date = Field(description="date the feature values describe (the record's as_of)",
                        examples=["2026-10-31"])
    features: dict[str, FeatureValue] = Field(
        description="every model feature by name (see /model_info): numbers for numeric "
                    "features, one of the listed levels for categories; null means unknown",
        examples=[FEATURE_EXAMPLE])


class PageRequest(_Request):
    """A page of customers: snapshot ids or explicit feature rows, not both."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "customer_ids": ["C000002", "C000007"], "with_drivers": True}})

    customer_ids: list[CustomerId] | None = Field(
        None, min_length=1, description="customer ids to look up in the feature snapshot "
                                        "(at most max_page_size, 1000 by default)")
    rows: list[FeatureRow] | None = Field(
        None, min_length=1, description="explicit feature rows (at most max_page_size)")
    with_drivers: bool = WITH_DRIVERS


class WhatIfRequest(_Request):
    """A snapshot customer with some feature values changed."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "customer_id": "C000002", "changes": {"tickets_open": 0, "active_days_30d": 20}}})

    customer_id: CustomerId
    changes: dict[str, FeatureValue] = Field(
        min_length=1, description="feature name -> new value (null: unknown)")
    with_drivers: bool = WITH_DRIVERS


class InfoRequest(_Request):
    """No parameters: send {}."""


# ---------------------------------------------------------------- response models


class ModelRef(BaseModel):
    name: str | None = Field(description="registered model name")
    version: str | None = Field(description="registered model version")
    run_id: str | None = Field(description="MLflow run that trained it")


class Driver(BaseModel):
    name: str = Field(description="driver group: usage, support, billing, ...")
    feature: str = Field(description="feature contributing most in the group")
    value: float | str | None = Field(description="that feature's value")
    contribution: float = Field(description="the group's TreeSHAP contribution (log-odds)")
    direction: str = Field(description="raises risk")
    text: str = Field(description="the driver in words")
    playbook: str = Field(description="suggested customer-success action")


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ScoreRecord(BaseModel):
    """One customer's score: the record of DESIGN.md, the same as the batch scorer's."""

    customer_id: str
    as_of: date = Field(description="date of the features scored")
    model: ModelRef = Field(description="the model that produced this record")
    churn_probability: Probability = Field(description="P(churn within horizon_days)")
    horizon_days: int
    risk_tier: Literal["low", "medium", "high", "critical"]
    lifecycle_stage: str | None
    survival: dict[str, Probability] = Field(
        description="P(still a customer) after 30, 90, 180 and 365 days",
        examples=[{"30": 0.99, "90": 0.97, "180": 0.95, "365": 0.9}])
    expected_remaining_days: float
    expected_ltv: float | None = Field(
        description="expected discounted revenue over the LTV horizon; null when the "
                    "revenue features (MRR, payments) are unknown")
    currency: str
    drivers: list[Driver] = Field(description="why, most important first (empty when "
                                              "with_drivers is false)")


# Declared with its media type: otherwise BentoML 1.4 rebuilds the list's JSON schema on
# every response only to learn that it is JSON (a fifth of the event loop's time).
ScoreRecords = Annotated[list[ScoreRecord], ContentType("application/json")]


class Page(BaseModel):
    records: list[ScoreRecord] = Field(description="one record per customer, in request order")


class WhatIf(BaseModel):
    customer_id: str
    changes: dict[str, float | str | None] = Field(description="the changed feature values")
    before: ScoreRecord = Field(description="score of the snapshot row")
    after: ScoreRecord = Field(description="score with the changes applied")
    churn_probability_change: float = Field(description="after minus before")


class FeatureInfo(BaseModel):
    name: str
    kind: Literal["numeric", "category"]
    group: str = Field(description="driver group")
    label: str
    levels: list[str] | None = Field(description="accepted values of a category feature")


class Training(BaseModel):
    trained_at: str | None = Field(description="when the model was trained (UTC)")
    metrics: dict[str, float] = Field(description="test-slice metrics of the training run")


class Snapshot(BaseModel):
    as_of: date = Field(description="cutoff of the loaded feature snapshot")
    customers: int = Field(description="customers in it, the ids /score_customer knows")


class ModelInfo(BaseModel):
    # Optional values live in nested models only: BentoML 1.4 flattens a top-level
    # `X | None` to X in /docs.json, which would make a null break the published schema.
    model: ModelRef = Field(description="the model that answers: name, version, run id")
    model_uri: str = Field(description="the URI the service loaded")
    training: Training
    horizon_days: int = Field(description="churn_probability is for churn within this many days")
    currency: str
    features: list[FeatureInfo] = Field(description="the model's features, in order")
    snapshot: Snapshot
    max_page_size: int = Field(description="most customers /score_page takes in one call")


# ---------------------------------------------------------------- the service


@bentoml.service(name="churnlens", traffic={"timeout": 60}, threads=2)
class ChurnService:
    """Scores customers with the model and feature snapshot loaded once at start-up."""

    def __init__(self) -> None:
        from serving.batch import load_model

        self.model_uri = os.environ.get(ENV_MODEL_URI) or DEFAULT_MODEL_URI
        self.model = load_model(self.model_uri)  # resolves an alias to its version
        self.snapshot = _read_snapshot(os.environ.get(ENV_SNAPSHOT), self.model)
        # Encoded once for both models: a call picks its rows without pandas work.
        self.prepared = prepare(self.model, self.snapshot)
        self.batcher = MicroBatcher(self._score_customers, max_items=MAX_BATCH,
                                    on_batch=BATCH_SIZE.observe)
        self.position = {cid: i for i, cid in enumerate(self.snapshot["customer_id"])}
        self.max_page_size = int(os.environ.get(ENV_MAX_PAGE_SIZE)
                                 or ServingSettings().max_page_size)
        self.kinds = {f.name: f.kind for f in self.model.features}
        self.levels = dict(self.model.risk.categories_)
        _Snapshot.ids = frozenset(self.position)
        logger.info("model %s v%s and %d customers as of %s loaded", self.model.info["name"],
                    self.model.info["version"], len(self.snapshot),
                    self.snapshot["cutoff"].max().date())
        # The model and snapshot live as long as the process: moved out of the collector's
        # reach, full collections no longer walk them. Each request also leaves a few
        # thousand objects alive for seconds (its tracing span, kept by the connection's
        # keep-alive timer); with the default thresholds a full collection walked them
        # every ~2 s under load, pausing every in-flight call by 50-140 ms (p99 at 8
        # clients 83-97 ms). Young collections at 10,000 allocations instead of 700 make
        # full ones about 14 times rarer.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)

    def __is_ready__(self) -> bool:
        return _Snapshot.ids is not None and self.model is not None

    @bentoml.api(input_spec=CustomerBatch)
    async def score_customer(self, customers: list[CustomerRequest]) -> ScoreRecords:
        """Score snapshot customers by id: {"customers": [{"customer_id": "..."}]}.

        Concurrent calls are batched together (adaptive batching). Unknown ids get 404.
        """
        return await self.batcher.submit(customers)

    def _score_customers(self, customers: list[CustomerRequest]) -> list[dict]:
        """Records of snapshot customers (the merged calls of one batch), in order."""
        records: list[dict | None] = [None] * len(customers)
        for drivers in (True, False):
            picked = [i for i, c in enumerate(customers) if c.with_drivers is drivers]
            if picked:
                rows = self._rows([customers[i].customer_id for i in picked], "customer_id")
                for i, record in zip(picked, self._score(rows, drivers), strict=True):
                    records[i] = record
        return records

    @bentoml.api
    def score_page(self, page: PageRequest, /) -> Page:
        """Score a page of customers: snapshot ids or explicit feature rows."""
        if (page.customer_ids is None) == (page.rows is None):
            raise FieldError("customer_ids, rows", "give exactly one of the two")
        field = "customer_ids" if page.rows is None else "rows"
        size = len(page.customer_ids or page.rows)
        if size > self.max_page_size:
            raise FieldError(field, f"{size} items is over the page limit of "
                                    f"{self.max_page_size}; split the request")
        if page.customer_ids is not None:
            frame = self._rows(page.customer_ids, "customer_ids")
        else:
            frame = self._explicit_rows(page.rows)
        return Page(records=self._score(frame, page.with_drivers))

    @bentoml.api
    def what_if(self, request: WhatIfRequest, /) -> WhatIf:
        """Score a snapshot customer as is and with some feature values changed."""
        before = self._rows([request.customer_id], "customer_id").frame
        for name, value in request.changes.items():
            self._check_value(f"changes.{name}", name, value)
        after = before.assign(**request.changes)
        old, new = self._score(pd.concat([before, after], ignore_index=True),
                               request.with_drivers)
        return WhatIf(customer_id=request.customer_id, changes=request.changes,
                      before=old, after=new,
                      churn_probability_change=new["churn_probability"]
                      - old["churn_probability"])

    @bentoml.api
    async def model_info(self, request: InfoRequest, /) -> ModelInfo:
        """Which model answers: name, version, run id, test metrics and its features."""
        info = self.model.info
        metrics = {k: float(v) for k, v in (info.get("metrics") or {}).items()
                   if isinstance(v, int | float) and math.isfinite(v)}
        return ModelInfo(
            model=ModelRef(**self.model.info_ref), model_uri=self.model_uri,
            training=Training(trained_at=info.get("trained_at"), metrics=metrics),
            horizon_days=self.model.horizon_days, currency=self.model.currency,
            features=[FeatureInfo(name=f.name, kind=f.kind, group=f.group, label=f.label,
                                  levels=self.levels.get(f.name)) for f in self.model.features],
            snapshot=Snapshot(as_of=self.snapshot["cutoff"].max().date(),
                              customers=len(self.snapshot)),
            max_page_size=self.max_page_size)

    def _rows(self, ids: list[str], field: str) -> Prepared:
        """Snapshot rows of IDS, in order; UnknownCustomer names the ids not found."""
        unknown = [i for i in ids if i not in self.position]
        if unknown:
            raise UnknownCustomer(unknown, field)
        return self.prepared.take([self.position[i] for i in ids])

    def _explicit_rows(self, rows: list[FeatureRow]) -> pd.DataFrame:
        """Feature rows as a frame the scoring core takes; FieldError names what is wrong."""
        names = set(self.model.feature_names)
        for n, row in enumerate(rows):
            where = f"rows[{n}].features"
            unknown = sorted(set(row.features) - names)
            if unknown:
                raise FieldError(where, f"unknown feature(s) {', '.join(unknown)}; "
                                        "/model_info lists the model's features")
            missing = [f for f in self.model.feature_names if f not in row.features]
            if missing:
                raise FieldError(where, f"missing required feature(s) {', '.join(missing)} "
                                        "(send null for an unknown value)")
            for name, value in row.features.items():
                self._check_value(f"{where}.{name}", name, value)
        frame = pd.DataFrame([r.features for r in rows])
        frame.insert(0, "customer_id", [r.customer_id for r in rows])
        frame.insert(1, "cutoff", pd.to_datetime([r.as_of for r in rows]))
        try:
            return check_features(self.model, frame)
        except FeatureInputError as exc:  # the checks above should have caught it first
            raise FieldError("rows", str(exc)) from None

    def _check_value(self, field: str, name: str, value: float | str | None) -> None:
        """FieldError unless VALUE suits feature NAME: a number, a known level, or null."""
        kind = self.kinds.get(name)
        if kind is None:
            raise FieldError(field, "unknown feature; /model_info lists the model's features")
        if value is None:
            return
        if kind == "numeric" and not isinstance(value, float):
            raise FieldError(field, f"must be a number or null, got {value!r}")
        levels = self.levels.get(name)
        if kind == "category" and (not isinstance(value, str)
                                   or (levels is not None and value not in levels)):
            raise FieldError(field, f"must be one of {levels} or null, got {value!r}")

    def _score(self, frame: pd.DataFrame | Prepared, with_drivers: bool) -> list[dict]:
        threads = 1 if len(frame) < SMALL_BATCH else None
        return score_records(self.model, frame, with_drivers=with_drivers, num_threads=threads)


def _read_snapshot(path: str | None, model) -> pd.DataFrame:
    """The feature snapshot at PATH, checked against the model's features and coerced once."""
    if not path:
        raise RuntimeError(f"set {ENV_SNAPSHOT} to a snapshot written by `churnlens features "
                           "--as-of DATE` (churnlens serve does it)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"feature snapshot {path} not found; write one with "
                                "`churnlens features --as-of DATE`")
    frame = pd.read_parquet(path)
    missing = [c for c in ("customer_id", "cutoff") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}: not a churnlens feature snapshot")
    dupes = frame["customer_id"].duplicated()
    if dupes.any():
        raise ValueError(f"{path} holds {int(dupes.sum())} duplicate customer ids, e.g. "
                         f"{list(frame.loc[dupes, 'customer_id'][:3])}; one row per customer")
    frame["customer_id"] = frame["customer_id"].astype(str)
    return check_features(model, frame).reset_index(drop=True)


# ---------------------------------------------------------------- HTTP guard


class HttpGuard:
    """ASGI middleware: API key, JSON-only bodies and one error-body shape.

    BentoML 1.4.39 answers its own 4xx exceptions with a JSON list and pydantic errors with
    a count ("1 validation error for ...") and a `detail` list its own OpenAPI document says
    is a string; both are rewritten here to {"error": message naming the field}. Any 5xx body is replaced by a generic one, so no exception text or
    stack trace ever leaves the server.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.key = os.environ.get(ENV_API_KEY) or None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        if self.key and scope["path"] not in OPEN_PATHS and not self._authorised(headers):
            await _send_json(send, 401, {"error": "missing or wrong API key: send "
                                                  "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"})
            return
        media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if scope["method"] == "POST" and media != "application/json":
            await _send_json(send, 415, {"error": f"content-type: {media!r} is not accepted; "
                                                  "send application/json"})
            return
        await self.app(scope, receive, _ErrorBodies(send))

    def _authorised(self, headers: dict[str, str]) -> bool:
        bearer = headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("x-api-key")
        return given is not None and hmac.compare_digest(given.encode(), self.key.encode())


class _ErrorBodies:
    """An ASGI `send` that passes successes through and rewrites error bodies."""

    def __init__(self, send) -> None:
        self.send = send
        self.start: dict | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            status = self.start["status"]
            await _send_json(self.send, status, error_body(status, b"".join(self.chunks)),
                             [(k, v) for k, v in self.start["headers"]
                              if k.lower() not in (b"content-length", b"content-type")])


def error_body(status: int, raw: bytes) -> dict:
    """The body for an error response of STATUS whose original body was RAW."""
    if status >= 500:
        reason = {503: "the service is busy or not ready; retry shortly",
                  504: "scoring took too long; retry with fewer customers"}
        return {"error": reason.get(status, "internal error: the request was not scored; "
                                            "the server log has the details")}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"error": raw.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase}
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # BentoML 1.4.39 wraps its exceptions' bodies in a list
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return {"error": HTTPStatus(status).phrase}
    if isinstance(body.get("detail"), list):
        return {"error": validation_message(body["detail"])}
    return {"error": body["error"]}


def validation_message(detail: list[dict]) -> str:
    """pydantic's errors as one line, each led by the field path ("rows.0.as_of: ...")."""
    parts = []
    for err in detail[:5]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                      for p in err.get("loc", ()) if p != "root").lstrip(".") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(detail) - 5} more)" if len(detail) > 5 else ""
    return "; ".join(parts) + more


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*(headers or []), (b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


ChurnService.add_asgi_middleware(HttpGuard)
