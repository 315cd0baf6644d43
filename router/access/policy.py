"""Server-controlled parameters (an alias's ``params:``): a cap on the answer's tokens, a system
prompt prepended or enforced, parameters denied or forced, and a limit on the request's size.

Pure: a request's raw fields in, the fields to send on out (or ``InvalidRequest`` naming the
parameter). The caller decodes the result again, so every adapter sees the same request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from providers.schema import ChatRequest
from router.config_schema import ParamsPolicy
from router.errors import InvalidRequest

Fields = dict[str, msgspec.Raw]
_encode = msgspec.json.Encoder().encode
_decode_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
SYSTEM_ROLES: Final = frozenset({"system", "developer"})
CAPS: Final = ("max_completion_tokens", "max_tokens")


def apply(chat: ChatRequest, fields: Mapping[str, msgspec.Raw], alias: str, policy: ParamsPolicy) -> Fields:
    out = dict(fields)
    for name in policy.deny:
        if name in out:
            raise InvalidRequest(
                f"The parameter '{name}' is not allowed for the model '{alias}' on this gateway.",
                param=name,
                code="unsupported_parameter",
            )
    messages = _decode_list(out["messages"])
    roles: list[str] = [str(m.role) for m in chat.messages]
    if policy.system_prompt is not None:
        messages, roles = _system(messages, roles, policy.system_prompt, policy.system_prompt_mode)
    if policy.max_messages is not None and len(messages) > policy.max_messages:
        if not policy.clamp:
            raise InvalidRequest(
                f"The request has {len(messages)} messages; the model '{alias}' takes at most {policy.max_messages}.",
                param="messages",
                code="invalid_value",
            )
        messages, roles = _last(messages, roles, policy.max_messages)
    if policy.max_chars is not None:
        chars = _chars(chat)
        if chars > policy.max_chars:
            raise InvalidRequest(
                f"The messages hold {chars} characters of text; the model '{alias}' takes at most {policy.max_chars}.",
                param="messages",
                code="invalid_value",
            )
    out["messages"] = msgspec.Raw(b"[" + b",".join(bytes(m) for m in messages) + b"]")
    if policy.max_tokens is not None:
        _cap(chat, out, alias, policy.max_tokens, policy.clamp)
    for name, value in policy.force.items():
        out[name] = msgspec.Raw(_encode(value))
    return out


def _system(
    messages: list[msgspec.Raw], roles: list[str], prompt: str, mode: str
) -> tuple[list[msgspec.Raw], list[str]]:
    turn = msgspec.Raw(_encode({"role": "system", "content": prompt}))
    if mode == "enforce":  # the gateway's instructions, and no one else's
        kept = [(m, r) for m, r in zip(messages, roles, strict=True) if r not in SYSTEM_ROLES]
        messages, roles = [m for m, _ in kept], [r for _, r in kept]
    return [turn, *messages], ["system", *roles]


def _last(messages: list[msgspec.Raw], roles: list[str], limit: int) -> tuple[list[msgspec.Raw], list[str]]:
    """The leading system turns, then the most recent messages: ``limit`` in all."""
    lead = 0
    while lead < len(roles) and roles[lead] in SYSTEM_ROLES and lead < limit - 1:
        lead += 1
    tail = limit - lead
    return messages[:lead] + messages[len(messages) - tail :], roles[:lead] + roles[len(roles) - tail :]


def _chars(chat: ChatRequest) -> int:
    total = 0
    for message in chat.messages:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(part.text) for part in content if isinstance(part.text, str))
    return total


def _cap(chat: ChatRequest, out: Fields, alias: str, cap: int, clamp: bool) -> None:
    asked = [(name, getattr(chat, name)) for name in CAPS if isinstance(getattr(chat, name), int)]
    if not asked:  # no cap asked for: the gateway's applies
        out["max_tokens"] = msgspec.Raw(_encode(cap))
        return
    for name, value in asked:
        if value <= cap:
            continue
        if not clamp:
            raise InvalidRequest(
                f"{name} is {value}; the model '{alias}' answers with at most {cap} tokens on this gateway.",
                param=name,
                code="invalid_value",
            )
        out[name] = msgspec.Raw(_encode(cap))
