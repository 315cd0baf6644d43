"""The legacy completions API (``POST /v1/completions``) as an operation of the failover loop:
passed through to OpenAI-compatible targets (``openai``, ``azure``, ``mock``) as sent, the model
named by the target; other providers have no such API and are passed over."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import msgspec

from providers.base import Parsed, StreamTranslator
from providers.openai import OpenAIProvider
from router.gateway.skipped import TargetSkipped

if TYPE_CHECKING:
    from router.gateway.failover import Attempt


@dataclass(frozen=True, slots=True)
class CompletionsCall:
    fields: dict[str, msgspec.Raw]
    model: str
    stream: bool


def compatible(adapter: object) -> OpenAIProvider | None:
    return adapter if isinstance(adapter, OpenAIProvider) else None


def build(call: CompletionsCall, attempt: Attempt) -> tuple[httpx.Request, Sequence[str]]:
    adapter = compatible(attempt.adapter)
    if adapter is None:
        raise TargetSkipped(f"its provider type ({attempt.kind}) has no legacy completions API")
    return adapter.completions_request(call.fields, attempt.target.model, call.stream), ()


def parse(attempt: Attempt, body: bytes) -> Parsed:
    return attempt.adapter.parse_response(body, attempt.target.model)  # checks `choices`, notes the usage


def translator(call: CompletionsCall, attempt: Attempt) -> StreamTranslator:
    adapter = compatible(attempt.adapter)
    assert adapter is not None  # build passed over every other target
    return adapter.completions_stream(call.fields)
