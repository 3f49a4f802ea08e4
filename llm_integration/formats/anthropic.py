"""Anthropic's Messages shapes (``/v1/messages``, ``count_tokens``): requests
translated to the gateway's OpenAI-shaped chat (text and system, images,
``tool_use``/``tool_result`` blocks, tools and ``tool_choice``), answers and streams
written as Anthropic sends them (``message_start`` … ``content_block_*`` …
``message_delta``, ``message_stop``), errors in Anthropic's shape.

The vocabulary both directions share (stop reasons, tool choices) is the Anthropic
adapter's: this module reads it backwards.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from .. import exceptions as exc
from ..adapters.anthropic import STOP_REASONS, TOOL_CHOICES
from ..adapters.caching import parse_cache_control
from ..conf import llm_settings
from ..envelope import describe, retry_headers
from ..services.chat import ChatResult, ChatStream, Delta, Done, ThinkingDelta, ToolCallDelta
from ..services.policy.rules import NO_LABELS, Labels
from ..text.fields import refuse_unknown
from ..text.unicode import loads
from .fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from .inputs import ChatInput, Shape
from .streams import StreamFormat

#: Anthropic's ``tool_choice.type`` as the gateway's (``tool`` names one: a function).
CHOICES = {theirs: ours for ours, theirs in TOOL_CHOICES.items() if theirs != "tool"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class MessagesRequestSerializer(serializers.Serializer):
    """The fields of a Messages request the gateway carries; any other is refused by
    name. Messages, system, tools and tool_choice are translated (and checked) below."""

    model = StrictCharField(max_length=100, help_text="An alias id.")
    max_tokens = StrictIntegerField(min_value=1)
    messages = serializers.ListField(allow_empty=False, help_text="Anthropic's turns.")
    system = serializers.JSONField(required=False, help_text="Text, or a list of text blocks.")
    temperature = StrictFloatField(required=False, min_value=0, max_value=1)
    top_p = StrictFloatField(required=False, min_value=0, max_value=1)
    top_k = StrictIntegerField(required=False, min_value=0)
    context_management = serializers.JSONField(
        required=False, help_text="Anthropic upstreams only; others refuse it by name."
    )
    output_config = serializers.JSONField(
        required=False,
        help_text="Anthropic upstreams; OpenAI-compatible ones take its effort as "
        "reasoning_effort.",
    )
    thinking = serializers.JSONField(
        required=False,
        help_text='Extended thinking: {"type": "enabled", "budget_tokens": n}, adaptive or '
        "disabled (Anthropic upstreams; others refuse it by name).",
    )
    stop_sequences = serializers.ListField(
        child=StrictCharField(trim_whitespace=False, allow_blank=True), required=False
    )
    stream = StrictBooleanField(required=False, default=False)
    metadata = serializers.JSONField(required=False, help_text="user_id only.")
    tools = serializers.ListField(required=False, help_text="Custom (function) tools.")
    tool_choice = serializers.JSONField(required=False)


class CountTokensRequestSerializer(serializers.Serializer):
    model = StrictCharField(max_length=100, help_text="An alias id.")
    messages = serializers.ListField(allow_empty=False)
    system = serializers.JSONField(required=False)
    tools = serializers.ListField(required=False)
    tool_choice = serializers.JSONField(required=False)
    thinking = serializers.JSONField(required=False)


MESSAGES = Shape(MessagesRequestSerializer)
COUNT = Shape(CountTokensRequestSerializer)


def anthropic_error(error: BaseException, request_id: str) -> tuple[dict, int, dict]:
    """(body, status, headers) in Anthropic's error shape."""
    status, _code, _kind, message, retry_after = describe(error)
    kind = ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    headers = {"X-Request-ID": request_id, "request-id": request_id}
    return body, status, retry_headers(error, retry_after, headers)


def _invalid(message: str, param: str) -> exc.InvalidRequest:
    return exc.InvalidRequest(message, param=param)


def marked(part: dict[str, Any], block: dict[str, Any], where: str) -> dict[str, Any]:
    """``part`` with the block's ``cache_control``, if it has one (checked here, to name
    it where the client put it)."""
    if block.get("cache_control") is not None:
        parse_cache_control(block["cache_control"], where)
        part["cache_control"] = block["cache_control"]
    return part


def text_part(block: Any, where: str) -> dict[str, Any]:
    """A text block as OpenAI's text part."""
    if not isinstance(block, dict) or block.get("type") != "text":
        raise exc.UnsupportedContent(f"{where}: only text blocks are supported here.", param=where)
    refuse_unknown(block, {"type", "text", "cache_control"}, prefix=f"{where}.")
    if not isinstance(block.get("text"), str):
        raise _invalid(f"{where}.text must be text.", f"{where}.text")
    return marked({"type": "text", "text": block["text"]}, block, where)


def text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A string, or a list of text blocks, as OpenAI's text parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [text_part(block, f"{where}[{j}]") for j, block in enumerate(content)]
    raise _invalid(f"{where} must be text or a list of text blocks.", where)


def collapsed(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The parts as one text, unless that would lose an image or a caching mark."""
    if any(part["type"] != "text" or "cache_control" in part for part in parts):
        return parts
    return "".join(part["text"] for part in parts)


def tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``tool_result`` block as a ``tool`` message (an ``is_error`` result's text
    starts with ``Error:``; a mark on the block goes on its last part)."""
    refuse_unknown(
        block, {"type", "tool_use_id", "content", "is_error", "cache_control"}, prefix=f"{where}."
    )
    parts = text_parts(block.get("content") or "", f"{where}.content") or [
        {"type": "text", "text": ""}
    ]
    if block.get("is_error") is True:
        parts[0] = {**parts[0], "text": f"Error: {parts[0]['text']}"}
    marked(parts[-1], block, where)
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": collapsed(parts)}


def tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``tool_use`` block as one of an assistant's ``tool_calls``."""
    refuse_unknown(block, {"type", "id", "name", "input", "cache_control"}, prefix=f"{where}.")
    if not isinstance(block.get("input"), dict):
        raise _invalid(f"{where}.input must be an object.", f"{where}.input")
    call = {
        "id": block.get("id"),
        "type": "function",
        "function": {
            "name": block.get("name"),
            "arguments": json.dumps(block["input"], ensure_ascii=False),
        },
    }
    return marked(call, block, where)


def conversation(messages: Any) -> list[dict[str, Any]]:
    """Anthropic turns as the gateway's OpenAI-shaped messages: ``tool_use`` blocks
    become an assistant's ``tool_calls``, ``tool_result`` blocks ``tool`` messages;
    ``cache_control`` stays on the part it was on."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list.", "messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(f"{where} must be an object with role and content.", where)
        refuse_unknown(m, {"role", "content"}, prefix=f"{where}.")
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(f"{where}.role must be user or assistant.", f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _invalid(f"{where}.content must be text or a list of blocks.", where)
        parts: list[dict[str, Any]] = []  # text and images, in order (OpenAI's parts)
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        thoughts: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append(text_part(block, at))
            elif kind == "image" and role == "user":
                parts.append(image_part(block, at))
            elif kind == "tool_use" and role == "assistant":
                calls.append(tool_call(block, at))
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                thoughts.append(block)  # checked by the chat service
            elif kind == "tool_result" and role == "user":
                results.append(tool_result(block, at))
            else:
                raise exc.UnsupportedContent(
                    f"{at}: a {kind or 'malformed'} block is not supported here.", param=at
                )
        if role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": collapsed(parts)}
            if calls:
                turn["tool_calls"] = calls
            if thoughts:
                turn["thinking_blocks"] = thoughts
            out.append(turn)
        else:
            out.extend(results)
            if parts or not results:
                out.append({"role": "user", "content": collapsed(parts)})
    return out


def image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as OpenAI's ``image_url`` part (base64 as a data URL)."""
    refuse_unknown(block, {"type", "source", "cache_control"}, prefix=f"{where}.")
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        refuse_unknown(source, {"type", "media_type", "data"}, prefix=f"{where}.source.")
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise _invalid(f"{where}.source needs media_type and data.", f"{where}.source")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        refuse_unknown(source, {"type", "url"}, prefix=f"{where}.source.")
        url = source.get("url")
        if not isinstance(url, str):
            raise _invalid(f"{where}.source.url must be a URL.", f"{where}.source.url")
    else:
        raise exc.UnsupportedContent(
            f"{where}.source: only base64 and url image sources are supported.",
            param=f"{where}.source",
        )
    return marked({"type": "image_url", "image_url": {"url": url}}, block, where)


def tool_options(data: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    """Anthropic's ``tools`` and ``tool_choice`` in OpenAI's shapes; server tools are
    refused by name, or left out and named in ``dropped`` (``DROP_UNSUPPORTED_TOOLS``)."""
    options: dict[str, Any] = {}
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools must be a list.", "tools")
        converted = []
        for i, tool in enumerate(tools):
            kind = tool.get("type", "custom") if isinstance(tool, dict) else None
            if kind != "custom":
                if isinstance(kind, str) and kind and llm_settings.DROP_UNSUPPORTED_TOOLS:
                    dropped.append(f"tool:{kind[:64]}")
                    continue
                raise exc.UnsupportedContent(
                    f"tools[{i}]: only custom (function) tools are supported.", param=f"tools[{i}]"
                )
            refuse_unknown(
                tool,
                {"type", "name", "description", "input_schema", "cache_control"},
                prefix=f"tools[{i}].",
            )
            function = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
            if tool.get("description"):
                function["description"] = tool["description"]
            converted.append(
                marked({"type": "function", "function": function}, tool, f"tools[{i}]")
            )
        options["tools"] = converted or None
    choice = data.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in (*CHOICES, "tool"):
            raise _invalid("tool_choice.type must be auto, any, tool or none.", "tool_choice")
        refuse_unknown(choice, {"type", "name", "disable_parallel_tool_use"}, prefix="tool_choice.")
        if choice["type"] == "tool":
            options["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        else:
            options["tool_choice"] = CHOICES[choice["type"]]
        if choice.get("disable_parallel_tool_use") is True:
            options["parallel_tool_calls"] = False
    return options


def parse(payload: Any, headers: Labels = NO_LABELS, betas: str = "") -> ChatInput:
    """A Messages request (``headers``: the ``X-LLM-*`` labels, Anthropic's body has
    no place for them; ``betas``: the ``anthropic-beta`` header)."""
    data = MESSAGES.validate(payload)
    dropped: list[str] = []
    options = tool_options(data, dropped)
    for name in ("top_p", "top_k", "thinking", "context_management", "output_config"):
        if name in data:  # absent or null: not sent
            options[name] = data[name]
    if features := [name.strip() for name in betas.split(",") if name.strip()]:
        options["betas"] = features
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid("metadata must be an object.", "metadata")
        refuse_unknown(metadata, {"user_id"}, prefix="metadata.")
        if metadata.get("user_id") is not None:
            options["user"] = metadata["user_id"]
    system, messages = with_system(data)
    return ChatInput(
        messages=messages,
        model=data["model"],
        system_prompt=system,
        temperature=data.get("temperature"),
        max_tokens=data["max_tokens"],
        stop=data.get("stop_sequences"),
        options=options,
        labels=headers,
        # Tool calls go back as tool_use objects: arguments that are not one are a 502.
        json_tool_arguments=True,
        stream=data["stream"],
        dropped=tuple(dropped),
    )


def parse_count(payload: Any) -> ChatInput:
    """A ``count_tokens`` request: what the Messages call with it would send."""
    data = COUNT.validate(payload)
    system, messages = with_system(data)
    options = tool_options(data, [])  # counting: no usage row to name them on
    if "thinking" in data:  # checked as the call would check it; it adds no input
        options["thinking"] = data["thinking"]
    return ChatInput(messages=messages, model=data["model"], system_prompt=system, options=options)


def with_system(data: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """(the system prompt, the messages): a system prompt with caching marks goes first
    among the messages instead, as a system message of marked parts."""
    messages = conversation(data["messages"])
    if data.get("system") is None:
        return None, messages
    system = collapsed(text_parts(data["system"], "system"))
    if isinstance(system, str):
        return system, messages
    return None, [{"role": "system", "content": system}, *messages]


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as ``tool_use`` input. The gateway lets through only
    JSON objects, but for an answer cut at ``max_tokens`` (arguments unfinished:
    ``{}``, as the call could not be read)."""
    try:
        value = loads(arguments or "{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def usage(usage) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are those neither read from nor written to
    the prompt cache, which have their own counts."""
    return {
        "input_tokens": usage.uncached_prompt_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.completion_tokens,
    }


def message(result: ChatResult, request_id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [block.as_anthropic() for block in result.thinking]
    if result.answer or not result.tool_calls:
        content.append({"type": "text", "text": result.answer})
    for call in result.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": tool_input(call.arguments),
            }
        )
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": content,
        "stop_reason": STOP_REASONS.get(result.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": usage(result.usage),
    }


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class MessageStream(StreamFormat):
    """Anthropic's stream: ``message_start`` (with the input tokens as estimated),
    ``ping``, a content block per text run or tool call, ``message_delta`` with the
    stop reason and usage, ``message_stop``; an ``error`` event after a failure."""

    def __init__(self, request_id: str, model: str | None) -> None:
        self.request_id, self.model = request_id, model
        self.block = -1  # the open content block's index
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # tool call index -> block index
        self.thought: int | None = None  # the open thinking block's reasoning index

    def start(self, kind: str, content_block: dict[str, Any]) -> bytes:
        out = self.stop()
        self.block, self.open_kind = self.block + 1, kind
        body = {"type": "content_block_start", "index": self.block, "content_block": content_block}
        return out + event("content_block_start", body)

    def stop(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def delta(self, index: int, body: dict[str, Any]) -> bytes:
        return event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}
        )

    def opening(self, stream: ChatStream) -> bytes:
        serving = stream.call.serving
        estimate = serving.prompt_tokens if serving is not None else 0
        start = {
            "type": "message_start",
            "message": {
                "id": f"msg_{self.request_id}",
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": estimate, "output_tokens": 0},
            },
        }
        return event("message_start", start) + event("ping", {"type": "ping"})

    def thinking(self, item: ThinkingDelta) -> bytes:
        """Reasoning: a ``thinking`` block of ``thinking_delta`` and ``signature_delta``
        pieces, or a ``redacted_thinking`` block whole."""
        if item.redacted:
            self.thought = None
            return self.start(
                "redacted_thinking", {"type": "redacted_thinking", "data": item.redacted}
            )
        out = b""
        if self.open_kind != "thinking" or self.thought != item.index:
            out = self.start("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.thought = item.index
        if item.thinking:
            out += self.delta(self.block, {"type": "thinking_delta", "thinking": item.thinking})
        if item.signature:
            out += self.delta(self.block, {"type": "signature_delta", "signature": item.signature})
        return out

    def event(self, item: Delta | ToolCallDelta | ThinkingDelta | Done) -> bytes:
        if isinstance(item, ThinkingDelta):
            return self.thinking(item)
        if isinstance(item, Delta):
            out = (
                b""
                if self.open_kind == "text"
                else self.start("text", {"type": "text", "text": ""})
            )
            return out + self.delta(self.block, {"type": "text_delta", "text": item.text})
        if isinstance(item, ToolCallDelta):
            out = b""
            if item.id is not None:
                tool = {"type": "tool_use", "id": item.id, "name": item.name, "input": {}}
                out = self.start("tool_use", tool)
                self.tool_blocks[item.index] = self.block
            if item.arguments:
                index = self.tool_blocks.get(item.index, self.block)
                out += self.delta(
                    index, {"type": "input_json_delta", "partial_json": item.arguments}
                )
            return out
        end = {
            "type": "message_delta",
            "delta": {
                "stop_reason": STOP_REASONS.get(item.finish_reason, "end_turn"),
                "stop_sequence": None,
            },
            "usage": usage(item.usage),
        }
        return (
            self.stop()
            + event("message_delta", end)
            + event("message_stop", {"type": "message_stop"})
        )

    def failure(self, error: Exception) -> bytes:
        body, _status, _headers = anthropic_error(error, self.request_id)
        return event("error", {"type": "error", "error": body["error"]})

    def closing(self) -> bytes:
        return b""
