"""The service's OpenAPI document (/docs.json) and its docs page (/docs), on the real server."""

from __future__ import annotations

import re

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spec(http) -> dict:
    response = http.get("/docs.json")
    assert response.status_code == 200, response.text
    return response.json()


def body_schema(spec: dict, route: str) -> dict:
    schema = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_docs_json_validates_as_openapi_3(spec):
    from openapi_spec_validator import OpenAPIV30SpecValidator

    errors = [e.message for e in OpenAPIV30SpecValidator(spec).iter_errors()]
    assert spec["openapi"].startswith("3.0") and errors == []


def test_every_request_body_is_required(spec):
    bodies = {route: op["requestBody"] for route, item in spec["paths"].items()
              for op in item.values() if isinstance(op, dict) and "requestBody" in op}
    assert {"/score_customer", "/score_page", "/what_if", "/model_info"} <= set(bodies)
    assert all(body.get("required") is True for body in bodies.values()), bodies


def test_a_page_is_exactly_one_of_customer_ids_or_rows(spec):
    schema = body_schema(spec, "/score_page")
    assert schema["oneOf"] == [{"required": ["customer_ids"]}, {"required": ["rows"]}]
    for name in ("customer_ids", "rows"):
        assert not schema["properties"][name].get("nullable"), name
        assert "default" not in schema["properties"][name]


def test_every_null_a_record_holds_is_documented_as_nullable(http, spec, trained_env):
    """Scores a page of real customers and checks each null field against the schema."""
    ids = [str(i) for i in pd.read_parquet(trained_env.snapshot,
                                           columns=["customer_id"])["customer_id"][:300]]
    records = http.post("/score_page", json={"customer_ids": ids}).json()["records"]
    record_schema = spec["components"]["schemas"]["ScoreRecord"]["properties"]
    driver_schema = spec["components"]["schemas"]["Driver"]["properties"]
    nulls = {k for r in records for k, v in r.items() if v is None}
    nulls |= {f"drivers.{k}" for r in records for d in r["drivers"] for k, v in d.items()
              if v is None}
    for field in nulls:
        where = driver_schema if field.startswith("drivers.") else record_schema
        assert where[field.removeprefix("drivers.")].get("nullable") is True, field
    for field in ("lifecycle_stage", "expected_ltv"):
        assert record_schema[field].get("nullable") is True, field
    for field in ("customer_id", "churn_probability", "risk_tier", "survival"):
        assert not record_schema[field].get("nullable"), field


def test_docs_page_opens_without_the_key_and_loads_nothing_from_elsewhere(server):
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    assert "googletagmanager" not in page.text
    for asset in re.findall(r"(?:src|href)=\"\./([^\"]+)\"", page.text):
        assert httpx.get(f"{server.url}/{asset}").status_code == 200, asset
    assert httpx.get(f"{server.url}/docs.json").status_code == 401  # the data needs the key
