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
        current = asyncio.current_task()
        running, aborted = True, False

        async def listen():
            nonlocal aborted
            try:
                await self.listen_for_disconnect(receive)
            except RequestAborted:
                if running:
                    aborted = True
                    current.cancel()

        listener = asyncio.create_task(listen())
        response = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not aborted:
                raise  # the server is stopping: not ours to swallow
            current.uncancel()
        finally:
            running = False
            listener.cancel()
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


def api_fast_lane(
    django_app, *, prefixes: tuple[str, ...] = ("/api/", "/v1/"), middleware: Iterable[str] = ()
):
    """An ASGI app: API calls with an Authorization header go to a lean handler."""
    api_app = APIHandler(middleware)

    async def app(scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["path"].startswith(prefixes)
            and any(name == b"authorization" for name, _ in scope["headers"])
        ):
            return await api_app(scope, receive, send)
        return await django_app(scope, receive, send)

    return app
