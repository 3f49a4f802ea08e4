"""Bad input, generated: schemathesis drives the REST and /v1 APIs from their own
OpenAPI schema against a live server, and random frames hit the WebSocket. Zero
server errors; every error is the envelope."""

from __future__ import annotations

import json
import random

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token

from tests.factories import ModelAliasFactory, UserFactory

SCHEMA = schemathesis.openapi.from_dict(
    json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))
)


@pytest.fixture
def fuzz_server(live_server_url):
    ModelAliasFactory(slug="default", provider__kind="dummy")
    user = UserFactory(is_staff=True, is_superuser=True)  # the staff API is fuzzed too
    return {"url": live_server_url, "token": Token.objects.create(user=user).key}


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_never_answers_500(case, fuzz_server):
    response = case.call(
        base_url=fuzz_server["url"], headers={"Authorization": f"Token {fuzz_server['token']}"}
    )
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        body = response.json()
        if case.path.startswith("/v1/messages"):  # Anthropic's error shape
            assert body["type"] == "error" and body["request_id"]
            assert body["error"]["type"] and body["error"]["message"]
        else:
            error = body["error"]
            assert error["code"] and error["message"] and error["request_id"]


FRAMES = [
    " ",
    "null",
    "[]",
    "42",
    '"chat"',
    "{}",
    '{"type": 7}',
    '{"type": "chat"}',
    '{"type": "chat", "messages": {}}',
    '{"type": "chat", "messages": [1]}',
    '{"type": "chat", "messages": [{"role": "x", "content": "y"}]}',
    '{"type": "chat", "model": ["x"], "messages": [{"role": "user", "content": "y"}]}',
    '{"type": "chat", "temperature": "hot", "messages": [{"role": "user", "content": "y"}]}',
    '{"type": "chat", "max_tokens": -5, "messages": [{"role": "user", "content": "y"}]}',
    "\\u0000\\uffff",
    "{" * 50,
]


@pytest.mark.django_db(transaction=True)
async def test_websocket_survives_random_frames():
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator

    from project.asgi import application

    await sync_to_async(ModelAliasFactory)(slug="default", provider__kind="dummy")
    user = await sync_to_async(UserFactory)()
    token = (await Token.objects.acreate(user=user)).key
    ws = WebsocketCommunicator(
        application, "/ws/llm/chat/", headers=[(b"origin", b"http://testserver")]
    )
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": token})
    rng = random.Random(7)
    frames = FRAMES + [
        "".join(chr(rng.randint(1, 0x2FF)) for _ in range(rng.randint(1, 40))) for _ in range(30)
    ]
    # (cancel and a second auth are no-ops with no reply; they are tested elsewhere)
    for frame in frames:
        await ws.send_to(text_data=frame)
        reply = await ws.receive_json_from(timeout=5)
        if reply["type"] == "start":  # a valid chat slipped through: let it finish
            while reply["type"] not in ("done", "error"):
                reply = await ws.receive_json_from(timeout=5)
        assert reply["type"] in ("error", "done"), (frame, reply)
        if reply["type"] == "error":
            assert reply["code"] and reply["message"]
    # Still usable afterwards.
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "ok"}]})
    assert (await ws.receive_json_from(timeout=5))["type"] == "start"
    await ws.disconnect()
