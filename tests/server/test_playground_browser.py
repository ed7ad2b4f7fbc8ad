"""The playground in a real browser: headless Debian `chromium` driven by Playwright opens
`/`, submits a prompt, and sees the route table, tokens as they stream, and the final cost.

Chromium is a system package (`apt-get install -y chromium`, done by `.ci/run`). Without it
this test fails loudly: a browser test that skips proves nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from router.config import parse_config
from router.core import Router

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
KEY = "sk-playground-test-0123456789"

CONFIG: dict[str, Any] = {
    "providers": {"sim": {"kind": "simulated", "options": {"seed": 11}}},
    "deployments": [
        # Paced so tokens arrive in separate reads and the page shows them one by one.
        {"id": "fast", "provider": "sim", "model": "sim-flash",
         "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
         "latency_prior": {"ttft_ms": 50, "tokens_per_s": 400},
         "options": {"ttft_ms": 5, "tokens_per_s": 60, "output_tokens": 30}},
        {"id": "strong", "provider": "sim", "model": "sim-pro",
         "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
         "latency_prior": {"ttft_ms": 900, "tokens_per_s": 50},
         "options": {"ttft_ms": 5, "tokens_per_s": 60, "output_tokens": 30}},
        {"id": "broken", "provider": "sim", "model": "sim-broken",
         "price": {"input_per_mtok": 0.01, "output_per_mtok": 0.01},
         "latency_prior": {"ttft_ms": 10, "tokens_per_s": 1000},
         "options": {"error_rate": 1.0, "error_code": "overloaded"}},
        {"id": "endless", "provider": "sim", "model": "sim-endless",
         "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
         "latency_prior": {"ttft_ms": 50, "tokens_per_s": 400},
         "options": {"ttft_ms": 1, "tokens_per_s": 20, "output_tokens": 2000}},
    ],
    "tasks": {"qualification": {"candidates": ["fast", "strong"], "prefer": "latency",
                                "description": "lead qualification"},
              "flaky": {"candidates": ["broken", "fast"], "prefer": "latency"}},
    "defaults": {"task": "qualification"},
    "resilience": {"retry": {"attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 2}},
    "server": {"api_keys": [{"name": "ui", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
}

# Records, at every change of the answer, its length and what the cost field showed then.
_WATCH_OUTPUT = """
window.__snapshots = [];
document.addEventListener("DOMContentLoaded", () => {
  const out = document.getElementById("output");
  new MutationObserver(() => window.__snapshots.push(
      [out.textContent.length, document.getElementById("cost").textContent]))
    .observe(out, {childList: true, characterData: true, subtree: true});
});
"""


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router(parse_config(CONFIG))
    yield r
    await r.aclose()



@pytest.fixture
async def page(base_url: str) -> AsyncIterator[Page]:
    """The playground in headless chromium, with the API key entered."""
    _require_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.add_init_script(_WATCH_OUTPUT)
            await page.goto(f"{base_url}/")
            await page.fill("#apikey", KEY)
            await page.dispatch_event("#apikey", "change")  # stores the key, lists tasks
            await expect(page.locator("#task option[value='task:flaky']")).to_be_attached()
            yield page
        finally:
            await browser.close()


def _require_chromium() -> None:
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (/usr/bin/chromium): run "
                    "`apt-get install -y chromium` (.ci/run does). The browser test cannot "
                    "be skipped.", pytrace=False)


async def test_page_is_served_without_a_key_and_api_calls_need_one(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        page = await http.get("/")
        script = await http.get("/playground.js")
        models = await http.get("/v1/models")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and "/v1/stream" in script.text
    assert models.status_code == 401


async def test_playground_streams_tokens_route_and_cost(page: Page) -> None:
    await page.select_option("#task", "task:qualification")
    await page.fill("#max_cost_usd", "0.05")
    await page.fill("#prompt", "Qualify this lead: Acme, 40 staff, asks about pricing")
    await page.click("#send")

    await expect(page.locator("#cost")).to_have_text(re.compile(r"^\$\d+\.\d+$"))
    await expect(page.locator("#status")).to_have_text("done")
    answer = await page.text_content("#output")
    rows = await page.locator("#route tbody tr").all_inner_texts()
    chosen = await page.locator("#route tr.chosen td").first.inner_text()
    timeline = await page.locator("#timeline").inner_text()
    snapshots = await page.evaluate("window.__snapshots")
    key_kept = await page.evaluate("sessionStorage.getItem('llm-router-api-key')")
    assert answer is not None and len(answer.split()) == 30
    assert len(rows) == 2 and chosen == "fast"
    assert "start fast" in timeline and "done: stop" in timeline
    # Tokens appeared one read at a time, before the cost was known.
    streaming = [length for length, cost in snapshots if cost == "—"]
    assert len(streaming) >= 3 and streaming == sorted(streaming) and streaming[0] > 0
    assert key_kept == KEY


async def test_playground_shows_retries_and_the_fallback(page: Page) -> None:
    await page.select_option("#task", "task:flaky")
    await page.click("#send")
    await expect(page.locator("#status")).to_have_text("done")
    timeline = await page.locator("#timeline").inner_text()
    await expect(page.locator("#task")).to_have_value("task:flaky")  # kept across reloads
    assert "retry broken after overloaded" in timeline
    assert "fallback broken → fast after overloaded" in timeline
    assert await page.text_content("#m-deployment") == "fast"
    assert await page.text_content("#m-attempts") == "3"
    assert (await page.text_content("#output") or "").strip()


async def test_stop_button_cancels_the_stream_upstream(page: Page, router: Router) -> None:
    provider: Any = router.provider("sim")
    await page.select_option("#task", "model:endless")
    await page.click("#send")
    await expect(page.locator("#output")).not_to_be_empty()
    assert provider.open_streams == 1
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("stopped")
    for _ in range(400):
        if provider.open_streams == 0:
            break
        await asyncio.sleep(0.005)
    assert provider.open_streams == 0
