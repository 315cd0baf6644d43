"""Anthropic Messages API wire types (msgspec Structs): the request we send, the answer and the
stream events we read. Only what translation needs is decoded; the rest is skipped."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

API_VERSION = "2023-06-01"


class Out(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Request side: absent stays absent."""


class TextBlock(Out, tag="text", tag_field="type", kw_only=True):
    text: str


class ImageSource(Out, kw_only=True):
    type: Literal["base64", "url"]
    media_type: str | UnsetType = UNSET
    data: str | UnsetType = UNSET
    url: str | UnsetType = UNSET


class ImageBlock(Out, tag="image", tag_field="type", kw_only=True):
    source: ImageSource


class ToolUseBlock(Out, tag="tool_use", tag_field="type", kw_only=True):
    id: str
    name: str
    input: msgspec.Raw


class ToolResultBlock(Out, tag="tool_result", tag_field="type", kw_only=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock]
    is_error: bool | UnsetType = UNSET


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class MessageParam(Out, kw_only=True):
    role: Literal["user", "assistant"]
    content: list[Block]


class ToolParam(Out, kw_only=True):
    name: str
    description: str | UnsetType = UNSET
    input_schema: msgspec.Raw


class ToolChoiceParam(Out, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET


class Metadata(Out, kw_only=True):
    user_id: str


class MessagesRequest(Out, kw_only=True):
    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: str | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    tools: list[ToolParam] | UnsetType = UNSET
    tool_choice: ToolChoiceParam | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET


# ---- answers and events (decoded leniently: unknown fields skipped, most fields optional) -----


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class ContentBlock(msgspec.Struct, kw_only=True):
    type: str
    text: str = ""
    thinking: str = ""
    id: str = ""
    name: str = ""
    input: msgspec.Raw | UnsetType = UNSET


class MessageInfo(msgspec.Struct, kw_only=True):
    type: str = ""  # "message" in every answer; its absence marks something else
    id: str = ""
    model: str = ""
    content: list[ContentBlock] | None = None  # always present in an answer (None: it was not)
    stop_reason: str | None = None
    usage: Usage = Usage()

    @property
    def has_content(self) -> bool:
        return self.content is not None


class MessageStart(msgspec.Struct, tag="message_start", tag_field="type", kw_only=True):
    message: MessageInfo


class ContentBlockStart(msgspec.Struct, tag="content_block_start", tag_field="type", kw_only=True):
    index: int
    content_block: ContentBlock


class BlockDelta(msgspec.Struct, kw_only=True):
    type: str
    text: str = ""
    partial_json: str = ""
    thinking: str = ""


class ContentBlockDelta(msgspec.Struct, tag="content_block_delta", tag_field="type", kw_only=True):
    index: int
    delta: BlockDelta


class ContentBlockStop(msgspec.Struct, tag="content_block_stop", tag_field="type", kw_only=True):
    index: int = 0


class StopInfo(msgspec.Struct, frozen=True, kw_only=True):
    stop_reason: str | None = None


class MessageDelta(msgspec.Struct, tag="message_delta", tag_field="type", kw_only=True):
    delta: StopInfo = StopInfo()
    usage: Usage = Usage()


class MessageStop(msgspec.Struct, tag="message_stop", tag_field="type", kw_only=True):
    pass


class Ping(msgspec.Struct, tag="ping", tag_field="type", kw_only=True):
    pass


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    type: str = ""
    message: str = ""


class ErrorEvent(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    error: ErrorInfo = ErrorInfo()


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)
EVENT_TYPES = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    }
)
