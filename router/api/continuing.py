"""A chat stream that goes on at another target when its upstream fails mid-way
(``models.<alias>.continue_on_failure``; see ``router.gateway.continuation``).

``Continuing`` frames the stream as Chat Completions always does, keeping the transcript of what
the client was sent (after a splice, it rewrites the continuation's chunks first). On a failure
the relay asks its ``resume`` for a stream to go on with: it checks that a continuation can be
faithful, asks the gateway for one, and hands the failed upstream's usage and cost to the
request's record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import msgspec

from providers.base import Inbound, TokenUsage
from providers.errors import SwitchboardError
from router.api.decode import decode_call
from router.api.streams import ChatFraming, Framing
from router.gateway.continuation import Splice, Transcript, continuation_messages
from router.gateway.failover import Gateway, OpenStream
from router.gateway.outcome import Exchange, add_usage
from router.gateway.routing import Target

log = logging.getLogger(__name__)
MAX_CONTINUATIONS: Final = 3  # a stream goes on elsewhere at most this often
_encode = msgspec.json.Encoder().encode


class Continuing:
    """Chat framing with a transcript, the splice of a continuation once there is one, and the
    ``resume`` the relay asks for a stream to go on with."""

    __slots__ = ("_before", "_call", "_exchange", "_fail_over", "_failed", "_gateway", "_inner", "splice", "transcript")

    def __init__(
        self, inner: Framing, gateway: Gateway, call: Inbound, exchange: Exchange, fail_over: bool = True
    ) -> None:
        self._inner = inner
        self._gateway = gateway
        self._call = call
        self._exchange = exchange
        self._fail_over = fail_over  # whether a failure mid-way is continued (the alias says)
        self.transcript = Transcript()
        self.splice: Splice | None = None
        self._failed: frozenset[Target] = frozenset()  # every target this stream failed at
        self._before: TokenUsage | None = None  # of the replica that handed the stream off

    def frames(self, payloads: Sequence[bytes]) -> bytes:
        if self.splice is not None:
            payloads = self.splice(payloads)
        self.transcript.add(payloads)
        return self._inner.frames(payloads)

    def done(self) -> bytes:
        return self._inner.done()

    def error(self, exc: SwitchboardError, request_id: str | None) -> bytes:
        return self._inner.error(exc, request_id)

    def unfaithful(self) -> str | None:
        """Why another target could not go on from here faithfully; None if it can."""
        chat = self._call.chat
        if isinstance(chat.n, int) and chat.n > 1:
            return "n > 1"
        if chat.logprobs is True:
            return "logprobs were asked for"
        if len(self._failed) >= MAX_CONTINUATIONS:
            return f"it was continued {MAX_CONTINUATIONS} times already"
        return self.transcript.unfaithful

    async def resume(self, opened: OpenStream, failure: SwitchboardError) -> OpenStream | None:
        """The stream to go on with after ``opened`` failed with ``failure``; None when there is
        none (the stream then ends with its error event, as without continuation). On success
        the failed upstream is closed, its lease failed, its usage and cost carried over."""
        label = opened.target.label
        if not self._fail_over:
            return None
        why = self.unfaithful()
        if why is not None:
            log.warning("stream-not-continued target=%s: %s", label, why)
            return None
        exchange = self._exchange
        provider, model = exchange.provider, exchange.model  # the failed part is priced as theirs
        delivered = self.transcript.text
        try:
            prefill, prompt = self._continued(delivered, prefill=True), self._continued(delivered, prefill=False)
            self._failed |= {opened.target}
            resumed = await self._gateway.open_continuation(prefill, prompt, exchange, self._failed)
        except SwitchboardError as exc:
            log.warning("stream-not-continued target=%s: no target could go on: %s", label, exc.message)
            return None
        opened.lease.failed(failure)
        try:
            await opened.upstream.aclose()
        except Exception:  # it failed already: closing it must not end the stream now
            log.warning("closing the failed upstream of %s failed", label, exc_info=True)
        exchange.carry(opened.upstream.report, provider, model)
        self._spliced(delivered, exchange.carried_usage)
        log.warning(
            "stream-continued from=%s to=%s reason=%r delivered_chars=%d",
            label,
            resumed.target.label,
            failure.message,
            len(delivered),
        )
        return resumed

    async def take_over(self, before: TokenUsage | None) -> OpenStream:
        """Go on with a stream another replica handed off (``router.api.handoff``), from what its
        log holds (fed to ``frames`` already); ``before`` is its usage there, added to the
        continuation's for the client."""
        delivered = self.transcript.text
        prefill, prompt = self._continued(delivered, prefill=True), self._continued(delivered, prefill=False)
        resumed = await self._gateway.open_continuation(prefill, prompt, self._exchange, frozenset())
        self._before = before
        self._exchange.continued += 1
        self._spliced(delivered, None)
        log.warning("stream-taken-over to=%s delivered_chars=%d", resumed.target.label, len(delivered))
        return resumed

    def _spliced(self, delivered: str, carried: TokenUsage | None) -> None:
        """From now on the continuation's chunks are made part of the stream."""
        trimmed = self._exchange.provider == "anthropic" and delivered != delivered.rstrip()  # see the prefill
        self.splice = Splice(self.transcript, add_usage(self._before, carried), trimmed)

    def _continued(self, delivered: str, prefill: bool) -> Inbound:
        fields = dict(self._call.fields)
        messages = msgspec.json.decode(fields["messages"])
        fields["messages"] = msgspec.Raw(_encode(continuation_messages(messages, delivered, prefill)))
        return decode_call(_encode(fields))


def chat_framing(gateway: Gateway, call: Inbound, opened: OpenStream, exchange: Exchange) -> Framing:
    """Chat Completions events; with a transcript and continuation where the alias asks for it."""
    framing = ChatFraming(exchange.trace)
    if gateway.continues(exchange.alias):
        return Continuing(framing, gateway, call, exchange)
    return framing
