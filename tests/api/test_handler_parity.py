"""The opt-in handlers (``ThreadReusingASGIHandler``, ``ThreadedMiddlewareASGIHandler``)
behave as Django's own ``ASGIHandler``.

The same requests go through each (built from the same settings, called as an ASGI
server calls them): the same status, headers and body; the project's middleware and
request signals run for each request, off the event loop, once; no two requests in
flight ever share a thread; a client that goes away cancels the async view; and the
opt-in handlers keep their threads.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest
from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application as django_application
from django.core.signals import request_finished, request_started
from django.urls import path as route
from rest_framework.authtoken.models import Token

from llm_integration.asgi import (
    ThreadedMiddlewareASGIHandler,
    ThreadReusingASGIHandler,
    get_asgi_application,
)
from tests.factories import ModelAliasFactory, PlanFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def reusing_application():
    return get_asgi_application(ThreadReusingASGIHandler)


def threaded_middleware_application():
    return get_asgi_application(ThreadedMiddlewareASGIHandler)


OPT_IN = [reusing_application, threaded_middleware_application]
EVERY = [django_application, *OPT_IN]


@pytest.fixture
def token(db):
    ModelAliasFactory(slug="default", provider=ProviderFactory(name="dummy", kind="dummy"))
    PlanFactory(slug="free")
    return Token.objects.create(user=UserFactory(username="parity")).key


def http_scope(method: str, path: str, headers=()) -> dict:
    """An HTTP request's ASGI scope, as a server makes it."""
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            *((k.encode(), v.encode()) for k, v in headers),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def exchange(app, method: str, path: str, body: bytes = b"", headers=()) -> dict:
    """One request through an ASGI app, as a server makes it."""
    scope = http_scope(method, path, [("content-length", str(len(body))), *headers])
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    done.set()
    return {
        "status": sent[0]["status"],
        "headers": sorted((k.decode().lower(), v.decode()) for k, v in sent[0]["headers"]),
        "body": b"".join(m.get("body", b"") for m in sent[1:]),
    }


VARYING = re.compile(
    rb"req_[0-9a-f]{32}|\"created\":\d+|name=\"csrfmiddlewaretoken\" value=\"[^\"]+\""
)


def comparable(response: dict) -> dict:
    """A response without what differs between any two requests (ids, clocks — `Date`,
    `Expires`, `created` —, cookies)."""
    headers = [
        (k, v if k not in ("x-request-id", "set-cookie", "date", "expires") else "…")
        for k, v in response["headers"]
    ]
    return {**response, "headers": headers, "body": VARYING.sub(b"...", response["body"])}


def requests_for(token: str) -> list[tuple]:
    bearer = (("authorization", f"Bearer {token}"), ("content-type", "application/json"))
    chat = json.dumps({"message": "Hello there"}).encode()
    stream = json.dumps({"message": "Hi", "stream": True}).encode()
    completion = json.dumps(
        {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    return [
        ("GET", "/api/v1/models", b"", bearer),
        ("POST", "/api/v1/chat", chat, bearer),
        ("POST", "/api/v1/chat", stream, bearer),
        ("POST", "/v1/chat/completions", completion, bearer),
        ("POST", "/api/v1/chat", b'{"message": ', bearer),
        ("POST", "/api/v1/chat", chat, (("content-type", "application/json"),)),
        ("GET", "/api/v1/usage", b"", bearer),
        ("GET", "/admin/login/", b"", ()),
        ("GET", "/no/such/page", b"", ()),
        ("GET", "/metrics", b"", ()),
        ("DELETE", "/api/v1/models", b"", bearer),
    ]


@pytest.mark.parametrize("factory", OPT_IN)
async def test_the_same_requests_get_the_same_answers(token, factory):
    stock = await sync_to_async(django_application)()
    opted = await sync_to_async(factory)()
    for method, path, body, headers in requests_for(token):
        expected = comparable(await exchange(stock, method, path, body, headers))
        got = comparable(await exchange(opted, method, path, body, headers))
        assert got == expected, (method, path)


@pytest.mark.parametrize("factory", EVERY)
async def test_request_signals_run_once_per_request_off_the_event_loop(token, factory):
    app = await sync_to_async(factory)()
    seen: list[tuple[str, str]] = []

    def started(sender, scope=None, **kwargs):
        seen.append(("started", threading.current_thread().name))

    def finished(sender, **kwargs):
        seen.append(("finished", threading.current_thread().name))

    request_started.connect(started)
    request_finished.connect(finished)
    try:
        for method, path, body, headers in requests_for(token)[:4]:
            await exchange(app, method, path, body, headers)
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    assert [kind for kind, _ in seen] == ["started", "finished"] * 4
    loop_thread = threading.current_thread().name
    assert all(name != loop_thread for _, name in seen)
    # Each request's two signals in the thread its synchronous code runs in.
    assert all(seen[i][1] == seen[i + 1][1] for i in range(0, 8, 2))


class ThreadLog:
    """A host's synchronous middleware that notes which thread each request used when."""

    entries: list[tuple[str, str, str]] = []

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        name = threading.current_thread().name
        self.entries.append(("in", name, request.path))
        response = self.get_response(request)
        self.entries.append(("out", threading.current_thread().name, request.path))
        return response


@pytest.mark.parametrize("factory", EVERY)
async def test_requests_in_flight_never_share_a_thread(token, settings, factory):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.ThreadLog"]
    ThreadLog.entries = []
    app = await sync_to_async(factory)()
    bearer = (("authorization", f"Bearer {token}"),)
    await asyncio.gather(*(exchange(app, "GET", "/api/v1/models", b"", bearer) for _ in range(8)))
    await asyncio.gather(*(exchange(app, "GET", "/api/v1/models", b"", bearer) for _ in range(8)))
    busy: dict[str, int] = {}
    for kind, name, _path in ThreadLog.entries:
        busy[name] = busy.get(name, 0) + (1 if kind == "in" else -1)
        assert busy[name] <= 1, f"two requests at once in {name}"
    assert len(ThreadLog.entries) == 32
    loop_thread = threading.current_thread().name
    assert all(name != loop_thread for _, name, _ in ThreadLog.entries)


class Waiting:
    """An async view that waits until cancelled, and says that it was."""

    started: asyncio.Event
    cancelled = False

    @classmethod
    async def view(cls, request):
        cls.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cls.cancelled = True
            raise


urlpatterns = [route("waiting", Waiting.view)]


@pytest.mark.parametrize("factory", EVERY)
async def test_a_client_that_goes_away_cancels_the_async_view(settings, factory):
    settings.ROOT_URLCONF = __name__
    Waiting.started, Waiting.cancelled = asyncio.Event(), False
    app = await sync_to_async(factory)()
    scope = http_scope("GET", "/waiting")
    received = 0

    async def receive():
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await Waiting.started.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        raise AssertionError(f"nothing is sent to a client that went away: {message}")

    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    assert Waiting.cancelled


@pytest.mark.parametrize("factory", OPT_IN)
async def test_the_opt_in_handlers_keep_their_threads(token, factory):
    app = await sync_to_async(factory)()
    assert isinstance(app, ThreadReusingASGIHandler)
    bearer = (("authorization", f"Bearer {token}"),)
    for _ in range(20):
        assert (await exchange(app, "GET", "/api/v1/models", b"", bearer))["status"] == 200
    assert app.threads.made == 1  # one request at a time: one thread, kept
    await asyncio.gather(*(exchange(app, "GET", "/api/v1/models", b"", bearer) for _ in range(5)))
    assert app.threads.made <= 5 and len(app.threads.idle) == app.threads.made


@pytest.mark.parametrize("factory", OPT_IN)
async def test_websocket_scopes_are_refused_as_django_refuses_them(factory):
    app = await sync_to_async(factory)()
    with pytest.raises(ValueError, match="websocket"):
        await app({"type": "websocket"}, None, None)
