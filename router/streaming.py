"""Both ends of a stream: upstream bytes → SSE events → OpenAI chunks, and SSE toward the client.

Toward the client every event is ``data: {chunk}\\n\\n`` and the stream ends with
``data: [DONE]\\n\\n``; an error after the first chunk is one ``data: {"error": …}`` event and the
end, with no ``[DONE]`` (the openai SDK raises on it). Everything read in one upstream read goes
out in one write, so nothing waits for a later event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

import httpx
from litestar.types import Receive, Scope, Send

from providers.base import StreamTranslator
from providers.errors import SwitchboardError, UpstreamProtocolError, UpstreamTimeout
from providers.sse import SSEEvent, SSEParser
from router.disconnect import ClientWatch
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
            if self._translator.finished:
                break  # nothing after the end marker counts
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


class SSEResponse:
    """The client's side of a stream, as a plain ASGI app (Litestar sends it as it is).

    It writes each batch of chunks as it arrives and holds nothing once written. The request's
    ``ClientWatch`` cancels the relay when the client disconnects, which closes the upstream.
    """

    __slots__ = ("_deadline", "_first", "_headers", "_idle_s", "_upstream", "_watch")

    def __init__(
        self,
        upstream: UpstreamStream,
        first: Sequence[bytes],
        headers: list[tuple[bytes, bytes]],
        watch: ClientWatch,
        *,
        idle_s: float,
        deadline: float,
    ) -> None:
        self._upstream = upstream
        self._first = first
        self._headers = headers
        self._watch = watch
        self._idle_s = idle_s
        self._deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self._watch
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
            await self._relay(send)
            await watch.stop()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.absorb():
                raise
        finally:
            watch.close()
            await self._upstream.aclose()

    async def _relay(self, send: Send) -> None:
        upstream, idle_s, deadline = self._upstream, self._idle_s, self._deadline
        loop = asyncio.get_running_loop()
        if self._first:
            body = frame(self._first)
            self._first = ()  # an open stream holds no more than it is writing
            await send({"type": "http.response.body", "body": body, "more_body": True})
            del body
        try:
            async with asyncio.timeout(None) as timer:
                while True:
                    # Only the wait for the upstream is timed, never the write to the client.
                    timer.reschedule(min(loop.time() + idle_s, deadline))
                    payloads = await upstream.pull()
                    timer.reschedule(None)
                    if payloads is None:
                        break
                    await send({"type": "http.response.body", "body": frame(payloads), "more_body": True})
        except TimeoutError:
            reason = "the request deadline passed" if loop.time() >= deadline else f"it sent nothing for {idle_s:g}s"
            await _send_error(send, UpstreamTimeout(f"provider '{upstream.provider}' stream stopped: {reason}"))
            return
        except SwitchboardError as exc:
            log.warning("stream from %s failed mid-way: %s", upstream.provider, exc.message)
            await _send_error(send, exc)
            return
        except Exception:
            log.exception("stream from %s failed mid-way", upstream.provider)
            await _send_error(send, internal_error())
            return
        await send({"type": "http.response.body", "body": DONE_FRAME, "more_body": True})
        await upstream.drain()


async def _send_error(send: Send, exc: SwitchboardError) -> None:
    await send({"type": "http.response.body", "body": error_frame(exc), "more_body": True})
