"""Property-based fuzzing of the live service from its own OpenAPI document (schemathesis).

Every operation in /docs.json gets a bounded number of generated requests, valid ones and
(for the scoring operations) invalid ones; none may get a 5xx, and every documented (200)
response must match its schema. The operations are listed here and checked against the
document, because schemathesis' own pytest loader (`from_fixture`) does not run on pytest 9.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25  # per operation and mode: a few seconds each against the real model
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
SCORING = [("POST", "/score_customer"), ("POST", "/score_page"), ("POST", "/what_if"),
           ("POST", "/model_info")]
INFRASTRUCTURE = [("GET", "/livez"), ("GET", "/healthz"), ("GET", "/readyz"),
                  ("GET", "/metrics")]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(
        f"{server.url}/docs.json", headers={"Authorization": f"Bearer {server.api_key}"})


@pytest.fixture(scope="module")
def session(server):
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {server.api_key}"
        yield s


def test_the_fuzzed_operations_are_all_the_documented_ones(api_schema):
    documented = {(op.ok().method.upper(), op.ok().path)
                  for op in api_schema.get_all_operations()}
    assert documented == set(SCORING + INFRASTRUCTURE)


@pytest.mark.parametrize(("method", "path", "mode"), [
    *[(m, p, GenerationMode.POSITIVE) for m, p in SCORING + INFRASTRUCTURE],
    *[(m, p, GenerationMode.NEGATIVE) for m, p in SCORING],
])
def test_no_server_error_and_responses_match_the_schema(api_schema, session, method, path,
                                                        mode):
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case):
        case.call_and_validate(session=session, checks=CHECKS)

    call()


@pytest.fixture(scope="module")
def snapshot_row(trained_env):
    """One snapshot customer's features, as JSON values, and the model's category levels."""
    import mlflow
    import pandas as pd

    from churnlens.serving.batch import load_model

    # An in-process `train` earlier in this worker sets MLflow's tracking URI globally,
    # which outranks the environment: name the session's store explicitly.
    mlflow.set_tracking_uri(trained_env.tracking_uri)
    model = load_model(trained_env.model_uri)
    row = pd.read_parquet(trained_env.snapshot).iloc[0]
    features = {f.name: None if pd.isna(row[f.name]) else
                float(row[f.name]) if f.kind == "numeric" else str(row[f.name])
                for f in model.features}
    return str(row["customer_id"]), features, model


def test_any_finite_feature_values_get_a_valid_record(http, snapshot_row):
    """Whatever numbers a client sends (negative, huge, tiny), the answer is a valid record."""
    from hypothesis import strategies as st

    from churnlens.serving.schemas import ScoreRecord

    customer_id, base, model = snapshot_row
    numeric = [f.name for f in model.features if f.kind == "numeric"]
    levels = model.risk.categories_
    values = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
                       st.integers(-10**6, 10**6).map(float))
    changes = st.fixed_dictionaries({}, optional={
        **{name: values for name in numeric},
        **{name: st.one_of(st.none(), st.sampled_from(lv)) for name, lv in levels.items()}})

    @given(changed=changes)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(changed):
        row = {"customer_id": customer_id, "as_of": "2026-10-31",
               "features": {**base, **changed}}
        response = http.post("/score_page", json={"rows": [row]})
        assert response.status_code == 200, response.text
        [record] = response.json()["records"]
        ScoreRecord.model_validate(record)

    call()
