"""The WebSocket's frames (CONTRACT §5): the ``chat`` frame a client sends, and the
``start``, ``token``, ``tool_call``, ``done`` and ``error`` frames that answer it."""

from __future__ import annotations

from typing import Any

from .. import exceptions as exc
from ..envelope import describe, error_param
from ..services.chat import Delta, Done, Outcome, ThinkingDelta, ToolCallDelta
from ..services.chat.validation import TOOL_OPTIONS
from ..services.policy.rules import Labels
from ..text.fields import refuse_unknown
from .inputs import ChatInput
from .rest import usage

#: The fields of a ``chat`` frame; any other is refused by name.
CHAT_FRAME_FIELDS = frozenset(
    {
        "type",
        "message",
        "messages",
        "model",
        "temperature",
        "max_tokens",
        "task",
        "tags",
        *TOOL_OPTIONS,
    }
)


def parse_chat(frame: dict[str, Any]) -> ChatInput:
    """A ``chat`` frame (``InvalidRequest`` naming what is wrong)."""
    refuse_unknown(frame, CHAT_FRAME_FIELDS)
    labels = Labels.parse(frame.get("task"), frame.get("tags"))
    messages = frame.get("messages")
    if messages is None and isinstance(frame.get("message"), str):
        messages = [{"role": "user", "content": frame["message"]}]
    if not isinstance(messages, list) or not messages:
        raise exc.InvalidRequest('Send "messages": a non-empty list.')
    model = frame.get("model")
    if model is not None and not isinstance(model, str):
        raise exc.InvalidRequest('"model" must be an alias id.')
    return ChatInput(
        messages=messages,
        model=model or None,
        temperature=frame.get("temperature"),
        max_tokens=frame.get("max_tokens"),
        options={name: frame[name] for name in TOOL_OPTIONS if frame.get(name) is not None},
        labels=labels,
        stream=True,
    )


def start(request_id: str) -> dict[str, Any]:
    return {"type": "start", "request_id": request_id}


def frame(
    event: Delta | ToolCallDelta | ThinkingDelta | Done, request_id: str
) -> dict[str, Any] | None:
    """The frame of one event of the chat's stream (None: none for it)."""
    if isinstance(event, ThinkingDelta):
        return None  # asked for on /v1/messages only
    if isinstance(event, Delta):
        return {"type": "token", "content": event.text}
    if isinstance(event, ToolCallDelta):
        return {"type": "tool_call", **event.as_event()}
    done = {
        "type": "done",
        "request_id": request_id,
        "usage": usage(event.usage, event.cost_usd),
        "finish_reason": event.finish_reason,
    }
    if event.cached:  # an answer from the response cache (only then: §5's shape kept)
        done["cached"] = True
    if event.degraded:  # stale, every upstream down
        done["degraded"] = True
    return done


def cancelled(outcome: Outcome | None, request_id: str) -> dict[str, Any]:
    """The ``done`` frame of a cancelled chat, with what it used until then."""
    return {
        "type": "done",
        "request_id": request_id,
        "usage": usage(outcome.usage, outcome.cost_usd) if outcome else None,
        "finish_reason": "cancelled",
    }


def error(failure: BaseException, request_id: str | None = None) -> dict[str, Any]:
    """An ``error`` frame: the envelope's code and message, the field at fault
    (``param``) and ``retry_after`` when there are."""
    _status, code, _kind, message, retry_after = describe(failure)
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        body["request_id"] = request_id
    if (param := error_param(failure)) is not None:
        body["param"] = param
    if retry_after is not None:
        body["retry_after"] = retry_after
    return body
