"""OpenAI's Responses API as an operation of the failover loop. A target whose provider serves the
Responses API itself (``responses_api: native``: OpenAI's own API and Azure by default) gets the
request as the client sent it, so reasoning items, hosted tools and every field Switchboard does
not model survive; any other gets it translated to Chat Completions (``providers.responses``).

``previous_response_id``: one Switchboard answered by translation is expanded into the earlier
turns for every target; one a native target answered, or one Switchboard never saw, goes to
native targets as it is (their provider knows it) and cannot be served by the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from providers.base import Inbound, Parsed, StreamTranslator
from providers.openai import OpenAIProvider
from providers.responses import Builder, Item
from router.gateway.skipped import TargetSkipped
from router.gateway.upstream_stream import for_framing

if TYPE_CHECKING:
    from router.gateway.failover import Attempt

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class ResponsesCall:
    request: dict[str, Any]  # as the client sent it
    items: list[Item]  # the conversation: earlier turns (when Switchboard has them) and the new input
    expanded: bool  # the earlier turns are in ``items`` (or there are none)
    upstream_knows: bool  # previous_response_id may go to a native target as it is
    translate: Callable[[dict[str, Any], Sequence[Item]], Inbound]  # raises a client error
    builder: Builder
    governed: bool = False  # server-controlled parameters apply: always through Chat Completions
    _chat: Inbound | None = field(default=None)

    @property
    def model(self) -> str:
        return str(self.request["model"])

    @property
    def stream(self) -> bool:
        return self.request.get("stream") is True

    def chat(self) -> Inbound:
        if self._chat is None:
            self._chat = self.translate(self.request, self.items)
        return self._chat

    def native_body(self) -> dict[str, Any]:
        """The body for a native target: as sent, or with the earlier turns Switchboard keeps put
        in place of ``previous_response_id`` (without the ids and reasoning only it knows)."""
        if self.request.get("previous_response_id") is None or not self.expanded or self.upstream_knows:
            return self.request
        body = {k: v for k, v in self.request.items() if k != "previous_response_id"}
        body["input"] = [
            {k: v for k, v in item.items() if k != "id"} for _, item in self.items if item.get("type") != "reasoning"
        ]
        return body


def native(call: ResponsesCall, attempt: Attempt) -> OpenAIProvider | None:
    """The target's own Responses API, unless server-controlled parameters must hold."""
    adapter = attempt.adapter
    if isinstance(adapter, OpenAIProvider) and adapter.responses_native and not call.governed:
        return adapter
    return None


def build(
    call: ResponsesCall, unsupported: Callable[[Inbound, Attempt], Sequence[str]], attempt: Attempt
) -> tuple[httpx.Request, Sequence[str]]:
    adapter = native(call, attempt)
    if adapter is not None:
        return adapter.responses_request(call.native_body(), attempt.target.model, call.stream), ()
    if not call.expanded:
        raise TargetSkipped("previous_response_id is known only to a native Responses API target")
    chat = call.chat()
    return attempt.adapter.build_request(chat, attempt.target.model), unsupported(chat, attempt)


def parse(call: ResponsesCall, attempt: Attempt, body: bytes) -> Parsed:
    adapter = native(call, attempt)
    if adapter is not None:
        return adapter.parse_responses(body)
    parsed = attempt.adapter.parse_response(body, attempt.target.model)
    return Parsed(_encode(call.builder.from_chat(parsed.body, parsed.report.usage)), parsed.report)


def translator(call: ResponsesCall, attempt: Attempt) -> StreamTranslator:
    adapter = native(call, attempt)
    if adapter is not None:
        return adapter.responses_stream()
    return for_framing(attempt.adapter.stream_translator(call.chat()))
