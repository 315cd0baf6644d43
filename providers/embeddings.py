"""OpenAI's embeddings API: the request as Switchboard validates it, the answer as every adapter
returns it, and the pure pieces they share (base64 vectors, token estimates)."""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from providers.base import TokenUsage

Token = Annotated[int, msgspec.Meta(ge=0)]
Tokens = Annotated[list[Token], msgspec.Meta(min_length=1)]
# A string, or a list of strings, of token ids, or of token arrays (msgspec takes one list type in
# a union: the list's kind is checked by ``input_problem``).
Text = Annotated[str, msgspec.Meta(min_length=1)]  # OpenAI refuses empty strings
Input = Text | Annotated[list[Text | Token | Tokens], msgspec.Meta(min_length=1, max_length=2048)]
EncodingFormat = Literal["float", "base64"]


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/embeddings`` as validated; other fields pass through to OpenAI-compatible targets."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: Input
    encoding_format: EncodingFormat | None = None  # OpenAI's default is float
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingsCall:
    """One embeddings request: the validated view, and the raw body field by field."""

    request: EmbeddingsRequest
    fields: dict[str, msgspec.Raw]

    def input_problem(self) -> str | None:
        """Why ``input`` is not one of OpenAI's four shapes, or None."""
        given = self.request.input
        if isinstance(given, str):
            return None
        kinds = {type(item) for item in given}
        if len(kinds) > 1:
            return "a list of inputs must hold only strings, only token ids, or only token arrays"
        return None

    @property
    def texts(self) -> list[str] | None:
        """The inputs as text, or None when they are token arrays."""
        given = self.request.input
        if isinstance(given, str):
            return [given]
        if given and all(isinstance(item, str) for item in given):
            return [item for item in given if isinstance(item, str)]
        return None

    @property
    def base64(self) -> bool:
        return self.request.encoding_format == "base64"


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


LITTLE_ENDIAN: Final = sys.byteorder == "little"


def as_base64(vector: Sequence[float]) -> str:
    """OpenAI's ``encoding_format: base64``: the vector as little-endian float32, base64."""
    packed = array.array("f", vector)
    if not LITTLE_ENDIAN:
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def from_base64(text: str) -> list[float]:
    packed = array.array("f")
    packed.frombytes(base64.b64decode(text))
    if not LITTLE_ENDIAN:
        packed.byteswap()
    return packed.tolist()


def estimate_tokens(call: EmbeddingsCall) -> int:
    """About four characters a token for text; token arrays count themselves."""
    given = call.request.input
    if isinstance(given, str):
        return len(given) // 4 + 1
    total = 0
    for item in given:
        if isinstance(item, str):
            total += len(item) // 4 + 1
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1
    return total


def embedding_list(vectors: Sequence[Sequence[float]], model: str, tokens: int, base64_: bool) -> EmbeddingList:
    """An answer in OpenAI's shape from plain vectors (for targets that are not OpenAI's)."""
    data = [Embedding(index=i, embedding=as_base64(v) if base64_ else list(v)) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=model, usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens))


def usage_report(prompt_tokens: int) -> TokenUsage:
    return TokenUsage(prompt=prompt_tokens, completion=0)
