"""The HTTP service's request and response bodies, and its client errors.

pydantic models BentoML validates bodies with and publishes in /docs.json. Client mistakes
raise `FieldError` (400) or `UnknownCustomer` (404), each message led by the field at fault.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from bentoml.exceptions import InvalidArgument, NotFound
from bentoml.validators import ContentType
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, field_validator

MAX_PER_CALL = 100  # customers in one /score_customer call; pages go to /score_page
# The dates pandas' nanosecond timestamps can hold: an as_of beyond them cannot be scored.
FIRST_DATE, LAST_DATE = date(1677, 9, 22), date(2262, 4, 11)

CustomerId = Annotated[str, Field(min_length=1, max_length=128,
                                  description="customer id, as in the data source",
                                  examples=["C000002"])]
# Strict: a numeric feature given "12" or true is a client mistake, not something to guess.
FeatureValue = (Annotated[float, Strict(), AllowInfNan(False)] | Annotated[str, Strict()]
                | None)
WITH_DRIVERS = Field(True, description="explain the score with up to top_n drivers "
                                       "(TreeSHAP); false is faster")


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


class SnapshotIds:
    """Ids in the loaded snapshot, for validating /score_customer bodies.

    BentoML validates a body before the service sees it and passes pydantic no context. An
    unknown id must still be refused per request before the micro-batcher merges requests,
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
        if SnapshotIds.ids is not None and value not in SnapshotIds.ids:
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
    as_of: date = Field(description="date the feature values describe (the record's as_of), "
                                    f"{FIRST_DATE} to {LAST_DATE}", examples=["2026-10-31"],
                        ge=FIRST_DATE, le=LAST_DATE)
    features: dict[str, FeatureValue] = Field(
        description="every model feature by name (see /model_info): numbers for numeric "
                    "features, one of the listed levels for categories; null means unknown",
        examples=[FEATURE_EXAMPLE])


class PageRequest(_Request):
    """A page of customers: snapshot ids or explicit feature rows, exactly one of the two."""

    model_config = ConfigDict(json_schema_extra={
        "example": {"customer_ids": ["C000002", "C000007"], "with_drivers": True},
        "oneOf": [{"required": ["customer_ids"]}, {"required": ["rows"]}]})

    # Optional but never null (the type has no None): a field is given or left out.
    customer_ids: list[CustomerId] = Field(
        None, min_length=1, description="customer ids to look up in the feature snapshot "
                                        "(at most max_page_size, 1000 by default); give "
                                        "this or rows")
    rows: list[FeatureRow] = Field(
        None, min_length=1, description="explicit feature rows (at most max_page_size); "
                                        "give this or customer_ids")
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
    lifecycle_stage: str | None = Field(
        description="onboarding, adoption or renewal window; null when the model has no "
                    "lifecycle feature or the customer's stage is unknown")
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
    levels: list[str] = Field(None, exclude_if=lambda levels: levels is None,
                              description="accepted values; category features only (left "
                                          "out for numeric ones)")


class Training(BaseModel):
    trained_at: str | None = Field(description="when the model was trained (UTC)")
    metrics: dict[str, float] = Field(description="test-slice metrics of the training run")


class Snapshot(BaseModel):
    as_of: date = Field(description="cutoff of the loaded feature snapshot")
    customers: int = Field(description="customers in it, the ids /score_customer knows")


class HorizonSupport(BaseModel):
    days: int = Field(description="P(still a customer) this many days after the cutoff")
    extrapolates: bool = Field(
        description="the figure lies beyond the data the survival model was fitted on for most "
                    "customers (extrapolated_share > 0.5): a model assumption, not a measurement")
    extrapolated_share: float = Field(
        ge=0.0, le=1.0, description="share of the training rows whose figure at this horizon "
                                    "lies beyond the data")


class SurvivalSupport(BaseModel):
    time_axis: Literal["cutoff", "tenure"] = Field(
        description="what the survival model's time counts from: the cutoff, or signup "
                    "(survival on tenure, used when fewer than 50 training rows are followed "
                    "for 365 days and the features carry tenure)")
    follow_up_days: float = Field(description="the longest follow-up from a cutoff in training")
    supported_follow_up_days: float = Field(
        description="the longest follow-up that at least 50 training rows reach")
    supported_tenure_days: float | None = Field(
        description="survival on tenure: the largest tenure that at least 50 training rows are "
                    "seen at or beyond (a customer's curve rests on the data up to this tenure); "
                    "null on the cutoff axis")
    horizons: list[HorizonSupport] = Field(
        description="the survival horizons of every score record, each with whether it "
                    "extrapolates")


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
    survival: SurvivalSupport = Field(
        description="how far the survival model's training data reach and which survival "
                    "horizons extrapolate beyond them")
