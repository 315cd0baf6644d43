"""Server-controlled parameters (an alias's ``params:``): a cap on the answer's tokens, a system
prompt prepended or enforced, parameters denied or forced, and a limit on the request's size.

Pure: a request's raw fields in, the fields to send on out (or ``InvalidRequest`` naming the
parameter). The caller decodes the result again, so every adapter sees the same request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import msgspec

from providers.schema import ChatRequest, Message
from router.config_schema import ParamsPolicy
from router.errors import InvalidRequest

Fields = dict[str, msgspec.Raw]
_encode = msgspec.json.Encoder().encode
_decode_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
SYSTEM_ROLES: Final = frozenset({"system", "developer"})
CAPS: Final = ("max_completion_tokens", "max_tokens")


Turn = tuple[msgspec.Raw, str, int]  # a message as sent, its role, its characters of text


def apply(chat: ChatRequest, fields: Mapping[str, msgspec.Raw], alias: str, policy: ParamsPolicy) -> Fields:
    out = dict(fields)
    for name in policy.deny:
        if name in out:
            raise InvalidRequest(
                f"The parameter '{name}' is not allowed for the model '{alias}' on this gateway.",
                param=name,
                code="unsupported_parameter",
            )
    raws = _decode_list(out["messages"])
    turns: list[Turn] = [(raw, str(m.role), _chars(m)) for raw, m in zip(raws, chat.messages, strict=True)]
    if policy.system_prompt is not None and policy.system_prompt_mode == "enforce":
        turns = [t for t in turns if t[1] not in SYSTEM_ROLES]  # the gateway's instructions only
    if policy.max_messages is not None and len(turns) > policy.max_messages:
        if not policy.clamp:
            raise InvalidRequest(
                f"The request has {len(turns)} messages; the model '{alias}' takes at most {policy.max_messages}.",
                param="messages",
                code="invalid_value",
            )
        turns = _latest(turns, lambda kept: len(kept) <= (policy.max_messages or 0))
    if policy.max_chars is not None and sum(t[2] for t in turns) > policy.max_chars:
        limit = policy.max_chars
        if policy.clamp:
            turns = _latest(turns, lambda kept: sum(t[2] for t in kept) <= limit)
        chars = sum(t[2] for t in turns)
        if chars > limit:
            raise InvalidRequest(
                f"The messages hold {chars} characters of text; the model '{alias}' takes at most {limit}.",
                param="messages",
                code="invalid_value",
            )
    messages = [t[0] for t in turns]
    if policy.system_prompt is not None:
        messages.insert(0, msgspec.Raw(_encode({"role": "system", "content": policy.system_prompt})))
    out["messages"] = msgspec.Raw(b"[" + b",".join(bytes(m) for m in messages) + b"]")
    if policy.max_tokens is not None:
        _cap(chat, out, alias, policy.max_tokens, policy.clamp)
    for name, value in policy.force.items():
        out[name] = msgspec.Raw(_encode(value))
    return out


def _latest(turns: list[Turn], fits: Callable[[list[Turn]], bool]) -> list[Turn]:
    """The leading system turns and as many of the latest others as fit, starting at a user turn
    (a conversation cut just after a tool call, or at an answer, is not one an upstream takes)."""
    lead = 0
    while lead < len(turns) and turns[lead][1] in SYSTEM_ROLES:
        lead += 1
    head, rest = turns[:lead], turns[lead:]
    while rest and not fits(head + rest):
        rest = rest[1:]
    while rest and rest[0][1] != "user" and len(rest) > 1:
        rest = rest[1:]
    return head + rest


def _chars(message: Message) -> int:
    content = message.content
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(part.text) for part in content if isinstance(part.text, str))
    return 0


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
