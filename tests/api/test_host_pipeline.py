"""The host project's pipeline applies to the app's views: its middleware, ALLOWED_HOSTS,
SecurityMiddleware and DRF's configured classes, for token and session callers alike.

Every request here goes through a real server (uvicorn on loopback) into Django's own
ASGI handler and into the one the demo opts into, built from the settings of the test.
"""

from __future__ import annotations

import json
import secrets
import time

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.asgi import get_asgi_application as django_application
from django.http import HttpResponseForbidden
from django.test import Client
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from llm_integration.api.openai_views import ChatCompletionsView
from llm_integration.api.views import ChatView, ModelListView
from llm_integration.asgi import get_asgi_application as threaded_middleware_application
from llm_integration.models import Provider, UsageRecord
from project.middleware import SERVED_BY
from tests.conftest import ServedASGI
from tests.factories import ModelAliasFactory, PlanFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

REFUSAL = b"refused by the host"


class RefuseEverything:
    """A host's middleware that answers every request itself."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return HttpResponseForbidden(REFUSAL)


CALLS = [
    ("POST", "/api/v1/chat", {"message": "Hi"}),
    ("POST", "/api/v1/chat", {"message": "Hi", "stream": True}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "default", "messages": [{"role": "user", "content": "Hi"}]},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "default", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    ),
    ("GET", "/api/v1/models", None),
    ("GET", "/api/v1/usage", None),
]
CALL_IDS = ["chat", "chat-sse", "completions", "completions-sse", "models", "usage"]


@pytest.fixture(
    params=[django_application, threaded_middleware_application],
    ids=["django-handler", "threaded-middleware"],
)
def asgi_app(request):
    """Builds the HTTP application (after the test has changed its settings)."""
    return request.param


@pytest.fixture
def caller():
    ModelAliasFactory(slug="default", provider=ProviderFactory(name="dummy", kind="dummy"))
    PlanFactory(slug="free")
    user = UserFactory(username="host-caller")
    return user, Token.objects.create(user=user).key


def credentials(kind: str, user, token: str) -> dict:
    """Headers and cookies of a token caller, or of a logged-in browser (session + CSRF)."""
    if kind == "token":
        return {"headers": {"Authorization": f"Bearer {token}"}}
    client = Client()
    client.force_login(user)
    csrf = secrets.token_hex(16)  # an unmasked 32-character secret: cookie and header
    return {
        "headers": {"X-CSRFToken": csrf, "Referer": "http://127.0.0.1/"},
        "cookies": {
            django_settings.SESSION_COOKIE_NAME: client.cookies[
                django_settings.SESSION_COOKIE_NAME
            ].value,
            django_settings.CSRF_COOKIE_NAME: csrf,
        },
    }


def call(url: str, method: str, path: str, body, **kwargs) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=20, cookies=kwargs.pop("cookies", None)) as http:
        return http.request(method, path, json=body, **kwargs)


@pytest.mark.parametrize("kind", ["token", "session"])
@pytest.mark.parametrize("method,path,body", CALLS, ids=CALL_IDS)
def test_a_host_middleware_that_refuses_refuses_the_apps_views(
    asgi_app, caller, settings, kind, method, path, body
):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.RefuseEverything"]
    with ServedASGI(asgi_app()) as url:
        response = call(url, method, path, body, **credentials(kind, *caller))
    assert (response.status_code, response.content) == (403, REFUSAL)
    assert not UsageRecord.objects.exists()  # never reached the gateway


@pytest.mark.parametrize("kind", ["token", "session"])
@pytest.mark.parametrize("method,path,body", CALLS, ids=CALL_IDS)
def test_a_host_middleware_header_is_on_every_answer(
    asgi_app, caller, settings, kind, method, path, body
):
    assert "project.middleware.ServedByMiddleware" in settings.MIDDLEWARE
    with ServedASGI(asgi_app()) as url:
        response = call(url, method, path, body, **credentials(kind, *caller))
        anonymous = call(url, method, path, body)
    assert response.status_code == 200, response.text
    assert response.headers["X-Served-By"] == SERVED_BY
    if body and body.get("stream"):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert b"[DONE]" in response.content or b'"done":true' in response.content
    # The refusals of the app's own views pass the host's middleware too.
    assert anonymous.status_code == 401
    assert anonymous.headers["X-Served-By"] == SERVED_BY


@pytest.fixture
def production(settings):
    """The production profile of project/settings.py (DEBUG=False)."""
    settings.DEBUG = False
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    return settings


@pytest.mark.parametrize("method,path,body", CALLS, ids=CALL_IDS)
def test_the_production_profile_applies_to_token_calls(
    asgi_app, caller, production, method, path, body
):
    _user, token = caller
    auth = {"Authorization": f"Bearer {token}"}
    with ServedASGI(asgi_app()) as url:
        plain = call(url, method, path, body, headers=auth)
        secure = call(url, method, path, body, headers={**auth, "X-Forwarded-Proto": "https"})
        foreign = call(
            url,
            method,
            path,
            body,
            headers={**auth, "X-Forwarded-Proto": "https", "Host": "evil.example"},
        )
        # What Django gives any other view of the project, for comparison.
        admin_plain = call(url, "GET", "/admin/login/", None)
        admin_foreign = call(
            url,
            "GET",
            "/admin/login/",
            None,
            headers={"X-Forwarded-Proto": "https", "Host": "evil.example"},
        )
    assert plain.status_code == admin_plain.status_code == 301
    assert plain.headers["Location"] == f"https://127.0.0.1:{url.rsplit(':', 1)[1]}{path}"
    assert secure.status_code == 200
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert foreign.status_code == admin_foreign.status_code == 400
    assert UsageRecord.objects.count() == (1 if path.endswith(("chat", "completions")) else 0)


def test_drf_configured_authentication_classes_are_the_ones_used(asgi_app, caller, monkeypatch):
    # A project whose DRF authentication is plain TokenAuthentication: "Bearer" is
    # not one of its schemes, "Token" is.
    monkeypatch.setattr(ModelListView, "authentication_classes", [TokenAuthentication])
    _user, token = caller
    with ServedASGI(asgi_app()) as url:
        bearer = call(
            url, "GET", "/api/v1/models", None, headers={"Authorization": f"Bearer {token}"}
        )
        plain = call(
            url, "GET", "/api/v1/models", None, headers={"Authorization": f"Token {token}"}
        )
    assert bearer.status_code == 401
    assert plain.status_code == 200 and plain.json()[0]["id"] == "default"


class HostPermission(BasePermission):
    """A host's permission that reads the database (so it must not run on the loop)."""

    message = "Only users with a profile may call the gateway."

    def has_permission(self, request, view):
        return Token.objects.filter(user=request.user, user__is_staff=True).exists()


def test_drf_configured_permission_classes_apply_with_authentication(asgi_app, caller, monkeypatch):
    monkeypatch.setattr(ChatView, "permission_classes", [HostPermission])
    user, token = caller
    auth = {"Authorization": f"Bearer {token}"}
    with ServedASGI(asgi_app()) as url:
        refused = call(url, "POST", "/api/v1/chat", {"message": "Hi"}, headers=auth)
        anonymous = call(url, "POST", "/api/v1/chat", {"message": "Hi"})
        user.is_staff = True
        user.save()
        allowed = call(url, "POST", "/api/v1/chat", {"message": "Hi"}, headers=auth)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == HostPermission.message
    assert anonymous.status_code == 401  # the gateway's own IsAuthenticated still holds
    assert allowed.status_code == 200


class Refusing(BaseThrottle):
    def allow_request(self, request, view):
        return False

    def wait(self):
        return 7


@pytest.mark.parametrize("view", [ChatView, ChatCompletionsView])
def test_drf_throttles_apply_to_the_async_views(asgi_app, caller, monkeypatch, view):
    monkeypatch.setattr(view, "throttle_classes", [Refusing])
    _user, token = caller
    path, body = ("/api/v1/chat", {"message": "Hi"}) if view is ChatView else CALLS[2][1:]
    with ServedASGI(asgi_app()) as url:
        response = call(url, "POST", path, body, headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    assert response.json()["error"]["code"] == "rate_limited"


def test_a_client_that_goes_away_cancels_its_stream_and_it_is_recorded(asgi_app, caller):
    # A disconnect seen by Django's handler cancels the view; the upstream stream stops
    # and the request is recorded as cancelled, with what it consumed.
    Provider.objects.filter(name="dummy").update(options={"delay": 0.05})
    _user, token = caller
    body = {"message": " ".join(["word"] * 200), "stream": True}
    with ServedASGI(asgi_app()) as url:
        with httpx.Client(base_url=url, timeout=20) as http:
            headers = {"Authorization": f"Bearer {token}"}
            with http.stream("POST", "/api/v1/chat", json=body, headers=headers) as response:
                deltas = 0
                for line in response.iter_lines():
                    deltas += line.startswith("data: ") and "delta" in line
                    if deltas >= 3:
                        break  # the client hangs up after three tokens
        deadline = time.monotonic() + 10
        while not UsageRecord.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    record = UsageRecord.objects.get()
    assert record.status == UsageRecord.Status.CANCELLED and record.streamed
    assert 3 <= record.completion_tokens < 150  # stopped early: what was consumed


def test_sse_answers_through_the_host_middleware_are_whole(asgi_app, caller):
    _user, token = caller
    with ServedASGI(asgi_app()) as url:
        response = call(
            url,
            "POST",
            "/api/v1/chat",
            {"message": "Hi there", "stream": True},
            headers={"Authorization": f"Bearer {token}"},
        )
    events = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: ")]
    assert "".join(e.get("delta", "") for e in events).endswith("You said: Hi there")
    assert events[-1]["done"] is True and events[-1]["usage"]["total_tokens"] > 0
