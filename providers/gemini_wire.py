"""Google Gemini ``generateContent`` wire types (camelCase on the wire), as msgspec Structs."""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType


class Out(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """Request side: absent stays absent; field names are camelCase on the wire."""


class InlineData(Out, kw_only=True):
    mime_type: str
    data: str


class FileData(Out, kw_only=True):
    file_uri: str
    mime_type: str | UnsetType = UNSET


class FunctionCall(Out, kw_only=True):
    name: str
    args: msgspec.Raw


class FunctionResponse(Out, kw_only=True):
    name: str
    response: msgspec.Raw


class Part(Out, kw_only=True):
    text: str | UnsetType = UNSET
    inline_data: InlineData | UnsetType = UNSET
    file_data: FileData | UnsetType = UNSET
    function_call: FunctionCall | UnsetType = UNSET
    function_response: FunctionResponse | UnsetType = UNSET


class Content(Out, kw_only=True):
    role: str | UnsetType = UNSET
    parts: list[Part]


class FunctionDeclaration(Out, kw_only=True):
    name: str
    description: str | UnsetType = UNSET
    parameters: msgspec.Raw | UnsetType = UNSET


class ToolDecl(Out, kw_only=True):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(Out, kw_only=True):
    mode: str
    allowed_function_names: list[str] | UnsetType = UNSET


class ToolConfig(Out, kw_only=True):
    function_calling_config: FunctionCallingConfig


class GenerationConfig(Out, kw_only=True):
    max_output_tokens: int | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    candidate_count: int | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    presence_penalty: float | UnsetType = UNSET
    frequency_penalty: float | UnsetType = UNSET
    response_mime_type: str | UnsetType = UNSET
    response_json_schema: msgspec.Raw | UnsetType = UNSET


class GenerateContentRequest(Out, kw_only=True):
    contents: list[Content]
    system_instruction: Content | UnsetType = UNSET
    generation_config: GenerationConfig | UnsetType = UNSET
    tools: list[ToolDecl] | UnsetType = UNSET
    tool_config: ToolConfig | UnsetType = UNSET


# ---- answers (decoded leniently) ----------------------------------------------------------------


class In(msgspec.Struct, kw_only=True, rename="camel"):
    pass


class CallIn(In, kw_only=True):
    name: str = ""
    args: msgspec.Raw | UnsetType = UNSET
    id: str = ""


class PartIn(In, kw_only=True):
    text: str | UnsetType = UNSET
    thought: bool = False
    function_call: CallIn | UnsetType = UNSET


class ContentIn(In, kw_only=True):
    parts: list[PartIn] = []
    role: str = "model"


class Candidate(In, kw_only=True):
    content: ContentIn = msgspec.field(default_factory=ContentIn)
    finish_reason: str | None = None
    index: int = 0


class PromptFeedback(In, kw_only=True):
    block_reason: str | None = None


class UsageMetadata(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    cached_content_token_count: int = 0


class GenerateContentResponse(In, kw_only=True):
    candidates: list[Candidate] = []
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    model_version: str = ""
    response_id: str = ""
    error: msgspec.Raw | UnsetType = UNSET  # an error object inside a 200 stream
