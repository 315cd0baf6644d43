"""What the translations into other client APIs (Responses, Messages) read of a Chat Completions
chunk: one view, decoded once per chunk, everything else skipped.

An OpenAI-format upstream's chunks are decoded by its stream translator anyway (for errors, the
finish and the usage); when a framing will translate them, the translator decodes each into this
view and hands it on with the payloads (``Decoded``), so that nothing is decoded twice."""

from __future__ import annotations

from collections.abc import Iterable
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
    usage: msgspec.Raw = msgspec.Raw()  # as sent (`null` in most chunks): see ``usage_fields``
    error: msgspec.Raw | None = None  # an in-band error (OpenRouter)
    object: str | None = None  # "error": an in-band error (vLLM)


class ChunkView(ChunkBody):
    id: str | None = None
    model: str | None = None


class Decoded(list[bytes]):
    """Chunk payloads with the views their translator decoded them into, one each, in order."""

    __slots__ = ("views",)

    def __init__(self, payloads: Iterable[bytes], views: list[ChunkBody]) -> None:
        super().__init__(payloads)
        self.views = views


decode_chunk = msgspec.json.Decoder(ChunkView).decode
decode_body = msgspec.json.Decoder(ChunkBody).decode
_decode_any = msgspec.json.Decoder().decode


def usage_fields(usage: msgspec.Raw) -> dict[str, Any] | None:
    """A chunk's usage object; None when it has none, or one that is not an object (a server's
    odd usage is not a broken stream)."""
    if len(usage) <= 4:  # absent or null
        return None
    try:
        fields = _decode_any(usage)
    except (msgspec.DecodeError, RecursionError):
        return None
    return fields if isinstance(fields, dict) else None
