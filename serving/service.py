"""The churnlens HTTP service: score records for customer-success tools, over BentoML.

`churnlens serve` starts it (or `python -m bentoml serve churnlens.serving.service:ChurnService`). It
loads, once, the model (env CHURNLENS_MODEL_URI, default the registry's champion) and the
feature snapshot written by `churnlens features --as-of` (env CHURNLENS_SNAPSHOT), then
scores customers by id or from explicit feature values with the scoring core the batch
scorer uses (`churnlens.serving.core.score_records`), so both give the same records.

Endpoints (POST, JSON): /score_customer (concurrent calls scored together by
`churnlens.serving.batching.MicroBatcher`), /score_page, /what_if and /model_info; their bodies are in
`churnlens.serving.schemas`. BentoML adds /livez, /readyz, /metrics (Prometheus) and /docs.json (OpenAPI).
Every error body is `{"error": message}`, the message led by the field at fault
("customers[0].customer_id: ..."), which is the error schema BentoML publishes in
/docs.json; a 5xx body never says more than that something failed. With env
CHURNLENS_API_KEY set, every endpoint but the health checks needs `Authorization: Bearer
KEY` or `X-API-Key: KEY` (`churnlens.serving.http.HttpGuard`).
"""

from __future__ import annotations

import gc
import logging
import math
import os

import bentoml
import pandas as pd

from churnlens.serving import startup
from churnlens.serving.batching import MicroBatcher
from churnlens.serving.core import (
    FeatureInputError,
    Prepared,
    check_features,
    score_records,
)
from churnlens.serving.http import HttpGuard, json_response, quiet_client_errors
from churnlens.serving.schemas import (
    CustomerBatch,
    CustomerRequest,
    FeatureInfo,
    FeatureRow,
    FieldError,
    InfoRequest,
    ModelInfo,
    ModelRef,
    Page,
    PageRequest,
    ScoreRecords,
    Snapshot,
    SnapshotIds,
    SurvivalSupport,
    Training,
    UnknownCustomer,
    WhatIf,
    WhatIfRequest,
)
from churnlens.serving.workspace_app import workspace_app
from churnlens.settings import ServingSettings

ENV_MAX_PAGE_SIZE = "CHURNLENS_MAX_PAGE_SIZE"
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)
MAX_BATCH = 256  # customers scored together when concurrent /score_customer calls merge
SMALL_BATCH = 256  # fewer rows: one LightGBM thread (OpenMP start-up costs more than it saves)

logger = logging.getLogger("bentoml.churnlens")
BATCH_SIZE = bentoml.metrics.Histogram(
    name="churnlens_score_customer_batch_size",
    documentation="customers scored together in one /score_customer batch (concurrent calls "
                  "merged by the micro-batcher)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

# ---------------------------------------------------------------- the service


@bentoml.service(name="churnlens", traffic={"timeout": 60}, threads=2)
class ChurnService:
    """Scores customers with the model and feature snapshot loaded once at start-up."""

    def __init__(self) -> None:
        # `churnlens serve` checked and loaded both before opening the port; under
        # `bentoml serve` the worker loads them here from the environment.
        loaded = startup.take() or startup.load(startup.ServeConfig.from_env())
        quiet_client_errors()
        self.model, self.model_uri = loaded.model, loaded.model_uri
        self.snapshot = loaded.snapshot
        # Encoded once for both models: a call picks its rows without pandas work.
        self.prepared = loaded.prepared
        # The workspace's scores of earlier starts on this model and snapshot file.
        self.workspace_cache, self.snapshot_path = loaded.workspace_cache, loaded.snapshot_path
        self.batcher = MicroBatcher(self._score_customers, max_items=MAX_BATCH,
                                    on_batch=BATCH_SIZE.observe)
        self.position = {cid: i for i, cid in enumerate(self.snapshot["customer_id"])}
        self.max_page_size = int(os.environ.get(ENV_MAX_PAGE_SIZE)
                                 or ServingSettings().max_page_size)
        self.kinds = {f.name: f.kind for f in self.model.features}
        self.levels = dict(self.model.risk.categories_)
        SnapshotIds.ids = frozenset(self.position)
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
        return SnapshotIds.ids is not None and self.model is not None

    @bentoml.api(input_spec=CustomerBatch)
    async def score_customer(self, customers: list[CustomerRequest]) -> ScoreRecords:
        """Score snapshot customers by id: {"customers": [{"customer_id": "..."}]}.

        Concurrent calls are scored together (serving.batching). Unknown ids get 404.
        """
        return json_response(await self.batcher.submit(customers))

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
        return json_response({"records": self._score(frame, page.with_drivers)})

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
        """Which model answers: name, version, run id, test metrics, its features, and how
        far its survival figures rest on the training data."""
        info = self.model.info
        metrics = {k: float(v) for k, v in (info.get("metrics") or {}).items()
                   if isinstance(v, int | float) and math.isfinite(v)}
        return ModelInfo(
            model=ModelRef(**self.model.info_ref), model_uri=self.model_uri,
            training=Training(trained_at=info.get("trained_at"), metrics=metrics),
            horizon_days=self.model.horizon_days, currency=self.model.currency,
            features=[FeatureInfo(name=f.name, kind=f.kind, group=f.group, label=f.label,
                                  **({"levels": self.levels[f.name]} if f.name in self.levels
                                     else {})) for f in self.model.features],
            snapshot=Snapshot(as_of=self.snapshot["cutoff"].max().date(),
                              customers=len(self.snapshot)),
            max_page_size=self.max_page_size,
            survival=SurvivalSupport(**self.model.survival.support()))

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
        records = score_records(self.model, frame, with_drivers=with_drivers,
                                num_threads=threads)
        for record in records:  # an unknown LTV is NaN in the core and null in JSON
            if record["expected_ltv"] != record["expected_ltv"]:
                record["expected_ltv"] = None
        return records


ChurnService.add_asgi_middleware(HttpGuard)
# The customer-success workspace: the page at / and its GET /workspace/* endpoints.
ChurnService.mount_asgi_app(workspace_app(), path="/", name="workspace")
