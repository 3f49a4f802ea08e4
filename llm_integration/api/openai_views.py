"""An OpenAI-compatible surface (``/v1``) over the same service path.

Any OpenAI SDK works with ``base_url=<host>/v1`` and a DRF token as ``api_key``:
``GET /v1/models`` and ``POST /v1/chat/completions`` (JSON, or SSE chunks ending with
``data: [DONE]``; ``stream_options.include_usage`` adds the usage chunk), with tools,
tool calls (streamed as OpenAI streams them) and ``response_format``; and
``POST /v1/embeddings`` for embedding aliases. ``model`` is an
alias id. Errors are OpenAI-shaped (``error.message/type/param/code``) and carry the
request id too.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from .. import exceptions as exc
from ..envelope import envelope
from ..services.chat import Delta, ToolCallDelta, achat, aembed, astream_chat
from ..services.chat.validation import OPTIONS
from ..services.config.entitlements import visible_aliases
from ..services.db import run_db
from ..services.policy.keys import KeyGrant
from ..services.policy.rules import NO_LABELS, Labels
from ..text.fields import refuse_unknown, refuse_unknown_in_message
from .authentication import key_of
from .renderers import with_numbers_json
from .serializers import StrictBooleanField, StrictFloatField, StrictIntegerField
from .views import ERRORS, GatewayAPIView, as_response

CREATED = 1_700_000_000  # aliases have no creation date upstream; a fixed, honest epoch


class OpenAIMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=("system", "developer", "user", "assistant", "tool"))
    content = serializers.JSONField(required=False, allow_null=True)
    tool_calls = serializers.JSONField(required=False, allow_null=True)
    tool_call_id = serializers.CharField(required=False, allow_null=True)


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

    def conversation(self) -> list[dict[str, Any]]:
        return [
            {
                **m,
                "role": "system" if m["role"] == "developer" else m["role"],
                "content": m.get("content"),
            }
            for m in self.validated_data["messages"]
        ]


#: What ``/v1/chat/completions`` carries; any other field is refused by name.
COMPLETION_FIELDS = frozenset(ChatCompletionRequestSerializer().fields)
#: Fields whose value here asks for what the gateway does anyway.
COMPLETION_NOOPS = {"logprobs": False, "store": False}


def chunk(
    request_id: str,
    model: str,
    created: int,
    choices: list,
    usage: Any = None,
    *,
    include_usage: bool,
) -> bytes:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if include_usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def openai_usage(usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class OpenAIModelsView(GatewayAPIView):
    openai_errors = True

    @extend_schema(
        responses={
            200: inline_serializer(
                "OpenAIModelList",
                {
                    "object": serializers.CharField(),
                    "data": serializers.ListField(child=serializers.DictField()),
                },
            )
        },
        summary="OpenAI-compatible model list",
        operation_id="v1_models_list",
    )
    async def get(self, request):
        usable = await usable_aliases(request)
        return Response({"object": "list", "data": [model_object(alias) for alias in usable]})


class OpenAIModelView(GatewayAPIView):
    """``GET /v1/models/<id>`` (the SDKs' ``models.retrieve``): a model the caller may
    use, else 404 as OpenAI answers for a model one cannot see."""

    openai_errors = True

    @extend_schema(
        responses={200: inline_serializer("OpenAIModel", {"id": serializers.CharField()})},
        summary="One OpenAI-compatible model",
        operation_id="v1_models_retrieve",
    )
    async def get(self, request, model: str):
        for alias in await usable_aliases(request):
            if alias.slug == model:
                return Response(model_object(alias))
        raise exc.ModelNotFound(f"The model {model!r} does not exist or you do not have access.")


async def usable_aliases(request) -> list:
    """The enabled aliases the caller's plan (and API key) let it call, in order."""
    rows = await run_db(visible_aliases, request.user)
    key = key_of(request)  # a key may narrow the plan's models
    return [a for a, locked in rows if not locked and (key is None or key.allows(a))]


def model_object(alias) -> dict:
    return {
        "id": alias.slug,
        "object": "model",
        "created": CREATED,
        "owned_by": alias.provider.name,
    }


class ChatCompletionsView(GatewayAPIView):
    openai_errors = True

    @extend_schema(
        request=ChatCompletionRequestSerializer,
        responses={
            200: inline_serializer(
                "ChatCompletion",
                {
                    "id": serializers.CharField(),
                    "object": serializers.CharField(),
                    "choices": serializers.ListField(child=serializers.DictField()),
                    "usage": serializers.DictField(),
                },
            ),
            **ERRORS,
        },
        summary="OpenAI-compatible chat completions",
    )
    async def post(self, request):
        headers = Labels.from_headers(request.META)
        reply = await completion_reply(
            request.user, request.data, self.request_id, headers, key_of(request)
        )
        return as_response(reply)


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


EMBEDDING_FIELDS = frozenset(EmbeddingRequestSerializer().fields)


class EmbeddingsView(GatewayAPIView):
    openai_errors = True

    @extend_schema(
        request=EmbeddingRequestSerializer,
        responses={
            200: inline_serializer(
                "EmbeddingList",
                {
                    "object": serializers.CharField(),
                    "data": serializers.ListField(child=serializers.DictField()),
                    "model": serializers.CharField(),
                    "usage": serializers.DictField(),
                },
            ),
            **ERRORS,
        },
        summary="OpenAI-compatible embeddings",
    )
    async def post(self, request):
        headers = Labels.from_headers(request.META)
        reply = await embedding_reply(
            request.user, request.data, self.request_id, headers, key_of(request)
        )
        return Response(reply)

    def get_renderers(self):
        """The project's renderers, JSON written by orjson: tens of thousands of floats."""
        return with_numbers_json(super().get_renderers())


async def embedding_reply(
    user, payload, request_id: str, headers: Labels = NO_LABELS, key: KeyGrant | None = None
) -> dict:
    """``POST /v1/embeddings`` without its HTTP (labels from the ``X-LLM-*`` headers)."""
    if isinstance(payload, dict):
        refuse_unknown(payload, EMBEDDING_FIELDS)
    serializer = EmbeddingRequestSerializer(data=payload)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    result = await aembed(
        user=user,
        model=data["model"],
        inputs=data["input"],
        dimensions=data.get("dimensions"),
        end_user=data.get("user"),
        encoding_format=data.get("encoding_format") or "float",
        request_id=request_id,
        labels=headers,
        key=key,
    )
    as_base64 = data.get("encoding_format") == "base64"
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


#: The keys of ``metadata`` the gateway reads.
METADATA_FIELDS = frozenset({"task", "tags"})


def metadata_labels(metadata: Any, headers: Labels) -> Labels:
    """``metadata.task`` and ``metadata.tags`` over the headers' labels."""
    if metadata is None:
        return headers
    if not isinstance(metadata, dict):
        raise exc.InvalidRequest("'metadata' must be an object.", param="metadata")
    refuse_unknown(metadata, METADATA_FIELDS, prefix="metadata.")
    labels = Labels.parse(
        metadata.get("task"),
        metadata.get("tags"),
        task_field="metadata.task",
        tags_field="metadata.tags",
    )
    return labels.merged(headers)


async def completion_reply(
    user, payload, request_id: str, headers: Labels = NO_LABELS, key: KeyGrant | None = None
) -> dict | AsyncIterator[bytes]:
    """``POST /v1/chat/completions`` without its HTTP: the completion object, or the
    stream's chunks (already past the first event). ``headers``: ``X-LLM-*`` labels."""
    if isinstance(payload, dict):
        refuse_unknown(payload, COMPLETION_FIELDS, noops=COMPLETION_NOOPS)
        messages = payload.get("messages")
        for i, message in enumerate(messages if isinstance(messages, list) else ()):
            if isinstance(message, dict):
                refuse_unknown_in_message(message, i)
    serializer = ChatCompletionRequestSerializer(data=payload)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    kwargs = {
        "user": user,
        "model": data["model"],
        "messages": serializer.conversation(),
        "temperature": data.get("temperature"),
        "max_tokens": data.get("max_completion_tokens") or data.get("max_tokens"),
        "stop": data.get("stop"),
        "request_id": request_id,
        "options": {name: data[name] for name in OPTIONS if data.get(name) is not None},
        "labels": metadata_labels(data.get("metadata"), headers),
        "key": key,
    }
    if data.get("stream"):
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return await completion_chunks(kwargs, request_id, include_usage=include_usage)
    result = await achat(**kwargs)
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
        "usage": openai_usage(result.usage),
    }


def assistant_message(result) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.answer, "refusal": None}
    if result.tool_calls:
        message["content"] = result.answer or None
        message["tool_calls"] = [call.as_openai() for call in result.tool_calls]
    return message


async def completion_chunks(
    kwargs: dict, request_id: str, *, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())
    stream = astream_chat(**kwargs)
    first = await anext(stream)  # failures before the first token get their status
    model = kwargs["model"]

    async def events() -> AsyncIterator[bytes]:
        event = first
        yield chunk(
            request_id,
            model,
            created,
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            include_usage=include_usage,
        )
        try:
            while True:
                if isinstance(event, Delta | ToolCallDelta):
                    delta = (
                        {"content": event.text}
                        if isinstance(event, Delta)
                        else {"tool_calls": [event.as_openai()]}
                    )
                    yield chunk(
                        request_id,
                        model,
                        created,
                        [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                        include_usage=include_usage,
                    )
                else:
                    yield chunk(
                        request_id,
                        event.model,
                        created,
                        [
                            {
                                "index": 0,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": event.finish_reason,
                            }
                        ],
                        include_usage=include_usage,
                    )
                    if include_usage:
                        yield chunk(
                            request_id,
                            event.model,
                            created,
                            [],
                            openai_usage(event.usage),
                            include_usage=True,
                        )
                    break
                event = await anext(stream)
        except Exception as error:
            body, _status, _headers = envelope(error, request_id=request_id, openai=True)
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        finally:
            await stream.aclose()
        yield b"data: [DONE]\n\n"

    return events()
