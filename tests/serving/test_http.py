"""The scoring service over HTTP: the real server in a subprocess (tests/serving/conftest.py)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

MAX_PAGE_SIZE = 1000  # serving.max_page_size in params.yaml


@pytest.fixture(scope="module")
def snapshot(trained_env) -> pd.DataFrame:
    return pd.read_parquet(trained_env.snapshot)


@pytest.fixture(scope="module")
def bundle(trained_env):
    """The served model, loaded in the test process the way training code loads it."""
    from churnlens.training.tracking import load_bundle

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained_env.tracking_uri)
        return load_bundle(trained_env.model_uri)


@pytest.fixture(scope="module")
def champion(trained_env) -> dict:
    from mlflow.tracking import MlflowClient

    mv = MlflowClient(tracking_uri=trained_env.tracking_uri).get_model_version_by_alias(
        "churnlens", "champion")
    return {"name": "churnlens", "version": str(mv.version), "run_id": mv.run_id}


def ids(snapshot: pd.DataFrame, n: int, start: int = 0) -> list[str]:
    return [str(i) for i in snapshot["customer_id"].iloc[start:start + n]]


def feature_row(snapshot: pd.DataFrame, bundle, customer_id: str) -> dict:
    """The snapshot row of CUSTOMER_ID as an explicit /score_page row."""
    row = snapshot.loc[snapshot["customer_id"] == customer_id].iloc[0]
    features = {f.name: (None if pd.isna(row[f.name]) else
                         float(row[f.name]) if f.kind == "numeric" else str(row[f.name]))
                for f in bundle.features}
    return {"customer_id": customer_id, "as_of": str(row["cutoff"].date()),
            "features": features}


def assert_same(got, expected, path: str = "record") -> None:
    """Equal, floats to 12 digits: the core's vectorised maths can differ in the last
    digit between a batch of one row and a batch of many."""
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), path
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_same(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same(g, e, f"{path}[{i}]")
    else:
        assert got == expected, path


def post(http: httpx.Client, route: str, body) -> httpx.Response:
    return http.post(route, json=body)


def error_of(response: httpx.Response, status: int) -> str:
    """The error message of RESPONSE, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and isinstance(body["error"], str), body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]


# ---------------------------------------------------------------- endpoints


def test_score_customer_returns_the_scoring_cores_record(http, snapshot, bundle, champion):
    from churnlens.serving.core import score_records

    for customer_id in ids(snapshot, 3):
        got = post(http, "/score_customer", {"customers": [{"customer_id": customer_id}]})
        assert got.status_code == 200, got.text
        [record] = got.json()
        row = snapshot.loc[snapshot["customer_id"] == customer_id]
        [expected] = json.loads(json.dumps(score_records(bundle, row)))
        assert record.pop("model") == champion
        expected.pop("model")
        assert record == expected


def test_concurrent_single_customer_calls_are_batched_and_each_gets_its_own(http, snapshot):
    wanted = ids(snapshot, 24)

    def one(customer_id: str) -> dict:
        response = post(http, "/score_customer", {"customers": [{"customer_id": customer_id}]})
        assert response.status_code == 200, response.text
        return response.json()[0]

    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(one, wanted))
    assert [r["customer_id"] for r in records] == wanted
    metrics = {line.split(" ")[0]: float(line.split(" ")[-1])
               for line in http.get("/metrics").text.splitlines()
               if line.startswith("churnlens_score_customer_batch_size_")}
    # Every customer scored once, in at most as many batches as calls (fewer when merged).
    assert metrics["churnlens_score_customer_batch_size_sum"] >= len(wanted)
    assert 1 <= metrics["churnlens_score_customer_batch_size_count"] <= \
        metrics["churnlens_score_customer_batch_size_sum"]


def test_without_drivers_the_score_is_the_same_and_drivers_are_empty(http, snapshot):
    customer_id = ids(snapshot, 1)[0]
    with_drivers, without = post(http, "/score_customer", {"customers": [
        {"customer_id": customer_id}, {"customer_id": customer_id, "with_drivers": False}]}).json()
    assert without["drivers"] == [] and with_drivers["drivers"]
    assert without["churn_probability"] == with_drivers["churn_probability"]


def test_page_of_ids_keeps_request_order_and_matches_single_calls(http, snapshot):
    wanted = ids(snapshot, 50)[::-1]
    page = post(http, "/score_page", {"customer_ids": wanted})
    assert page.status_code == 200, page.text
    records = page.json()["records"]
    assert [r["customer_id"] for r in records] == wanted
    single = post(http, "/score_customer", {"customers": [{"customer_id": wanted[7]}]}).json()
    assert_same(records[7], single[0])


def test_explicit_feature_rows_score_like_the_snapshot_lookup(http, snapshot, bundle):
    wanted = ids(snapshot, 5, start=10)
    rows = [feature_row(snapshot, bundle, c) for c in wanted]
    by_rows = post(http, "/score_page", {"rows": rows, "with_drivers": True})
    by_ids = post(http, "/score_page", {"customer_ids": wanted})
    assert by_rows.status_code == 200, by_rows.text
    assert_same(by_rows.json(), by_ids.json())


def test_what_if_scores_the_change_beside_the_snapshot_score(http, snapshot):
    customer_id = ids(snapshot, 1, start=3)[0]
    current = post(http, "/score_customer", {"customers": [{"customer_id": customer_id}]})
    response = post(http, "/what_if", {"customer_id": customer_id, "changes": {
        "failed_payments_90d": 4, "tickets_high_open": 3, "active_days_30d": 0}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_same(body["before"], current.json()[0])
    assert body["changes"] == {"failed_payments_90d": 4.0, "tickets_high_open": 3.0,
                               "active_days_30d": 0.0}
    assert body["churn_probability_change"] == pytest.approx(
        body["after"]["churn_probability"] - body["before"]["churn_probability"])
    assert body["after"]["churn_probability"] != body["before"]["churn_probability"]
    assert body["after"]["model"] == body["before"]["model"]


def test_what_if_with_a_null_and_a_category_level(http, snapshot, bundle):
    customer_id = ids(snapshot, 1)[0]
    plan = next(levels for f, levels in bundle.risk.categories_.items() if f == "plan")[0]
    response = post(http, "/what_if", {"customer_id": customer_id,
                                       "changes": {"nps_latest": None, "plan": plan}})
    assert response.status_code == 200, response.text
    assert response.json()["changes"] == {"nps_latest": None, "plan": plan}


def test_model_info_names_the_model_its_metrics_and_features(http, bundle, champion, snapshot):
    response = post(http, "/model_info", {})
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["model"] == champion
    assert info["training"]["metrics"]["test.risk.roc_auc"] > 0.6
    assert [(f["name"], f["kind"]) for f in info["features"]] == [
        (f.name, f.kind) for f in bundle.features]
    plan = next(f for f in info["features"] if f["name"] == "plan")
    assert plan["levels"] == bundle.risk.categories_["plan"]
    assert all("levels" not in f for f in info["features"] if f["kind"] == "numeric")
    assert info["model_uri"].startswith("models:/churnlens")  # never a local path
    assert info["snapshot"] == {"as_of": "2026-10-31", "customers": len(snapshot)}
    assert info["max_page_size"] == MAX_PAGE_SIZE
    survival = info["survival"]  # years of follow-up: no horizon extrapolates
    assert survival["time_axis"] == "cutoff" and survival["supported_follow_up_days"] >= 365
    assert [(h["days"], h["extrapolates"]) for h in survival["horizons"]] == [
        (30, False), (90, False), (180, False), (365, False)]


def test_health_metrics_and_openapi(http, server):
    assert httpx.get(f"{server.url}/livez").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request_total" in metrics.text
    spec = http.get("/docs.json").json()
    assert {"/score_customer", "/score_page", "/what_if", "/model_info"} <= set(spec["paths"])


def test_bentoml_python_client(server, snapshot):
    import bentoml

    customer_id = ids(snapshot, 1)[0]
    with bentoml.SyncHTTPClient(server.url, token=server.api_key) as client:
        [record] = client.score_customer(customers=[{"customer_id": customer_id}])
    assert record["customer_id"] == customer_id


# ---------------------------------------------------------------- errors


def test_malformed_body_is_400(http):
    response = http.post("/score_page", content=b'{"customer_ids": [',
                         headers={"content-type": "application/json"})
    assert "Invalid JSON" in error_of(response, 400)


def test_wrong_type_names_the_field(http):
    message = error_of(post(http, "/score_customer", {"customers": [{"customer_id": 7}]}), 400)
    assert message.startswith("customers[0].customer_id: ")


def test_unknown_field_is_refused(http, snapshot):
    body = {"customers": [{"customer_id": ids(snapshot, 1)[0], "segment": "smb"}]}
    assert "customers[0].segment: Extra inputs" in error_of(post(http, "/score_customer", body),
                                                            400)
    message = error_of(post(http, "/score_page", {"customer_ids": ids(snapshot, 1), "x": 1}), 400)
    assert message.startswith("x: Extra inputs")


def test_missing_required_feature_names_it(http, snapshot, bundle):
    row = feature_row(snapshot, bundle, ids(snapshot, 1)[0])
    del row["features"]["mrr"]
    message = error_of(post(http, "/score_page", {"rows": [row]}), 400)
    assert message == ("rows[0].features: missing required feature(s) mrr (send null for an "
                       "unknown value)")


@pytest.mark.parametrize(("feature", "value", "expected"), [
    ("mrr", "lots", "rows[0].features.mrr: must be a number or null, got 'lots'"),
    ("plan", "platinum", "rows[0].features.plan: must be one of"),
    ("plan", 3, "rows[0].features.plan: must be one of"),
    ("no_such_feature", 1, "rows[0].features: unknown feature(s) no_such_feature"),
])
def test_bad_feature_value_names_the_feature(http, snapshot, bundle, feature, value, expected):
    row = feature_row(snapshot, bundle, ids(snapshot, 1)[0])
    row["features"][feature] = value
    assert error_of(post(http, "/score_page", {"rows": [row]}), 400).startswith(expected)


def test_non_number_types_are_not_coerced(http, snapshot, bundle):
    row = feature_row(snapshot, bundle, ids(snapshot, 1)[0])
    row["features"]["mrr"] = True
    assert "rows[0].features.mrr" in error_of(post(http, "/score_page", {"rows": [row]}), 400)


def test_page_over_the_limit_is_400(http, snapshot):
    page = (ids(snapshot, 1) * (MAX_PAGE_SIZE + 1))
    message = error_of(post(http, "/score_page", {"customer_ids": page}), 400)
    assert message == (f"customer_ids: {MAX_PAGE_SIZE + 1} items is over the page limit of "
                       f"{MAX_PAGE_SIZE}; split the request")


def test_page_needs_exactly_one_of_ids_or_rows(http, snapshot, bundle):
    assert error_of(post(http, "/score_page", {}), 400).startswith("customer_ids, rows: ")
    row = feature_row(snapshot, bundle, ids(snapshot, 1)[0])
    both = {"customer_ids": ids(snapshot, 1), "rows": [row]}
    assert error_of(post(http, "/score_page", both), 400).startswith("customer_ids, rows: ")


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/score_customer", {"customers": [{"customer_id": "NO-SUCH-1"}]}, "customer_id"),
    ("/score_page", {"customer_ids": ["NO-SUCH-1"]}, "customer_ids"),
    ("/what_if", {"customer_id": "NO-SUCH-1", "changes": {"mrr": 1}}, "customer_id"),
])
def test_unknown_customer_is_404_naming_the_id(http, route, body, field):
    message = error_of(post(http, route, body), 404)
    assert message.startswith(f"{field}: unknown customer id(s) 'NO-SUCH-1'")


def test_unknown_customer_fails_only_its_own_call_within_a_batch(http, snapshot):
    good = ids(snapshot, 12)
    bodies = [{"customers": [{"customer_id": c}]} for c in good] + [
        {"customers": [{"customer_id": "NO-SUCH-2"}]}] * 4
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda b: post(http, "/score_customer", b).status_code, bodies))
    assert statuses == [200] * 12 + [404] * 4


def test_what_if_change_errors_name_the_change(http, snapshot):
    customer_id = ids(snapshot, 1)[0]
    message = error_of(post(http, "/what_if", {"customer_id": customer_id,
                                               "changes": {"tickets_open": "many"}}), 400)
    assert message == "changes.tickets_open: must be a number or null, got 'many'"
    assert error_of(post(http, "/what_if", {"customer_id": customer_id, "changes": {}}),
                    400).startswith("changes: ")


def test_a_body_over_the_limit_is_413_before_it_is_read(http):
    from churnlens.serving.http import MAX_BODY_BYTES

    big = b'{"customer_ids": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
    declared = http.post("/score_page", content=big, headers={"content-type": "application/json"})
    assert "over the limit of 16,777,216" in error_of(declared, 413)

    def chunks():
        for start in range(0, len(big), 2**20):
            yield big[start:start + 2**20]

    chunked = http.post("/score_page", content=chunks(),
                        headers={"content-type": "application/json"})
    assert "over the limit" in error_of(chunked, 413)


def test_as_of_beyond_pandas_dates_is_400(http, snapshot, bundle):
    row = feature_row(snapshot, bundle, ids(snapshot, 1)[0])
    for as_of in ("0001-01-01", "9999-12-31"):
        message = error_of(post(http, "/score_page", {"rows": [{**row, "as_of": as_of}]}), 400)
        assert message.startswith("rows[0].as_of: "), message


def test_trailing_slash_redirect_ignores_the_host_header(http):
    response = http.get("/metrics/", headers={"Host": "evil.example"})
    assert response.status_code == 307
    assert response.headers["location"] == "/metrics"


def test_a_client_error_is_one_access_log_line_without_a_traceback(http, server):
    marker = "NO-SUCH-LOGGED-7"
    error_of(post(http, "/score_customer", {"customers": [{"customer_id": marker}]}), 404)
    error_of(post(http, "/score_page", {"customer_ids": [7]}), 400)
    log = server.log.read_text()
    assert "Exception on /score_customer" not in log and "Exception on /score_page" not in log
    assert "Traceback" not in log


def test_non_json_content_type_is_415(http):
    response = http.post("/score_page", content=b"customer_ids=C1",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert error_of(response, 415).startswith("content-type: ")


def test_error_bodies_never_carry_internals():
    from churnlens.serving.http import error_body

    leaked = b'{"error": "Traceback (most recent call last): KeyError: secret"}'
    assert error_body(500, leaked) == {"error": "internal error: the request was not scored; "
                                                "the server log has the details"}
    assert error_body(404, b'[{"error": "customer_id: unknown"}]') == {
        "error": "customer_id: unknown"}
    assert error_body(405, b"Method Not Allowed") == {"error": "Method Not Allowed"}


# ---------------------------------------------------------------- API key


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"X-API-Key": "wrong"}, {"Authorization": "Basic x"}])
@pytest.mark.parametrize(("method", "route"), [
    ("POST", "/score_customer"), ("POST", "/model_info"), ("GET", "/docs.json"),
    ("GET", "/metrics")])
def test_calls_without_the_key_get_401(server, headers, method, route):
    response = httpx.request(method, f"{server.url}{route}", headers=headers, json={})
    assert "API key" in error_of(response, 401)


def test_the_key_is_accepted_in_either_header_and_health_stays_open(server):
    for headers in ({"Authorization": f"Bearer {server.api_key}"},
                    {"X-API-Key": server.api_key}):
        assert httpx.post(f"{server.url}/model_info", json={},
                          headers=headers).status_code == 200
    for route in ("/livez", "/readyz", "/healthz"):
        assert httpx.get(f"{server.url}{route}").status_code == 200


# ---------------------------------------------------------------- command


def test_serve_without_a_snapshot_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    from churnlens.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("serving:\n  port: 3999\n")
    assert main(["serve"]) == 2
    assert "churnlens features --as-of DATE" in capsys.readouterr().err
