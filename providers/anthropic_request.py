"""OpenAI chat request → Anthropic Messages request: a pure function, ``to_anthropic``.

Raises ``UntranslatableRequest`` (a 400 naming the param) for what Anthropic cannot express.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import msgspec
from msgspec import UNSET

from providers import anthropic_wire as wire
from providers.errors import UntranslatableRequest
from providers.schema import ChatRequest, ContentPart, JSONSchemaFormat, Message, NamedToolChoice
from providers.translate import arguments_object, data_url, text_of

JSON_TOOL: Final = "json_response"  # the forced tool that carries a response_format schema
_encode = msgspec.json.Encoder().encode
_OBJECT: Final = msgspec.Raw(b'{"type":"object","properties":{}}')


def _image(url: str, param: str) -> wire.ImageBlock:
    if not url.startswith("data:"):
        return wire.ImageBlock(source=wire.ImageSource(type="url", url=url))
    media_type, data = data_url(url, param)
    return wire.ImageBlock(source=wire.ImageSource(type="base64", media_type=media_type, data=data))


def _user_blocks(content: str | list[ContentPart] | None, param: str) -> list[wire.Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [wire.TextBlock(text=content)] if content else []
    blocks: list[wire.Block] = []
    for i, part in enumerate(content):
        if part.type == "text" and isinstance(part.text, str):
            if part.text:
                blocks.append(wire.TextBlock(text=part.text))
        elif part.type == "image_url" and part.image_url is not UNSET:
            blocks.append(_image(part.image_url.url, f"{param}[{i}].image_url"))
        else:
            raise UntranslatableRequest(
                f"Anthropic targets cannot take '{part.type}' content parts", param=f"{param}[{i}]"
            )
    return blocks


def _assistant_blocks(message: Message, i: int) -> list[wire.Block]:
    text = text_of(message.content)
    blocks: list[wire.Block] = [wire.TextBlock(text=text)] if text else []
    if message.tool_calls is not UNSET:
        for j, call in enumerate(message.tool_calls):
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            blocks.append(
                wire.ToolUseBlock(
                    id=call.id, name=call.function.name, input=arguments_object(call.function.arguments, param)
                )
            )
    return blocks


def _turns(messages: Sequence[Message]) -> tuple[str, list[wire.MessageParam]]:
    """System text, and the conversation as alternating turns (consecutive same-role turns merged;
    tool results go into the user turn that follows the assistant's tool calls)."""
    system: list[str] = []
    turns: list[wire.MessageParam] = []
    for i, message in enumerate(messages):
        role = message.role
        if role in ("system", "developer"):
            system.append(text_of(message.content))
            continue
        if role == "assistant":
            blocks = _assistant_blocks(message, i)
        elif role == "tool":
            assert message.tool_call_id is not UNSET
            blocks = [wire.ToolResultBlock(tool_use_id=message.tool_call_id, content=text_of(message.content))]
        else:
            blocks = _user_blocks(message.content, f"messages[{i}].content")
        side: Literal["user", "assistant"] = "assistant" if role == "assistant" else "user"
        if not blocks:
            continue
        if turns and turns[-1].role == side:
            turns[-1].content.extend(blocks)
        else:
            turns.append(wire.MessageParam(role=side, content=blocks))
    return "\n\n".join(s for s in system if s), turns


def _tools(req: ChatRequest) -> tuple[list[wire.ToolParam], wire.ToolChoiceParam | None]:
    tools = [
        wire.ToolParam(
            name=t.function.name,
            description=t.function.description,
            input_schema=t.function.parameters if isinstance(t.function.parameters, msgspec.Raw) else _OBJECT,
        )
        for t in (req.tools or [])
        if t.function is not UNSET
    ]
    choice: wire.ToolChoiceParam | None = None
    if isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function is not UNSET:
        choice = wire.ToolChoiceParam(type="tool", name=req.tool_choice.function.name)
    elif req.tool_choice == "required":
        choice = wire.ToolChoiceParam(type="any")
    elif req.tool_choice in ("none", "auto"):
        choice = wire.ToolChoiceParam(type=req.tool_choice)
    if req.parallel_tool_calls is False and tools:
        choice = choice or wire.ToolChoiceParam(type="auto")
        if choice.type != "none":
            choice.disable_parallel_tool_use = True
    format_ = req.response_format
    if format_ is not None and format_ is not UNSET and format_.type in ("json_schema", "json_object"):
        spec = format_.json_schema or JSONSchemaFormat()
        description = spec.description if isinstance(spec.description, str) else "Give the answer as this JSON object."
        schema = spec.schema if isinstance(spec.schema, msgspec.Raw) else _OBJECT
        tools.append(wire.ToolParam(name=JSON_TOOL, description=description, input_schema=schema))
        choice = wire.ToolChoiceParam(type="tool", name=JSON_TOOL)
    return tools, choice


def to_anthropic(req: ChatRequest, model: str, default_max_tokens: int) -> wire.MessagesRequest:
    """The Messages request for an OpenAI chat request (raises ``UntranslatableRequest``)."""
    system, turns = _turns(req.messages)
    tools, choice = _tools(req)
    out = wire.MessagesRequest(
        model=model,
        max_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
        messages=turns,
    )
    if system:
        out.system = system
    if isinstance(req.temperature, float | int):
        out.temperature = min(float(req.temperature), 1.0)
    if isinstance(req.top_p, float | int):
        out.top_p = float(req.top_p)
    if isinstance(req.stop, str):
        out.stop_sequences = [req.stop]
    elif isinstance(req.stop, list):
        out.stop_sequences = req.stop
    if req.is_stream:
        out.stream = True
    if tools:
        out.tools = tools
    if choice is not None:
        out.tool_choice = choice
    if isinstance(req.user, str):
        out.metadata = wire.Metadata(user_id=req.user)
    return out
