"""OpenAI's Responses API on ``/v1`` (CONTRACT §12): ``POST /v1/responses`` (JSON, or the
``response.*`` events), ``GET`` and ``DELETE /v1/responses/<id>`` for the owner.

A request runs the same chat path as ``/v1/chat/completions`` (one usage record per
call, every upstream kind); a kept response is stored before its answer is sent.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from .. import exceptions as exc
from ..formats import responses
from ..formats.response_stream import ResponsesStream
from ..formats.streams import event_stream_response, opened
from ..services.chat import achat, astream_chat
from ..services.db import run_db
from ..services.memory import responses as stored
from ..services.policy.rules import Labels
from .authentication import key_of
from .views import ERRORS, GatewayAPIView

RESPONSE = inline_serializer(
    "Response",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "status": serializers.CharField(),
        "output": serializers.ListField(child=serializers.DictField()),
        "usage": serializers.DictField(),
    },
)


class ResponsesView(GatewayAPIView):
    openai_errors = True

    @extend_schema(
        request=responses.ResponsesRequestSerializer,
        responses={200: RESPONSE, **ERRORS},
        summary="OpenAI-compatible Responses API",
    )
    async def post(self, request):
        ask = responses.parse(request.data, Labels.from_headers(request.META))
        user = request.user
        earlier = stored.NOTHING_EARLIER
        if ask.previous_response_id is not None:
            earlier = await run_db(stored.earlier, user, ask.previous_response_id)
        arguments = ask.chat(earlier.items).arguments(
            user=user, request_id=self.request_id, key=key_of(request)
        )
        answer = responses.Answer(ask, self.request_id)

        async def save(body: dict[str, Any]) -> None:
            await run_db(stored.keep, user, body, input_items=ask.items, chain=earlier.chain)

        keep = save if ask.store else None
        try:
            if ask.stream:
                stream = ResponsesStream(answer, save=keep)
                return event_stream_response(await opened(astream_chat(**arguments), stream))
            result = await achat(**arguments)
        except exc.InvalidRequest as error:  # named as this client wrote it
            error.param = responses.client_param(error.param)
            raise
        body = answer.of(result)
        if keep is not None:
            await keep(body)
        return Response(body)


class ResponseView(GatewayAPIView):
    """A stored response, for its owner only (anyone else's is 404)."""

    openai_errors = True

    @extend_schema(responses={200: RESPONSE, 404: ERRORS[404]}, summary="A stored response")
    async def get(self, request, response_id: str):
        # The SDK's retrieve may ask for the response again as a stream, from an event
        # on: a stored response is only read back whole.
        for name in ("stream", "starting_after"):
            if request.query_params.get(name) not in (None, "", "false"):
                raise exc.UnsupportedParameter(
                    f"The parameter '{name}' is not supported by this gateway.", param=name
                )
        query = request.query_params
        responses.refuse_includes([*query.getlist("include[]"), *query.getlist("include")])
        return Response(await run_db(stored.find, request.user, response_id))

    @extend_schema(
        responses={
            200: inline_serializer(
                "ResponseDeleted",
                {
                    "id": serializers.CharField(),
                    "object": serializers.CharField(),
                    "deleted": serializers.BooleanField(),
                },
            ),
            404: ERRORS[404],
        },
        summary="Delete a stored response",
    )
    async def delete(self, request, response_id: str):
        await run_db(stored.forget, request.user, response_id)
        return Response({"id": response_id, "object": "response", "deleted": True})
