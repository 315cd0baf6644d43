"""OpenAI's Responses API, to and from Chat Completions, Switchboard's internal form. Pure: bodies
in, bodies out.

- ``to_chat``: a Responses request (its input items already expanded with any earlier turns) →
  a Chat Completions body; what Chat cannot express is an ``Untranslatable`` naming the parameter.
- ``Builder``: a Chat Completions answer → the response object, and the output items kept for
  a later ``previous_response_id``.
- ``ResponsesStream``: Chat Completions chunk payloads → the Responses event stream (typed events,
  ``sequence_number`` 0, 1, 2…, ``response.created`` first and ``response.completed`` last).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from providers.base import TokenUsage
from providers.chunk_view import ChunkBody, ChunkDelta, ChunkView, Decoded, decode_body, decode_chunk, usage_fields

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

ECHOED: Final = ("instructions", "max_output_tokens", "metadata", "previous_response_id", "temperature", "top_p")
INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Untranslatable(Exception):
    """A Responses request Chat Completions cannot express: ``param`` names where."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def new_id(prefix: str) -> str:
    # Unguessable: in open mode a response id is all it takes to read the response back.
    return f"{prefix}_{os.urandom(16).hex()}"


Item = tuple[str, dict[str, Any]]  # where it came from (for error messages), the item


def input_items(value: Any) -> list[Item]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [("input", {"type": "message", "role": "user", "content": value})]
    if not isinstance(value, list):
        raise Untranslatable("'input' must be a string or a list of items.", "input")
    items: list[Item] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise Untranslatable(f"'input[{i}]' must be an object.", f"input[{i}]")
        items.append((f"input[{i}]", item))
    return items


# ---- the request --------------------------------------------------------------------------------


def to_chat(request: Mapping[str, Any], items: Sequence[Item]) -> dict[str, Any]:
    """The request as a Chat Completions body; ``items`` is the whole conversation, earlier turns
    first."""
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for where, item in items:
        _item(where, item, messages)
    body: dict[str, Any] = {"model": request["model"], "messages": messages}
    if request.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = request["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "top_logprobs"):
        if request.get(name) is not None:
            body[name] = request[name]
    tools = request.get("tools")
    names: list[str] = []
    if tools is not None and not isinstance(tools, list):
        raise Untranslatable("'tools' must be a list.", "tools")
    if tools:
        body["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
        names = [t["function"]["name"] for t in body["tools"]]
    choice = request.get("tool_choice")
    if choice is not None:
        _tool_choice(choice, body, names)
    text = request.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        _format(text["format"], body)
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        body["reasoning_effort"] = reasoning["effort"]
    if request.get("stream") is True:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    return body


def _item(where: str, item: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise Untranslatable(f"'{where}.role' must be user, assistant, system or developer.", f"{where}.role")
        messages.append({"role": role, "content": _content(item.get("content"), role, f"{where}.content")})
    elif kind == "function_call":
        call = {
            "id": _str(item, "call_id", where),
            "type": "function",
            "function": {"name": _str(item, "name", where), "arguments": _str(item, "arguments", where)},
        }
        last = messages[-1] if messages else None
        # Consecutive calls are one assistant turn with several tool calls (split, Anthropic and
        # Gemini refuse them); a call right after the assistant's text joins that turn.
        if (
            last is not None
            and last["role"] == "assistant"
            and (last.get("tool_calls") or last.get("content") is not None)
        ):
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": _str(item, "call_id", where), "content": text})
    elif kind == "reasoning":
        return  # a chat model neither takes nor needs the reasoning back
    else:
        raise Untranslatable(f"'{where}': an item of type '{kind}' cannot be sent to this model's provider.", where)


def _content(content: Any, role: str, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"'{where}' must be a string or a list of parts.", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _str(part, "text", at)})
        elif kind == "refusal":
            parts.append({"type": "text", "text": _str(part, "refusal", at)})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise Untranslatable(f"'{at}.image_url' must be a URL or a data URL (file ids are not kept).", at)
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            file = {k: part[k] for k in ("file_data", "file_id", "filename") if isinstance(part.get(k), str)}
            parts.append({"type": "file", "file": file})
        else:
            raise Untranslatable(f"'{at}': a '{kind}' part cannot be sent to this model's provider.", at)
    if role in ("assistant", "system", "developer") or all(p["type"] == "text" for p in parts):
        return "".join(str(p.get("text", "")) for p in parts)
    return parts


def _text_of(parts: Any, where: str) -> str:
    if not isinstance(parts, list):
        raise Untranslatable(f"'{where}' must be a string or a list of parts.", where)
    texts = [p.get("text") for p in parts if isinstance(p, dict)]
    if not all(isinstance(t, str) for t in texts if t is not None):
        raise Untranslatable(f"'{where}': a part's text must be a string.", where)
    return "".join(t for t in texts if isinstance(t, str))


def _tool(tool: Any, at: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise Untranslatable(f"'{at}': only function tools can be sent to this model's provider, not '{kind}'.", at)
    function: dict[str, Any] = {"name": _str(tool, "name", at)}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, body: dict[str, Any], names: list[str]) -> None:
    if choice in ("none", "auto", "required"):
        body["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        body["tool_choice"] = {"type": "function", "function": {"name": _str(choice, "name", "tool_choice")}}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        listed = choice.get("tools")
        if not isinstance(listed, list):
            raise Untranslatable("'tool_choice.tools' must be a list.", "tool_choice.tools")
        allowed = {t.get("name") for t in listed if isinstance(t, dict)}
        body["tools"] = [t for t in body.get("tools", []) if t["function"]["name"] in allowed]
        body["tool_choice"] = "required" if choice.get("mode") == "required" else "auto"
    else:
        raise Untranslatable("'tool_choice' cannot be sent to this model's provider.", "tool_choice")


def _format(spec: dict[str, Any], body: dict[str, Any]) -> None:
    kind = spec.get("type")
    if kind == "json_schema":
        schema: dict[str, Any] = {"name": _str(spec, "name", "text.format"), "schema": spec.get("schema", {})}
        for name in ("strict", "description"):
            if spec.get(name) is not None:
                schema[name] = spec[name]
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        body["response_format"] = {"type": "json_object"}


def _str(value: Mapping[str, Any], name: str, at: str) -> str:
    found = value.get(name)
    if not isinstance(found, str):
        raise Untranslatable(f"'{at}.{name}' must be a string.", f"{at}.{name}")
    return found


# ---- the answer ---------------------------------------------------------------------------------


def usage_of(usage: TokenUsage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": 0},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.completion,
    }


class Builder:
    """The response object for one request: its echoed fields, then its output and status."""

    __slots__ = ("_echoed", "_request", "_settings", "created_at", "id")

    def __init__(self, request: Mapping[str, Any], response_id: str | None = None) -> None:
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        self._request = request
        # What the request settles, the same in every response of its stream: worked out once.
        self._settings: dict[str, Any] = {
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [],
            "text": request.get("text") or {"format": {"type": "text"}},
            "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
            "truncation": request.get("truncation", "disabled"),
            "store": request.get("store", True),
        }
        echoed = {name: request.get(name) for name in ECHOED}
        if echoed["metadata"] is None:
            echoed["metadata"] = {}
        self._echoed = echoed

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: TokenUsage | None = None,
        model: str | None = None,
        incomplete: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": model or self._request["model"],
            "output": output,
            **self._settings,
            "usage": usage_of(usage),
            **self._echoed,
        }

    def from_chat(self, body: bytes, usage: TokenUsage | None) -> dict[str, Any]:
        completion = _decode(body)
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        output: list[dict[str, Any]] = []
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            output.append(reasoning_item(reasoning))
        text, refusal = message.get("content"), message.get("refusal")
        if (isinstance(text, str) and text) or (isinstance(refusal, str) and refusal):
            output.append(message_item(new_id("msg"), text if isinstance(text, str) else "", refusal))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            output.append(
                call_item(
                    new_id("fc"),
                    call.get("id") or new_id("call"),
                    function.get("name") or "",
                    function.get("arguments") or "",
                )
            )
        finish = choice.get("finish_reason")
        incomplete = INCOMPLETE.get(finish or "")
        model = completion.get("model") if isinstance(completion.get("model"), str) else None
        return self.response("incomplete" if incomplete else "completed", output, usage, model, incomplete)


def message_item(item_id: str, text: str, refusal: str | None = None, status: str = "completed") -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def reasoning_item(text: str) -> dict[str, Any]:
    return {"id": new_id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


# ---- the stream ---------------------------------------------------------------------------------


_DELTA_END: Final = b',"logprobs":[]}\n\n'
_NO_LOGPROBS: Final = b',"logprobs":[]'
_TEXT_DELTA_HEAD: Final = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
)
_EMPTY_PART: Final = b'{"type":"output_text","text":"","annotations":[],"logprobs":[]}'
_decode_texts = msgspec.json.Decoder(list[str]).decode


class ResponsesStream:
    """Chat Completions chunk payloads → Responses events. ``output_index`` is each item's place in
    ``output``; a message's text goes to its one ``output_text`` part."""

    __slots__ = (
        "_builder",
        "_calls",
        "_finish",
        "_item",
        "_model",
        "_open",
        "_output",
        "_sequence",
        "_started",
        "_text_head",
        "_text_tail",
        "_tokens",
        "_usage",
        "final",
        "final_json",
    )

    def __init__(self, builder: Builder) -> None:
        self._builder = builder
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._tokens: list[bytes] = []  # the open message's text, as JSON string tokens
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool call index → its item
        self._finish: str | None = None
        self._usage: TokenUsage | None = None
        self._model: str | None = None
        self._text_head = b""  # a text delta event up to its sequence number, for the open message
        self._text_tail = b""  # … from after it up to the delta
        self._item = b""  # the open message's item_id, output_index and content_index, as JSON
        self.final: dict[str, Any] | None = None  # the response, once complete
        self.final_json = b""  # … and as JSON

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``: the same response, encoded once."""
        self._started = True
        shell = _encode(self._builder.response("in_progress", []))
        return self._wrapped("response.created", shell) + self._wrapped("response.in_progress", shell)

    def _wrapped(self, kind: str, response: bytes) -> bytes:
        """An event carrying the response, given as JSON."""
        return self._raw_event(kind.encode(), b'"response":' + response)

    def _raw_event(self, kind: bytes, fields: bytes) -> bytes:
        """An event from its other fields as JSON (``"name":value,…``). The events of a text
        message are put together from bytes: every value in them is JSON already (the text and
        its tokens) or an id and a number of Switchboard's own, and a dict to encode for each
        would cost as much again. The bytes are those ``_event`` would give."""
        head = b'event: %s\ndata: {"type":"%s","sequence_number":%d,' % (kind, kind, self._sequence)
        self._sequence += 1
        return head + fields + b"}\n\n"

    def frames(self, payloads: Sequence[bytes]) -> bytes:
        out: list[bytes] = [] if self._started else [self.start()]
        views = payloads.views if isinstance(payloads, Decoded) else None  # decoded once, upstream
        # Until a chunk names the model (the first, but a server may leave it out of some), each
        # is read whole for it.
        start = 0
        while self._model is None and start < len(payloads):
            view = views[start] if views is not None else decode_chunk(payloads[start])
            self._model = view.model if isinstance(view, ChunkView) else None
            self._chunk(view, out)
            start += 1
        chunks: Iterable[ChunkBody]
        if views is not None:
            chunks = views[start:] if start else views
        else:
            chunks = map(decode_body, payloads[start:] if start else payloads)
        # The common case, once per token, inline and on locals: the text's JSON string spliced
        # into the open message's prepared delta event, its parts joined once with the rest.
        head, tail, tokens, sequence = self._text_head, self._text_tail, self._tokens, self._sequence
        for chunk in chunks:
            choices = chunk.choices
            if choices and head and len(chunk.usage) <= 4:
                choice = choices[0]  # Responses has one answer
                delta = choice.delta
                text = delta.content
                if text and delta.tool_calls is None and choice.finish_reason is None:
                    token = _encode(text)
                    tokens.append(token)
                    out += (head, b"%d" % sequence, tail, token, _DELTA_END)
                    sequence += 1
                    continue
            self._sequence = sequence
            self._chunk(chunk, out)
            head, tail, tokens, sequence = self._text_head, self._text_tail, self._tokens, self._sequence
        self._sequence = sequence
        return b"".join(out)

    def _chunk(self, chunk: ChunkBody, out: list[bytes]) -> None:
        usage = usage_fields(chunk.usage)
        if usage:
            self._usage = _token_usage(usage)
        if not chunk.choices:
            return
        choice = chunk.choices[0]  # Responses has one answer
        self._delta(choice.delta, out)
        if choice.finish_reason:
            self._finish = choice.finish_reason

    def done(self) -> bytes:
        out: list[bytes] = [] if self._started else [self.start()]
        self._close(out)
        incomplete = INCOMPLETE.get(self._finish or "")
        final = self._builder.response(
            "incomplete" if incomplete else "completed", self._output, self._usage, self._model, incomplete
        )
        self.final, self.final_json = final, _encode(final)  # encoded once: the event and the store
        out.append(self._wrapped("response.incomplete" if incomplete else "response.completed", self.final_json))
        return b"".join(out)

    def failed(self, code: str, message: str) -> bytes:
        """``response.failed``: the stream's end when the upstream failed after it began."""
        out: list[bytes] = [] if self._started else [self.start()]
        error = {"code": code, "message": message}
        failed = self._builder.response("failed", self._output, self._usage, self._model, error=error)
        out.append(self._event("response.failed", {"response": failed}))
        return b"".join(out)

    def _delta(self, delta: ChunkDelta, out: list[bytes]) -> None:
        text = delta.content or delta.refusal
        if text:
            if self._open is None or self._open["type"] != "message":
                self._begin_message(out)
            token = _encode(text)
            self._tokens.append(token)
            out.append(self._text_head + b"%d" % self._sequence + self._text_tail + token + _DELTA_END)
            self._sequence += 1
        for call in delta.tool_calls or ():
            position = call.get("index", 0)
            function = call.get("function") or {}
            if position not in self._calls:
                item = call_item(
                    new_id("fc"), call.get("id") or new_id("call"), function.get("name") or "", "", "in_progress"
                )
                self._begin(out, item)
                self._calls[position] = item
            arguments = function.get("arguments")
            item = self._calls[position]
            if arguments and item is self._open:
                item["arguments"] += arguments
                out.append(self._item_event("response.function_call_arguments.delta", {"delta": arguments}))

    def _begin_message(self, out: list[bytes]) -> None:
        """A message item and its one text part; then ``response.output_text.delta`` once per
        token: the token (a JSON string, as the chunk held it) spliced between bytes prepared
        here, rather than decoded, put in a dict and encoded again (the bytes are the same)."""
        item = message_item(new_id("msg"), "", status="in_progress") | {"content": []}
        self._close(out)
        self._open = item
        self._output.append(item)
        index = len(self._output) - 1
        self._item = b'"item_id":"%s","output_index":%d,"content_index":0,' % (item["id"].encode(), index)
        added = b'"output_index":%d,"item":{"id":"%s","type":"message","role":"assistant","status":"in_progress",'
        added = added % (index, item["id"].encode()) + b'"content":[]}'
        out.append(self._raw_event(b"response.output_item.added", added))
        out.append(self._raw_event(b"response.content_part.added", self._item + b'"part":' + _EMPTY_PART))
        self._text_head = _TEXT_DELTA_HEAD
        self._text_tail = b"," + self._item + b'"delta":'

    def _item_event(self, kind: str, payload: dict[str, Any]) -> bytes:
        assert self._open is not None
        return self._event(kind, {"item_id": self._open["id"], "output_index": len(self._output) - 1, **payload})

    def _begin(self, out: list[bytes], item: dict[str, Any]) -> None:
        self._close(out)
        self._text_head = b""  # another item: another prefix
        self._open = item
        self._output.append(item)
        out.append(
            self._event("response.output_item.added", {"output_index": len(self._output) - 1, "item": dict(item)})
        )

    def _close(self, out: list[bytes]) -> None:
        item = self._open
        self._text_head = b""  # the next text opens a message of its own
        if item is None:
            return
        if item["type"] == "message":
            self._close_message(item, out)
        else:
            out.append(
                self._item_event(
                    "response.function_call_arguments.done", {"arguments": item["arguments"], "name": item["name"]}
                )
            )
            item["status"] = "completed"
            out.append(self._event("response.output_item.done", {"output_index": len(self._output) - 1, "item": item}))
        self._open = None

    def _close_message(self, item: dict[str, Any], out: list[bytes]) -> None:
        text = "".join(_decode_texts(b"[" + b",".join(self._tokens) + b"]"))
        self._tokens = []
        item["content"], item["status"] = [_part(text)], "completed"
        text_json = _encode(text)
        part = b'{"type":"output_text","text":' + text_json + b',"annotations":[],"logprobs":[]}'
        out.append(self._raw_event(b"response.output_text.done", self._item + b'"text":' + text_json + _NO_LOGPROBS))
        out.append(self._raw_event(b"response.content_part.done", self._item + b'"part":' + part))
        done = b'"output_index":%d,"item":{"id":"%s","type":"message","role":"assistant","status":"completed",'
        done = done % (len(self._output) - 1, item["id"].encode()) + b'"content":[' + part + b"]}"
        out.append(self._raw_event(b"response.output_item.done", done))


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _token_usage(usage: Mapping[str, Any]) -> TokenUsage | None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details, out = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    reasoning = out.get("reasoning_tokens") if isinstance(out, dict) else 0
    return TokenUsage(
        prompt=prompt,
        completion=completion,
        cached=cached if isinstance(cached, int) else 0,
        reasoning=reasoning if isinstance(reasoning, int) else 0,
    )
