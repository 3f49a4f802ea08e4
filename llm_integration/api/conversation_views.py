"""Conversations with managed context (CONTRACT §10): ``/api/v1/conversations``.

A turn (``POST …/<id>/messages``) runs the chat path with the system prompt, the turns
still in context and the new message; its answer is ``POST /api/v1/chat``'s, plain or
streamed, with the turn's ``context``. Turns of one conversation run one after another
in a process, so two messages posted at once are answered in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from ..formats import conversations as fmt
from ..formats.streams import event_stream_response, opened
from ..services.chat import achat, astream_chat
from ..services.chat.turns import summarized
from ..services.db import run_db
from ..services.memory import conversations
from ..services.policy.rules import Labels
from .authentication import key_of
from .views import ERRORS, GatewayAPIView

CONVERSATION_FIELDS = {
    "id": serializers.CharField(),
    "model": serializers.CharField(),
    "title": serializers.CharField(),
    "created_at": serializers.DateTimeField(),
    "updated_at": serializers.DateTimeField(),
}
CONVERSATION = inline_serializer("Conversation", CONVERSATION_FIELDS)


class ConversationsView(GatewayAPIView):
    @extend_schema(
        operation_id="api_v1_conversations_list",
        responses={
            200: inline_serializer("Conversation", CONVERSATION_FIELDS, many=True),
            401: ERRORS[401],
        },
        summary="The caller's conversations, most recently used first",
    )
    async def get(self, request):
        return Response(await run_db(conversations.listed, request.user))

    @extend_schema(
        request=fmt.ConversationRequestSerializer,
        responses={201: CONVERSATION, **ERRORS},
        summary="Start a conversation whose context the gateway keeps",
    )
    async def post(self, request):
        data = fmt.CONVERSATION.validate(request.data)
        made = await run_db(
            conversations.create,
            request.user,
            model=data.get("model") or None,
            system_prompt=data.get("system_prompt", ""),
            title=data.get("title", ""),
        )
        return Response(made, status=201)


class ConversationView(GatewayAPIView):
    @extend_schema(
        responses={200: CONVERSATION, 404: ERRORS[404]},
        summary="A conversation: its messages and context",
    )
    async def get(self, request, conversation_id: str):
        return Response(await run_db(conversations.read, request.user, conversation_id))

    @extend_schema(responses={204: None, 404: ERRORS[404]}, summary="Delete a conversation")
    async def delete(self, request, conversation_id: str):
        await run_db(conversations.forget, request.user, conversation_id)
        return Response(status=204)


class ConversationMessagesView(GatewayAPIView):
    @extend_schema(
        request=fmt.TurnRequestSerializer,
        responses={200: inline_serializer("Turn", {"answer": serializers.CharField()}), **ERRORS},
        summary="Send the conversation's next message (JSON, or server-sent events)",
    )
    async def post(self, request, conversation_id: str):
        ask = fmt.parse_turn(request.data, Labels.from_headers(request.META))
        user, key = request.user, key_of(request)
        slot = conversations.turn_slot(conversation_id)
        await slot.acquire()
        try:
            turn = await run_db(
                conversations.prepare, user, conversation_id, ask.message, ask.importance
            )
            turn = await summarized(turn, user=user, key=key, labels=ask.labels)
            arguments = ask.arguments(turn, user=user, request_id=self.request_id, key=key)

            async def keep(answer: str) -> conversations.Context:
                await run_db(conversations.record, turn, answer)
                return turn.context

            if ask.stream:
                stream = fmt.TurnStream(self.request_id, keep)
                body = released(await opened(astream_chat(**arguments), stream), slot)
                await anext(body)  # started: however it ends from here, the slot goes back
                return event_stream_response(body)
            result = await achat(**arguments)
            context = await keep(result.answer)
        except BaseException:
            await slot.release()
            raise
        await slot.release()
        return Response(fmt.answer(result, context))


async def released(body: AsyncIterator[bytes], slot) -> AsyncIterator[bytes]:
    """``body``, the conversation's turn slot given back when it ends, is closed, or is
    dropped unfinished (the client went away). Its first item is empty: the caller takes
    it, so that the generator has started and its ``finally`` runs however it ends."""
    try:
        yield b""
        async for chunk in body:
            yield chunk
    finally:
        await slot.release()
