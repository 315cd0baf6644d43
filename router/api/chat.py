"""``POST /v1/chat/completions``: decode and validate, hand to the gateway, shape the response."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Final

import msgspec
from litestar import Request, post
from litestar.datastructures import State
from litestar.types import ASGIApp

from providers.base import Inbound
from providers.schema import ChatRequest
from router.api.responses import CLIENT_GONE, JSONBody
from router.disconnect import ClientWatch
from router.errors import InvalidRequest
from router.gateway import Gateway
from router.routing import Target
from router.streaming import SSEResponse

_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_chat = msgspec.json.Decoder(ChatRequest).decode
_AT: Final = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING: Final = re.compile(r"Object missing required field `([^`]+)`")
_TYPE: Final = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")
_TYPE_NAMES: Final = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
TARGET_HEADER: Final = b"x-switchboard-target"
ATTEMPTS_HEADER: Final = b"x-switchboard-attempts"
DROPPED_HEADER: Final = b"x-switchboard-dropped-params"
_HEADER_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\-]")
SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def explain(exc: msgspec.ValidationError) -> InvalidRequest:
    """A msgspec validation error in OpenAI's words, naming the parameter."""
    match = _AT.match(str(exc))
    what, path = (match.group("what"), match.group("path") or "") if match else (str(exc), "")
    if missing := _MISSING.fullmatch(what):
        param = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if wrong := _TYPE.fullmatch(what):
        expected = " or ".join(_TYPE_NAMES.get(t, t) for t in wrong.group(1).split(" | "))
        got = _TYPE_NAMES.get(wrong.group(2), wrong.group(2))
        return InvalidRequest(
            f"Invalid type for '{path}': expected {expected}, but got {got}.",
            param=path or None,
            code="invalid_type",
        )
    if not path:
        return InvalidRequest(f"Invalid request body: {what}.", code="invalid_value")
    return InvalidRequest(f"Invalid value for '{path}': {what}.", param=path, code="invalid_value")


def decode_call(body: bytes) -> Inbound:
    try:
        fields = _decode_fields(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json") from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for bad UTF-8 in keys
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a valid JSON object in UTF-8 "
            "with 'Content-Type: application/json'.",
            code="invalid_json",
        ) from None
    try:
        chat = _decode_chat(body)
    except msgspec.ValidationError as exc:
        raise explain(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid UTF-8 JSON.", code="invalid_json") from None
    return Inbound(chat, fields)


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[None, None, State]) -> ASGIApp:
    call = decode_call(await request.body())
    # Read from the app, not an injected `state` parameter: Litestar copies State per request.
    gateway: Gateway = request.app.state.gateway
    gateway.bulkhead.enter()
    watch = ClientWatch(request.receive)
    handed_over = False
    try:
        if call.chat.is_stream:
            opened = await gateway.open_stream(call)
            handed_over = True  # the response ends the lease, the watch and the bulkhead slot
            headers = _headers(SSE_HEADERS, opened.target, opened.calls, opened.dropped)
            return SSEResponse(opened, headers, watch, gateway)
        answer = await gateway.complete(call)
        await watch.stop()
        return JSONBody(answer.body, _headers([], answer.target, answer.calls, answer.dropped))
    except asyncio.CancelledError:
        if watch.absorb():
            return CLIENT_GONE
        raise
    finally:
        if not handed_over:
            watch.close()
            gateway.bulkhead.leave()


def _headers(
    base: list[tuple[bytes, bytes]], target: Target, calls: int, dropped: Sequence[str]
) -> list[tuple[bytes, bytes]]:
    headers = [*base, (TARGET_HEADER, target.label.encode()), (ATTEMPTS_HEADER, str(calls).encode())]
    if dropped:
        # Client-chosen field names: keep only header-safe characters.
        names = ", ".join(_HEADER_UNSAFE.sub("", name) for name in dropped)
        headers.append((DROPPED_HEADER, names.encode()))
    return headers
