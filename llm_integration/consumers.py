"""WebSocket chat (CONTRACT §5): ``ws/llm/chat/``.

Auth is the session cookie, or a DRF token in the first frame
``{"type": "auth", "token": "..."}``; otherwise the socket closes with 4401.
Client frames: ``chat`` and ``cancel``. Server frames: ``start``, ``token`` (one per
upstream chunk), ``done`` and ``error``. One chat at a time per socket; a malformed
frame gets an ``error`` frame and the socket stays usable.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import exceptions as exc
from .services.chat import Delta, astream_chat, new_request_id
from .services.usage import format_money

CLOSE_UNAUTHENTICATED = 4401


@database_sync_to_async
def user_for_token(key: str):
    from rest_framework.authtoken.models import Token

    try:
        token = Token.objects.select_related("user").get(key=key)
    except (Token.DoesNotExist, ValueError):
        return None
    return token.user if token.user.is_active else None


def usage_payload(done) -> dict[str, Any]:
    return {
        "prompt_tokens": done.usage.prompt_tokens,
        "completion_tokens": done.usage.completion_tokens,
        "total_tokens": done.usage.total_tokens,
        "cost_usd": format_money(done.cost_usd),
    }


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        self.user = user if getattr(user, "is_authenticated", False) else None
        self.task: asyncio.Task | None = None
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        try:
            frame = json.loads(text_data or "")
        except ValueError:
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
            if kind == "auth" and isinstance(content.get("token"), str):
                self.user = await user_for_token(content["token"])
            if self.user is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if kind == "chat":
            await self.start_chat(content)
        elif kind == "cancel":
            if self.task is not None and not self.task.done():
                self.task.cancel()
        elif kind == "auth":
            return  # already authenticated
        else:
            await self.send_error("invalid_request", f"Unknown frame type {kind!r}.")

    async def start_chat(self, frame: dict[str, Any]) -> None:
        if self.task is not None and not self.task.done():
            await self.send_error("invalid_request", "A chat is already running on this socket.")
            return
        messages = frame.get("messages")
        if messages is None and isinstance(frame.get("message"), str):
            messages = [{"role": "user", "content": frame["message"]}]
        if not isinstance(messages, list) or not messages:
            await self.send_error("invalid_request", 'Send "messages": a non-empty list.')
            return
        self.task = asyncio.create_task(self.run_chat(frame, messages))

    async def run_chat(self, frame: dict[str, Any], messages: list[Any]) -> None:
        request_id = new_request_id()
        await self.send_json({"type": "start", "request_id": request_id})
        stream = astream_chat(
            user=self.user,
            model=frame.get("model") or None,
            messages=messages,
            temperature=frame.get("temperature"),
            max_tokens=frame.get("max_tokens"),
            request_id=request_id,
        )
        try:
            async for event in stream:
                if isinstance(event, Delta):
                    await self.send_json({"type": "token", "content": event.text})
                else:
                    await self.send_json(
                        {
                            "type": "done",
                            "request_id": request_id,
                            "usage": usage_payload(event),
                            "finish_reason": event.finish_reason,
                        }
                    )
        except asyncio.CancelledError:
            await stream.aclose()
            await self.send_json(
                {
                    "type": "done",
                    "request_id": request_id,
                    "usage": None,
                    "finish_reason": "cancelled",
                }
            )
        except exc.LLMError as error:
            await self.send_error(error.code, error.message, request_id=request_id)

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, **extra})
