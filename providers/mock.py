"""The offline provider: an in-process httpx transport that answers like OpenAI.

It lets the demo run the real gateway path end to end with no keys, and lets a user watch
failover by injecting latency and failures. Deterministic: the ``echo`` model repeats the last
user message, any other model a fixed sentence, streamed word by word.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
import msgspec

from providers.embeddings import embedding_list
from providers.mock_answers import ToolCallPlan, plan
from providers.schema import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorEnvelope,
    FunctionCallDelta,
    FunctionCallOut,
    ResponseMessage,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)

CANNED_TEXT: Final = (
    "Hello from Switchboard's offline demo model. Every word you read was streamed through the gateway."
)
_WORD: Final = re.compile(r"\S+\s*")
_encode = msgspec.json.Encoder().encode


class _Options(msgspec.Struct):
    include_usage: bool | None = None


class _Part(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _Message(msgspec.Struct):
    role: str = "user"
    content: str | list[_Part] | None = None


class _Request(msgspec.Struct):
    model: str = "echo"
    n: int | None = None
    messages: list[_Message] = []
    stream: bool | None = None
    stream_options: _Options | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


_decode_request = msgspec.json.Decoder(_Request).decode
_decode_any = msgspec.json.Decoder(dict[str, Any]).decode
MAX_CHOICES: Final = 8


class _EmbedAsk(msgspec.Struct):
    model: str
    input: str | list[str | int | list[int]]
    encoding_format: str | None = None
    dimensions: int | None = None


_decode_embed = msgspec.json.Decoder(_EmbedAsk).decode


class _TextAsk(msgspec.Struct):
    model: str
    prompt: str | list[str | int | list[int]]
    max_tokens: int | None = None
    stream: bool = False


_decode_text = msgspec.json.Decoder(_TextAsk).decode
MOCK_DIMENSIONS: Final = 256


def mock_vector(text: str, size: int) -> list[float]:
    """A unit vector from the text's SHA-256 stream: deterministic, spread over every dimension."""
    raw = b""
    counter = 0
    while len(raw) < size * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{size}I", raw[: size * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


@dataclass(frozen=True, slots=True)
class MockBehaviour:
    """Knobs for the demo and for fault injection (all optional)."""

    latency_s: float = 0.0  # before the response headers
    token_delay_s: float = 0.0  # between streamed words
    failure_rate: float = 0.0  # share of requests answered with ``failure_status``
    failure_status: int = 503
    seed: int | None = None


def _text_of(message: _Message) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        return ""
    return " ".join(p.text for p in message.content if p.text)


def reply_text(req: _Request) -> str:
    if req.model == "echo":
        for message in reversed(req.messages):
            if message.role == "user":
                return _text_of(message) or "(empty message)"
        return "(no user message)"
    return CANNED_TEXT


@dataclass(frozen=True, slots=True)
class _Answer:
    """One streamed answer: text words or a tool call, for each of ``n`` choices."""

    id: str
    created: int
    model: str
    words: list[str]
    call: ToolCallPlan | None
    finish: str
    n: int


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class MockTransport(httpx.AsyncBaseTransport):
    """Answers ``POST …/chat/completions`` as an OpenAI server would."""

    def __init__(self, behaviour: MockBehaviour | None = None) -> None:
        self.behaviour = behaviour or MockBehaviour()
        self._random = random.Random(self.behaviour.seed)  # noqa: S311 - fault injection, not crypto
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        b = self.behaviour
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        if b.failure_rate and self._random.random() < b.failure_rate:
            return self._error(b.failure_status, f"injected failure ({b.failure_status})", "server_error")
        if request.url.path.endswith("/embeddings"):
            return self._embeddings(await request.aread(), request)
        if request.url.path.endswith("/v1/completions"):
            return self._text_completion(await request.aread(), request)
        if not request.url.path.endswith("/chat/completions"):
            return self._error(404, f"the mock provider has no route {request.url.path}", "invalid_request_error")
        body = await request.aread()
        try:
            req = _decode_request(body)
            asked = _decode_any(body)
        except msgspec.DecodeError as exc:
            return self._error(400, f"mock provider: {exc}", "invalid_request_error")
        decided = plan(asked, reply_text(req))
        n = req.n if isinstance(req.n, int) and 1 <= req.n <= MAX_CHOICES else 1
        words: list[str] = []
        finish = "tool_calls" if decided.call is not None else "stop"
        if decided.text is not None:
            words = _WORD.findall(decided.text)
            limit = req.max_completion_tokens or req.max_tokens
            if limit is not None and limit < len(words):
                words, finish = words[:limit], "length"
        completion_tokens = len(words) if decided.call is None else len(decided.call.arguments) // 4 + 1
        prompt_tokens = sum(len(_WORD.findall(_text_of(m))) for m in req.messages)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens * n,
            total_tokens=prompt_tokens + completion_tokens * n,
        )
        ident = f"chatcmpl-mock-{secrets.token_hex(12)}"  # unique across restarts, as a real id is
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            answer = _Answer(ident, created, req.model, words, decided.call, finish, n)
            chunks = self._chunks(answer, usage if include_usage else None)
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=_Stream(chunks), request=request
            )
        message = ResponseMessage(content="".join(words))
        if decided.call is not None:
            call = decided.call
            message = ResponseMessage(
                content=None,
                tool_calls=[
                    ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))
                ],
            )
        completion = ChatCompletion(
            id=ident,
            created=created,
            model=req.model,
            choices=[Choice(index=i, message=message, finish_reason=finish) for i in range(n)],
            usage=usage,
        )
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=_encode(completion), request=request
        )

    async def _chunks(self, answer: _Answer, usage: Usage | None) -> AsyncIterator[bytes]:
        def event(choices: list[ChunkChoice], chunk_usage: Usage | None = None) -> bytes:
            chunk = ChatCompletionChunk(id=answer.id, created=answer.created, model=answer.model, choices=choices)
            if chunk_usage is not None:
                chunk.usage = chunk_usage
            return b"data: " + _encode(chunk) + b"\n\n"

        for index in range(answer.n):
            call = answer.call
            if call is not None:
                head = ToolCallDelta(
                    index=0, id=call.id, type="function", function=FunctionCallDelta(name=call.name, arguments="")
                )
                yield event([ChunkChoice(index=index, delta=Delta(role="assistant", content=None, tool_calls=[head]))])
                rest = ToolCallDelta(index=0, function=FunctionCallDelta(arguments=call.arguments))
                yield event([ChunkChoice(index=index, delta=Delta(tool_calls=[rest]))])
            else:
                yield event([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
                for word in answer.words:
                    if self.behaviour.token_delay_s:
                        await asyncio.sleep(self.behaviour.token_delay_s)
                    yield event([ChunkChoice(index=index, delta=Delta(content=word))])
            yield event([ChunkChoice(index=index, delta=Delta(), finish_reason=answer.finish)])
        if usage is not None:
            yield event([], usage)
        yield b"data: [DONE]\n\n"

    def _text_completion(self, body: bytes, request: httpx.Request) -> httpx.Response:
        """The legacy completions API: ``echo`` repeats the prompt, any other model the sentence."""
        try:
            asked = _decode_text(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._error(400, f"mock provider: {exc}", "invalid_request_error")
        prompt = asked.prompt if isinstance(asked.prompt, str) else " ".join(map(str, asked.prompt))
        words = _WORD.findall(prompt if asked.model == "echo" else CANNED_TEXT)
        limit = asked.max_tokens if asked.max_tokens is not None else 16
        finish = "length" if limit < len(words) else "stop"
        words = words[:limit]
        prompt_tokens = len(_WORD.findall(prompt))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        ident, created = f"cmpl-mock-{secrets.token_hex(12)}", int(time.time())

        def chunk(text: str, finish_reason: str | None, with_usage: bool = False) -> dict[str, object]:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
            out: dict[str, object] = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": asked.model,
                "choices": [choice],
            }
            if with_usage:
                out["usage"] = usage
            return out

        if asked.stream:
            frames = [b"data: " + _encode(chunk(w, None)) + b"\n\n" for w in words]
            frames.append(b"data: " + _encode(chunk("", finish, with_usage=True)) + b"\n\n")
            frames.append(b"data: [DONE]\n\n")
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=b"".join(frames), request=request
            )
        return httpx.Response(
            200,
            headers={"content-type": "application/json"},
            content=_encode(chunk("".join(words), finish, True)),
            request=request,
        )

    def _embeddings(self, body: bytes, request: httpx.Request) -> httpx.Response:
        """Deterministic unit vectors: the same input always gets the same one (any model)."""
        try:
            asked = _decode_embed(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._error(400, f"mock provider: {exc}", "invalid_request_error")
        given = asked.input
        inputs: list[str | list[int]]
        if isinstance(given, str):
            inputs = [given]
        elif given and isinstance(given[0], int):  # one token array
            inputs = [[i for i in given if isinstance(i, int)]]
        else:
            inputs = [i for i in given if not isinstance(i, int)]
        size = asked.dimensions or MOCK_DIMENSIONS
        vectors = [mock_vector(item if isinstance(item, str) else " ".join(map(str, item)), size) for item in inputs]
        tokens = sum(len(_WORD.findall(i)) if isinstance(i, str) else len(i) for i in inputs)
        listing = embedding_list(vectors, asked.model, tokens, asked.encoding_format == "base64")
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=_encode(listing), request=request
        )

    @staticmethod
    def _error(status: int, message: str, error_type: str) -> httpx.Response:
        body = ErrorEnvelope(ErrorBody(message=message, type=error_type))
        return httpx.Response(status, headers={"content-type": "application/json"}, content=_encode(body))
