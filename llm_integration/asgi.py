"""An optional fast lane for token-authenticated API calls.

Django's built-in middleware is synchronous: under ASGI each one hops to a thread and
back, twice per request. API clients that send ``Authorization: Token/Bearer`` need
none of it (no session, no CSRF, no messages), so ``api_fast_lane`` serves them with a
Django handler that has only ``API_MIDDLEWARE`` (by default none) and leaves every other
request (browsers, admin, the chat page) to the full application.

    # asgi.py
    django_app = get_asgi_application()
    http_app = api_fast_lane(django_app)        # /api/ and /v1/ with Authorization

Django's handler also hops to a thread (a new one per request, in its own
``ThreadSensitiveContext``) to send ``request_started`` and to close the response
(``request_finished``). The receivers Django itself connects there only tidy up
database connections, caches and the urlconf of the request's own context, and the
gateway's views never query from it (their queries run in the gateway's database
threads); while those are the only receivers, the lean handler calls them in place.
A project that connects its own receivers gets Django's behaviour unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, reset_queries
from django.urls import set_script_prefix

#: Django's own per-request housekeeping: cheap, and only about the request's context.
HOUSEKEEPING = frozenset({reset_queries, close_old_connections, close_caches, reset_urlconf})


def _housekeeping_only(signal, sender) -> bool:
    sync_receivers, async_receivers = signal._live_receivers(sender)
    return not async_receivers and all(r in HOUSEKEEPING for r in sync_receivers)


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(receive):`` as Django's handler does it, in one task:
    a client that disconnects while the block runs cancels it, and the block ends
    quietly; a cancellation from elsewhere (the server stopping) goes on as it came."""

    def __init__(self, receive) -> None:
        self.receive = receive

    async def __aenter__(self):
        self.task = asyncio.current_task()
        self.running, self.aborted = True, False
        self.listener = asyncio.create_task(self._listen())
        return self

    async def _listen(self) -> None:
        message = await self.receive()
        if message["type"] == "http.disconnect" and self.running:
            self.aborted = True
            self.task.cancel()

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        self.running = False
        self.listener.cancel()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self.aborted:
            self.task.uncancel()
            return True
        return False


class APIHandler(ASGIHandler):
    """Django's ASGI handler with its own, short middleware list."""

    def __init__(self, middleware: Iterable[str] = ()) -> None:
        self.api_middleware = list(middleware)
        self._resolved: dict = {}
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; this runs once, at start-up.
        saved = settings.MIDDLEWARE
        settings.MIDDLEWARE = self.api_middleware
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = saved

    def resolve_request(self, request):
        """Django's URL resolution, remembered per path (the API has a handful)."""
        if getattr(request, "urlconf", None) is not None:
            return super().resolve_request(request)
        match = self._resolved.get(request.path_info)
        if match is None:
            match = super().resolve_request(request)
            if len(self._resolved) < 1024:
                self._resolved[request.path_info] = match
        request.resolver_match = match
        return match

    def _lean(self) -> bool:
        return _housekeeping_only(signals.request_started, type(self)) and _housekeeping_only(
            signals.request_finished, type(self)
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"{type(self).__name__} serves HTTP only, not {scope['type']}.")
        if self._lean():
            await self.handle_lean(scope, receive, send)
        else:
            async with ThreadSensitiveContext():
                await self.handle(scope, receive, send)

    async def handle_lean(self, scope, receive, send):
        """Django's ``ASGIHandler.handle`` with the housekeeping signals sent in place."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=type(self), scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        # As Django does, a client that disconnects cancels the view; here the view runs
        # in this task and a listener cancels it (one task per request, not two).
        response = None
        async with CancelOnDisconnect(receive):
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        if response is None:
            signals.request_finished.send(sender=type(self))
        elif all(
            getattr(closer, "__self__", None) is request
            for closer in getattr(response, "_resource_closers", ())
        ):
            # Only the request's own body to close (in memory, or a temporary file) and
            # the signal's housekeeping: no thread for that.
            response.close()
        else:
            await sync_to_async(response.close)()
        body_file.close()


class ChatLane:
    """``POST /api/v1/chat`` and ``POST /v1/chat/completions`` from a caller whose token
    is in the token cache, answered straight from the ASGI messages: no Django request
    or response objects, no URL resolution, no DRF dispatch. The answers are the views'
    own (``chat_reply`` and ``completion_reply``: the same checks, the same error
    envelope, the same JSON rendering); anything else (another path, a token not yet
    cached, a body that is not JSON or too large, a project with its own request signal
    receivers, fast-lane middleware or DRF throttles) goes on to Django with the body as
    it came.
    """

    def __init__(self, inner, *, paths: dict[str, str] | None = None) -> None:
        self.inner = inner
        self.answered = 0  # requests this lane answered itself
        #: path -> "rest" or "openai" (which view's answer and error shape).
        self.paths = paths or {"/api/v1/chat": "rest", "/v1/chat/completions": "openai"}

    async def __call__(self, scope, receive, send):
        kind = self.paths.get(scope["path"])
        user = self._user(scope) if kind and scope["method"] == "POST" else None
        if user is None or self.inner.api_middleware or not self.inner._lean() or _throttled():
            return await self.inner(scope, receive, send)
        limit = int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)
        body, more, complete = await _read_body(receive, limit)
        if not complete:  # too large, or the client left: Django answers as it does
            return await self.inner(scope, _replay(body, more, receive), send)
        self.answered += 1
        await self.answer(user, body, receive, send, openai=kind == "openai")

    @staticmethod
    def _user(scope):
        from .api.authentication import token_cache

        authorization = content_type = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
        if not authorization or not (content_type or b"").startswith(b"application/json"):
            return None
        scheme, _, key = authorization.partition(b" ")
        if scheme.lower() not in (b"token", b"bearer") or not key or b" " in key.strip():
            return None
        try:
            return token_cache.get(key.strip().decode("ascii"))
        except UnicodeDecodeError:
            return None

    async def answer(self, user, body: bytes, receive, send, *, openai: bool = False) -> None:
        from rest_framework.renderers import JSONRenderer

        from .api.errors import envelope
        from .api.openai_views import completion_reply
        from .api.views import SSE_HEADERS, chat_reply
        from .services.chat import new_request_id

        reply_to = completion_reply if openai else chat_reply
        request_id = new_request_id()
        async with CancelOnDisconnect(receive):
            try:
                reply = await reply_to(user, _parse_json(body), request_id)
            except Exception as error:
                reply, status, headers = envelope(error, request_id=request_id, openai=openai)
            else:
                status, headers = 200, {"X-Request-ID": request_id}
            if isinstance(reply, dict):
                content = JSONRenderer().render(reply)
                await send(_start(status, headers, b"application/json", len(content)))
                await send({"type": "http.response.body", "body": content})
                return
            await send(_start(200, {**SSE_HEADERS, **headers}, b"text/event-stream"))
            try:
                async for event in reply:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            finally:
                await reply.aclose()
            await send({"type": "http.response.body", "body": b""})


def _throttled() -> bool:
    """Whether the project gives the chat views DRF throttles (the lane has none)."""
    from .api.openai_views import ChatCompletionsView
    from .api.views import ChatView

    return bool(ChatView.throttle_classes or ChatCompletionsView.throttle_classes)


def _start(status: int, headers: dict, content_type: bytes, length: int | None = None) -> dict:
    raw = [(b"content-type", content_type), (b"vary", b"Accept"), (b"allow", b"POST, OPTIONS")]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    raw += [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
    return {"type": "http.response.start", "status": status, "headers": raw}


async def _read_body(receive, limit: int) -> tuple[bytes, bool, bool]:
    """(the body read, whether more of it follows, whether it all came within ``limit``
    bytes; 0: no limit)."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts), False, False
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if limit and size > limit:
            return b"".join(parts), more, False
        if not more:
            return b"".join(parts), False, True


def _replay(body: bytes, more: bool, receive):
    """``receive`` that gives back the body read so far, then goes on as before."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed


def _parse_json(body: bytes):
    """DRF's JSONParser, for one body: strict JSON, UTF-8, the same error message."""
    from rest_framework import exceptions as drf
    from rest_framework.utils import json as drf_json

    if not body:
        return {}
    try:
        return drf_json.loads(body.decode("utf-8"), parse_constant=drf_json.strict_constant)
    except ValueError as error:  # UnicodeDecodeError is a ValueError
        raise drf.ParseError(f"JSON parse error - {error}") from None


async def lifespan(scope, receive, send) -> None:
    """The ASGI lifespan protocol (Uvicorn, Hypercorn): ``"lifespan": lifespan`` in the
    project's ``ProtocolTypeRouter``. At shutdown the accounting writer commits what is
    queued, gives unused budget allowances back and sends waiting rate-limit corrections;
    servers without it (Daphne) do the same at interpreter exit."""
    from .services.ratelimit import deferred
    from .services.writer import writer

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await sync_to_async(writer.stop, thread_sensitive=False)()
            deferred.flush()
            await send({"type": "lifespan.shutdown.complete"})
            return


def api_fast_lane(
    django_app, *, prefixes: tuple[str, ...] = ("/api/", "/v1/"), middleware: Iterable[str] = ()
):
    """An ASGI app: API calls with an Authorization header go to a lean handler."""
    api_app = APIHandler(middleware)
    chat_lane = ChatLane(api_app)

    async def app(scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["path"].startswith(prefixes)
            and any(name == b"authorization" for name, _ in scope["headers"])
        ):
            return await chat_lane(scope, receive, send)
        return await django_app(scope, receive, send)

    app.chat_lane = chat_lane
    return app
