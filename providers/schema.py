"""OpenAI Chat Completions wire types as msgspec Structs.

Inbound Structs validate what a client sends (types, ranges, role rules) and never forbid
unknown fields: for OpenAI-compatible upstreams the raw body is forwarded, so anything we do
not model still passes through. Outbound Structs are what translators and the mock build.
``UNSET`` means "absent"; it is never sent as ``null``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType


class Wire(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base for inbound wire Structs: keyword-only; absent fields stay absent when re-encoded."""


class Emitted(msgspec.Struct, kw_only=True):
    """Base for outbound Structs: defaults such as ``finish_reason: null`` are written out, as
    OpenAI does; fields that OpenAI leaves out are ``UNSET`` and omitted."""


# ---- request -------------------------------------------------------------------------------


class ImageURL(Wire, kw_only=True):
    url: str
    detail: str | UnsetType = UNSET


class InputAudio(Wire, kw_only=True):
    data: str
    format: str


class FileRef(Wire, kw_only=True):
    file_id: str | UnsetType = UNSET
    file_data: str | UnsetType = UNSET
    filename: str | UnsetType = UNSET


class ContentPart(Wire, kw_only=True):
    """One part of a multi-part message; ``type`` is open so new part kinds pass through."""

    type: str
    text: str | UnsetType = UNSET
    image_url: ImageURL | UnsetType = UNSET
    input_audio: InputAudio | UnsetType = UNSET
    file: FileRef | UnsetType = UNSET
    refusal: str | UnsetType = UNSET


class FunctionCall(Wire, kw_only=True):
    name: str
    arguments: str


class ToolCall(Wire, kw_only=True):
    id: str
    type: str = "function"
    function: FunctionCall


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(Wire, kw_only=True):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    refusal: str | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError that carries the path.
        if self.role == "tool" and self.tool_call_id is UNSET:
            raise ValueError("a message with role 'tool' requires `tool_call_id`")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a message with role '{self.role}' requires `content`")


class FunctionDefinition(Wire, kw_only=True):
    name: str
    description: str | UnsetType = UNSET
    parameters: msgspec.Raw | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class Tool(Wire, kw_only=True):
    """A function tool is checked; other kinds (``custom``…) pass through for upstreams that know them."""

    type: str = "function"
    function: FunctionDefinition | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "function" and self.function is UNSET:
            raise ValueError("a tool of type 'function' requires `function`")


class NamedFunction(Wire, kw_only=True):
    name: str


class NamedToolChoice(Wire, kw_only=True):
    """``{"type": "function", "function": {"name": …}}``; other object forms (``allowed_tools``) pass."""

    type: str
    function: NamedFunction | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "function" and self.function is UNSET:
            raise ValueError("a tool_choice of type 'function' requires `function`")


class StreamOptions(Wire, kw_only=True):
    include_usage: bool | UnsetType | None = UNSET


class JSONSchemaFormat(Wire, kw_only=True):
    """``response_format.json_schema``: checked here so translations can rely on its shape."""

    name: str | UnsetType = UNSET
    description: str | UnsetType | None = UNSET
    schema: msgspec.Raw | UnsetType = UNSET
    strict: bool | UnsetType | None = UNSET


class ResponseFormat(Wire, kw_only=True):
    type: str  # text | json_object | json_schema, and vendor kinds
    json_schema: JSONSchemaFormat | UnsetType = UNSET


Temperature = Annotated[float, Meta(ge=0, le=2)]
UnitInterval = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, Meta(ge=1)]


class ChatRequest(Wire, kw_only=True):
    """The fields of a chat completion request that Switchboard validates or translates."""

    # No control characters: the name ends up in routing and in a response header.
    model: Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | UnsetType | None = UNSET
    stream_options: StreamOptions | UnsetType | None = UNSET
    temperature: Temperature | UnsetType | None = UNSET
    top_p: UnitInterval | UnsetType | None = UNSET
    n: PositiveInt | UnsetType | None = UNSET
    max_tokens: PositiveInt | UnsetType | None = UNSET
    max_completion_tokens: PositiveInt | UnsetType | None = UNSET
    stop: str | list[str] | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    logit_bias: dict[str, float] | UnsetType | None = UNSET
    logprobs: bool | UnsetType | None = UNSET
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | UnsetType | None = UNSET
    user: str | UnsetType = UNSET
    metadata: dict[str, str] | UnsetType | None = UNSET
    tools: list[Tool] | UnsetType | None = UNSET
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | UnsetType | None = UNSET
    parallel_tool_calls: bool | UnsetType | None = UNSET
    response_format: ResponseFormat | UnsetType | None = UNSET
    reasoning_effort: str | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET

    @property
    def is_stream(self) -> bool:
        return self.stream is True

    @property
    def include_usage(self) -> bool:
        opts = self.stream_options
        return isinstance(opts, StreamOptions) and opts.include_usage is True


# ---- response ------------------------------------------------------------------------------


class PromptTokensDetails(Emitted, kw_only=True):
    cached_tokens: int = 0


class CompletionTokensDetails(Emitted, kw_only=True):
    reasoning_tokens: int = 0


class Usage(Emitted, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | UnsetType = UNSET
    completion_tokens_details: CompletionTokensDetails | UnsetType = UNSET


class FunctionCallOut(Emitted, kw_only=True):
    name: str
    arguments: str


class ToolCallOut(Emitted, kw_only=True):
    """A tool call in an answer: ``type`` is always written (the inbound ``ToolCall`` omits
    defaults, which would drop it, and OpenAI's schema requires it)."""

    id: str
    type: str = "function"
    function: FunctionCallOut


class ResponseMessage(Emitted, kw_only=True):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET  # a model's thinking, as vLLM and DeepSeek name it


class Choice(Emitted, kw_only=True):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: Any = None


class ChatCompletion(Emitted, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | UnsetType = UNSET
    system_fingerprint: str | UnsetType | None = UNSET


class FunctionCallDelta(Emitted, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET


class ToolCallDelta(Emitted, kw_only=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: FunctionCallDelta | UnsetType = UNSET


class Delta(Emitted, kw_only=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    refusal: str | UnsetType | None = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET


class ChunkChoice(Emitted, kw_only=True):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(Emitted, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET


class ModelCard(Emitted, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "switchboard"


class ModelList(Emitted, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


class ErrorBody(msgspec.Struct, kw_only=True):
    """OpenAI's error object: all four keys are always present (``param``/``code`` may be null)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody
