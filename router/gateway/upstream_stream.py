"""The upstream side of a stream: bytes → SSE events → OpenAI chunk payloads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

import httpx

from providers.base import Report, StreamTranslator
from providers.chunk_view import Decoded
from providers.errors import SwitchboardError, UpstreamProtocolError
from providers.openai import OpenAIStream
from providers.sse import EventTooLarge, SSEEvent, SSEParser
from router.upstreams.transport import upstream_failure

DRAIN_S: Final = 1.0  # after [DONE], how long to wait for the upstream's end so its connection can be reused


def for_framing(translator: StreamTranslator) -> StreamTranslator:
    """``translator`` for a stream whose framing translates the chunks (Responses, Messages):
    one that decodes its chunks anyway (an OpenAI-format upstream's) hands each chunk's view on
    with it (``Decoded``), so that the framing does not decode it again."""
    if isinstance(translator, OpenAIStream):
        translator.views = []
    return translator


class UpstreamStream:
    """An open upstream response being read as a stream of OpenAI chunk payloads."""

    __slots__ = ("_failure", "_parser", "_reads", "_response", "_translator", "_viewing", "provider")

    def __init__(
        self, response: httpx.Response, translator: StreamTranslator, provider: str, max_event_bytes: int
    ) -> None:
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        self._response = response
        self._reads = stream.__aiter__()
        self._parser = SSEParser(max_event_bytes, separator=b" ")  # every payload is JSON
        self._translator = translator
        self._viewing = translator if isinstance(translator, OpenAIStream) else None  # see ``for_framing``
        self._failure: SwitchboardError | None = None
        self.provider = provider

    async def pull(self) -> Sequence[bytes] | None:
        """The chunks completed by the next upstream read(s); ``None`` once the answer is whole.
        With the translator's views (``for_framing``), a ``Decoded``: the chunks and their views.

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
            try:
                events = self._parser.feed(raw)
            except EventTooLarge as exc:
                raise UpstreamProtocolError(
                    f"provider '{self.provider}' sent a stream event larger than {exc.limit} bytes"
                ) from None
            if len(events) == 1:
                out = translator.translate(events[0])
            elif events:
                out = self._translate_many(events)
            else:
                continue
            if out:
                viewing = self._viewing
                if viewing is not None and viewing.views is not None:
                    views, viewing.views = viewing.views, []
                    return Decoded(out, views)
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

    @property
    def report(self) -> Report:
        return self._translator.report

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
