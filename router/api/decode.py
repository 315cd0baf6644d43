"""A request body (chat → ``Inbound``, embeddings → ``EmbeddingsCall``), or an ``InvalidRequest``
that names what is wrong.

Nothing a client sends gets past here unchecked in ways that could hurt later: the body must be
a JSON object in valid UTF-8 (an unknown field is forwarded as it came, so it is checked here),
and JSON nested deeper than the decoder can follow is refused naming the field, not a 500.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Final, TypeVar

import msgspec

from providers.base import Inbound
from providers.embeddings import EmbeddingsCall, EmbeddingsRequest
from providers.schema import ChatRequest
from router.errors import InvalidRequest

_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_chat = msgspec.json.Decoder(ChatRequest).decode
_decode_embeddings = msgspec.json.Decoder(EmbeddingsRequest).decode
V = TypeVar("V")
_decode_key = msgspec.json.Decoder(str).decode
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
_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')
DEPTH_SHOWN: Final = 4  # path segments named for a value nested too deeply
# The decoder gives up near Python's recursion limit (1,000 frames, less the stack in use), so
# a body it refused is nested far past SCAN_DEPTH, and a legitimately deep schema is not named.
SCAN_DEPTH: Final = 256
SCAN_BUDGET: Final = 200_000  # tokens: about a tenth of a second of scanning at most
NOT_JSON: Final = (
    "We could not parse the JSON body of your request. Send a valid JSON object in UTF-8 "
    "with 'Content-Type: application/json'."
)


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


def nested_too_deep(body: bytes, limit: int, budget: int = SCAN_BUDGET) -> str | None:
    """The path of the first array or object nested more than ``limit`` levels deep (its first
    ``DEPTH_SHOWN`` segments, trailing indexes dropped), or None, also when it is not found within
    ``budget`` tokens. Used only once the decoder has given up, so its cost never touches a valid
    request, and bounded so that a large body cannot stall the event loop."""
    segments: list[str | int] = []  # one per open container: its current key or index
    containers: list[bool] = []  # per open container: is it an object?
    expect_key = False
    for match in itertools.islice(_TOKEN.finditer(body), budget):
        token = match.group()
        first = token[0]
        if first == 0x22:
            if expect_key and containers and containers[-1]:
                segments[-1] = _key(token)
        elif first in b"[{":
            is_object = first == 0x7B
            containers.append(is_object)
            segments.append("" if is_object else 0)
            expect_key = is_object
            if len(containers) > limit:
                return _path(segments)
        elif first in b"]}":
            if containers:
                containers.pop()
                segments.pop()
        elif first == 0x2C and containers:  # ','
            if containers[-1]:
                expect_key = True
            else:
                index = segments[-1]
                segments[-1] = index + 1 if isinstance(index, int) else 0
        elif first == 0x3A:  # ':'
            expect_key = False
    return None


def _key(token: bytes) -> str:
    try:
        return _decode_key(token)
    except msgspec.DecodeError:
        return "?"


def _path(segments: list[str | int]) -> str:
    # Each segment is a position inside one open container; the last one, inside the container
    # that went too deep, says nothing.
    shown = segments[:-1][:DEPTH_SHOWN]
    while shown and isinstance(shown[-1], int):
        shown.pop()
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in shown).lstrip(".")


def _too_deep(body: bytes) -> InvalidRequest:
    param = nested_too_deep(body, SCAN_DEPTH) or None
    where = f"'{param}' is" if param else "the body is"
    return InvalidRequest(f"Invalid value: {where} nested too deeply.", param=param, code="invalid_value")


def _bad_utf8(fields: dict[str, msgspec.Raw]) -> InvalidRequest:
    for name, raw in fields.items():
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return InvalidRequest(
                f"Invalid value for '{name}': it is not valid UTF-8.", param=name, code="invalid_json"
            )
    return InvalidRequest(NOT_JSON, code="invalid_json")


def decode_call(body: bytes) -> Inbound:
    fields, chat = _decode(body, _decode_chat)
    return Inbound(chat, fields)


def decode_embeddings(body: bytes) -> EmbeddingsCall:
    fields, request = _decode(body, _decode_embeddings)
    call = EmbeddingsCall(request, fields)
    problem = call.input_problem()
    if problem is not None:
        raise InvalidRequest(f"Invalid value for 'input': {problem}.", param="input", code="invalid_value")
    return call


def _decode(body: bytes, decode: Callable[[bytes], V]) -> tuple[dict[str, msgspec.Raw], V]:
    """The body field by field, and its validated view; or an ``InvalidRequest`` naming what is wrong."""
    try:
        fields = _decode_fields(body)
        view = decode(body)
    except msgspec.ValidationError as exc:
        if "Expected `object`" in str(exc) and " - at `$" not in str(exc):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_json") from None
        raise explain(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for bad UTF-8 in keys
        raise InvalidRequest(NOT_JSON, code="invalid_json") from None
    except RecursionError:
        raise _too_deep(body) from None
    if not body.isascii():
        try:
            body.decode("utf-8")  # msgspec checks the strings it decodes, not the fields it skips
        except UnicodeDecodeError:
            raise _bad_utf8(fields) from None
    return fields, view
