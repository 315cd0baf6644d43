"""A real browser resumes a stream: headless Chromium (the system's, driven by Playwright) starts a
resumable chat stream with ``fetch``, drops that connection after a few events, follows the rest
with an ``EventSource`` on ``GET /v1/streams/{id}``, and loses that connection too mid-answer (a
TCP proxy in between cuts it). ``EventSource`` reconnects by itself with ``Last-Event-ID``; the
page must end with the whole text, every event once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from router.app import create_app
from router.config import settings_from_dict
from tests.fakes import serving_in_thread
from tests.idle_proxy import IdleCuttingProxy
from tests.live import LiveServer

WORDS = [f"w{i}" for i in range(60)]  # the mock echoes them, 50 ms apart: a 3 s answer

PAGE = """<!doctype html><meta charset="utf-8"><title>resume</title><script>
const base = new URLSearchParams(location.search).get("base");
window.events = []; window.done = false; window.errors = []; window.connections = 0;
function parse(block) {
  const event = {id: null, data: null};
  for (const line of block.split("\\n")) {
    if (line.startsWith("id: ")) event.id = Number(line.slice(4));
    if (line.startsWith("data: ")) event.data = line.slice(6);
  }
  return event;
}
async function run() {
  const body = {model: "demo", stream: true, messages: [{role: "user", content: "WORDS"}]};
  const answer = await fetch(base + "/v1/chat/completions", {
    method: "POST", body: JSON.stringify(body),
    headers: {"content-type": "application/json", "x-switchboard-resumable": "true"}});
  const stream = answer.headers.get("x-switchboard-stream-id");
  const reader = answer.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  while (window.events.length < 3) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const blocks = buffer.split("\\n\\n"); buffer = blocks.pop();
    for (const block of blocks) { const e = parse(block); if (e.data !== null) window.events.push(e); }
  }
  await reader.cancel();  // the first connection is gone
  const last = window.events[window.events.length - 1].id;
  const source = new EventSource(base + "/v1/streams/" + stream + "?last_event_id=" + last);
  source.onopen = () => { window.connections += 1; };
  source.onmessage = (m) => {
    window.events.push({id: Number(m.lastEventId), data: m.data});
    if (m.data === "[DONE]") { source.close(); window.done = true; }
  };
}
run().catch((e) => window.errors.push(String(e)));
</script>""".replace("WORDS", " ".join(WORDS))


def _chromium() -> str:
    """The system's Chromium, installed from Debian when missing (as the benchmark installs nginx)."""
    found = shutil.which("chromium")
    apt = shutil.which("apt-get")
    if found is None and apt is not None and os.geteuid() == 0:
        install = [apt, "install", "-y", "-qq", "chromium"]
        if subprocess.run(install, check=False, capture_output=True, timeout=600).returncode != 0:  # noqa: S603
            subprocess.run([apt, "update", "-qq"], check=False, capture_output=True, timeout=600)  # noqa: S603
            subprocess.run(install, check=False, capture_output=True, timeout=600)  # noqa: S603
        found = shutil.which("chromium")
    if found is None:
        message = "Chromium is not installed (apt-get install chromium) and could not be installed here"
        if os.environ.get("SWITCHBOARD_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


@pytest.fixture
def page_origin() -> Iterator[str]:
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", page)
    with serving_in_thread(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def through_proxy(page_origin: str) -> AsyncIterator[IdleCuttingProxy]:
    config = {
        "server": {"cors": {"allow_origins": [page_origin]}},
        "providers": {"demo": {"type": "mock", "token_delay_s": 0.05}},
        "models": {"demo": {"targets": [{"provider": "demo", "model": "echo"}]}},
        "streams": {"keepalive_s": None, "resume_window_s": 30},
    }
    async with LiveServer(create_app(settings_from_dict(config))) as live, IdleCuttingProxy(live.port, 3600) as proxy:
        yield proxy


@pytest.mark.timeout(900)  # a first run may install Chromium
async def test_a_browser_eventsource_that_loses_its_connection_ends_with_the_whole_answer(
    chromium: str, page_origin: str, through_proxy: IdleCuttingProxy
) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{page_origin}/?base={through_proxy.url}")
            await page.wait_for_function("window.events.length >= 8 || window.errors.length > 0", timeout=10_000)
            through_proxy.sever()  # mid-answer: the EventSource's connection is cut
            await page.wait_for_function("window.done || window.errors.length > 0", timeout=20_000)
            result: dict[str, Any] = await page.evaluate(
                "({events: window.events, errors: window.errors, connections: window.connections})"
            )
        finally:
            await browser.close()
    assert result["errors"] == []
    assert result["connections"] >= 2  # it did lose its connection and come back
    ids = [e["id"] for e in result["events"]]
    assert ids == list(range(1, len(ids) + 1))  # every event once, in order
    text: list[str] = []
    for event in result["events"]:
        if event["data"] != "[DONE]":
            for choice in json.loads(event["data"])["choices"]:
                text.extend((choice["delta"].get("content") or "").split())
    assert text == WORDS
