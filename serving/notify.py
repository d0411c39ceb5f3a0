"""Webhook alerts after a batch: the accounts that moved into high or critical risk.

`churnlens score ... --notify URL` calls `notify_batch` once the score file is written. It
compares the new file with the previous score file of the same registered model in the
same folder (the newest whose as-of date is earlier, read from the metadata the batch
writes; `previous_scores`), picks the accounts now high or critical that were not before
(or every high or critical account when there is no previous file; `movers`) and POSTs one
JSON body: a Slack-compatible ``text`` plus the ``accounts`` records (`payload`).

Delivery retries with exponential back-off on connection errors, timeouts, 429 and 5xx,
and never raises: the batch has succeeded whatever the webhook does, so the outcome is
returned (`Delivery`) and said in one line. The URL's path is never printed (a Slack
webhook's path is its secret).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ALERT_TIERS = ("high", "critical")
MAX_ACCOUNTS = 1_000  # records in one body (the riskiest first); the body says how many more
TEXT_ACCOUNTS = 10  # accounts named in the text
DELAYS_S = (1.0, 2.0, 4.0)  # back-off before each retry
TIMEOUT_S = 10.0
COLUMNS = ["customer_id", "churn_probability", "risk_tier", "lifecycle_stage",
           "expected_ltv", "drivers"]


def webhook_url(text: str) -> str:
    """The --notify argument: an http or https URL with a host."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL with a host, e.g. https://hooks.example.com/T0/B0")
    return text


@dataclass(frozen=True)
class Delivery:
    """What a notification did: sent or not, how many accounts, attempts, last status."""

    sent: bool
    accounts: int
    attempts: int
    status: int | None
    error: str | None = None


def batch_meta(path: Path) -> dict | None:
    """The churnlens metadata of a score file (as_of, model, customers), or None."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(b"churnlens")
    return json.loads(raw) if raw else None


def previous_scores(out: Path) -> Path | None:
    """The newest score file beside OUT from the same registered model with an earlier
    as-of date than OUT's; None when there is none."""
    current = batch_meta(out)
    if current is None:
        return None
    name = current["model"].get("name")
    found = []
    for path in out.parent.glob("*.parquet"):
        meta = None if path.resolve() == out.resolve() else batch_meta(path)
        if meta and meta["model"].get("name") == name and meta["as_of"] < current["as_of"]:
            found.append((meta["as_of"], path.stat().st_mtime, path))
    return max(found)[2] if found else None


def movers(scores: pa.Table, previous: pa.Table | None) -> list[dict]:
    """Records now in ALERT_TIERS that were not there in PREVIOUS (all of them without
    one), riskiest first; each with its previous tier and main driver."""
    alert = pc.is_in(scores["risk_tier"], value_set=pa.array(ALERT_TIERS))
    before: dict[str, str] = {}
    if previous is not None:
        before = dict(zip(previous["customer_id"].to_pylist(),
                          previous["risk_tier"].to_pylist(), strict=True))
    rows = scores.filter(alert).to_pylist()
    out = []
    for row in rows:
        was = before.get(row["customer_id"])
        if previous is not None and was in ALERT_TIERS:
            continue
        driver = row["drivers"][0] if row["drivers"] else None
        out.append({"customer_id": row["customer_id"], "risk_tier": row["risk_tier"],
                    "previous_tier": was, "churn_probability": row["churn_probability"],
                    "lifecycle_stage": row["lifecycle_stage"],
                    "expected_ltv": row["expected_ltv"],
                    "main_driver": driver["text"] if driver else None,
                    "playbook": driver["playbook"] if driver else None})
    out.sort(key=lambda r: -r["churn_probability"])
    return out


def payload(accounts: list[dict], meta: dict, previous: dict | None) -> dict:
    """The webhook body: Slack-compatible ``text`` and the records (at most MAX_ACCOUNTS)."""
    model = meta["model"]
    since = (f"since the scores of {previous['as_of']}" if previous
             else "(no earlier score file of this model: every high or critical account)")
    lines = [f"churnlens: {len(accounts):,} account(s) moved into high or critical risk as of "
             f"{meta['as_of']} {since}, model {model.get('name')} v{model.get('version')}"]
    for a in accounts[:TEXT_ACCOUNTS]:
        was = (f", was {a['previous_tier']}" if a["previous_tier"]
               else ", new since then" if previous else "")
        lines.append(f"• {a['customer_id']}: {a['risk_tier']} "
                     f"{100 * a['churn_probability']:.0f}%{was}"
                     + (f"; {a['main_driver']}: {a['playbook']}" if a["main_driver"] else ""))
    if len(accounts) > TEXT_ACCOUNTS:
        lines.append(f"… and {len(accounts) - TEXT_ACCOUNTS:,} more")
    return {"text": "\n".join(lines), "as_of": meta["as_of"], "model": model,
            "compared_with": previous["as_of"] if previous else None,
            "accounts_total": len(accounts), "accounts": accounts[:MAX_ACCOUNTS]}


def post(url: str, body: dict, delays: Sequence[float] = DELAYS_S,
         timeout: float = TIMEOUT_S, sleep: Callable[[float], None] = time.sleep
         ) -> tuple[int, int | None, str | None]:
    """POST BODY as JSON to URL, retrying after each of DELAYS on a transient failure.

    Returns (attempts, last HTTP status or None, error or None on a 2xx). A 4xx other than
    429 is not retried: the receiver refused the body.
    """
    data = json.dumps(body).encode()
    status, error = None, None
    for attempt in range(1, len(delays) + 2):
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return attempt, response.status, None
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                return attempt, status, error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            status, error = None, str(getattr(exc, "reason", exc))
        if attempt <= len(delays):
            sleep(delays[attempt - 1])
    return len(delays) + 1, status, error


def notify_batch(out: Path, url: str, log: Callable[[str], None] = print,
                 delays: Sequence[float] = DELAYS_S) -> Delivery:
    """Post the movers of score file OUT to webhook URL and say what was sent; never raises
    for the webhook's sake (a score file without churnlens metadata is a ValueError)."""
    meta = batch_meta(out)
    if meta is None:
        raise ValueError(f"{out} has no churnlens metadata: not a file `churnlens score` wrote")
    earlier = previous_scores(out)
    scores = pq.read_table(out, columns=COLUMNS)
    before = pq.read_table(earlier, columns=["customer_id", "risk_tier"]) if earlier else None
    accounts = movers(scores, before)
    where = urlsplit(url).netloc
    if not accounts:
        log("notify: no account moved into high or critical"
            + (f" since {earlier.name}" if earlier else "") + f"; nothing posted to {where}")
        return Delivery(sent=False, accounts=0, attempts=0, status=None)
    body = payload(accounts, meta, batch_meta(earlier) if earlier else None)
    attempts, status, error = post(url, body, delays)
    compared = f"since {earlier.name}" if earlier else "with no earlier score file"
    if error is None:
        log(f"notify: posted {len(body['accounts']):,} of {len(accounts):,} account(s) moved "
            f"into high or critical ({compared}) to {where}: HTTP {status} after "
            f"{attempts} attempt(s)")
        return Delivery(True, len(accounts), attempts, status)
    log(f"notify: warning: could not post {len(accounts):,} account(s) to {where} after "
        f"{attempts} attempt(s): {error}; the scores are written, the alert is not sent")
    return Delivery(False, len(accounts), attempts, status, error)
