"""One Outcome per request, however it ends; the request id on every answer; the per-request log
line built from the Outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from router.gateway.outcome import Outcome
from router.telemetry.logs import REQUEST_LOGGER, JSONFormatter, TextFormatter
from tests.conftest import fixture_bytes
from tests.live import chat_scope, running_proxy

HELLO = [{"role": "user", "content": "hi"}]
COMPLETION = fixture_bytes("openai", "completion.json")
STREAM = fixture_bytes("openai", "stream_text.sse")


def upstream(request: httpx.Request) -> httpx.Response:
    host = request.url.host
    if host == "down.test":
        return httpx.Response(503, json={"error": {"message": "overloaded"}})
    if host == "bad.test":
        return httpx.Response(400, json={"error": {"message": "no", "param": "messages", "code": "invalid"}})
    if request.headers.get("accept") == "text/event-stream":
        return httpx.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, content=COMPLETION, headers={"content-type": "application/json"})


def client(seen: list[Outcome]) -> AsyncTestClient[Any]:
    settings = settings_from_dict(
        {
            "providers": {
                "up": {"type": "openai", "base_url": "http://up.test/v1"},
                "down": {"type": "openai", "base_url": "http://down.test/v1"},
                "bad": {"type": "openai", "base_url": "http://bad.test/v1"},
                "dark": {"type": "openai", "api_key": "${NOPE:-}"},
            },
            "models": {
                "m": {"targets": [{"provider": "down", "model": "x"}, {"provider": "up", "model": "y"}]},
                "dead": {"targets": [{"provider": "down", "model": "x"}]},
                "bad": {"targets": [{"provider": "bad", "model": "x"}]},
                "dark": {"targets": [{"provider": "dark", "model": "x"}]},
            },
            "resilience": {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 1000}},
        },
        {},
    )
    app = create_app(settings, transport=httpx.MockTransport(upstream))
    app.state.outcomes.listeners.append(seen.append)
    return AsyncTestClient(app=app)


async def test_a_failed_over_answer_is_one_outcome_with_every_attempt() -> None:
    seen: list[Outcome] = []
    async with client(seen) as http:
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
    assert response.status_code == 200
    (outcome,) = seen
    assert (outcome.alias, outcome.target, outcome.status, outcome.code, outcome.stream) == (
        "m",
        "up/y",
        200,
        None,
        False,
    )
    assert [(a.target, a.result, a.status, a.error) for a in outcome.attempts] == [
        ("down/x", "failed", 503, "UpstreamServerError"),
        ("up/y", "ok", 200, None),
    ]
    assert outcome.request_id == response.headers["x-request-id"]
    assert outcome.duration_s > 0
    assert outcome.ttft_s is not None
    assert outcome.ttft_s <= outcome.duration_s


async def test_a_stream_is_one_outcome_when_it_ends() -> None:
    seen: list[Outcome] = []
    async with client(seen) as http:
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    (outcome,) = seen
    assert (outcome.stream, outcome.status, outcome.code, outcome.target) == (True, 200, None, "up/y")
    assert not outcome.client_disconnected


@pytest.mark.parametrize(
    ("body", "status", "code", "alias"),
    [
        ({"model": "dead", "messages": HELLO}, 502, "upstream_failed", "dead"),
        ({"model": "dark", "messages": HELLO}, 503, "no_target_available", "dark"),
        ({"model": "bad", "messages": HELLO}, 400, "invalid", "bad"),
        ({"model": "nope", "messages": HELLO}, 404, "model_not_found", None),
        ({"model": "m"}, 400, "missing_required_parameter", None),
    ],
)
async def test_every_failure_is_one_outcome_with_its_status_and_code(
    body: dict[str, Any], status: int, code: str, alias: str | None
) -> None:
    seen: list[Outcome] = []
    async with client(seen) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    (outcome,) = seen
    assert (outcome.status, outcome.code, outcome.alias, outcome.target) == (status, code, alias, None)
    assert outcome.request_id == response.headers["x-request-id"]


async def test_skipped_targets_are_recorded_with_a_bounded_reason() -> None:
    seen: list[Outcome] = []
    async with client(seen) as http:
        await http.post("/v1/chat/completions", json={"model": "dark", "messages": HELLO})
    (attempt,) = seen[0].attempts
    assert (attempt.target, attempt.result, attempt.error) == ("dark/x", "skipped", "unavailable")
    assert "NOPE" in attempt.detail


async def test_a_stream_error_event_names_the_request() -> None:
    """After the first chunk an error is an event in the stream: it carries the request id too."""
    broken = STREAM.split(b"\n\n")[0] + b"\n\n" + b'data: {"error":{"message":"boom","type":"server_error"}}\n\n'

    def upstream_breaks(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=broken, headers={"content-type": "text/event-stream"})

    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "y"}]}},
        },
        {},
    )
    async with AsyncTestClient(app=create_app(settings, transport=httpx.MockTransport(upstream_breaks))) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": HELLO, "stream": True},
            headers={"x-request-id": "rq-9"},
        )
    (event,) = [line for line in answer.text.splitlines() if line.startswith('data: {"error"')]
    assert msgspec.json.decode(event[6:])["error"]["message"].endswith(" (request id rq-9)")


async def test_a_client_gone_mid_stream_is_one_outcome_marked_disconnected() -> None:
    seen: list[Outcome] = []

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            first = STREAM.split(b"\n\n")[0] + b"\n\n"
            while True:
                yield first
                await asyncio.sleep(0.01)

    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "y"}]}},
        },
        {},
    )
    transport = httpx.MockTransport(lambda _: httpx.Response(200, stream=Endless()))
    app = create_app(settings, transport=transport)
    app.state.outcomes.listeners.append(seen.append)
    body = msgspec.json.encode({"model": "m", "messages": HELLO, "stream": True})
    gone = asyncio.Event()
    delivered = False
    chunks = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal chunks
        if message["type"] == "http.response.body":
            chunks += 1
            if chunks == 3:
                gone.set()

    scope = chat_scope(body, (b"x-request-id", b"client-7"))
    async with AsyncTestClient(app=app), asyncio.timeout(5):
        await app(scope, receive, send)  # type: ignore[arg-type]
    (outcome,) = seen
    assert outcome.client_disconnected
    assert (outcome.status, outcome.code, outcome.request_id) == (200, "client_disconnected", "client-7")


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("abc-123_X.y:z", True), ("bad id with spaces", False), ("x" * 129, False), (None, False)],
)
async def test_every_answer_carries_a_request_id(sent: str | None, echoed: bool) -> None:
    headers = {"x-request-id": sent} if sent is not None else {}
    seen: list[Outcome] = []
    async with client(seen) as http:
        answers = [
            await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO}, headers=headers),
            await http.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO}, headers=headers),
            await http.post("/v1/chat/completions", content=b"{", headers=headers),
            await http.get("/v1/models", headers=headers),
            await http.get("/health/live", headers=headers),
            await http.get("/health/ready", headers=headers),
            await http.get("/admin/targets", headers=headers),
            await http.get("/no/such/route", headers=headers),
            await http.delete("/v1/chat/completions", headers=headers),
        ]
    for answer in answers:
        rid = answer.headers["x-request-id"]
        if echoed:
            assert rid == sent
        else:
            assert rid != sent
            assert rid.startswith("req_")
            assert len(rid) == 28  # req_ + 16 hex of the process + 8 of the count
        if answer.status_code >= 400:  # and in the error body, where OpenAI puts its own
            assert answer.json()["error"]["message"].endswith(f" (request id {rid})")
    assert len({a.headers["x-request-id"] for a in answers}) == (1 if echoed else len(answers))


async def test_the_request_line_has_the_contract_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    seen: list[Outcome] = []
    async with client(seen) as http:
        await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
    (record,) = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    line = msgspec.json.decode(JSONFormatter().format(record))
    contract = {
        "request_id",
        "alias",
        "target",
        "status",
        "code",
        "stream",
        "attempts",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "finish_reason",
        "client_disconnected",
    }
    assert contract <= set(line)
    assert (line["alias"], line["target"], line["status"], line["attempts"]) == ("m", "up/y", 200, 2)
    assert line["failures"] == ["down/x:UpstreamServerError"]
    assert (line["level"], line["logger"], line["message"]) == ("info", REQUEST_LOGGER, "request")
    text = TextFormatter().format(record)
    assert "request_id=" in text
    assert "target=up/y" in text


def test_the_server_logs_one_json_line_per_request(tmp_path: Path) -> None:
    """`switchboard serve` (not a terminal: JSON by default): every line is one JSON object, and a
    request gives one `switchboard.requests` line with its id."""
    config = tmp_path / "config.yaml"
    config.write_text("providers: {demo: {type: mock}}\nmodels: {demo: {targets: [{provider: demo, model: echo}]}}\n")
    log = tmp_path / "proxy.log"
    with running_proxy(config, {}, log) as base:
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "demo", "messages": HELLO},
            headers={"x-request-id": "e2e-42"},
            timeout=10,
        )
        assert answer.headers["x-request-id"] == "e2e-42"
        deadline = time.monotonic() + 10
        while b"e2e-42" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [line for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    records = [msgspec.json.decode(line) for line in lines]
    (request,) = [r for r in records if r["logger"] == REQUEST_LOGGER]
    assert (request["request_id"], request["alias"], request["status"]) == ("e2e-42", "demo", 200)
    assert request["prompt_tokens"] == 1
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's lines in the same format
    assert all(line.startswith(b"{") for line in log.read_bytes().splitlines()[1:])  # after the banner


def _outcomes() -> list[Outcome]:
    from providers.base import TokenUsage
    from router.gateway.outcome import AttemptRecord

    ok = AttemptRecord(target="up/y", result="ok", provider="openai", duration_s=0.01)
    failed = AttemptRecord(target="down/x", result="failed", provider="openai", error="UpstreamServerError")
    skipped = AttemptRecord(target="dark/x", result="skipped", error="breaker_open")
    base = Outcome(
        request_id="r1",
        alias="m",
        stream=True,
        status=200,
        code=None,
        attempts=(ok,),
        target="up/y",
        provider="openai",
        response_model="y-1",
        response_id="chatcmpl-1",
        finish_reason="stop",
        usage=TokenUsage(prompt=3, completion=5, cached=1, reasoning=2),
        cost_usd=0.000125,
        ttft_s=0.0123456,
        duration_s=0.456789,
        client_disconnected=False,
    )
    return [
        base,
        msgspec.structs.replace(base, attempts=(skipped, failed, ok), usage=None, cost_usd=None, ttft_s=None),
        msgspec.structs.replace(base, attempts=(failed,), status=502, code="upstream_failed", target=None),
        msgspec.structs.replace(base, attempts=(), alias=None, status=400, code="invalid_json", stream=False),
    ]


@pytest.mark.parametrize("outcome", _outcomes())
def test_the_direct_request_line_is_the_formatters_line(outcome: Outcome) -> None:
    """With Switchboard's own JSON handler, the line is encoded without a LogRecord: it must be
    the very line the formatter writes from a record (the time aside)."""
    from router.telemetry.logs import LazyFlushHandler, RequestLog, request_fields

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = LazyFlushHandler()
    handler.setFormatter(JSONFormatter())
    handler._fd = 2  # as when stderr is a file: lines wait in the handler's buffer
    try:
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        RequestLog()(outcome)
        (direct,) = handler._pending
        handler._pending.clear()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        handler.close()
    record = logging.getLogger(REQUEST_LOGGER).makeRecord(
        REQUEST_LOGGER, logging.INFO, "", 0, "request", (), None, extra={"fields": request_fields(outcome)}
    )
    expected = msgspec.json.decode(JSONFormatter().format(record))
    line = msgspec.json.decode(direct)
    assert direct.endswith(b"\n")
    assert direct.count(b"\n") == 1
    assert list(line) == list(expected)  # same fields in the same order
    assert {k: v for k, v in line.items() if k != "ts"} == {k: v for k, v in expected.items() if k != "ts"}
    assert line["ts"].endswith("Z")
    assert len(line["ts"]) == len(expected["ts"])


def test_another_logging_setup_gets_an_ordinary_record(caplog: pytest.LogCaptureFixture) -> None:
    from router.telemetry.logs import RequestLog

    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    RequestLog()(_outcomes()[1])
    (record,) = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    assert record.fields["skipped"] == ["dark/x:breaker_open"]  # type: ignore[attr-defined]
    assert record.fields["attempts"] == 2  # type: ignore[attr-defined]
