"""What the translations into other client APIs (Responses, Messages) read of a Chat Completions
chunk: one view, decoded once per chunk, everything else skipped."""

from __future__ import annotations

from typing import Any

import msgspec


class ChunkDelta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(msgspec.Struct):
    delta: ChunkDelta = msgspec.field(default_factory=ChunkDelta)
    finish_reason: str | None = None


class ChunkView(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    choices: list[ChunkChoice] = []
    usage: dict[str, Any] | None = None
    error: msgspec.Raw | None = None  # an in-band error (OpenRouter, vLLM)


decode_chunk = msgspec.json.Decoder(ChunkView).decode
