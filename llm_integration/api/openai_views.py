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

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from .. import exceptions as exc
from ..formats import openai
from ..services.chat import aembed
from ..services.config.entitlements import visible_aliases
from ..services.db import run_db
from ..services.policy.rules import Labels
from .authentication import key_of
from .renderers import with_numbers_json
from .views import ERRORS, GatewayAPIView


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
        return Response(
            {"object": "list", "data": [openai.model_object(alias) for alias in usable]}
        )


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
                return Response(openai.model_object(alias))
        raise exc.ModelNotFound(f"The model {model!r} does not exist or you do not have access.")


async def usable_aliases(request) -> list:
    """The enabled aliases the caller's plan (and API key) let it call, in order."""
    rows = await run_db(visible_aliases, request.user)
    key = key_of(request)  # a key may narrow the plan's models
    return [a for a, locked in rows if not locked and (key is None or key.allows(a))]


class ChatCompletionsView(GatewayAPIView):
    openai_errors = True

    @extend_schema(
        request=openai.ChatCompletionRequestSerializer,
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
        ask = openai.parse_completion(request.data, Labels.from_headers(request.META))

        def stream() -> openai.CompletionStream:
            return openai.CompletionStream(
                self.request_id, ask.model, include_usage=ask.include_usage
            )

        return await self.serve_chat(ask, stream, openai.completion)


class EmbeddingsView(GatewayAPIView):
    openai_errors = True

    @extend_schema(
        request=openai.EmbeddingRequestSerializer,
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
        data = openai.parse_embedding(request.data)
        result = await aembed(
            user=request.user,
            model=data["model"],
            inputs=data["input"],
            dimensions=data.get("dimensions"),
            end_user=data.get("user"),
            encoding_format=data.get("encoding_format") or "float",
            request_id=self.request_id,
            labels=Labels.from_headers(request.META),
            key=key_of(request),
        )
        as_base64 = data.get("encoding_format") == "base64"
        return Response(openai.embedding_list(result, as_base64=as_base64))

    def get_renderers(self):
        """The project's renderers, JSON written by orjson: tens of thousands of floats."""
        return with_numbers_json(super().get_renderers())
