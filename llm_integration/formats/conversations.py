"""``/api/v1/conversations`` (CONTRACT §10): the requests' shapes, and a turn's answer
and stream, which are ``POST /api/v1/chat``'s with the turn's ``context`` added."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..services.chat import ChatResult, Delta, Done
from ..services.memory.conversations import Context
from . import rest
from .fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from .inputs import Shape
from .streams import Event


class ConversationRequestSerializer(serializers.Serializer):
    """A new conversation; any other field is refused by name."""

    model = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="Alias id; the default alias when omitted.",
    )
    system_prompt = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    title = StrictCharField(required=False, allow_blank=True, max_length=200)


class TurnRequestSerializer(serializers.Serializer):
    """A conversation's next message; any other field is refused by name."""

    message = StrictCharField(trim_whitespace=False, help_text="The new user message.")
    stream = StrictBooleanField(required=False, default=False)
    importance = StrictFloatField(
        required=False,
        min_value=0,
        max_value=1,
        default=0.5,
        help_text="How much the turn matters when the context must shrink (0–1): less "
        "important turns go first.",
    )
    task = serializers.JSONField(
        required=False, help_text="A task label routing rules may match (or X-LLM-Task)."
    )
    max_tokens = StrictIntegerField(required=False, min_value=1)
    temperature = StrictFloatField(required=False, min_value=0, max_value=2)


CONVERSATION = Shape(ConversationRequestSerializer)
TURN = Shape(TurnRequestSerializer)


def answer(result: ChatResult, context: Context) -> dict[str, Any]:
    """The chat's answer (§4) and where the conversation's context stands."""
    return {**rest.answer(result), "context": context.as_dict()}


class TurnStream(rest.RestStream):
    """The REST stream of a turn: the answer's text is kept as it goes, the turn is
    recorded (``keep``) before the ``done`` event, which carries the context."""

    def __init__(self, request_id: str, keep) -> None:
        super().__init__(request_id)
        self.keep = keep
        self.parts: list[str] = []
        self.context: Context | None = None

    def event(self, event: Event) -> bytes:
        if isinstance(event, Delta):
            self.parts.append(event.text)
        return super().event(event)

    def done(self, event: Done) -> dict[str, Any]:
        body = super().done(event)
        if self.context is not None:
            body["context"] = self.context.as_dict()
        return body

    async def ending(self, done: Done) -> None:
        self.context = await self.keep("".join(self.parts))
