"""``POST /api/v1/chat`` (CONTRACT §4): the request's shape, its JSON answer and its
server-sent events (``delta``, ``tool_call``, then ``done`` or an error envelope)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..envelope import envelope
from ..services.accounting.pricing import format_money
from ..services.chat import ChatResult, ChatStream, Delta, Done, ThinkingDelta, ToolCallDelta
from ..services.chat.validation import TOOL_OPTIONS
from ..services.policy.rules import NO_LABELS, Labels
from .fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from .inputs import ChatInput, Shape
from .streams import StreamFormat

if TYPE_CHECKING:
    from ..adapters import Usage

ROLES = ("system", "user", "assistant", "tool")


class ToolCallFunctionSerializer(serializers.Serializer):
    name = serializers.CharField()
    arguments = serializers.CharField(help_text="The arguments as JSON text.")


class ToolCallSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.ChoiceField(choices=("function",))
    function = ToolCallFunctionSerializer()


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="Text, or a list of text and image_url parts (OpenAI's content parts).",
    )
    tool_calls = ToolCallSerializer(
        many=True, required=False, help_text="An assistant's tool calls, as they were answered."
    )
    tool_call_id = StrictCharField(
        required=False, help_text="For role tool: the call this message answers."
    )


@extend_schema_field(MessageSerializer(many=True))
class MessagesField(serializers.ListField):
    """A non-empty list of messages, each judged by the chat service (roles, content
    parts, tool calls), which names the message and field at fault."""

    def __init__(self, **kwargs) -> None:
        super().__init__(allow_empty=False, **kwargs)


class ChatRequestSerializer(serializers.Serializer):
    """The fields of a chat request; any other is refused by name. Types are checked
    here, meaning (roles, sizes, the context window) by the chat service."""

    message = StrictCharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="A single user message (or send `messages`).",
    )
    messages = MessagesField(required=False)
    model = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="Alias id; the default alias when omitted.",
    )
    system_prompt = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    temperature = StrictFloatField(required=False, min_value=0, max_value=2)
    max_tokens = StrictIntegerField(required=False, min_value=1)
    stream = StrictBooleanField(required=False, default=False)
    task = serializers.JSONField(
        required=False, help_text="A task label routing rules may match (or X-LLM-Task)."
    )
    tags = serializers.JSONField(
        required=False,
        help_text="Labels for cost reporting, recorded on the usage row: a list, or text "
        "separated by commas (or X-LLM-Tags: a,b).",
    )
    tools = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text="Function tools, in OpenAI's shape.",
    )
    tool_choice = serializers.JSONField(
        required=False, help_text="auto, none, required or a function."
    )
    parallel_tool_calls = StrictBooleanField(required=False)
    response_format = serializers.DictField(
        required=False, help_text="json_object or json_schema, as OpenAI's."
    )

    def validate(self, attrs):
        if ("message" in attrs) == ("messages" in attrs):
            raise serializers.ValidationError("Send either `message` or `messages`.")
        return attrs


REQUEST = Shape(ChatRequestSerializer)


def parse(payload: Any, headers: Labels = NO_LABELS) -> ChatInput:
    """A chat request (``headers``: the labels of ``X-LLM-Task``/``X-LLM-Tags``)."""
    data = REQUEST.validate(payload)
    if "message" in data:
        messages: Any = [{"role": "user", "content": data["message"]}]
    else:
        messages = payload["messages"]
    return ChatInput(
        messages=messages,
        model=data.get("model") or None,
        system_prompt=data.get("system_prompt"),
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        options={name: data[name] for name in TOOL_OPTIONS if name in data},
        labels=Labels.parse(data.get("task"), data.get("tags")).merged(headers),
        stream=data["stream"],
    )


def usage(usage: Usage, cost: Decimal) -> dict[str, Any]:
    """The usage object; the prompt cache's reads and writes when there were any."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": format_money(cost),
    }
    if usage.cache_read_tokens or usage.cache_write_tokens:
        body["cache_read_tokens"] = usage.cache_read_tokens
        body["cache_write_tokens"] = usage.cache_write_tokens
    return body


def answer(result: ChatResult) -> dict[str, Any]:
    body = {
        "answer": result.answer,
        "model": result.model,
        "request_id": result.request_id,
        "cached": result.cached,
        "finish_reason": result.finish_reason,
        "tool_calls": [call.as_openai() for call in result.tool_calls],
        "usage": usage(result.usage, result.cost_usd),
    }
    if result.degraded:
        body["degraded"] = True
    return body


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class RestStream(StreamFormat):
    """The REST stream: ``{"delta"}`` and ``{"tool_call"}`` events, then ``{"done"}``."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    def opening(self, stream: ChatStream) -> bytes:
        return b""

    def event(self, event: Delta | ToolCallDelta | ThinkingDelta | Done) -> bytes:
        if isinstance(event, Delta):
            return sse({"delta": event.text})
        if isinstance(event, ThinkingDelta):
            return b""  # asked for on /v1/messages only
        if isinstance(event, ToolCallDelta):
            return sse({"tool_call": event.as_event()})
        return sse(self.done(event))

    def done(self, event: Done) -> dict[str, Any]:
        """The ``done`` event's body."""
        done = {
            "done": True,
            "usage": usage(event.usage, event.cost_usd),
            "model": event.model,
            "finish_reason": event.finish_reason,
            "request_id": self.request_id,
        }
        if event.cached:  # an answer from the response cache (only then: §4's shape kept)
            done["cached"] = True
        if event.degraded:  # stale, every upstream down
            done["degraded"] = True
        return done

    def failure(self, error: Exception) -> bytes:
        body, _status, _headers = envelope(error, request_id=self.request_id)
        return sse(body)

    def closing(self) -> bytes:
        return b""
