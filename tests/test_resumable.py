"""Resumable client streams: a client that loses its connection mid-answer reconnects to
``GET /v1/streams/{id}`` with ``Last-Event-ID`` and gets every event after it, then the live rest:
no event twice, none missing. The upstream goes on for ``resume_window_s`` after the client left
(or until the kept events pass ``resume_buffer_bytes``), then is cancelled as before; without the
opt-in, a disconnect cancels it at once. In memory on one server, and through Redis Streams across
two replicas. The real server on loopback, the offline mock or a fake upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from router.app import create_app
from router.config import settings_from_dict
from tests.fakes import FakeUpstream, running_upstream
from tests.live import LiveServer

WORDS = [f"w{i}" for i in range(40)]  # the mock echoes them, 30 ms apart
ASK = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": " ".join(WORDS)}]}
RESUMABLE = {"x-switchboard-resumable": "true"}
MASTER = "sk-master-resumable-0123456789"


def _config(**extra: Any) -> dict[str, Any]:
    streams = extra.pop("streams", {})
    return {
        "providers": {"demo": {"type": "mock", "token_delay_s": 0.03}},
        "models": {
            "demo": {"targets": [{"provider": "demo", "model": "echo"}]},
            "always": {"targets": [{"provider": "demo", "model": "echo"}], "resumable": True},
        },
        "streams": {"keepalive_s": None, "resume_window_s": 5, **streams},
        **extra,
    }


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with LiveServer(create_app(settings_from_dict(_config()))) as live:
        yield live.url


def _events(raw: bytes) -> list[tuple[int, bytes]]:
    """(id, data) of each event; comments skipped."""
    out: list[tuple[int, bytes]] = []
    for block in raw.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if line and not line.startswith(b":"))
        if b"data" in lines:
            out.append((int(lines.get(b"id", b"0")), lines[b"data"]))
    return out


def _text(events: list[tuple[int, bytes]]) -> list[str]:
    words: list[str] = []
    for _, data in events:
        if data != b"[DONE]":
            for choice in msgspec.json.decode(data)["choices"]:
                words.extend((choice["delta"].get("content") or "").split())
    return words


async def _start_then_leave(
    base: str, ask: dict[str, Any], headers: dict[str, str], keep: int
) -> tuple[str, list[tuple[int, bytes]]]:
    """Open a stream, read ``keep`` events, drop the connection; the stream id and what was read."""
    got = b""
    async with (
        httpx.AsyncClient(base_url=base, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=ask, headers=headers) as response,
    ):
        assert response.status_code == 200
        stream_id = response.headers.get("x-switchboard-stream-id", "")
        async for piece in response.aiter_raw():
            got += piece
            if len(_events(got)) >= keep:
                break
    return stream_id, _events(got)


async def _resume(base: str, stream_id: str, last: int, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        return await client.get(f"/v1/streams/{stream_id}", headers={"last-event-id": str(last), **(headers or {})})


async def test_a_client_that_lost_its_connection_resumes_with_nothing_missing_and_nothing_twice(server: str) -> None:
    stream_id, first = await _start_then_leave(server, ASK, RESUMABLE, keep=5)
    assert stream_id.startswith("sbs_")
    assert len(stream_id) > 30  # unguessable
    assert [n for n, _ in first] == list(range(1, len(first) + 1))
    await asyncio.sleep(0.2)  # the answer goes on meanwhile
    resumed = await _resume(server, stream_id, first[-1][0])
    assert resumed.status_code == 200
    assert resumed.headers["content-type"].startswith("text/event-stream")
    rest = _events(resumed.content)
    ids = [n for n, _ in first + rest]
    assert ids == list(range(1, len(ids) + 1))  # every event once, in order
    assert _text(first + rest) == WORDS
    assert rest[-1][1] == b"[DONE]"
    again = await _resume(server, stream_id, 0)  # from the start, as long as the window lasts
    assert _events(again.content) == first + rest


async def test_a_resume_while_the_answer_is_still_coming_follows_it_live(server: str) -> None:
    stream_id, first = await _start_then_leave(server, ASK, RESUMABLE, keep=3)
    resumed = await _resume(server, stream_id, first[-1][0])  # at once: most of it is still to come
    assert _text(first + _events(resumed.content)) == WORDS


async def test_an_alias_can_make_every_stream_resumable(server: str) -> None:
    stream_id, first = await _start_then_leave(server, ASK | {"model": "always"}, {}, keep=4)
    assert stream_id
    assert _text(first + _events((await _resume(server, stream_id, first[-1][0])).content)) == WORDS


async def test_without_the_opt_in_nothing_is_kept_and_events_have_no_ids(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        plain = await client.post("/v1/chat/completions", json=ASK)
    assert "x-switchboard-stream-id" not in plain.headers
    assert b"\nid: " not in plain.content
    assert not plain.content.startswith(b"id: ")
    missing = await _resume(server, "sbs_" + "x" * 32, 0)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "stream_not_found"


async def test_a_bad_last_event_id_is_a_400(server: str) -> None:
    stream_id, _ = await _start_then_leave(server, ASK, RESUMABLE, keep=1)
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        bad = await client.get(f"/v1/streams/{stream_id}", headers={"last-event-id": "abc"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "Last-Event-ID"


@pytest.fixture
def fake() -> Any:
    with running_upstream() as upstream:
        yield upstream


async def _endless_server(fake: FakeUpstream, **streams: Any) -> LiveServer:
    config = {
        "providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{fake.port}/v1"}},
        "models": {"endless": {"targets": [{"provider": "up", "model": "endless"}]}},
        "streams": {"keepalive_s": None, **streams},
    }
    return LiveServer(create_app(settings_from_dict(config)))


@pytest.mark.parametrize(
    ("streams", "at_least", "at_most"),
    [({"resume_window_s": 0.6}, 0.5, 3.0), ({"resume_buffer_bytes": 4096, "resume_window_s": 30}, 0.0, 3.0)],
    ids=["window", "buffer"],
)
async def test_the_upstream_goes_on_for_the_window_or_the_bound_then_is_cancelled(
    fake: FakeUpstream, streams: dict[str, Any], at_least: float, at_most: float
) -> None:
    async with await _endless_server(fake, **streams) as live:
        ask = {"model": "endless", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        stream_id, _ = await _start_then_leave(live.url, ask, RESUMABLE, keep=2)
        left = time.monotonic()
        await asyncio.sleep(0.2)
        assert not fake.disconnected.is_set()  # the client left; the upstream goes on
        assert await asyncio.to_thread(fake.disconnected.wait, 10)
        took = fake.disconnected_at - left
        assert at_least <= took <= at_most
        if "resume_buffer_bytes" in streams:
            assert (await _resume(live.url, stream_id, 0)).status_code == 404  # past its bound: gone


async def test_without_the_opt_in_a_disconnect_cancels_the_upstream_at_once(fake: FakeUpstream) -> None:
    async with await _endless_server(fake, resume_window_s=30) as live:
        ask = {"model": "endless", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        await _start_then_leave(live.url, ask, {}, keep=2)
        left = time.monotonic()
        assert await asyncio.to_thread(fake.disconnected.wait, 10)
        assert fake.disconnected_at - left < 1.0


async def test_a_stream_is_resumed_only_with_its_own_key_or_its_id_alone(tmp_path: Path) -> None:
    config = _config(auth={"master_key": MASTER}, database={"url": f"sqlite:///{tmp_path / 'keys.db'}"})
    async with LiveServer(create_app(settings_from_dict(config))) as live:
        async with httpx.AsyncClient(base_url=live.url, headers={"authorization": f"Bearer {MASTER}"}) as admin:
            keys = [(await admin.post("/admin/keys", json={"name": f"k{i}"})).json()["key"] for i in range(2)]
        mine, theirs = ({"authorization": f"Bearer {key}"} for key in keys)
        stream_id, first = await _start_then_leave(live.url, ASK, RESUMABLE | mine, keep=3)
        assert (await _resume(live.url, stream_id, first[-1][0], theirs)).status_code == 404
        assert (await _resume(live.url, stream_id, first[-1][0], mine)).status_code == 200
        by_id = await _resume(live.url, stream_id, first[-1][0])  # a browser's EventSource: no headers
        assert _text(first + _events(by_id.content)) == WORDS


async def test_two_replicas_on_redis_a_stream_started_on_one_resumes_on_the_other(redis_url: str) -> None:
    config = _config(state={"backend": "redis", "url": redis_url})
    async with (
        LiveServer(create_app(settings_from_dict(config))) as first_replica,
        LiveServer(create_app(settings_from_dict(config))) as second_replica,
    ):
        stream_id, first = await _start_then_leave(first_replica.url, ASK, RESUMABLE, keep=5)
        resumed = await _resume(second_replica.url, stream_id, first[-1][0])
        assert resumed.status_code == 200
        rest = _events(resumed.content)
        ids = [n for n, _ in first + rest]
        assert ids == list(range(1, len(ids) + 1))
        assert _text(first + rest) == WORDS


async def test_a_resumed_client_reading_live_holds_the_window_open(fake: FakeUpstream) -> None:
    async with await _endless_server(fake, resume_window_s=0.5) as live:
        ask = {"model": "endless", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        stream_id, first = await _start_then_leave(live.url, ask, RESUMABLE, keep=2)
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=10) as client,
            client.stream("GET", f"/v1/streams/{stream_id}", headers={"last-event-id": str(first[-1][0])}) as resumed,
        ):
            reading_until = time.monotonic() + 1.5  # three windows
            async for _ in resumed.aiter_raw():
                if time.monotonic() > reading_until:
                    break
            assert not fake.disconnected.is_set()  # followed: not cancelled
        left = time.monotonic()
        assert await asyncio.to_thread(fake.disconnected.wait, 10)  # nobody reading: the window runs out
        assert fake.disconnected_at - left < 3.0


async def test_a_client_following_on_another_replica_holds_the_window_open(fake: FakeUpstream, redis_url: str) -> None:
    config = {
        "providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{fake.port}/v1"}},
        "models": {"endless": {"targets": [{"provider": "up", "model": "endless"}]}},
        "streams": {"keepalive_s": None, "resume_window_s": 0.5},
        "state": {"backend": "redis", "url": redis_url},
    }
    async with (
        LiveServer(create_app(settings_from_dict(config))) as running,
        LiveServer(create_app(settings_from_dict(config))) as other,
    ):
        ask = {"model": "endless", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        stream_id, first = await _start_then_leave(running.url, ask, RESUMABLE, keep=2)
        async with (
            httpx.AsyncClient(base_url=other.url, timeout=10) as client,
            client.stream("GET", f"/v1/streams/{stream_id}", headers={"last-event-id": str(first[-1][0])}) as resumed,
        ):
            assert resumed.status_code == 200
            reading_until = time.monotonic() + 2.0  # four windows
            async for _ in resumed.aiter_raw():
                if time.monotonic() > reading_until:
                    break
            assert not fake.disconnected.is_set()  # followed on the other replica: not cancelled
        assert await asyncio.to_thread(fake.disconnected.wait, 10)  # then nobody: the window runs out
