"""A chat request body → ``Inbound``, or an ``InvalidRequest`` that names what is wrong.

Nothing a client sends gets past here unchecked in ways that could hurt later: the body must be
a JSON object in valid UTF-8 (an unknown field is forwarded as it came, so it is checked here),
and JSON nested deeper than the decoder can follow is refused naming the field, not a 500.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from providers.base import Inbound
from providers.schema import ChatRequest
from router.errors import InvalidRequest

_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_chat = msgspec.json.Decoder(ChatRequest).decode
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


def nested_too_deep(body: bytes, limit: int) -> str | None:
    """The path of the first array or object nested more than ``limit`` levels deep (its first
    ``DEPTH_SHOWN`` segments, trailing indexes dropped), or None. Used only once the decoder has
    given up, so its cost never touches a valid request."""
    segments: list[str] = []  # one per open container: its key or index within its parent
    containers: list[bool] = []  # per open container: is it an object?
    expect_key = False
    for match in _TOKEN.finditer(body):
        token = match.group()
        first = token[0]
        if first == 0x22:
            if expect_key and containers and containers[-1]:
                try:
                    segments[-1] = "." + _decode_key(token)
                except msgspec.DecodeError:
                    segments[-1] = ".?"
        elif first in b"[{":
            containers.append(first == 0x7B)
            segments.append("[0]" if first == 0x5B else "")
            expect_key = first == 0x7B
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
                segments[-1] = f"[{int(segments[-1][1:-1]) + 1}]"
        elif first == 0x3A:  # ':'
            expect_key = False
    return None


def _path(segments: list[str]) -> str:
    # Each segment is a position inside one open container; the last one, inside the container
    # that went too deep, says nothing.
    shown = segments[:-1][:DEPTH_SHOWN]
    while shown and shown[-1].startswith("["):
        shown.pop()
    return "".join(shown).lstrip(".")


def _too_deep(body: bytes) -> InvalidRequest:
    param = nested_too_deep(body, 64) or None
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
    try:
        fields = _decode_fields(body)
        chat = _decode_chat(body)
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
    return Inbound(chat, fields)
