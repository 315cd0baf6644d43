"""Mid-stream failover with continuation (``models.<alias>.continue_on_failure``): what a committed
stream has delivered (``Transcript``), the conversation that asks another target to go on from
there (``continuation_messages``), and the continuation's chunks made part of the same stream
(``Splice``: same id, same creation time, no second role chunk, usage added up).

Continuation is faithful only for text: a tool call under way, ``n`` > 1 or logprobs cannot be
picked up by another model without the client noticing, so such a stream ends with its error
event as before (``Transcript.unfaithful`` says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from providers.base import TokenUsage

# Providers without an assistant prefill get the partial answer as an assistant turn and this.
CONTINUE_PROMPT: Final = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating anything "
    "already written and without any preamble: your reply is appended to it as is."
)

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta = msgspec.field(default_factory=_Delta)
    logprobs: Any = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    id: str | None = None
    created: int | None = None
    choices: list[_Choice] = []


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class Transcript:
    """What the client has been sent of a Chat Completions stream."""

    __slots__ = ("_parts", "created", "finished", "id", "unfaithful")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.id: str | None = None
        self.created: int | None = None
        self.unfaithful: str | None = None  # why another target could not go on from here
        self.finished = False  # its finish reason has gone out: only the end is missing

    def add(self, payloads: Sequence[bytes]) -> None:
        for payload in payloads:
            try:
                chunk = _decode_chunk(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not a chunk this view understands: it carries no text
            if self.id is None:
                self.id, self.created = chunk.id, chunk.created
            for choice in chunk.choices:
                if choice.index != 0:
                    self.unfaithful = "more than one choice"
                elif choice.delta.tool_calls:
                    self.unfaithful = "a tool call was under way"
                elif choice.logprobs is not None:
                    self.unfaithful = "the stream carries logprobs"
                if choice.delta.content:
                    self._parts.append(choice.delta.content)
                if choice.finish_reason is not None:
                    self.unfaithful = "the answer had finished already"  # nothing is missing from it
                    self.finished = True

    @property
    def text(self) -> str:
        return "".join(self._parts)


def continuation_messages(messages: list[Any], delivered: str, prefill: bool) -> list[Any]:
    """The conversation again, the delivered text as a partial assistant turn: a prefill the
    provider continues (Anthropic; a prefill may not end in whitespace), or, for the others, that
    turn followed by ``CONTINUE_PROMPT``."""
    if prefill:
        return [*messages, {"role": "assistant", "content": delivered.rstrip()}]
    return [*messages, {"role": "assistant", "content": delivered}, {"role": "user", "content": CONTINUE_PROMPT}]


def _add_usage(usage: dict[str, Any], carried: TokenUsage) -> dict[str, Any]:
    prompt = int(usage.get("prompt_tokens") or 0) + carried.prompt
    completion = int(usage.get("completion_tokens") or 0) + carried.completion
    return usage | {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Splice:
    """Rewrites a continuation's chunks into the stream the client already reads: the first
    answer's id and creation time, its role chunk dropped, and usage added up (both attempts are
    billed). ``trim`` when a prefill had to leave out whitespace the client already has: the
    continuation's own leading whitespace is then dropped."""

    __slots__ = ("_carried", "_created", "_id", "_started", "_trim")

    def __init__(self, transcript: Transcript, carried: TokenUsage | None, trim: bool = False) -> None:
        self._id = transcript.id
        self._created = transcript.created
        self._carried = carried
        self._trim = trim
        self._started = False

    def __call__(self, payloads: Sequence[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for payload in payloads:
            chunk = _decode(payload)
            if not isinstance(chunk, dict):
                out.append(payload)
                continue
            choices = chunk.get("choices") or []
            if not self._started and choices:
                delta = choices[0].get("delta") or {}
                if self._trim and isinstance(delta.get("content"), str):
                    delta["content"] = delta["content"].lstrip()
                if not delta.get("content") and not delta.get("tool_calls") and not choices[0].get("finish_reason"):
                    continue  # the continuation's own opening (its role): the client has had one
                self._started = True
            if self._id is not None:
                chunk["id"] = self._id
            if self._created is not None:
                chunk["created"] = self._created
            usage = chunk.get("usage")
            if isinstance(usage, dict) and self._carried is not None:
                chunk["usage"] = _add_usage(usage, self._carried)
            out.append(_encode(chunk))
        return out
