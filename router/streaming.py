"""Both ends of a stream: upstream bytes → SSE events → OpenAI chunks, and SSE toward the client.

Toward the client every event is ``data: {chunk}\\n\\n`` and the stream ends with
``data: [DONE]\\n\\n``; an error after the first chunk is one ``data: {"error": …}`` event and the
end, with no ``[DONE]`` (the openai SDK raises on it). Everything read in one upstream read goes
out in one write, so nothing waits for a later event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Final

import httpx

from providers.base import StreamTranslator
from providers.errors import SwitchboardError, UpstreamProtocolError, UpstreamTimeout
from providers.sse import SSEEvent, SSEParser
from router.errors import encode_error, internal_error
from router.transport import upstream_failure

log = logging.getLogger(__name__)

DONE_FRAME: Final = b"data: [DONE]\n\n"
DRAIN_S: Final = 1.0  # after [DONE], how long to wait for the upstream's end so its connection can be reused


def frame(payloads: Sequence[bytes]) -> bytes:
    if len(payloads) == 1:
        return b"data: " + payloads[0] + b"\n\n"
    return b"".join([b"data: " + p + b"\n\n" for p in payloads])


def error_frame(exc: SwitchboardError) -> bytes:
    return b"data: " + encode_error(exc) + b"\n\n"


class UpstreamStream:
    """An open upstream response being read as a stream of OpenAI chunk payloads."""

    __slots__ = ("_failure", "_parser", "_reads", "_response", "_translator", "provider")

    def __init__(self, response: httpx.Response, translator: StreamTranslator, provider: str) -> None:
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        self._response = response
        self._reads = stream.__aiter__()
        self._parser = SSEParser()
        self._translator = translator
        self._failure: SwitchboardError | None = None
        self.provider = provider

    async def pull(self) -> Sequence[bytes] | None:
        """The chunks completed by the next upstream read(s); ``None`` once the answer is whole.

        Raises:
            UpstreamError: the upstream failed, reported an error, or ended too early.
        """
        if self._failure is not None:
            raise self._failure
        translator = self._translator
        while not translator.finished:
            try:
                raw = await anext(self._reads, None)
            except httpx.HTTPError as exc:
                raise upstream_failure(exc, self.provider) from exc
            if raw is None:
                if translator.complete:
                    return None
                raise UpstreamProtocolError(
                    f"provider '{self.provider}' ended the stream before the answer was complete"
                )
            events = self._parser.feed(raw)
            if len(events) == 1:
                out = translator.translate(events[0])
            elif events:
                out = self._translate_many(events)
            else:
                continue
            if out:
                return out
        return None

    def _translate_many(self, events: list[SSEEvent]) -> list[bytes]:
        """Chunks that came before a failure in the same read still go out; the failure follows."""
        out: list[bytes] = []
        for event in events:
            try:
                out.extend(self._translator.translate(event))
            except SwitchboardError as exc:
                if not out:
                    raise
                self._failure = exc
                break
        return out

    async def drain(self) -> None:
        """Read to the end so the pooled connection can be reused; give up quickly."""
        try:
            async with asyncio.timeout(DRAIN_S):
                async for _ in self._reads:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass

    async def aclose(self) -> None:
        await self._response.aclose()


async def sse_body(
    upstream: UpstreamStream, first: Sequence[bytes], *, idle_s: float, deadline: float
) -> AsyncIterator[bytes]:
    """The client's response body. Closing it (the client went away) closes the upstream."""
    loop = asyncio.get_running_loop()
    try:
        if first:
            yield frame(first)
        try:
            async with asyncio.timeout(None) as timer:
                while True:
                    # Only the wait for the upstream is timed, never the write to the client.
                    timer.reschedule(min(loop.time() + idle_s, deadline))
                    payloads = await upstream.pull()
                    timer.reschedule(None)
                    if payloads is None:
                        break
                    yield frame(payloads)
        except TimeoutError:
            reason = "the request deadline passed" if loop.time() >= deadline else f"it sent nothing for {idle_s:g}s"
            yield error_frame(UpstreamTimeout(f"provider '{upstream.provider}' stream stopped: {reason}"))
            return
        except SwitchboardError as exc:
            log.warning("stream from %s failed mid-way: %s", upstream.provider, exc.message)
            yield error_frame(exc)
            return
        except Exception:
            log.exception("stream from %s failed mid-way", upstream.provider)
            yield error_frame(internal_error())
            return
        yield DONE_FRAME
        await upstream.drain()
    finally:
        await upstream.aclose()
