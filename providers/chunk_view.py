"""What the translations into other client APIs (Responses, Messages) read of a Chat Completions
chunk: one view, decoded once per chunk, everything else skipped."""

from __future__ import annotations

from typing import Any

import msgspec


class ChunkDelta(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(msgspec.Struct, gc=False):
    delta: ChunkDelta = msgspec.field(default_factory=ChunkDelta)
    finish_reason: str | None = None


class ChunkBody(msgspec.Struct, gc=False):
    """A chunk without its id and model, which are the same in every chunk of a stream: the
    translations read them from the first and skip them (two strings fewer a chunk) after."""

    choices: list[ChunkChoice] = []
    usage: dict[str, Any] | None = None
    error: msgspec.Raw | None = None  # an in-band error (OpenRouter, vLLM)


class ChunkView(ChunkBody):
    id: str | None = None
    model: str | None = None


decode_chunk = msgspec.json.Decoder(ChunkView).decode
decode_body = msgspec.json.Decoder(ChunkBody).decode
