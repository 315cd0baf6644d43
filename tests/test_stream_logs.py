"""Resumable streams' logs: each event kept once with its number even when a write is retried,
ended logs forgotten a window later without waiting for another stream, and a Redis log that
outlives a silence while it runs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from router.api.resumable import Recorder, ResumeWatch
from router.state.stream_logs import PREFIX, MemoryStreamLogs, RedisStreamLogs


async def _receive() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def _nobody() -> bool:
    return False


async def test_a_write_sent_again_after_an_interrupted_one_keeps_its_numbers_and_is_kept_once() -> None:
    logs = MemoryStreamLogs(60, 1 << 20)
    log = logs.create("sbs_x", "")
    sent: list[bytes] = []
    block = asyncio.Event()

    async def send(message: Any) -> None:
        await block.wait()  # a full client buffer
        sent.append(message["body"])

    watch = ResumeWatch(_receive, 60, _nobody)  # type: ignore[arg-type]
    recorder = Recorder(send, log, watch)
    body = b'data: {"n":0}\n\ndata: {"n":1}\n\n'
    message: Any = {"type": "http.response.body", "body": body, "more_body": True}
    first = asyncio.create_task(recorder(message))
    await asyncio.sleep(0.01)
    first.cancel()  # the relay's timer cut the wait short
    await asyncio.gather(first, return_exceptions=True)
    block.set()
    await recorder(message)  # the relay writes the same bytes again
    await recorder({"type": "http.response.body", "body": b'data: {"n":2}\n\n', "more_body": True})
    await log.end()
    kept = [event async for event in log.follow(0)]
    assert kept == [b'id: 1\ndata: {"n":0}\n\n', b'id: 2\ndata: {"n":1}\n\n', b'id: 3\ndata: {"n":2}\n\n']
    assert sent == [b'id: 1\ndata: {"n":0}\n\nid: 2\ndata: {"n":1}\n\n', b'id: 3\ndata: {"n":2}\n\n']
    watch.close()


async def test_an_ended_log_is_forgotten_a_window_later_without_another_stream() -> None:
    logs = MemoryStreamLogs(0.1, 1 << 20)
    log = logs.create("sbs_y", "")
    await log.append([b"id: 1\ndata: {}\n\n"])
    await log.end()
    assert await logs.find("sbs_y") is log
    await asyncio.sleep(0.3)
    assert await logs.find("sbs_y") is None


async def test_a_redis_log_outlives_a_silence_while_it_runs_and_a_window_after_its_end(redis_url: str) -> None:
    logs = RedisStreamLogs(redis_url, 2, window_s=1, limit=1 << 20, live_s=30)
    redis = Redis.from_url(redis_url)
    try:
        log = logs.create("sbs_ttl_test", "")
        await log.append([b"id: 1\ndata: {}\n\n"])
        assert await redis.pttl(PREFIX + "sbs_ttl_test") > 20_000  # the window and the longest a stream runs
        await log.end()
        assert 0 < await redis.pttl(PREFIX + "sbs_ttl_test") <= 1_000
    finally:
        await redis.delete(PREFIX + "sbs_ttl_test")
        await redis.aclose()
        await logs.close()


@pytest.mark.parametrize("limit", [10])
async def test_a_log_past_its_bound_is_no_longer_resumable(limit: int) -> None:
    logs = MemoryStreamLogs(60, limit)
    log = logs.create("sbs_z", "")
    await log.append([b"id: 1\ndata: {0123456789}\n\n"])
    assert log.overflowed
    assert [event async for event in log.follow(0)] == []


async def test_a_handed_off_redis_log_is_claimed_by_one_replica_which_goes_on_with_the_next_numbers(
    redis_url: str,
) -> None:
    logs = RedisStreamLogs(redis_url, 2, window_s=5, limit=1 << 20, live_s=30)
    stream_id = f"sbs_handoff_test_{time.monotonic_ns()}"
    try:
        first = logs.create(stream_id, "key-1")
        await first.append([b"id: 1\ndata: {}\n\n", b"id: 2\ndata: {}\n\n"])
        assert await first.hand_off(b'{"record":1}')
        await first.append([b"id: 99\ndata: {}\n\n"])  # handed off: this replica writes no more
        await first.end()  # nor ends it

        found = await logs.find(stream_id)
        assert found is not None
        assert found.owner == "key-1"
        seen: list[tuple[str, bytes]] = []
        claimed: list[bool] = []
        handed = 0

        async def on_hand_off(entry: str, record: bytes) -> bool:
            nonlocal handed
            seen.append((entry, record))
            handed = int(entry.split("-")[1])
            taker, other = logs.create(stream_id, found.owner), logs.create(stream_id, found.owner)
            # Two replicas: one claims it; the same replica again (an answer it lost) still has it.
            claimed.extend([bool(await taker.claim(handed, "b")), bool(await other.claim(handed, "c"))])
            claimed.append(bool(await logs.create(stream_id, found.owner).claim(handed, "b")))
            assert await taker.events() == [b"id: 1\ndata: {}\n\n", b"id: 2\ndata: {}\n\n"]
            await taker.append([b"id: 3\ndata: {}\n\n"])
            await taker.end()
            return True

        followed = [event async for event in found.follow(1, on_hand_off)]
        assert seen == [("0-4", b'{"record":1}')]
        assert claimed == [True, False, True]  # one replica only
        assert followed == [b"id: 2\ndata: {}\n\n", b"id: 3\ndata: {}\n\n"]  # event 3 sits past the hand-off

        async def taken_already(entry: str, record: bytes) -> bool:
            return True

        assert [event async for event in found.follow(2, taken_already)] == [b"id: 3\ndata: {}\n\n"]
        late = logs.create(stream_id, found.owner)
        assert await late.claim(handed, "b") is False  # it went on after its claim: taken for good
        no_taker = [event async for event in found.follow(0)]
        assert no_taker == [b"id: 1\ndata: {}\n\n", b"id: 2\ndata: {}\n\n"]  # a hand-off ends the follower

    finally:
        redis = Redis.from_url(redis_url)
        await redis.delete(PREFIX + stream_id)
        await redis.aclose()
        await logs.close()


async def test_a_memory_log_cannot_be_handed_off() -> None:
    log = MemoryStreamLogs(60, 1 << 20).create("sbs_m", "")
    await log.append([b"id: 1\ndata: {}\n\n"])
    assert not await log.hand_off(b"{}")


async def test_a_last_event_id_past_the_end_of_an_ended_redis_log_ends_at_once(redis_url: str) -> None:
    logs = RedisStreamLogs(redis_url, 2, window_s=30, limit=1 << 20, live_s=30)
    stream_id = f"sbs_past_end_{time.monotonic_ns()}"
    try:
        log = logs.create(stream_id, "")
        await log.append([b"id: 1\ndata: {}\n\n", b"id: 2\ndata: {}\n\n"])
        await log.end()
        found = await logs.find(stream_id)
        assert found is not None
        for after in (2, 3, 50):  # the last event, one past it, far past it
            async with asyncio.timeout(0.5):  # not a wait for the log to expire
                assert [event async for event in found.follow(after)] == []
        assert [event async for event in found.follow(1)] == [b"id: 2\ndata: {}\n\n"]
    finally:
        redis = Redis.from_url(redis_url)
        await redis.delete(PREFIX + stream_id)
        await redis.aclose()
        await logs.close()
