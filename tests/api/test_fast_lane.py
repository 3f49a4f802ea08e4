"""The fast lane: token-authenticated API calls through a lean Django handler."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application
from django.core.signals import request_finished, request_started
from rest_framework.authtoken.models import Token

from llm_integration.asgi import api_fast_lane
from tests.factories import ModelAliasFactory, PlanFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(db):
    ModelAliasFactory(slug="default", provider=ProviderFactory(name="dummy", kind="dummy"))
    PlanFactory(slug="free")
    return Token.objects.create(user=UserFactory(username="lane")).key


async def exchange(
    app,
    path: str,
    token: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    content_type: bytes = b"application/json",
    gone: asyncio.Event | None = None,
    on_body=None,
) -> tuple[int, dict, bytes]:
    """One request through an ASGI app, as a server would make it: (status, headers,
    body). The client stays connected until ``gone`` is set."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []
    gone = gone or asyncio.Event()

    async def receive():
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if on_body and message.get("body"):
            on_body(message["body"])

    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    if not sent:
        return 0, {}, b""
    headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


async def get_json(app, path: str, token: str) -> tuple[int, object]:
    status, _headers, body = await exchange(app, path, token, method="GET")
    return status, json.loads(body)


class ThreadStarts:
    """Counts threads started while it is active."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = threading.Thread.start

        def start(thread):
            self.count += 1
            return original(thread)

        monkeypatch.setattr(threading.Thread, "start", start)


async def test_api_calls_hop_to_no_new_thread(token, monkeypatch):
    app = api_fast_lane(await sync_to_async(get_asgi_application)())
    assert (await get_json(app, "/api/v1/models", token))[0] == 200  # warm: pools started
    starts = ThreadStarts(monkeypatch)
    for _ in range(3):
        status, body = await get_json(app, "/api/v1/models", token)
        assert status == 200 and "default" in json.dumps(body)
    assert starts.count == 0  # Django's handler starts a thread per request


async def test_a_projects_own_receivers_get_djangos_handling(token, monkeypatch):
    app = api_fast_lane(await sync_to_async(get_asgi_application)())
    seen = []

    def on_started(sender, scope=None, **kwargs):
        seen.append(("started", scope["path"], threading.current_thread().name))

    def on_finished(sender, **kwargs):
        seen.append(("finished", threading.current_thread().name))

    request_started.connect(on_started)
    request_finished.connect(on_finished)
    try:
        starts = ThreadStarts(monkeypatch)
        status, _ = await get_json(app, "/api/v1/models", token)
    finally:
        request_started.disconnect(on_started)
        request_finished.disconnect(on_finished)
    assert status == 200
    assert [s[0] for s in seen] == ["started", "finished"]
    assert seen[0][1] == "/api/v1/models"
    # Sync receivers run off the event loop's thread, as Django runs them.
    assert all(s[-1] != threading.current_thread().name for s in seen)
    assert starts.count >= 1


@pytest.mark.parametrize("lane", ["django", "chat lane"])
async def test_a_client_that_goes_away_cancels_its_stream_and_it_is_recorded(token, lane):
    # The view runs in the request's task; a disconnect seen by the listener cancels it,
    # the upstream stream stops and the request is recorded as cancelled.
    from llm_integration.models import Provider, UsageRecord

    await sync_to_async(Provider.objects.filter(name="dummy").update)(options={"delay": 0.05})
    if lane == "chat lane":  # a cached token: the lane answers
        from llm_integration.api.authentication import BearerOrTokenAuthentication

        await sync_to_async(BearerOrTokenAuthentication()._lookup)(token)
    app = api_fast_lane(await sync_to_async(get_asgi_application)())
    body = json.dumps({"message": " ".join(["word"] * 200), "stream": True}).encode()
    gone = asyncio.Event()
    chunks: list[bytes] = []

    def on_body(chunk: bytes) -> None:
        chunks.append(chunk)
        if sum(b.count(b"delta") for b in chunks) >= 3:
            gone.set()  # the client hangs up after three tokens

    await exchange(app, "/api/v1/chat", token, body, gone=gone, on_body=on_body)
    record = await sync_to_async(UsageRecord.objects.get)()
    assert record.status == UsageRecord.Status.CANCELLED and record.streamed
    assert 3 <= record.completion_tokens < 150  # stopped early, what was consumed


PARITY_BODIES = [
    b'{"message": "Hello there"}',
    b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}',
    b'{"message": "Hi", "stream": true}',
    b'{"message": "Hi", "model": "nope"}',
    b'{"message": "Hi", "temperature": "hot"}',
    b'{"message": "Hi", "temperature": NaN}',
    b'{"message": ',
    b"[1, 2]",
    b"",
    b'{"message": "Hi", "messages": []}',
    '{"message": "caf\u00e9"}'.encode("latin-1"),
]


OPENAI_BODIES = [
    b'{"model": "default", "messages": [{"role": "user", "content": "Hi"}]}',
    b'{"model": "default", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}',
    b'{"model": "default", "stream": true, "stream_options": {"include_usage": true},'
    b' "messages": [{"role": "developer", "content": "Be brief"},'
    b' {"role": "user", "content": "Hi"}]}',
    b'{"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}',
    b'{"model": "default", "messages": []}',
    b'{"model": "default", "messages": [{"role": "robot", "content": "Hi"}]}',
    b'{"model": "default", "n": 2, "messages": [{"role": "user", "content": "Hi"}]}',
    b"{oops",
]
CASES = [("/api/v1/chat", body) for body in PARITY_BODIES] + [
    ("/v1/chat/completions", body) for body in OPENAI_BODIES
]


@pytest.mark.parametrize("path,body", CASES)
async def test_the_chat_lane_answers_as_the_drf_view_does(token, path, body):
    from llm_integration.api.authentication import BearerOrTokenAuthentication

    app = api_fast_lane(await sync_to_async(get_asgi_application)())
    lane = app.chat_lane
    # Django's way first (it also puts the token in the cache), then the lane's.
    assert lane._user({"path": path, "headers": []}) is None
    django_status, django_headers, django_body = await exchange(lane.inner, path, token, body)
    await sync_to_async(BearerOrTokenAuthentication()._lookup)(token)
    lane_status, lane_headers, lane_body = await exchange(app, path, token, body)
    assert lane_status == django_status
    for name in ("content-type", "retry-after", "cache-control"):
        assert lane_headers.get(name) == django_headers.get(name), name
    assert lane_headers["x-request-id"] != django_headers["x-request-id"]

    def comparable(raw: bytes, headers):
        if headers["content-type"].startswith("text/event-stream"):
            events = [e[6:] for e in raw.decode().split("\n\n") if e]
            return [anonymous(json.loads(e)) if e != "[DONE]" else e for e in events]
        return anonymous(json.loads(raw))

    def anonymous(data):  # ids and clocks differ between two requests
        for key in ("request_id", "id", "created"):
            data.pop(key, None)
        if isinstance(data.get("error"), dict):
            data["error"].pop("request_id", None)
        return data

    assert comparable(lane_body, lane_headers) == comparable(django_body, django_headers)


async def test_the_chat_lane_takes_cached_tokens_only_and_hands_on_the_rest(token, monkeypatch):
    app = api_fast_lane(await sync_to_async(get_asgi_application)())
    body = b'{"message": "Hi"}'
    assert (await exchange(app, "/api/v1/chat", token, body))[0] == 200  # cache cold
    assert (await exchange(app, "/api/v1/chat", token, body))[0] == 200  # now cached
    assert (await exchange(app, "/api/v1/chat", "wrong", body))[0] == 401
    status, _, _ = await exchange(
        app, "/api/v1/chat", token, b"message=Hi", content_type=b"text/plain"
    )
    assert status == 415  # DRF's answer to a body it cannot parse
    assert app.chat_lane.answered == 1

    from rest_framework.throttling import BaseThrottle

    from llm_integration.api.views import ChatView

    throttled = []

    class Counting(BaseThrottle):
        def allow_request(self, request, view):
            throttled.append(request.path)
            return True

    app.chat_lane.inner.api_middleware = ["a.middleware"]  # the lane has none: Django's way
    assert (await exchange(app, "/api/v1/chat", token, body))[0] == 200
    assert app.chat_lane.answered == 1
    app.chat_lane.inner.api_middleware = []

    monkeypatch.setattr(ChatView, "throttle_classes", [Counting])
    assert (await exchange(app, "/api/v1/chat", token, body))[0] == 200
    # A project's DRF throttles: Django's way, where they apply.
    assert app.chat_lane.answered == 1 and throttled == ["/api/v1/chat"]


async def test_a_projects_drf_throttles_apply_to_the_async_views(token, monkeypatch):
    # Sync DRF throttles used to reach adrf's check, which calls async_to_sync from the
    # event loop: every throttled project got 500s.
    from rest_framework.throttling import BaseThrottle

    from llm_integration.api.views import ChatView

    class Refusing(BaseThrottle):
        def allow_request(self, request, view):
            return False

        def wait(self):
            return 7

    monkeypatch.setattr(ChatView, "throttle_classes", [Refusing])
    app = api_fast_lane(await sync_to_async(get_asgi_application)())
    status, headers, body = await exchange(app, "/api/v1/chat", token, b'{"message": "Hi"}')
    assert (status, headers["retry-after"]) == (429, "7")
    assert json.loads(body)["error"]["code"] == "rate_limited"
