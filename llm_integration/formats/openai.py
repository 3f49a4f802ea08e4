"""OpenAI's shapes (``/v1``): chat completions (the object, and the chunks of a stream
ending ``data: [DONE]``), embeddings and models. ``model`` is an alias id; errors are
the envelope with OpenAI's ``error`` object."""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from rest_framework import serializers

from .. import exceptions as exc
from ..envelope import envelope
from ..services.chat import (
    ChatResult,
    ChatStream,
    Delta,
    Done,
    EmbeddingResult,
    ThinkingDelta,
    ToolCallDelta,
)
from ..services.chat.validation import OPTIONS
from ..services.policy.rules import NO_LABELS, Labels
from ..text.fields import refuse_unknown, refuse_unknown_in_message
from .fields import StrictBooleanField, StrictFloatField, StrictIntegerField
from .inputs import ChatInput, Shape
from .streams import StreamFormat

#: Aliases have no creation date upstream: a fixed, honest epoch.
CREATED = 1_700_000_000
#: OpenAI's ``reasoning_effort`` values (each upstream model takes some of them).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
#: OpenAI's ``verbosity`` values (GPT-5 models).
VERBOSITIES = ("low", "medium", "high")


class OpenAIMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=("system", "developer", "user", "assistant", "tool"))
    content = serializers.JSONField(required=False, allow_null=True)
    tool_calls = serializers.JSONField(required=False, allow_null=True)
    tool_call_id = serializers.CharField(required=False, allow_null=True)
    thinking_blocks = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="An assistant's reasoning blocks, as Anthropic returned them (LiteLLM's "
        "field): sent back to Anthropic upstreams.",
    )


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


class ChatCompletionRequestSerializer(serializers.Serializer):
    """The chat completion parameters the gateway passes on (types as OpenAI checks
    them: ``"100"`` is not a number)."""

    model = serializers.CharField(max_length=100)
    messages = OpenAIMessageSerializer(many=True, allow_empty=False)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    presence_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    seed = StrictIntegerField(required=False, allow_null=True)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    stop = serializers.JSONField(required=False, allow_null=True)
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    user = serializers.CharField(required=False, allow_blank=True)
    reasoning_effort = serializers.ChoiceField(
        choices=REASONING_EFFORTS,
        required=False,
        allow_null=True,
        help_text="Passed to OpenAI-compatible upstreams; refused by name by others.",
    )
    verbosity = serializers.ChoiceField(
        choices=VERBOSITIES,
        required=False,
        allow_null=True,
        help_text="Passed to OpenAI-compatible upstreams; refused by name by others.",
    )
    prompt_cache_key = serializers.CharField(
        required=False,
        max_length=1024,
        help_text="OpenAI's prompt cache hint: passed to OpenAI-compatible upstreams, left "
        "out for others (it changes no answer).",
    )
    tools = serializers.JSONField(required=False, allow_null=True)
    tool_choice = serializers.JSONField(required=False, allow_null=True)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)
    response_format = serializers.JSONField(required=False, allow_null=True)
    metadata = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="`task` and `tags` (comma-separated, or a list): routing rules and cost "
        "reporting. Other keys are refused.",
    )


#: Fields whose value here asks for what the gateway does anyway.
COMPLETION_NOOPS = {"logprobs": False, "store": False}
COMPLETION = Shape(ChatCompletionRequestSerializer, noops=COMPLETION_NOOPS)
#: The keys of ``metadata`` the gateway reads.
METADATA_FIELDS = frozenset({"task", "tags"})


def metadata_labels(metadata: Any, headers: Labels) -> Labels:
    """``metadata.task`` and ``metadata.tags`` over the headers' labels (no other keys)."""
    if metadata is None:
        return headers
    if not isinstance(metadata, dict):
        raise exc.InvalidRequest("'metadata' must be an object.", param="metadata")
    refuse_unknown(metadata, METADATA_FIELDS, prefix="metadata.")
    return labels_of(metadata, headers)


def labels_of(metadata: dict[str, Any], headers: Labels) -> Labels:
    """``metadata.task`` and ``metadata.tags`` over the headers' labels."""
    labels = Labels.parse(
        metadata.get("task"),
        metadata.get("tags"),
        task_field="metadata.task",
        tags_field="metadata.tags",
    )
    return labels.merged(headers)


def parse_completion(payload: Any, headers: Labels = NO_LABELS) -> ChatInput:
    """A chat completion request (``headers``: the ``X-LLM-*`` labels)."""
    COMPLETION.refuse_unknown(payload)  # the request's own fields first, then its messages'
    messages = payload.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        if isinstance(message, dict):
            refuse_unknown_in_message(message, i)
    data = COMPLETION.check(payload)
    return ChatInput(
        messages=[
            {
                **m,
                "role": "system" if m["role"] == "developer" else m["role"],
                "content": m.get("content"),
            }
            for m in data["messages"]
        ],
        model=data["model"],
        temperature=data.get("temperature"),
        max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
        stop=data.get("stop"),
        options={name: data[name] for name in OPTIONS if data.get(name) is not None},
        labels=metadata_labels(data.get("metadata"), headers),
        stream=data["stream"],
        include_usage=bool((data.get("stream_options") or {}).get("include_usage")),
    )


def usage(usage) -> dict[str, Any]:
    """OpenAI's usage object; cache reads as ``prompt_tokens_details.cached_tokens``
    (OpenAI has no word for writes: they stay in ``prompt_tokens`` only), reasoning as
    ``completion_tokens_details.reasoning_tokens`` when the upstream reported it."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    if usage.reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return body


def assistant_message(result: ChatResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.answer, "refusal": None}
    if result.tool_calls:
        message["content"] = result.answer or None
        message["tool_calls"] = [call.as_openai() for call in result.tool_calls]
    return message


def completion(result: ChatResult) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": assistant_message(result),
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(result.usage),
    }


def data_line(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class CompletionStream(StreamFormat):
    """``chat.completion.chunk`` events: the role, the deltas, the finish reason, the
    usage (when asked for), then ``[DONE]`` (after an error too)."""

    def __init__(self, request_id: str, model: str | None, *, include_usage: bool) -> None:
        self.request_id, self.model, self.include_usage = request_id, model, include_usage
        self.created = int(time.time())

    def chunk(self, choices: list, *, model: str | None = None, **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "id": f"chatcmpl-{self.request_id}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model or self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = extra.get("usage")
        return data_line(body)

    def choice(self, delta: dict[str, Any], finish_reason: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    def opening(self, stream: ChatStream) -> bytes:
        return self.chunk(self.choice({"role": "assistant", "content": ""}))

    def event(self, event: Delta | ToolCallDelta | ThinkingDelta | Done) -> bytes:
        if isinstance(event, Delta):
            return self.chunk(self.choice({"content": event.text}))
        if isinstance(event, ThinkingDelta):
            return b""  # OpenAI's chat completions show no reasoning
        if isinstance(event, ToolCallDelta):
            return self.chunk(self.choice({"tool_calls": [event.as_openai()]}))
        end = self.chunk(self.choice({}, event.finish_reason), model=event.model)
        if self.include_usage:
            end += self.chunk([], model=event.model, usage=usage(event.usage))
        return end

    def failure(self, error: Exception) -> bytes:
        body, _status, _headers = envelope(error, request_id=self.request_id, openai=True)
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def closing(self) -> bytes:
        return b"data: [DONE]\n\n"


#: The most dimensions an embedding may be asked for (OpenAI's largest model has 3,072;
#: an unbounded number would have the gateway build vectors of any size).
MAX_DIMENSIONS = 16384


class EmbeddingRequestSerializer(serializers.Serializer):
    """The embedding parameters the gateway carries (the service checks ``input``)."""

    model = serializers.CharField(max_length=100)
    input = serializers.JSONField()
    dimensions = StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_DIMENSIONS
    )
    encoding_format = serializers.ChoiceField(
        choices=("float", "base64"), required=False, allow_null=True
    )
    user = serializers.CharField(required=False, allow_blank=True)


EMBEDDING = Shape(EmbeddingRequestSerializer)


def parse_embedding(payload: Any) -> dict[str, Any]:
    """An embedding request's validated fields."""
    return EMBEDDING.validate(payload)


def embedding_list(result: EmbeddingResult, *, as_base64: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": packed(vector) if as_base64 and isinstance(vector, list) else vector,
            }
            for i, vector in enumerate(result.vectors)
        ],
        "model": result.model,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "total_tokens": result.usage.prompt_tokens,
        },
    }


def packed(vector: list[float]) -> str:
    """OpenAI's base64 form: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def model_object(alias) -> dict[str, Any]:
    """OpenAI's model object, with what a client choosing a model wants to know: the
    context window, the mode and what the alias can do (fields OpenAI does not send;
    the SDKs keep them)."""
    return {
        "id": alias.slug,
        "object": "model",
        "created": CREATED,
        "owned_by": alias.provider.name,
        "context_window": alias.context_window,
        "mode": alias.mode,
        "capabilities": {
            "tools": alias.supports_tools,
            "vision": alias.supports_vision,
            "response_format": alias.supports_response_format,
        },
    }
