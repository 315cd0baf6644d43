"""Anthropic's Messages API as an operation of the failover loop: each target gets the request in
its own API. An ``anthropic`` target gets the client's body untouched (the model named by the
target, the client's ``anthropic-version`` and ``anthropic-beta`` forwarded); any other gets it
translated to Chat Completions, and its answer translated back (``providers.anthropic_inbound``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from providers.anthropic import AnthropicProvider
from providers.anthropic_inbound import from_chat
from providers.base import Inbound, Parsed, StreamTranslator
from router.gateway.upstream_stream import for_framing

if TYPE_CHECKING:
    from router.gateway.failover import Attempt


@dataclass(slots=True)
class MessagesCall:
    """One ``POST /v1/messages``: the body as sent, field by field, and as decoded JSON."""

    fields: dict[str, msgspec.Raw]
    request: dict[str, Any]
    forwarded: Mapping[str, str]  # anthropic-version, anthropic-beta, for Anthropic targets
    translate: Callable[[Mapping[str, Any]], Inbound]  # to Chat Completions; raises a client error
    governed: bool = False  # server-controlled parameters apply: always through Chat Completions
    _chat: Inbound | None = field(default=None)

    @property
    def model(self) -> str:
        return str(self.request["model"])

    @property
    def stream(self) -> bool:
        return self.request.get("stream") is True

    def chat(self) -> Inbound:
        """The request as Chat Completions, translated the first time a target needs it."""
        if self._chat is None:
            self._chat = self.translate(self.request)
        return self._chat


def native(call: MessagesCall, attempt: Attempt) -> AnthropicProvider | None:
    """The target's own Messages API, unless server-controlled parameters must hold (they are
    applied on the way through Chat Completions)."""
    adapter = attempt.adapter
    return adapter if isinstance(adapter, AnthropicProvider) and not call.governed else None


def build(
    call: MessagesCall, unsupported: Callable[[Inbound, Attempt], Sequence[str]], attempt: Attempt
) -> tuple[httpx.Request, Sequence[str]]:
    anthropic = native(call, attempt)
    if anthropic is not None:
        return anthropic.passthrough_request(call.fields, attempt.target.model, call.stream, call.forwarded), ()
    chat = call.chat()
    dropped = unsupported(chat, attempt)
    return attempt.adapter.build_request(chat, attempt.target.model), dropped


def parse(call: MessagesCall, attempt: Attempt, body: bytes) -> Parsed:
    parsed = attempt.adapter.parse_response(body, attempt.target.model)  # checks it, and the report
    if native(call, attempt) is not None:
        return Parsed(body, parsed.report)
    return Parsed(from_chat(parsed.body, parsed.report.usage, call.model), parsed.report)


def translator(call: MessagesCall, attempt: Attempt) -> StreamTranslator:
    anthropic = native(call, attempt)
    if anthropic is not None:
        return anthropic.passthrough_stream()
    return for_framing(attempt.adapter.stream_translator(call.chat()))
