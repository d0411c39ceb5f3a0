"""The workspace page in a real browser: Debian's chromium, driven by Playwright.

The session's server runs with an API key, so the page has to ask for it once. Screenshots
of each step are saved under the test's temporary folder. Every request the page makes must
go to the server itself (the page loads nothing from the network).
"""

from __future__ import annotations

import csv
import io
import shutil
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api  # the dev extra; no browser download: Debian's chromium

    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install "
                    "chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _summary_rows(http, **params) -> tuple[int, list[dict]]:
    body = http.get("/workspace/accounts", params={**params, "limit": 500}).json()
    return body["total"], body["rows"]


def test_workspace_page(browser, server, http, tmp_path):
    context = browser.new_context(viewport={"width": 1440, "height": 900},
                                  accept_downloads=True)
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")

    # The key is asked for once, then kept for the tab.
    page.fill("#apikey", server.api_key)
    page.click("#keyform button")
    page.wait_for_selector("#accounts tbody tr[data-id]")
    total, listed = _summary_rows(http)
    ids = page.eval_on_selector_all("#accounts tbody tr[data-id]",
                                    "rows => rows.map(r => r.dataset.id)")
    assert ids == [r["customer_id"] for r in listed[:50]]
    assert page.inner_text("#total") == f"{total:,}"
    risk = [r["revenue_at_risk"] for r in listed]
    assert risk == sorted(risk, reverse=True)  # ranked by revenue at risk by default
    assert page.locator("#month-chart rect").count() == 13
    page.screenshot(path=tmp_path / "1-list.png", full_page=True)

    # A tier filter narrows the list to that tier.
    high_total, high_rows = _summary_rows(http, tier="high")
    assert 0 < high_total < total
    page.check("input[name=tier][value=high]")
    page.wait_for_function("t => document.querySelector('#total')?.textContent === t",
                           arg=f"{high_total:,}")
    tiers = page.eval_on_selector_all("#accounts tbody tr[data-id] .tier",
                                      "els => els.map(e => e.textContent)")
    assert tiers and set(tiers) == {"high"}
    page.screenshot(path=tmp_path / "2-filtered.png", full_page=True)

    # The CSV download holds exactly the filtered rows.
    with page.expect_download() as info:
        page.click("#csv")
    text = info.value.path().read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == high_total
    assert {r["risk_tier"] for r in rows} == {"high"}
    assert [r["customer_id"] for r in rows] == [r["customer_id"] for r in high_rows]

    # The account page: probability, drivers, the survival curve.
    first = high_rows[0]["customer_id"]
    page.click(f"#accounts tbody tr[data-id='{first}'] a")
    page.wait_for_selector("#survival-curve path")
    record = http.post("/score_customer", json={"customers": [{"customer_id": first}]}
                       ).json()[0]
    assert page.inner_text("#probability") == f"{100 * record['churn_probability']:.1f}%"
    driver_texts = page.eval_on_selector_all("#drivers tbody tr td:first-child",
                                             "els => els.map(e => e.textContent)")
    assert driver_texts == [d["text"] for d in record["drivers"]]
    assert len(page.get_attribute("#survival-curve path", "d").split("L")) == 53
    assert page.locator("#features tbody tr").count() > 10
    page.screenshot(path=tmp_path / "3-account.png", full_page=True)

    # What-if: a change re-scores through /what_if and shows the new risk beside the old.
    field = page.locator("#whatif input[type=number]").first
    name = field.get_attribute("name")
    old = field.input_value()
    new = str(float(old or 0) * 10 + 30)
    field.fill(new)
    page.click("#whatif button[type=submit]")
    page.wait_for_selector("#whatif-after")
    expected = http.post("/what_if", json={"customer_id": first,
                                           "changes": {name: float(new)}}).json()
    assert page.inner_text("#whatif-before") == f"{100 * record['churn_probability']:.1f}%"
    assert page.inner_text("#whatif-after") == (
        f"{100 * expected['after']['churn_probability']:.1f}%")
    page.screenshot(path=tmp_path / "4-what-if.png", full_page=True)

    assert page.is_hidden("#keyform")  # asked once: the account page and what-if reused it
    assert errors == []
    origin = urlsplit(server.url).netloc
    foreign = [u for u in requests if not u.startswith(("data:", "blob:"))
               and urlsplit(u).netloc != origin]
    assert foreign == []
    context.close()
