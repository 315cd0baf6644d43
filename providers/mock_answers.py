"""What the offline ``mock`` provider answers, decided from the request alone (pure,
deterministic), so that a tool-using agent or a structured-output client can be tried with no keys:

- tools offered (and ``tool_choice`` not ``none``) and the conversation not just back from a tool:
  a call to the first tool (or the one ``tool_choice`` names) with arguments that satisfy its
  JSON schema;
- just back from a tool: a sentence that reports what the tool returned;
- ``response_format`` ``json_schema``: a JSON value that satisfies the schema; ``json_object``: a
  JSON object holding the reply;
- otherwise the text (``echo`` repeats the last user message).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

MAX_DEPTH: Final = 8  # schemas nested deeper get their simplest value
MAX_ITEMS: Final = 16  # of an array, whatever minItems asks (a client's schema must not cost memory)
MAX_LENGTH: Final = 256  # of a string, whatever minLength asks
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Plan:
    text: str | None  # the content, or None for a tool call
    call: ToolCallPlan | None = None


def plan(request: Mapping[str, Any], reply: str) -> Plan:
    """The answer to ``request`` (decoded JSON); ``reply`` is the plain text answer."""
    messages = request.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    tools = [t for t in request.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = request.get("tool_choice")
    if last.get("role") == "tool":
        content = last.get("content")
        text = content if isinstance(content, str) else _encode(content).decode()
        name = _called(messages, last.get("tool_call_id"))
        return Plan(f"The tool {name} returned: {text}")
    if tools and choice != "none":
        function = tools[0]["function"]
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            named = choice["function"].get("name")
            function = next((t["function"] for t in tools if t["function"].get("name") == named), function)
        name = str(function.get("name") or "tool")
        arguments = example(function.get("parameters") or {"type": "object"})
        digest = hashlib.sha256(f"{name}:{reply}".encode()).hexdigest()[:24]
        return Plan(None, ToolCallPlan(f"call_mock_{digest}", name, _encode(arguments).decode()))
    response_format = request.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema" and isinstance(response_format.get("json_schema"), dict):
            schema = response_format["json_schema"].get("schema") or {}
            return Plan(_encode(example(schema)).decode())
        if response_format.get("type") == "json_object":
            return Plan(_encode({"answer": reply}).decode())
    return Plan(reply)


def _called(messages: list[Any], call_id: object) -> str:
    for message in reversed(messages):
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else ():
            if isinstance(call, dict) and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name") or "tool")
    return "tool"


def example(schema: Any, depth: int = 0) -> Any:
    """A value that satisfies ``schema`` (the JSON Schema subset tools and structured outputs use):
    its ``const``, ``default``, ``enum``'s first value, its first alternative, or a value of its
    type, every property filled in."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    return _typed(schema, kind, depth)


def _typed(schema: Mapping[str, Any], kind: object, depth: int) -> Any:
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: example(sub, depth + 1) for name, sub in properties.items() if isinstance(sub, dict)}
    if kind == "array":
        items = schema.get("items")
        asked = schema.get("minItems")
        count = min(MAX_ITEMS, max(1, asked if isinstance(asked, int) and not isinstance(asked, bool) else 1))
        return [example(items, depth + 1) for _ in range(count)] if isinstance(items, dict) else []
    if kind in ("integer", "number"):
        minimum = schema.get("minimum")
        value = minimum if isinstance(minimum, (int, float)) and not isinstance(minimum, bool) else 1
        if not -1e15 < value < 1e15:  # an infinity or a number no JSON consumer holds exactly
            value = 1
        return int(value) if kind == "integer" else float(value)
    if kind in ("boolean", "null"):
        return kind == "boolean" or None
    return _string(schema) if kind in ("string", None) else None


def _string(schema: Mapping[str, Any]) -> str:
    formats = {
        "date": "2026-01-01",
        "date-time": "2026-01-01T00:00:00Z",
        "email": "demo@example.com",
        "uri": "https://example.com",
    }
    value = formats.get(str(schema.get("format")), "example")
    minimum = schema.get("minLength")
    if isinstance(minimum, int) and not isinstance(minimum, bool) and len(value) < minimum:
        value = value + "x" * (min(minimum, MAX_LENGTH) - len(value))
    return value
