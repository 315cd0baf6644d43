"""OpenAI chat request → Gemini ``generateContent`` request: a pure function, ``to_gemini``.

Raises ``UntranslatableRequest`` (a 400 naming the param) for what Gemini cannot express.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from msgspec import UNSET

from providers import gemini_wire as wire
from providers.errors import UntranslatableRequest
from providers.schema import ChatRequest, ContentPart, Message, NamedToolChoice
from providers.translate import arguments_object, data_url, text_of, too_deep

_encode = msgspec.json.Encoder().encode


def _image(url: str, param: str) -> wire.Part:
    if not url.startswith("data:"):
        return wire.Part(file_data=wire.FileData(file_uri=url))
    mime_type, data = data_url(url, param)
    return wire.Part(inline_data=wire.InlineData(mime_type=mime_type, data=data))


def _user_parts(content: str | list[ContentPart] | None, param: str) -> list[wire.Part]:
    if content is None or isinstance(content, str):
        return [wire.Part(text=content)] if content else []
    parts: list[wire.Part] = []
    for i, part in enumerate(content):
        if part.type == "text" and isinstance(part.text, str):
            parts.append(wire.Part(text=part.text))
        elif part.type == "image_url" and part.image_url is not UNSET:
            parts.append(_image(part.image_url.url, f"{param}[{i}].image_url"))
        else:
            message = f"Gemini targets cannot take '{part.type}' content parts"
            raise UntranslatableRequest(message, param=f"{param}[{i}]")
    return parts


def _result(content: str, name: str, param: str) -> wire.FunctionResponse:
    try:
        value = msgspec.json.decode(content)
        response = value if isinstance(value, dict) else {"content": content}
        return wire.FunctionResponse(name=name, response=msgspec.Raw(_encode(response)))
    except msgspec.DecodeError:
        return wire.FunctionResponse(name=name, response=msgspec.Raw(_encode({"content": content})))
    except RecursionError:
        raise too_deep(param) from None


def _parts(message: Message, i: int, names: dict[str, str]) -> list[wire.Part]:
    if message.role == "assistant":
        text = text_of(message.content)
        parts = [wire.Part(text=text)] if text else []
        for j, call in enumerate(message.tool_calls or []):
            names[call.id] = call.function.name
            args = arguments_object(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            parts.append(wire.Part(function_call=wire.FunctionCall(name=call.function.name, args=args)))
        return parts
    if message.role == "tool":
        assert message.tool_call_id is not UNSET
        name = names.get(message.tool_call_id)
        if name is None:
            raise UntranslatableRequest(
                "a tool message must answer a tool call of an earlier assistant message",
                param=f"messages[{i}].tool_call_id",
            )
        return [wire.Part(function_response=_result(text_of(message.content), name, f"messages[{i}].content"))]
    return _user_parts(message.content, f"messages[{i}].content")


def _contents(messages: Sequence[Message]) -> tuple[list[str], list[wire.Content]]:
    system: list[str] = []
    contents: list[wire.Content] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for functionResponse
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            system.append(text_of(message.content))
            continue
        parts = _parts(message, i, names)
        role = "model" if message.role == "assistant" else "user"
        if not parts:
            continue
        if contents and contents[-1].role == role:
            contents[-1].parts.extend(parts)
        else:
            contents.append(wire.Content(role=role, parts=parts))
    return system, contents


def _generation_config(req: ChatRequest) -> wire.GenerationConfig:
    config = wire.GenerationConfig()
    if (limit := req.max_completion_tokens or req.max_tokens) is not None and limit is not UNSET:
        config.max_output_tokens = limit
    for name, value in (
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
    ):
        if isinstance(value, int | float):
            setattr(config, name, float(value))
    if isinstance(req.stop, str):
        config.stop_sequences = [req.stop]
    elif isinstance(req.stop, list):
        config.stop_sequences = req.stop
    if isinstance(req.n, int):
        config.candidate_count = req.n
    if isinstance(req.seed, int):
        config.seed = req.seed
    fmt = req.response_format
    if fmt is not None and fmt is not UNSET and fmt.type in ("json_object", "json_schema"):
        config.response_mime_type = "application/json"
        if fmt.json_schema is not UNSET and fmt.json_schema.schema is not UNSET:
            config.response_json_schema = fmt.json_schema.schema
    return config


def _tool_config(req: ChatRequest) -> wire.ToolConfig | None:
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function is not UNSET:
        mode = wire.FunctionCallingConfig(mode="ANY", allowed_function_names=[choice.function.name])
    elif choice in ("none", "auto", "required"):
        mode = wire.FunctionCallingConfig(mode={"none": "NONE", "auto": "AUTO", "required": "ANY"}[str(choice)])
    else:
        return None
    return wire.ToolConfig(function_calling_config=mode)


def to_gemini(req: ChatRequest) -> wire.GenerateContentRequest:
    """The generateContent request for an OpenAI chat request (raises ``UntranslatableRequest``)."""
    system, contents = _contents(req.messages)
    out = wire.GenerateContentRequest(contents=contents)
    if any(system):
        out.system_instruction = wire.Content(parts=[wire.Part(text="\n\n".join(s for s in system if s))])
    config = _generation_config(req)
    if config != wire.GenerationConfig():
        out.generation_config = config
    declarations = [
        wire.FunctionDeclaration(
            name=t.function.name, description=t.function.description, parameters=t.function.parameters
        )
        for t in (req.tools or [])
        if t.function is not UNSET
    ]
    if declarations:
        out.tools = [wire.ToolDecl(function_declarations=declarations)]
    tool_config = _tool_config(req)
    if tool_config is not None:
        out.tool_config = tool_config
    return out
