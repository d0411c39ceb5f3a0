"""Webhook alerts (serving.notify) against a local HTTP receiver in a thread."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from churnlens.serving.notify import (
    MAX_ACCOUNTS,
    movers,
    notify_batch,
    payload,
    previous_scores,
    webhook_url,
)
from churnlens.serving.records import records_table

FAST = (0.01, 0.02, 0.04)


def _record(cid: str, tier: str, prob: float, driver: str | None = None) -> dict:
    drivers = [] if driver is None else [{
        "name": "usage", "feature": "events_30d", "value": 1.0, "contribution": 0.4,
        "direction": "raises", "text": driver, "playbook": "Run an adoption review"}]
    return {"customer_id": cid, "as_of": "2026-10-31",
            "model": {"name": "churnlens", "version": "3", "run_id": "r"},
            "churn_probability": prob, "horizon_days": 90, "risk_tier": tier,
            "lifecycle_stage": "adoption",
            "survival": {"30": 0.9, "90": 0.8, "180": 0.7, "365": 0.6},
            "expected_remaining_days": 300.0, "expected_ltv": 1000.0, "currency": "USD",
            "drivers": drivers}


def _write(path: Path, tiers: dict[str, str], as_of: str, model: str = "churnlens") -> Path:
    """A score file as `churnlens score` writes it: records plus the churnlens metadata."""
    prob = {"low": 0.05, "medium": 0.15, "high": 0.3, "critical": 0.6}
    table = records_table([_record(c, t, prob[t] + i * 1e-4, f"driver of {c}")
                           for i, (c, t) in enumerate(tiers.items())])
    meta = {"as_of": as_of, "model": {"uri": f"models:/{model}@champion", "name": model,
                                      "version": "3", "run_id": "r"},
            "customers": len(tiers)}
    pq.write_table(table.replace_schema_metadata({b"churnlens": json.dumps(meta).encode()}),
                   path)
    return path


class _Receiver(BaseHTTPRequestHandler):
    statuses: list[int] = []  # answered in turn; 200 once they run out
    bodies: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(json.loads(body))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"statuses": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/secret-token", handler
    finally:
        server.shutdown()
        server.server_close()


def test_posts_accounts_that_moved_into_high_or_critical(tmp_path, receiver):
    url, handler = receiver
    _write(tmp_path / "2026-09-30.parquet",
           {"A": "low", "B": "high", "C": "medium", "D": "critical", "E": "low"}, "2026-09-30")
    out = _write(tmp_path / "2026-10-31.parquet",
                 {"A": "critical", "B": "critical", "C": "high", "D": "low", "E": "low",
                  "F": "high"}, "2026-10-31")
    said: list[str] = []
    delivery = notify_batch(out, url, log=said.append, delays=FAST)
    assert delivery.sent and delivery.accounts == 3 and delivery.attempts == 1
    (body,) = handler.bodies
    # A and C moved up, F is new; B stayed in an alert tier, D fell.
    assert [a["customer_id"] for a in body["accounts"]] == ["A", "F", "C"]
    assert [a["previous_tier"] for a in body["accounts"]] == ["low", None, "medium"]
    assert body["accounts"][0]["main_driver"] == "driver of A"
    assert body["compared_with"] == "2026-09-30"
    assert body["text"].startswith("churnlens: 3 account(s) moved into high or critical")
    assert "A: critical 60%, was low" in body["text"]
    assert said == [f"notify: posted 3 of 3 account(s) moved into high or critical (since "
                    f"2026-09-30.parquet) to {url.split('/')[2]}: HTTP 200 after 1 attempt(s)"]
    assert "secret-token" not in said[0]


def test_without_a_previous_file_every_alert_account_is_sent(tmp_path, receiver):
    url, handler = receiver
    _write(tmp_path / "other-model.parquet", {"A": "low"}, "2026-09-30", model="other")
    _write(tmp_path / "later.parquet", {"A": "low"}, "2026-11-30")
    out = _write(tmp_path / "now.parquet", {"A": "high", "B": "low", "C": "critical"},
                 "2026-10-31")
    assert previous_scores(out) is None  # another model's file and a later one do not count
    notify_batch(out, url, log=lambda _: None, delays=FAST)
    (body,) = handler.bodies
    assert [a["customer_id"] for a in body["accounts"]] == ["C", "A"]
    assert body["compared_with"] is None


def test_previous_is_the_newest_earlier_file_of_the_same_model(tmp_path):
    _write(tmp_path / "a.parquet", {"A": "low"}, "2026-08-31")
    newest = _write(tmp_path / "b.parquet", {"A": "low"}, "2026-09-30")
    (tmp_path / "notes.parquet").write_text("not parquet")
    out = _write(tmp_path / "c.parquet", {"A": "high"}, "2026-10-31")
    assert previous_scores(out) == newest


def test_retries_with_back_off_then_succeeds(tmp_path, receiver):
    url, handler = receiver
    handler.statuses = [503, 429]
    out = _write(tmp_path / "now.parquet", {"A": "high"}, "2026-10-31")
    delivery = notify_batch(out, url, log=lambda _: None, delays=FAST)
    assert delivery.sent and delivery.attempts == 3 and delivery.status == 200
    assert len(handler.bodies) == 3


@pytest.mark.parametrize(("statuses", "attempts"), [([500] * 9, 4), ([400], 1)])
def test_a_failing_webhook_never_raises(tmp_path, receiver, statuses, attempts):
    url, handler = receiver
    handler.statuses = list(statuses)
    out = _write(tmp_path / "now.parquet", {"A": "high"}, "2026-10-31")
    said: list[str] = []
    delivery = notify_batch(out, url, log=said.append, delays=FAST)
    assert not delivery.sent and delivery.attempts == attempts
    assert delivery.status == statuses[0]
    assert said[0].startswith("notify: warning: could not post 1 account(s)")
    assert "the scores are written" in said[0]


def test_an_unreachable_webhook_never_raises(tmp_path):
    out = _write(tmp_path / "now.parquet", {"A": "high"}, "2026-10-31")
    delivery = notify_batch(out, "http://127.0.0.1:9/hook", log=lambda _: None, delays=FAST)
    assert not delivery.sent and delivery.attempts == 4 and delivery.status is None
    assert delivery.error


def test_nothing_moved_posts_nothing(tmp_path, receiver):
    url, handler = receiver
    _write(tmp_path / "before.parquet", {"A": "high"}, "2026-09-30")
    out = _write(tmp_path / "now.parquet", {"A": "critical", "B": "low"}, "2026-10-31")
    said: list[str] = []
    assert not notify_batch(out, url, log=said.append, delays=FAST).sent
    assert handler.bodies == []
    assert said == [f"notify: no account moved into high or critical since before.parquet; "
                    f"nothing posted to {url.split('/')[2]}"]


def test_body_is_capped_and_says_how_many():
    table = records_table([_record(f"C{i:05d}", "high", 0.3 + i * 1e-6)
                           for i in range(MAX_ACCOUNTS + 5)])
    accounts = movers(table, None)
    body = payload(accounts, {"as_of": "2026-10-31", "model": {"name": "m", "version": "1"}},
                   None)
    assert body["accounts_total"] == MAX_ACCOUNTS + 5
    assert len(body["accounts"]) == MAX_ACCOUNTS
    assert body["accounts"][0]["customer_id"] == f"C{MAX_ACCOUNTS + 4:05d}"  # riskiest first
    assert body["text"].splitlines()[-1] == f"… and {MAX_ACCOUNTS + 5 - 10:,} more"


def test_file_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(records_table([_record("A", "high", 0.3)]), path)
    with pytest.raises(ValueError, match="has no churnlens metadata"):
        notify_batch(path, "http://127.0.0.1:9/", log=lambda _: None)


@pytest.mark.parametrize("url", ["ftp://host/x", "hooks.example/x", "http://"])
def test_webhook_url_must_be_http(url):
    with pytest.raises(argparse.ArgumentTypeError, match="is not an http"):
        webhook_url(url)


def test_score_refuses_a_bad_notify_url_before_scoring(capsys):
    from churnlens.cli.app import build_parser

    with pytest.raises(SystemExit, match="2"):
        build_parser().parse_args(["score", "--as-of", "2026-10-31", "--out", "s.parquet",
                                   "--notify", "hooks.example.com/x"])
    assert "argument --notify: 'hooks.example.com/x' is not an http(s) URL" in (
        capsys.readouterr().err)
    args = build_parser().parse_args(["score", "--as-of", "2026-10-31", "--out", "s.parquet",
                                      "--notify", "https://hooks.example.com/T0/B0"])
    assert args.notify == "https://hooks.example.com/T0/B0"
