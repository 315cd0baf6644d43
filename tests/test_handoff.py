"""A resumable stream outlives its replica: when the drain's time runs out with it still going, the
draining replica hands it off through Redis; a client that resumes on another replica (the openai
SDK's client told where by its error event, or a follower whose connection the drain ended) makes
that replica go on with it by continuation, into the same log: one answer, no event twice, none
missing. Two replicas in this process sharing the local Redis, a fake upstream on loopback that
continues a cut-off answer from where it stopped."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from aiohttp import web
from litestar import Litestar

from router.app import create_app
from router.config import settings_from_dict
from router.gateway.continuation import CONTINUE_PROMPT
from router.gateway.outcome import Outcome
from tests.fakes import serving_chat
from tests.live import LiveServer

WORDS = [f"w{i}" for i in range(60)]
ASK: list[Any] = [{"role": "user", "content": "Count for me."}]
RESUMABLE = {"x-switchboard-resumable": "true"}
MASTER = "sk-master-handoff-0123456789"
AS_MASTER = {"authorization": f"Bearer {MASTER}"}
MASTER_RESUMABLE = RESUMABLE | AS_MASTER


@dataclass
class Upstream:
    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    body: dict[str, Any] = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000}
    body |= {"model": "m", "choices": choices} | ({"usage": usage} if usage else {})
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


async def _count(up: Upstream, request: web.Request) -> web.StreamResponse:
    """Counts WORDS, 40 ms a word; asked to continue a partial answer, goes on after its last word."""
    body = msgspec.json.decode(await request.read())
    up.seen.append(body)
    messages = body["messages"]
    start = 0
    if messages[-1]["content"] == CONTINUE_PROMPT:
        start = len(messages[-2]["content"].split())
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk({"role": "assistant", "content": ""}))
    if body["model"] == "lingers":  # a whole answer at once, then the connection stays open a while
        await response.write(_chunk({"content": "all of it"}) + _chunk({}, "stop") + b"data: [DONE]\n\n")
        await asyncio.sleep(3)
        return response
    for word in WORDS[start:]:
        await response.write(_chunk({"content": word + " "}))
        await asyncio.sleep(0.04)
    await response.write(_chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        await response.write(_chunk({}, usage={"prompt_tokens": 10, "completion_tokens": len(WORDS) - start}))
    await response.write(b"data: [DONE]\n\n")
    return response


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    with serving_chat(partial(_count, up)) as port:
        up.port = port
        yield up


@dataclass
class Replica:
    app: Litestar
    live: LiveServer
    outcomes: list[Outcome]

    @property
    def url(self) -> str:
        return self.live.url

    def drain(self) -> None:
        """What SIGTERM does (``router.lifecycle.signals``)."""
        self.app.state.drain.begin(lambda: setattr(self.live.server, "should_exit", True))


@pytest.fixture
async def replicas(upstream: Upstream, redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Replica, Replica]]:
    upstream.seen.clear()
    config = {
        "providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}},
        "models": {
            "counter": {"targets": [{"provider": "up", "model": "m"}]},
            "lingering": {"targets": [{"provider": "up", "model": "lingers"}]},
        },
        "auth": {"master_key": MASTER},
        "database": {"url": f"sqlite:///{tmp_path / 'keys.db'}"},
        "streams": {"keepalive_s": None, "resume_window_s": 10},
        "state": {"backend": "redis", "url": redis_url},
        "server": {"drain_s": 0.4},
    }
    made: list[Replica] = []
    for _ in range(2):
        app = create_app(settings_from_dict(config))
        outcomes: list[Outcome] = []
        app.state.outcomes.listeners.append(outcomes.append)
        made.append(Replica(app, LiveServer(app), outcomes))
    async with made[0].live, made[1].live:
        yield made[0], made[1]


async def _key(replica: Replica) -> tuple[str, str]:
    """A new virtual key (made on ``replica``; the replicas share the database): secret, id."""
    async with httpx.AsyncClient(base_url=replica.url, headers=AS_MASTER) as admin:
        made = (await admin.post("/admin/keys", json={"name": "streams"})).json()
    return made["key"], made["id"]


async def _drained_while_reading(
    http: httpx.AsyncClient,
    draining: Replica,
    ask: dict[str, Any],
    headers: dict[str, str],
    until: Callable[[bytes], bool],
) -> tuple[str, bytes]:
    """Start a resumable stream on ``draining`` and read it, draining the replica (as SIGTERM
    would) once what was read satisfies ``until``; the stream id and everything read."""
    got = b""
    async with http.stream("POST", f"{draining.url}/v1/chat/completions", json=ask, headers=headers) as started:
        stream_id = started.headers["x-switchboard-stream-id"]
        async for piece in started.aiter_raw():
            got += piece
            if until(got) and not draining.app.state.drain.draining:
                draining.drain()
    return stream_id, got


def _three_events(got: bytes) -> bool:
    return len(_events(got)) >= 3


def _done(got: bytes) -> bool:
    return b"[DONE]" in got


def _events(raw: bytes) -> list[tuple[int | None, bytes]]:
    out: list[tuple[int | None, bytes]] = []
    for block in raw.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if line and not line.startswith(b":"))
        if b"data" in lines:
            out.append((int(lines[b"id"]) if b"id" in lines else None, lines[b"data"]))
    return out


def _words(events: list[tuple[int | None, bytes]]) -> list[str]:
    words: list[str] = []
    for _, data in events:
        if data != b"[DONE]":
            for choice in msgspec.json.decode(data).get("choices", []):
                words.extend((choice["delta"].get("content") or "").split())
    return words


async def test_a_stream_the_drain_ends_goes_on_at_another_replica_with_nothing_missing(
    replicas: tuple[Replica, Replica], upstream: Upstream
) -> None:
    draining, other = replicas
    key, key_id = await _key(draining)
    client = openai.AsyncOpenAI(base_url=f"{draining.url}/v1", api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="counter", messages=ASK, stream=True, extra_headers=RESUMABLE
    )
    stream_id = raw.headers["x-switchboard-stream-id"]
    got: list[str] = []

    async def read() -> None:
        async for chunk in raw.parse():
            got.extend((chunk.choices[0].delta.content or "").split() if chunk.choices else [])
            if len(got) == 5:
                draining.drain()  # SIGTERM; drain_s 0.4 s, the answer needs 2.4 s

    with pytest.raises(openai.APIError) as raised:
        await read()
    # The SDK raised on the drain's error event, which says where the stream goes on.
    assert f"/v1/streams/{stream_id}" in str(raised.value.message)
    assert 5 < len(got) < len(WORDS)
    await client.close()

    async with httpx.AsyncClient(base_url=other.url, timeout=10) as resumer:
        last = {"last-event-id": str(len(got) + 1), "authorization": f"Bearer {key}"}
        resumed = await resumer.get(f"/v1/streams/{stream_id}", headers=last)
    assert resumed.status_code == 200
    rest = _events(resumed.content)
    assert rest[-1][1] == b"[DONE]"
    assert [n for n, _ in rest] == list(range(len(got) + 2, len(got) + 2 + len(rest)))  # role chunk is event 1
    assert got + _words(rest) == WORDS  # one answer: nothing missing, nothing twice
    chunks = [msgspec.json.decode(data) for _, data in rest[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-up"}  # the same completion, spliced
    assert all(not c["choices"] or "role" not in c["choices"][0]["delta"] for c in chunks)  # no second opening

    continuation = upstream.seen[-1]["messages"]
    assert continuation[:-2] == ASK
    assert continuation[-2] == {"role": "assistant", "content": " ".join(got) + " "}
    assert continuation[-1] == {"role": "user", "content": CONTINUE_PROMPT}
    assert [(o.code, o.continued, o.key_id) for o in draining.outcomes] == [("handed_off", 0, key_id)]
    await asyncio.sleep(0.1)  # the other replica's record ends just after its log does
    assert [(o.status, o.code, o.continued, o.key_id) for o in other.outcomes] == [(200, None, 1, key_id)]
    assert other.outcomes[0].request_id == draining.outcomes[0].request_id  # one request, two replicas


async def test_a_follower_on_the_draining_replica_reconnects_elsewhere_and_the_stream_goes_on(
    replicas: tuple[Replica, Replica],
) -> None:
    draining, other = replicas
    async with httpx.AsyncClient(timeout=10) as http:
        ask = {"model": "counter", "stream": True, "messages": ASK}
        async with http.stream(
            "POST", f"{draining.url}/v1/chat/completions", json=ask, headers=RESUMABLE | AS_MASTER
        ) as started:
            stream_id = started.headers["x-switchboard-stream-id"]
            async for _ in started.aiter_raw():
                break  # the client that started it leaves; a follower on the same replica reads on
        following = b""
        async with http.stream("GET", f"{draining.url}/v1/streams/{stream_id}") as follower:
            async for piece in follower.aiter_raw():
                following += piece
                if len(_words(_events(following))) >= 5 and not draining.app.state.drain.draining:
                    draining.drain()
        # The drain ended the follower's connection without an error event or [DONE] (it is not
        # the end of the stream): an EventSource reconnects, here to the other replica.
        seen = _events(following)
        assert seen[-1][1] != b"[DONE]"
        assert all(b'"error"' not in data for _, data in seen)
        last = seen[-1][0]
        assert last is not None
        resumed = await http.get(f"{other.url}/v1/streams/{stream_id}", headers={"last-event-id": str(last)})
    rest = _events(resumed.content)
    assert rest[-1][1] == b"[DONE]"
    ids = [n for n, _ in seen + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert _words(seen + rest) == WORDS


async def test_a_stream_that_cannot_be_continued_faithfully_ends_with_its_error_event_for_the_resumer(
    replicas: tuple[Replica, Replica],
) -> None:
    draining, other = replicas
    ask = {"model": "counter", "stream": True, "messages": ASK, "n": 2}  # two answers: not continued
    async with httpx.AsyncClient(timeout=10) as http:
        stream_id, got = await _drained_while_reading(http, draining, ask, RESUMABLE | AS_MASTER, _three_events)
        resumed = await http.get(f"{other.url}/v1/streams/{stream_id}", headers={"last-event-id": "2"})
    error = _events(got)[-1]
    assert error[0] is not None  # kept: resumers get it too
    assert msgspec.json.decode(error[1])["error"]["code"] == "server_shutting_down"
    assert _events(resumed.content)[-1] == error
    assert not re.search(rb"/v1/streams/", got)  # nothing tells it to go on elsewhere


async def test_a_stream_whose_end_had_gone_out_is_not_handed_off(replicas: tuple[Replica, Replica]) -> None:
    draining, other = replicas
    ask = {"model": "lingering", "stream": True, "messages": ASK}
    async with httpx.AsyncClient(timeout=10) as http:
        # The drain lands while the upstream, done, keeps its connection open.
        stream_id, got = await _drained_while_reading(http, draining, ask, RESUMABLE | AS_MASTER, _done)
        resumed = await http.get(f"{other.url}/v1/streams/{stream_id}", headers={"last-event-id": "0"})
    assert _events(got)[-1][1] == b"[DONE]"  # nothing after it: no error event, no hand-off
    assert _events(resumed.content) == _events(got)
    assert "handed_off" not in [o.code for o in draining.outcomes]
    assert other.outcomes == []  # nobody went on with it


async def test_a_key_revoked_after_the_hand_off_is_not_continued(replicas: tuple[Replica, Replica]) -> None:
    draining, other = replicas
    key, key_id = await _key(draining)
    ask = {"model": "counter", "stream": True, "messages": ASK}
    mine = RESUMABLE | {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=10) as http:
        stream_id, _ = await _drained_while_reading(http, draining, ask, mine, _three_events)
        assert (await http.delete(f"{other.url}/admin/keys/{key_id}", headers=AS_MASTER)).status_code == 200
        await asyncio.sleep(1.2)  # every replica knows within a second
        resumed = await http.get(f"{other.url}/v1/streams/{stream_id}", headers={"last-event-id": "1"})
    rest = _events(resumed.content)
    assert msgspec.json.decode(rest[-1][1])["error"]["code"] == "invalid_api_key"
    assert len(_words(rest)) < len(WORDS) - 2  # not continued
    await asyncio.sleep(0.1)
    assert [(o.status, o.key_id) for o in other.outcomes] == [(401, key_id)]
