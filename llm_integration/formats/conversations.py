"""``/api/v1/conversations`` (CONTRACT §10): the requests' shapes, and a turn's answer
and stream, which are ``POST /api/v1/chat``'s with the turn's ``context`` added."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from rest_framework import serializers

from .. import exceptions as exc
from ..services.chat import ChatResult, Delta, Done
from ..services.memory.conversations import Context, Turn
from ..services.policy.rules import NO_LABELS, Labels
from ..text.fields import refuse_unknown
from . import rest
from .fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from .inputs import Shape
from .streams import Event


class KeptTextField(StrictCharField):
    """Text the gateway keeps in a column: a NUL is refused by name (PostgreSQL's text
    cannot hold one), as DRF does by default."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validators.append(ProhibitNullCharactersValidator())


class ConversationRequestSerializer(serializers.Serializer):
    """A new conversation; any other field is refused by name."""

    model = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="Alias id; the default alias when omitted.",
    )
    system_prompt = KeptTextField(required=False, allow_blank=True, trim_whitespace=False)
    title = KeptTextField(required=False, allow_blank=True, max_length=200)


class TurnRequestSerializer(serializers.Serializer):
    """A conversation's next message; any other field is refused by name."""

    message = KeptTextField(trim_whitespace=False, help_text="The new user message.")
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
#: A WebSocket ``chat`` frame that continues a conversation: a turn's fields (it
#: streams), its type and the conversation's id.
TURN_FRAME_FIELDS = frozenset({"type", "conversation", *TURN.fields} - {"stream"})


@dataclass(frozen=True, slots=True)
class TurnInput:
    """A conversation's next message, as a client asked for it."""

    message: str
    importance: float
    stream: bool
    temperature: float | None
    max_tokens: int | None
    labels: Labels

    def arguments(self, turn: Turn, *, user: Any, request_id: str, key: Any) -> dict[str, Any]:
        """The chat path's arguments for ``turn`` (what ``prepare`` chose to send)."""
        return {
            "user": user,
            "model": turn.conversation.alias,
            "messages": turn.messages,
            "system_prompt": turn.system,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "request_id": request_id,
            "labels": self.labels,
            "key": key,
            "conversation": turn.conversation.id,
        }


def parse_turn(payload: Any, headers: Labels = NO_LABELS) -> TurnInput:
    """``POST …/messages``'s body (``headers``: the labels of ``X-LLM-Task``)."""
    data = TURN.validate(payload)
    return turn_input(data, headers, stream=data["stream"])


def parse_turn_frame(frame: dict[str, Any]) -> tuple[str, TurnInput]:
    """A WebSocket ``chat`` frame with ``conversation``: (its id, the turn)."""
    refuse_unknown(frame, TURN_FRAME_FIELDS)
    conversation = frame["conversation"]
    if not isinstance(conversation, str):
        raise exc.InvalidRequest('"conversation" must be a conversation id.', param="conversation")
    fields = {k: v for k, v in frame.items() if k not in ("type", "conversation")}
    return conversation, turn_input(TURN.check(fields), NO_LABELS, stream=True)


def turn_input(data: dict[str, Any], headers: Labels, *, stream: bool) -> TurnInput:
    return TurnInput(
        message=data["message"],
        importance=data["importance"],
        stream=stream,
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        labels=Labels.parse(data.get("task"), None).merged(headers),
    )


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
