"""The workspace's data and GET endpoints, in process, on the session's trained sample model.

Expected values are computed here with pandas from `score_frame` and the snapshot, apart
from the numpy paths the workspace takes.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
import tomllib
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from churnlens.serving.core import check_features, prepare, score_frame, score_records
from churnlens.serving.records import score_table
from churnlens.serving.workdir import META_KEY
from churnlens.serving.workspace import Filters, QueryError, Workspace
from churnlens.serving.workspace_app import Building, workspace_app
from churnlens.serving.workspace_scores import ScoreFileError, check_score_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(trained_env):
    from churnlens.serving.batch import load_model

    # An in-process `train` earlier in this worker sets MLflow's tracking URI globally,
    # which outranks the environment: name the session's store explicitly.
    mlflow.set_tracking_uri(trained_env.tracking_uri)
    model = load_model(trained_env.model_uri)
    frame = pd.read_parquet(trained_env.snapshot)
    frame["customer_id"] = frame["customer_id"].astype(str)
    rows = prepare(model, check_features(model, frame).reset_index(drop=True))
    expected = score_frame(model, rows)
    expected["customer_id"] = rows.frame["customer_id"].to_numpy()
    revenue = np.where(rows.frame["mrr"].notna(), rows.frame["mrr"] * 12,
                       expected["expected_ltv"].fillna(0) * 365 / model.ltv.horizon_days)
    expected["at_risk"] = expected["churn_probability"] * revenue
    return Workspace(model, rows), rows.frame, expected


@pytest.fixture(scope="module")
def client(loaded):
    app = workspace_app()
    app.state.workspace = loaded[0]  # what the lifespan does from the BentoML service
    return TestClient(app)


def _ids(ws: Workspace, filters: Filters, sort: str = "revenue_at_risk") -> list[str]:
    return [str(ws.ids[i]) for i in ws.select(ws.mask(filters), sort)]


def test_default_order_is_revenue_at_risk(loaded):
    ws, _, expected = loaded
    want = expected.sort_values("at_risk", ascending=False, kind="stable")
    assert _ids(ws, Filters()) == want["customer_id"].tolist()
    np.testing.assert_allclose(ws.at_risk, expected["at_risk"], rtol=1e-12)


@pytest.mark.parametrize("sort", ["churn_probability", "expected_ltv", "customer_id"])
def test_other_sorts(loaded, sort):
    ws, _, expected = loaded
    want = expected.sort_values(sort, ascending=sort == "customer_id", kind="stable")
    assert _ids(ws, Filters(), sort) == want["customer_id"].tolist()


def test_filters_select_what_pandas_selects(loaded):
    ws, frame, expected = loaded
    at_risk = expected["risk_tier"].isin(["high", "critical"]).to_numpy()
    segments = frame.loc[at_risk, "segment"].dropna()
    assert not segments.empty, (expected["risk_tier"].value_counts().to_dict(),
                                int(frame["segment"].isna().sum()), len(frame))
    segment = segments.mode()[0]
    filters = Filters(tiers=("high", "critical"), attributes={"segment": segment},
                      renewal_within=90)
    got = set(_ids(ws, filters))
    want = set(frame.loc[at_risk & (frame["segment"] == segment).to_numpy()
                         & (frame["days_to_renewal"] <= 90).to_numpy(), "customer_id"])
    assert got == want and 0 < len(got) < len(frame)


def test_search_by_id_prefix(loaded):
    ws, frame, _ = loaded
    prefix = frame["customer_id"].iloc[0][:-2]
    got = _ids(ws, Filters(id_prefix=prefix))
    assert sorted(got) == sorted(c for c in frame["customer_id"] if c.startswith(prefix))
    assert _ids(ws, Filters(id_prefix=frame["customer_id"].iloc[5])) == [
        frame["customer_id"].iloc[5]]
    assert _ids(ws, Filters(id_prefix="no-such-id")) == []


def test_summary_adds_up(loaded):
    ws, _, expected = loaded
    s = ws.summary(None)
    counts = expected["risk_tier"].value_counts()
    assert {t["tier"]: t["customers"] for t in s["tiers"]} == {
        t: int(counts.get(t, 0)) for t in ("low", "medium", "high", "critical")}
    months = sum(m["revenue_at_risk"] for m in s["by_renewal_month"])
    assert months + s["no_renewal_date"]["revenue_at_risk"] == pytest.approx(
        expected["at_risk"].sum(), rel=1e-9)
    assert s["by_renewal_month"][-1]["month"] == "later"


@pytest.mark.parametrize(("filters", "match"), [
    (Filters(tiers=("severe",)), r"tier: \['severe'\] not a risk tier"),
    (Filters(attributes={"colour": "red"}), "colour: not a category attribute"),
    (Filters(attributes={"segment": "galactic"}), "segment: 'galactic' is not a level"),
    (Filters(renewal_within=-1), "renewal_within: must be 0 or more"),
])
def test_bad_filters_are_named(loaded, filters, match):
    with pytest.raises(QueryError, match=match):
        loaded[0].mask(filters)


def test_list_endpoint_pages_and_summarises(client, loaded):
    ws = loaded[0]
    first = client.get("/workspace/accounts", params={"tier": "low", "limit": 7}).json()
    second = client.get("/workspace/accounts",
                        params={"tier": "low", "limit": 7, "offset": 7}).json()
    want = _ids(ws, Filters(tiers=("low",)))
    assert first["total"] == len(want) == first["summary"]["customers"]
    assert [r["customer_id"] for r in first["rows"] + second["rows"]] == want[:14]
    row = first["rows"][0]
    assert set(row) == {"customer_id", "churn_probability", "risk_tier", "lifecycle_stage",
                        "days_to_renewal", "expected_ltv", "annual_revenue",
                        "revenue_at_risk", "main_driver", "playbook"}


@pytest.mark.parametrize(("params", "match"), [
    ({"limit": 501}, "limit: must be between 1 and 500"),
    ({"offset": "x"}, "offset: 'x' is not a whole number"),
    ({"sort": "mood"}, "sort: 'mood' is not a sort key"),
    ({"segmnt": "smb"}, "segmnt: unknown parameter"),
    ({"stage": "teen"}, "lifecycle_stage: 'teen' is not a level"),
])
def test_list_endpoint_errors(client, params, match):
    response = client.get("/workspace/accounts", params=params)
    assert response.status_code == 400
    assert re.search(match, response.json()["error"])


def test_csv_holds_the_filtered_list(client, loaded):
    response = client.get("/workspace/accounts.csv", params={"tier": ["high", "critical"]})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["customer_id"] for r in rows] == _ids(loaded[0],
                                                    Filters(tiers=("high", "critical")))


def test_account_endpoint(client, loaded):
    ws, frame, expected = loaded
    cid = expected.sort_values("at_risk").iloc[-1]["customer_id"]
    body = client.get(f"/workspace/account/{cid}").json()
    assert body["record"]["churn_probability"] == pytest.approx(
        expected.set_index("customer_id").loc[cid, "churn_probability"], rel=1e-12)
    curve = [p["survival"] for p in body["curve"]]
    assert curve[0] == pytest.approx(1.0) and curve == sorted(curve, reverse=True)
    assert len(body["features"]) == len(ws.model.features)
    missing = client.get("/workspace/account/nobody")
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]


def test_page_loads_nothing_from_outside(client):
    response = client.get("/")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    html = response.text
    assert "/*WORKSPACE_JS*/" not in html and "function showList" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_page_files_are_package_data():
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["churnlens.serving"]
    files = [p.relative_to(root / "serving").as_posix()
             for p in (root / "serving" / "static").iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files)


# ---------------------------------------------------------------- built in the background


def test_endpoints_answer_503_with_progress_until_built(loaded):
    ws = loaded[0]
    app = workspace_app()
    app.state.building = building = Building(ws.model, ws.rows)  # not started yet
    client = TestClient(app)  # no `with`: the lifespan (which would start it) does not run
    for path in ("/workspace/meta", "/workspace/accounts", "/workspace/accounts.csv",
                 f"/workspace/account/{ws.ids[0]}"):
        response = client.get(path)
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert response.json()["preparing"] == {"done": 0, "total": ws.n,
                                                "stage": "scoring the snapshot"}
        assert f"0 of {ws.n:,} accounts" in response.json()["error"]
    assert client.get("/").status_code == 200  # the page itself waits for nobody
    building.run()
    assert building.progress.done == ws.n and building.error is None
    body = client.get("/workspace/accounts", params={"limit": 5}).json()
    assert [r["customer_id"] for r in body["rows"]] == _ids(ws, Filters())[:5]


def test_main_drivers_are_the_records_first_drivers(loaded):
    ws = loaded[0]
    records = score_records(ws.model, ws.rows)
    want = [{"text": r["drivers"][0]["text"], "playbook": r["drivers"][0]["playbook"]}
            if r["drivers"] else None for r in records]
    assert ws.main_drivers(np.arange(ws.n)) == want
    assert any(w is not None for w in want)  # drivers were compared, not only Nones


# ---------------------------------------------------------------- from a score file


def _write_scores(path: Path, table: pa.Table, ref: dict, as_of: str) -> Path:
    """TABLE as `churnlens score` writes it: the records and the job's metadata."""
    meta = {META_KEY: json.dumps({"as_of": as_of, "model": {"uri": "models:/x", **ref},
                                  "customers": table.num_rows}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


@pytest.fixture(scope="module")
def records(loaded):
    ws = loaded[0]
    return score_table(ws.model, ws.rows.frame)


@pytest.mark.parametrize("order", ["snapshot", "shuffled"])
def test_score_file_gives_the_scored_workspace(loaded, records, tmp_path, order):
    ws = loaded[0]
    # Shuffled, with a customer the snapshot does not hold: matched by id, the extra left out.
    extra = records.slice(0, 1).set_column(0, "customer_id", pa.array(["not-in-snapshot"]))
    shuffled = pa.concat_tables([records.take(np.random.default_rng(0).permutation(ws.n)),
                                 extra])
    path = _write_scores(tmp_path / "s.parquet", records if order == "snapshot" else shuffled,
                         ws.model.info_ref, str(ws.as_of.date()))
    building = Building(ws.model, ws.rows, str(path))
    building.run()
    from_file = building.workspace
    assert building.error is None
    np.testing.assert_allclose(from_file.prob, ws.prob, rtol=1e-12)
    np.testing.assert_array_equal(from_file.tier, ws.tier)
    np.testing.assert_allclose(from_file.ltv, ws.ltv, rtol=1e-12, equal_nan=True)
    everyone = ws.select(None)
    assert from_file.main_drivers(everyone) == ws.main_drivers(everyone)
    assert from_file.list_rows(everyone[:20]) == ws.list_rows(everyone[:20])


@pytest.mark.parametrize(("change", "match"), [
    ("version", r"scored by model \['churnlens'\] version\(s\) \['999'\], but the server "
                r"serves churnlens v"),
    ("as_of", r"as of \['2001-01-01'\], but the snapshot is as of"),
    ("no metadata", "not written by `churnlens score`"),
])
def test_score_file_of_another_model_or_date_is_refused(loaded, records, tmp_path, change,
                                                        match):
    ws = loaded[0]
    ref, as_of = dict(ws.model.info_ref), str(ws.as_of.date())
    if change == "version":
        ref["version"] = "999"
    if change == "as_of":
        as_of = "2001-01-01"
    path = _write_scores(tmp_path / "s.parquet", records, ref, as_of)
    if change == "no metadata":
        pq.write_table(records, path)
    with pytest.raises(ScoreFileError, match=match):
        check_score_file(path, ws.model, ws.as_of)


@pytest.mark.parametrize(("edit", "match"), [
    ("drop", r"1 of the snapshot's \d[\d,]* customers have no record \(e\.g\. \['"),
    ("twice", r"1 customer\(s\) have more than one record"),
    ("records' date", r"as of \['2001-01-01'\], but the snapshot"),
])
def test_score_file_records_are_checked(loaded, records, tmp_path, edit, match):
    ws = loaded[0]
    table = {"drop": records.slice(1),
             "twice": pa.concat_tables([records, records.slice(0, 1)]),
             "records' date": records.set_column(
                 1, "as_of", pa.array([date(2001, 1, 1)] * records.num_rows, pa.date32())),
             }[edit]
    path = _write_scores(tmp_path / "s.parquet", table, ws.model.info_ref,
                         str(ws.as_of.date()))
    check_score_file(path, ws.model, ws.as_of)  # the metadata alone looks right
    building = Building(ws.model, ws.rows, str(path))
    building.run()
    assert building.workspace is None and re.search(match, building.error)
    response = building.not_ready()
    assert response.status_code == 500 and re.search(match, json.loads(response.body)["error"])
