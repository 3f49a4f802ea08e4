"""WebSocket chat (CONTRACT §5): ``ws/llm/chat/``.

Auth is the session cookie, or a DRF token in the first frame ``{"type": "auth",
"token": "..."}``; otherwise the socket closes with 4401. Client frames: ``chat`` (with
``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` in OpenAI's
shapes) and ``cancel``. Server frames: ``start``, ``token`` (one per upstream chunk),
``tool_call`` (a piece of a tool call: ``index``, ``id`` and ``name`` on its first
piece, ``arguments`` text), ``done`` and ``error`` (codes of CONTRACT §4; ``param``
names the request field at fault, when one is). One chat at a time per socket; a
malformed frame gets an ``error`` frame and the socket stays usable. A cancel (or a
disconnect) stops the upstream call; the usage consumed so far is recorded and reported
in the ``done`` frame.

Each authenticated socket joins the group ``llm_user_<id>``: anything sent there as
``{"type": "llm.notice", "payload": {...}}`` reaches the browser as a ``notice`` frame
(through Redis, from any process, when ``REDIS_URL`` is set).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.dispatch import receiver

from . import exceptions as exc
from .api.errors import describe
from .conf import llm_settings
from .services.chat import ChatStream, Delta, ToolCallDelta, astream_chat, new_request_id
from .services.usage import format_money
from .services.validation import TOOL_OPTIONS, refuse_unknown
from .signals import budget_alerts_fired

CLOSE_UNAUTHENTICATED = 4401
#: The fields of a ``chat`` frame; any other is refused by name.
CHAT_FRAME_FIELDS = frozenset(
    {"type", "message", "messages", "model", "temperature", "max_tokens", *TOOL_OPTIONS}
)


def user_group(user_id: int) -> str:
    return f"llm_user_{user_id}"


@receiver(budget_alerts_fired, dispatch_uid="llm-alerts-to-sockets")
async def notify_sockets(sender, *, user, alerts, **kwargs) -> None:
    """Tell the requesting user's open pages (their WebSocket group) that a budget
    crossed a threshold; through Redis this reaches sockets served by any process."""
    layer = get_channel_layer()
    if layer is None or not getattr(user, "pk", None):
        return
    for alert in alerts:
        budget = alert.budget
        spent, limit = format_money(alert.spent_usd), format_money(alert.limit_usd)
        await layer.group_send(
            user_group(user.pk),
            {
                "type": "llm.notice",
                "payload": {
                    "kind": "budget_alert",
                    "budget": budget.name,
                    "scope": budget.scope,
                    "threshold": alert.threshold,
                    "spent_usd": spent,
                    "limit_usd": limit,
                    "text": f"Budget {budget.name!r} has reached {alert.threshold}% "
                    f"(${spent} of ${limit}).",
                },
            },
        )


@database_sync_to_async
def user_for_token(key: str):
    from rest_framework.authtoken.models import Token

    try:
        token = Token.objects.select_related("user").get(key=key)
    except (Token.DoesNotExist, ValueError):
        return None
    return token.user if token.user.is_active else None


@database_sync_to_async
def still_allowed(user_id: int, token: str | None) -> bool:
    """Whether the socket's user may still chat: active, and (token sockets) the token
    still exists for them. Asked before every chat: a revoked token or a deactivated user
    does not keep chatting on a socket opened earlier."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    if token is not None:
        return Token.objects.filter(key=token, user_id=user_id, user__is_active=True).exists()
    return get_user_model().objects.filter(pk=user_id, is_active=True).exists()


def usage_payload(usage, cost) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": format_money(cost),
    }


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.user = None
        self.token: str | None = None  # the DRF token a token socket authenticated with
        self.task: asyncio.Task | None = None
        self.auth_timer: asyncio.Task | None = None
        await self.accept()
        user = self.scope.get("user")
        if getattr(user, "is_authenticated", False):
            await self.authenticated(user)
        else:
            self.auth_timer = asyncio.create_task(self.close_unless_authenticated())

    async def close_unless_authenticated(self) -> None:
        """A socket that sends no auth frame within ``WEBSOCKET_AUTH_TIMEOUT`` is closed."""
        await asyncio.sleep(float(llm_settings.WEBSOCKET_AUTH_TIMEOUT))
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def authenticated(self, user, token: str | None = None) -> None:
        self.user, self.token = user, token
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        if self.channel_layer is not None:
            await self.channel_layer.group_add(user_group(user.pk), self.channel_name)

    async def disconnect(self, code: int) -> None:
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.user is not None and self.channel_layer is not None:
            await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        try:
            frame = json.loads(text_data or "")
        except (ValueError, RecursionError):  # not JSON, or nested too deeply
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            if self.user is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
            await self.send_error("invalid_request", 'Send a JSON object with a "type".')
            return
        await self.receive_json(frame)

    async def receive_json(self, content: dict[str, Any], **kwargs) -> None:
        kind = content["type"]
        if self.user is None:
            user = None
            if kind == "auth" and isinstance(content.get("token"), str):
                user = await user_for_token(content["token"])
            if user is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
            await self.authenticated(user, content["token"])
            return
        if kind == "chat":
            await self.start_chat(content)
        elif kind == "cancel":
            if self.task is not None and not self.task.done():
                self.task.cancel()
        elif kind != "auth":  # a second auth frame is harmless
            await self.send_error("invalid_request", f"Unknown frame type {kind!r}.")

    async def start_chat(self, frame: dict[str, Any]) -> None:
        if self.task is not None and not self.task.done():
            await self.send_error("invalid_request", "A chat is already running on this socket.")
            return
        if not await still_allowed(self.user.pk, self.token):
            await self.send_error(
                "authentication_failed", "Your credentials are no longer valid; sign in again."
            )
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            refuse_unknown(frame, CHAT_FRAME_FIELDS)
        except exc.UnsupportedParameter as error:
            await self.send_error(error.code, error.message, param=error.param)
            return
        messages = frame.get("messages")
        if messages is None and isinstance(frame.get("message"), str):
            messages = [{"role": "user", "content": frame["message"]}]
        if not isinstance(messages, list) or not messages:
            await self.send_error("invalid_request", 'Send "messages": a non-empty list.')
            return
        model = frame.get("model")
        if model is not None and not isinstance(model, str):
            await self.send_error("invalid_request", '"model" must be an alias id.')
            return
        stream = astream_chat(
            user=self.user,
            model=model or None,
            messages=messages,
            temperature=frame.get("temperature"),
            max_tokens=frame.get("max_tokens"),
            request_id=new_request_id(),
            options={name: frame[name] for name in TOOL_OPTIONS if frame.get(name) is not None},
        )
        self.task = asyncio.create_task(self.run_chat(stream))

    async def run_chat(self, stream: ChatStream) -> None:
        request_id = stream.request_id
        await self.send_json({"type": "start", "request_id": request_id})
        try:
            async for event in stream:
                if isinstance(event, Delta):
                    await self.send_json({"type": "token", "content": event.text})
                elif isinstance(event, ToolCallDelta):
                    await self.send_json({"type": "tool_call", **event.as_event()})
                else:
                    await self.send_json(
                        {
                            "type": "done",
                            "request_id": request_id,
                            "usage": usage_payload(event.usage, event.cost_usd),
                            "finish_reason": event.finish_reason,
                        }
                    )
        except asyncio.CancelledError:
            await stream.aclose()
            outcome = stream.outcome
            usage = usage_payload(outcome.usage, outcome.cost_usd) if outcome else None
            await self.send_json(
                {
                    "type": "done",
                    "request_id": request_id,
                    "usage": usage,
                    "finish_reason": "cancelled",
                }
            )
        except exc.LLMError as error:
            _status, code, _kind, message, retry_after = describe(error)
            frame = {"type": "error", "code": code, "message": message, "request_id": request_id}
            if getattr(error, "param", None) is not None:
                frame["param"] = error.param  # the request field at fault
            if retry_after is not None:
                frame["retry_after"] = retry_after
            await self.send_json(frame)

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, **extra})

    async def llm_notice(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "notice", **event.get("payload", {})})
