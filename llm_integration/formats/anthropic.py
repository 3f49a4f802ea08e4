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
from ..envelope import describe, retry_headers
from ..services.chat import ChatResult, ChatStream, Delta, Done, ToolCallDelta
from ..services.policy.rules import NO_LABELS, Labels
from ..text.fields import refuse_unknown
from ..text.unicode import loads
from .fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from .inputs import ChatInput, Shape

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
    stop_sequences = serializers.ListField(child=StrictCharField(), required=False)
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


def _text_of(content: Any, where: str) -> str:
    """A string, or a list of text blocks, as one text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise exc.UnsupportedContent(
                    f"{where}[{j}]: only text blocks are supported here.", param=f"{where}[{j}]"
                )
            refuse_unknown(block, {"type", "text"}, prefix=f"{where}[{j}].")
            if not isinstance(block.get("text"), str):
                raise _invalid(f"{where}[{j}].text must be text.", f"{where}[{j}].text")
            texts.append(block["text"])
        return "".join(texts)
    raise _invalid(f"{where} must be text or a list of text blocks.", where)


def conversation(messages: Any) -> list[dict[str, Any]]:
    """Anthropic turns as the gateway's OpenAI-shaped messages: ``tool_use`` blocks
    become an assistant's ``tool_calls``, ``tool_result`` blocks ``tool`` messages (an
    ``is_error`` result's text starts with ``Error:``)."""
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
        texts: list[str] = []
        parts: list[dict[str, Any]] = []  # text and images, in order (OpenAI's parts)
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_text_of([block], f"{where}.content"))
                parts.append({"type": "text", "text": texts[-1]})
            elif kind == "image" and role == "user":
                parts.append(image_part(block, at))
            elif kind == "tool_use" and role == "assistant":
                refuse_unknown(block, {"type", "id", "name", "input"}, prefix=f"{at}.")
                if not isinstance(block.get("input"), dict):
                    raise _invalid(f"{at}.input must be an object.", f"{at}.input")
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block["input"], ensure_ascii=False),
                        },
                    }
                )
            elif kind == "tool_result" and role == "user":
                refuse_unknown(
                    block, {"type", "tool_use_id", "content", "is_error"}, prefix=f"{at}."
                )
                text = _text_of(block.get("content") or "", f"{at}.content")
                if block.get("is_error") is True:
                    text = f"Error: {text}"
                results.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
                )
            else:
                raise exc.UnsupportedContent(
                    f"{at}: a {kind or 'malformed'} block is not supported here.", param=at
                )
        if role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
        else:
            out.extend(results)
            if any(part["type"] == "image_url" for part in parts):
                out.append({"role": "user", "content": parts})
            elif texts or not results:
                out.append({"role": "user", "content": "".join(texts)})
    return out


def image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as OpenAI's ``image_url`` part (base64 as a data URL)."""
    refuse_unknown(block, {"type", "source"}, prefix=f"{where}.")
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
    return {"type": "image_url", "image_url": {"url": url}}


def tool_options(data: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's ``tools`` and ``tool_choice`` in OpenAI's shapes."""
    options: dict[str, Any] = {}
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools must be a list.", "tools")
        converted = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
                raise exc.UnsupportedContent(
                    f"tools[{i}]: only custom (function) tools are supported.", param=f"tools[{i}]"
                )
            refuse_unknown(
                tool, {"type", "name", "description", "input_schema"}, prefix=f"tools[{i}]."
            )
            function = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
            if tool.get("description"):
                function["description"] = tool["description"]
            converted.append({"type": "function", "function": function})
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


def parse(payload: Any, headers: Labels = NO_LABELS) -> ChatInput:
    """A Messages request (``headers``: the ``X-LLM-*`` labels; Anthropic's body has
    no place for them)."""
    data = MESSAGES.validate(payload)
    options = tool_options(data)
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid("metadata must be an object.", "metadata")
        refuse_unknown(metadata, {"user_id"}, prefix="metadata.")
        if metadata.get("user_id") is not None:
            options["user"] = metadata["user_id"]
    if data.get("top_p") is not None:
        options["top_p"] = data["top_p"]
    return ChatInput(
        messages=conversation(data["messages"]),
        model=data["model"],
        system_prompt=system_prompt(data),
        temperature=data.get("temperature"),
        max_tokens=data["max_tokens"],
        stop=data.get("stop_sequences"),
        options=options,
        labels=headers,
        # Tool calls go back as tool_use objects: arguments that are not one are a 502.
        json_tool_arguments=True,
        stream=data["stream"],
    )


def parse_count(payload: Any) -> ChatInput:
    """A ``count_tokens`` request: what the Messages call with it would send."""
    data = COUNT.validate(payload)
    return ChatInput(
        messages=conversation(data["messages"]),
        model=data["model"],
        system_prompt=system_prompt(data),
        options=tool_options(data),
    )


def system_prompt(data: dict[str, Any]) -> str | None:
    system = data.get("system")
    return None if system is None else _text_of(system, "system")


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
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


def message(result: ChatResult, request_id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
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


class MessageStream:
    """Anthropic's stream: ``message_start`` (with the input tokens as estimated),
    ``ping``, a content block per text run or tool call, ``message_delta`` with the
    stop reason and usage, ``message_stop``; an ``error`` event after a failure."""

    def __init__(self, request_id: str, model: str | None) -> None:
        self.request_id, self.model = request_id, model
        self.block = -1  # the open content block's index
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # tool call index -> block index

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

    def event(self, item: Delta | ToolCallDelta | Done) -> bytes:
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
