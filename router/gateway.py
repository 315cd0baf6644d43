"""Attempt planning and execution: which target answers, and how a call to it is made.

The gateway owns the transports, the timeouts and the mapping of transport failures. This
version sends each request to the first available target of its route's plan; the plan already
lists every target and fallback in order, so failover walks the same list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from providers.base import Inbound, Provider
from providers.errors import SwitchboardError, UpstreamError, UpstreamRejected, UpstreamTimeout
from router.config import TimeoutsConfig
from router.errors import NoTargetAvailable
from router.routing import Route, Router, Target
from router.streaming import UpstreamStream
from router.transport import upstream_failure
from router.upstreams import Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Attempt:
    target: Target
    adapter: Provider
    transport: httpx.AsyncBaseTransport


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole non-streamed answer, already in OpenAI's format."""

    body: bytes
    target: Target


@dataclass(frozen=True, slots=True)
class OpenStream:
    """A stream whose first chunks have arrived: from here on the response is committed."""

    upstream: UpstreamStream
    first: Sequence[bytes]
    target: Target
    deadline: float  # loop time by which the whole request must be done


class Gateway:
    def __init__(self, router: Router, upstreams: Mapping[str, Upstream], timeouts: TimeoutsConfig) -> None:
        self.router = router
        self.upstreams = upstreams
        self.timeouts = timeouts

    def plan(self, route: Route) -> list[Attempt]:
        """The attempts this route allows now, in order.

        Raises:
            NoTargetAvailable: no target can be called, with each one's reason.
        """
        attempts: list[Attempt] = []
        reasons: list[str] = []
        for target in route.plan:
            upstream = self.upstreams[target.provider]
            if upstream.adapter is None or upstream.transport is None:
                reasons.append(f"{target.label}: {upstream.unavailable}")
                continue
            attempts.append(Attempt(target, upstream.adapter, upstream.transport))
        if not attempts:
            raise NoTargetAvailable(f"No target can serve model '{route.alias}': " + "; ".join(reasons), param="model")
        return attempts

    async def complete(self, call: Inbound) -> Answer:
        attempt = self.plan(self.router.resolve(call.chat.model))[0]
        adapter, provider = attempt.adapter, attempt.target.provider
        request = adapter.build_request(call, attempt.target.model)
        budget = min(self.timeouts.attempt_s, self.timeouts.total_s)
        try:
            async with asyncio.timeout(budget):
                response = await attempt.transport.handle_async_request(request)
                body = await read_body(response)
        except TimeoutError:
            raise UpstreamTimeout(f"provider '{provider}' did not answer within {budget:g}s") from None
        except httpx.HTTPError as exc:
            raise _logged(upstream_failure(exc, provider), exc) from None
        if response.status_code >= 400:
            raise _upstream_said(adapter.parse_error(response.status_code, body, response.headers), provider)
        return Answer(adapter.parse_response(body), attempt.target)

    async def open_stream(self, call: Inbound) -> OpenStream:
        """Start a stream and wait for its first chunk, so that a failure before it is still an
        HTTP error (and, with failover, a reason to try the next target)."""
        attempt = self.plan(self.router.resolve(call.chat.model))[0]
        adapter, provider = attempt.adapter, attempt.target.provider
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s
        budget = min(self.timeouts.first_token_s, self.timeouts.total_s)
        request = adapter.build_request(call, attempt.target.model)
        upstream: UpstreamStream | None = None
        try:
            async with asyncio.timeout(budget):
                response = await attempt.transport.handle_async_request(request)
                if response.status_code >= 400:
                    body = await read_body(response)
                    raise _upstream_said(adapter.parse_error(response.status_code, body, response.headers), provider)
                upstream = UpstreamStream(response, adapter.stream_translator(call), provider)
                first = await upstream.pull()
        except TimeoutError:
            await _close(upstream)
            raise UpstreamTimeout(f"provider '{provider}' sent no first token within {budget:g}s") from None
        except httpx.HTTPError as exc:
            await _close(upstream)
            raise _logged(upstream_failure(exc, provider), exc) from None
        except BaseException:
            await _close(upstream)
            raise
        return OpenStream(upstream, first or (), attempt.target, deadline)


async def read_body(response: httpx.Response) -> bytes:
    """The whole body, closed after. Reads the transport's stream directly: the transport
    already undid any content encoding, so httpx's decoders would only cost time."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await response.aclose()


async def _close(upstream: UpstreamStream | None) -> None:
    if upstream is not None:
        await upstream.aclose()


def _upstream_said(error: UpstreamError, provider: str) -> UpstreamError:
    """Log an upstream's error answer (already free of secrets) once, where it is received."""
    level = logging.INFO if isinstance(error, UpstreamRejected) else logging.WARNING
    log.log(level, "provider '%s' answered %s: %s", provider, error.upstream_status, error.message)
    return error


def _logged(error: SwitchboardError, cause: Exception) -> SwitchboardError:
    log.warning("%s (%s: %s)", error.message, type(cause).__name__, cause)
    return error
