"""The Anthropic Messages API as an entrance (``/v1/messages``), over the same path.

The official ``anthropic`` SDK, and tools built on it, work with ``base_url=<host>`` and
a DRF token as the API key (``x-api-key``, or ``Authorization: Bearer``); ``model`` is
an alias id, served by any upstream kind. Requests are translated to the gateway's
OpenAI-shaped request and answers go back as Anthropic sends them, errors in
Anthropic's shape (``llm_integration.formats.anthropic``).
``/v1/messages/count_tokens`` counts a request's input tokens, unbilled.
"""

from __future__ import annotations

import functools

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from ..formats import anthropic
from ..services.chat.admission import Ask, admit
from ..services.chat.validation import validate
from ..services.db import run_db
from ..services.policy.rules import Labels, request_text
from ..text.tokens import count_message_tokens
from .authentication import BearerOrTokenAuthentication, key_of
from .views import GatewayAPIView


class APIKeyHeaderAuthentication(BearerOrTokenAuthentication):
    """A DRF token in ``x-api-key``, where Anthropic's SDK sends its key."""

    def _key(self, request) -> str | None:
        return request.META.get("HTTP_X_API_KEY") or None

    def authenticate_header(self, request) -> str:
        return "x-api-key"


class AnthropicView(GatewayAPIView):
    """The project's authenticators, then ``x-api-key``; errors in Anthropic's shape."""

    def get_authenticators(self):
        return [*super().get_authenticators(), APIKeyHeaderAuthentication()]

    def handle_exception(self, exc_):
        response = super().handle_exception(exc_)
        body, status, headers = anthropic.anthropic_error(exc_, self.request_id)
        response.data, response.status_code = body, status
        for name, value in headers.items():
            response[name] = value
        return response


class MessagesView(AnthropicView):
    @extend_schema(
        request=anthropic.MessagesRequestSerializer,
        responses={200: inline_serializer("AnthropicMessage", {"id": serializers.CharField()})},
        summary="Anthropic-compatible Messages (JSON, or Anthropic's stream events)",
    )
    async def post(self, request):
        betas = request.META.get("HTTP_ANTHROPIC_BETA", "")
        ask = anthropic.parse(request.data, Labels.from_headers(request.META), betas)
        return await self.serve_chat(
            ask,
            lambda: anthropic.MessageStream(self.request_id, ask.model),
            lambda result: anthropic.message(result, self.request_id),
        )


class CountTokensView(AnthropicView):
    @extend_schema(
        request=anthropic.CountTokensRequestSerializer,
        responses={
            200: inline_serializer(
                "AnthropicTokenCount", {"input_tokens": serializers.IntegerField()}
            )
        },
        summary="Anthropic-compatible input token count (not billed)",
    )
    async def post(self, request):
        asked = anthropic.parse_count(request.data)
        chat = validate(asked.messages, system_prompt=asked.system_prompt, options=asked.options)
        # The alias the rules would pick counts them (as the Messages call would).
        text = functools.cache(functools.partial(request_text, chat))
        ask = Ask(asked.model, Labels.from_headers(request.META), text, key=key_of(request))
        admission = await run_db(admit, request.user, ask)
        tokens = count_message_tokens(
            chat.messages, model=admission.alias.upstream_model, tools=chat.tools
        )
        return Response({"input_tokens": tokens})
