"""An optional fast lane for token-authenticated API calls.

Django's built-in middleware is synchronous: under ASGI each one hops to a thread and
back, twice per request. API clients that send ``Authorization: Token/Bearer`` need
none of it (no session, no CSRF, no messages), so ``api_fast_lane`` serves them with a
Django handler that has only ``API_MIDDLEWARE`` (by default none) and leaves every other
request (browsers, admin, the chat page) to the full application.

    # asgi.py
    django_app = get_asgi_application()
    http_app = api_fast_lane(django_app)        # /api/ and /v1/ with Authorization
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler


class APIHandler(ASGIHandler):
    """Django's ASGI handler with its own, short middleware list."""

    def __init__(self, middleware: Iterable[str] = ()) -> None:
        self.api_middleware = list(middleware)
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; this runs once, at start-up.
        saved = settings.MIDDLEWARE
        settings.MIDDLEWARE = self.api_middleware
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = saved


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
