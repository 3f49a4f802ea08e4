"""WebSocket chat (CONTRACT §5): ``ws/llm/chat/``.

Auth is the session cookie, or a DRF token or API key in the first frame ``{"type":
"auth", "token": "..."}``; otherwise the socket closes with 4401. Client frames: ``chat``
(with ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` in
OpenAI's shapes), ``chat`` with ``conversation`` (a conversation's next ``message``,
CONTRACT §10: its ``done`` frame carries the ``context``) and ``cancel``. Server frames:
``start``, ``token`` (one per upstream chunk), ``tool_call`` (a piece of a tool call:
``index``, ``id`` and ``name`` on its first piece, ``arguments`` text), ``done`` and
``error`` (codes of CONTRACT §4; ``param`` names the request field at fault, when one
is). One chat at a time per socket; a malformed frame gets an ``error`` frame and the
socket stays usable. A cancel (or a disconnect) stops the upstream call; the usage
consumed so far is recorded and reported in the ``done`` frame.

Each authenticated socket joins the group ``llm_user_<id>``: anything sent there as
``{"type": "llm.notice", "payload": {...}}`` reaches the browser as a ``notice`` frame
(through Redis, from any process, when ``REDIS_URL`` is set).

The channel layer carries these notices only, never a chat, and a layer that fails
(Redis down or stalled) costs notices, not sockets or chats. Channels' dispatch loop is
not given the layer (a layer error there ends the socket with 1011): a side task of each
authenticated socket receives from it. Every other layer call (group join, leave, send)
is bounded by ``CHANNEL_LAYER_TIMEOUT``; a failure is logged
(``llm.channel_layer_unavailable``) and the process then leaves the layer alone for
``CHANNEL_LAYER_RETRY_INTERVAL``, after which sockets out of their group join it again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.core.signals import setting_changed
from django.dispatch import receiver
from rest_framework.exceptions import ValidationError

from . import exceptions as exc
from .conf import llm_settings
from .formats import conversations as conversation_formats
from .formats import ws
from .services.accounting.pricing import format_money
from .services.chat import ChatStream, Delta, Done, astream_chat, new_request_id
from .services.chat.turns import summarized
from .services.db import run_db
from .services.memory import conversations
from .services.policy.keys import KeyGrant, KeyRefused, is_key, key_ring
from .signals import budget_alerts_fired

logger = logging.getLogger("llm_integration.consumers")

CLOSE_UNAUTHENTICATED = 4401


def user_group(user_id: int) -> str:
    return f"llm_user_{user_id}"


_layer_down_until = 0.0  # time.monotonic() before which the layer is not tried again


def layer_available() -> bool:
    """False within ``CHANNEL_LAYER_RETRY_INTERVAL`` of the layer's last failure."""
    return time.monotonic() >= _layer_down_until


def layer_failed(operation: str, error: Exception) -> None:
    """Note a failure of the layer: logged, unless it is down already (one warning per
    outage and retry interval, not one per socket)."""
    global _layer_down_until
    if layer_available():
        logger.warning(
            "llm.channel_layer_unavailable",
            extra={"operation": operation, "error_type": type(error).__name__},
            exc_info=not isinstance(error, TimeoutError),
        )
    _layer_down_until = time.monotonic() + float(llm_settings.CHANNEL_LAYER_RETRY_INTERVAL)


async def layer_call(operation: str, call: Callable[[], Awaitable[object]]) -> bool:
    """Whether ``await call()`` on the layer succeeded within ``CHANNEL_LAYER_TIMEOUT``;
    False at once while the layer is known down."""
    if not layer_available():
        return False
    try:
        async with asyncio.timeout(float(llm_settings.CHANNEL_LAYER_TIMEOUT)):
            await call()
    except Exception as error:
        layer_failed(operation, error)
        return False
    return True


@receiver(setting_changed)
def _forget_layer_failure(*, setting: str, **kwargs) -> None:
    global _layer_down_until
    if setting in ("CHANNEL_LAYERS", "LLM_INTEGRATION"):
        _layer_down_until = 0.0  # a new layer (Channels rebuilds it), or new intervals


@receiver(budget_alerts_fired, dispatch_uid="llm-alerts-to-sockets")
async def notify_sockets(sender, *, user, alerts, **kwargs) -> None:
    """Tell the requesting user's open pages (their WebSocket group) that a budget
    crossed a threshold; through Redis this reaches sockets served by any process. The
    request that fired the alert (HTTP or WebSocket) waits at most
    ``CHANNEL_LAYER_TIMEOUT`` for this, and a failing layer only loses the notices."""
    layer = get_channel_layer()
    if layer is None or not getattr(user, "pk", None):
        return
    for alert in alerts:
        budget = alert.budget
        spent, limit = format_money(alert.spent_usd), format_money(alert.limit_usd)
        notice = {
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
        }
        send = functools.partial(layer.group_send, user_group(user.pk), notice)
        if not await layer_call("group_send", send):
            return  # the layer is down: the other alerts' notices are lost with this one


async def key_grant(secret: str) -> tuple[Any, KeyGrant] | None:
    """The owner and grant of an API key (None: not a usable key)."""
    try:
        return key_ring.cached(secret) or await database_sync_to_async(key_ring.lookup)(secret)
    except KeyRefused:
        return None


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


class ChatConsumer(AsyncJsonWebsocketConsumer):
    #: Not a configured alias: Channels gives the dispatch loop no layer (see the module
    #: docstring); ``relay_notices`` receives from the default one instead.
    channel_layer_alias = None
    layer = None  # the default channel layer, once the socket is authenticated
    layer_channel: str | None = None  # this socket's channel on it
    joined = False  # whether that channel is in the user's group
    listener: asyncio.Task | None = None  # relay_notices
    leaving = False  # the socket is ending: relay_notices stops

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # however the socket ends, its side task and group membership end too
            await self.leave_group()

    async def connect(self) -> None:
        self.user = None
        self.token: str | None = None  # the DRF token or API key the socket came with
        self.key: KeyGrant | None = None  # the API key's grant, for a key socket
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
        self.layer = get_channel_layer()
        if self.layer is not None:
            await self.join_group()  # before the next frame: a notice sent after it arrives
            self.listener = asyncio.create_task(self.relay_notices())

    async def join_group(self) -> None:
        """Put this socket's channel (named on the first try) in the user's group."""

        async def join() -> None:
            if self.layer_channel is None:
                self.layer_channel = await self.layer.new_channel()
            await self.layer.group_add(user_group(self.user.pk), self.layer_channel)

        self.joined = await layer_call("group_add", join)

    async def relay_notices(self) -> None:
        """The socket's side task: the group's ``llm.notice`` messages, sent as frames.
        Receiving waits for a message, so it is not bounded; when it fails, or the
        socket could not join, the task waits ``CHANNEL_LAYER_RETRY_INTERVAL`` and joins
        again (a restarted Redis has lost the group). It ends when the socket does, even
        if a library turns its cancellation into an error (redis-py's read timeout can
        swallow a cancel that comes as it expires: the task would live on, and hold up
        the server's shutdown)."""
        while not self.leaving:
            if self.joined:
                try:
                    message = await self.layer.receive(self.layer_channel)
                except Exception as error:
                    if self.leaving:
                        return
                    layer_failed("receive", error)
                    self.joined = False
                else:
                    if message.get("type") == "llm.notice":
                        await self.llm_notice(message)
                    continue
            await asyncio.sleep(float(llm_settings.CHANNEL_LAYER_RETRY_INTERVAL))
            await self.join_group()

    async def leave_group(self) -> None:
        self.leaving = True
        if self.listener is not None:
            self.listener.cancel()
            # Bounded: a task that does not end at once is left to end on its own.
            await asyncio.wait({self.listener}, timeout=float(llm_settings.CHANNEL_LAYER_TIMEOUT))
            self.listener = None
        if self.joined:
            self.joined = False
            await layer_call(
                "group_discard",
                functools.partial(
                    self.layer.group_discard, user_group(self.user.pk), self.layer_channel
                ),
            )

    async def disconnect(self, code: int) -> None:
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

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
            token = content.get("token")
            if kind == "auth" and isinstance(token, str) and is_key(token):
                if (found := await key_grant(token)) is not None:
                    user, self.key = found
            elif kind == "auth" and isinstance(token, str):
                user = await user_for_token(token)
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
        if self.key is not None:  # revoked, expired or changed since the last chat?
            found = await key_grant(self.token)
            allowed = found is not None and found[1].id == self.key.id
            self.key = found[1] if allowed else self.key
        else:
            allowed = await still_allowed(self.user.pk, self.token)
        if not allowed:
            await self.send_error(
                "authentication_failed", "Your credentials are no longer valid; sign in again."
            )
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if "conversation" in frame:
            try:
                conversation, turn = conversation_formats.parse_turn_frame(frame)
            except (exc.InvalidRequest, ValidationError) as error:
                await self.send_json(ws.error(error))
                return
            self.task = asyncio.create_task(self.run_turn(conversation, turn))
            return
        try:
            ask = ws.parse_chat(frame)
        except exc.InvalidRequest as error:
            await self.send_json(ws.error(error))
            return
        stream = astream_chat(
            **ask.arguments(user=self.user, request_id=new_request_id(), key=self.key)
        )
        self.task = asyncio.create_task(self.run_chat(stream))

    async def run_turn(self, conversation_id: str, ask: conversation_formats.TurnInput) -> None:
        """A conversation's next turn (CONTRACT §10): recorded before its ``done`` frame,
        which carries the context; turns of one conversation one at a time."""
        try:
            slot = conversations.turn_slot(conversation_id)
            await slot.acquire()
        except exc.LLMError as error:
            await self.send_json(ws.error(error))
            return
        try:
            try:
                turn = await run_db(
                    conversations.prepare, self.user, conversation_id, ask.message, ask.importance
                )
            except exc.LLMError as error:
                await self.send_json(ws.error(error))
                return
            turn = await summarized(turn, user=self.user, key=self.key, labels=ask.labels)
            request_id = new_request_id()
            stream = astream_chat(
                **ask.arguments(turn, user=self.user, request_id=request_id, key=self.key)
            )

            async def keep(answer: str) -> dict[str, Any]:
                await run_db(conversations.record, turn, answer)
                return {"context": turn.context.as_dict()}

            await self.run_chat(stream, ending=keep)
        finally:
            await slot.release()

    async def run_chat(self, stream: ChatStream, ending=None) -> None:
        """The chat's frames. ``ending(text)``: work before the ``done`` frame, given
        the answer's text; what it returns is added to that frame."""
        request_id = stream.request_id
        await self.send_json(ws.start(request_id))
        text: list[str] = []
        try:
            async for event in stream:
                reply = ws.frame(event, request_id)
                if ending is not None and isinstance(event, Delta):
                    text.append(event.text)
                if ending is not None and isinstance(event, Done):
                    reply = {**reply, **await ending("".join(text))}
                if reply is not None:
                    await self.send_json(reply)
        except asyncio.CancelledError:
            await stream.aclose()
            await self.send_json(ws.cancelled(stream.outcome, request_id))
        except exc.LLMError as error:
            await self.send_json(ws.error(error, request_id))

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, **extra})

    async def llm_notice(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "notice", **event.get("payload", {})})
