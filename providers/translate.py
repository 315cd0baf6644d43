"""Helpers shared by the request translations of the non-OpenAI adapters (pure functions)."""

from __future__ import annotations

import binascii

import msgspec

from providers.errors import UntranslatableRequest
from providers.schema import ContentPart

_encode = msgspec.json.Encoder().encode


def text_of(content: str | list[ContentPart] | None) -> str:
    """The text of a message's content, its text parts joined."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.text for p in content if p.type == "text" and isinstance(p.text, str))


def data_url(url: str, param: str) -> tuple[str, str]:
    """``(media type, base64 data)`` of a ``data:<type>;base64,<data>`` URL."""
    header, comma, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not url.startswith("data:") or not comma or encoding != "base64" or not media_type:
        raise UntranslatableRequest("an image data URL must look like data:<type>;base64,<data>", param=param)
    try:
        binascii.a2b_base64(data[:64])  # a cheap sanity check; the provider validates the rest
    except binascii.Error:
        raise UntranslatableRequest("the image data is not valid base64", param=param) from None
    return media_type, data


def arguments_object(raw: str, param: str) -> msgspec.Raw:
    """A tool call's ``arguments`` string as the JSON object both Anthropic and Gemini require."""
    try:
        value = msgspec.json.decode(raw or "{}")
        if not isinstance(value, dict):
            raise UntranslatableRequest("tool call arguments must be a JSON object", param=param)
        return msgspec.Raw(_encode(value))
    except msgspec.DecodeError:
        raise UntranslatableRequest("tool call arguments must be a JSON object", param=param) from None
    except RecursionError:
        raise too_deep(param) from None


def too_deep(param: str) -> UntranslatableRequest:
    """JSON the decoder cannot follow (about a thousand levels): the client's error, not ours."""
    return UntranslatableRequest(f"Invalid value: '{param}' is nested too deeply.", param=param, code="invalid_value")
