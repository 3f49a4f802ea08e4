"""What every wire format's parse returns, and the check of a request's shape.

``Shape`` validates with a DRF serializer built once per process: the serializer is
the one source of a request's fields (their types, ranges and the OpenAPI schema),
and a request pays for DRF's field checks but not for rebuilding the serializer's
fields (a deep copy per instance, a third of a millisecond on this path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rest_framework import serializers

from ..services.policy.keys import KeyGrant
from ..services.policy.rules import NO_LABELS, Labels
from ..text.fields import refuse_unknown


@dataclass(frozen=True, slots=True)
class ChatInput:
    """A chat request as its format parsed it: the chat service's arguments, whatever
    the entrance, and how the answer is wanted (``stream``, ``include_usage``)."""

    messages: Any
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    labels: Labels = NO_LABELS
    #: Tool calls are passed on as JSON objects (Anthropic's ``tool_use``): arguments
    #: that are not one are the upstream's fault (502), not the client's.
    json_tool_arguments: bool = False
    stream: bool = False
    #: Streams only: end with the usage (OpenAI's ``stream_options.include_usage``).
    include_usage: bool = False
    #: What the format left out, as ``DROP_UNSUPPORTED_TOOLS`` allows (on the usage row).
    dropped: tuple[str, ...] = ()

    def arguments(self, *, user: Any, request_id: str, key: KeyGrant | None) -> dict[str, Any]:
        """The keyword arguments of ``achat``/``astream_chat`` for this caller."""
        return {
            "user": user,
            "model": self.model,
            "messages": self.messages,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "request_id": request_id,
            "options": self.options,
            "labels": self.labels,
            "json_tool_arguments": self.json_tool_arguments,
            "key": key,
            "dropped": self.dropped,
        }


class Shape:
    """A request body's fields, declared once by a serializer: any other field is
    refused by name (``noops``: fields whose value asks for what the gateway does
    anyway), the rest checked by the serializer's own fields."""

    def __init__(
        self, serializer: type[serializers.Serializer], *, noops: Mapping[str, Any] | None = None
    ) -> None:
        self.serializer = serializer
        self.checker = serializer()  # its fields, built once
        self.fields = frozenset(self.checker.fields)
        self.noops = noops

    def validate(self, payload: Any) -> dict[str, Any]:
        """The validated data, or a ``ValidationError`` naming the fields at fault."""
        self.refuse_unknown(payload)
        return self.check(payload)

    def refuse_unknown(self, payload: Any) -> None:
        """A field the serializer does not declare, refused by name."""
        if not isinstance(payload, dict):
            raise serializers.ValidationError({"non_field_errors": ["Send a JSON object."]})
        refuse_unknown(payload, self.fields, noops=self.noops)

    def check(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The declared fields' checks (after ``refuse_unknown``); ``null`` is the same
        as leaving a field out."""
        return self.checker.run_validation(
            {name: value for name, value in payload.items() if value is not None}
        )
