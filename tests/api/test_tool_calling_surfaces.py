"""Tool calling on the gateway's own surfaces: ``POST /api/v1/chat`` (JSON and SSE) and
the WebSocket (``tool_call`` frames), against a loopback Anthropic upstream (so the
translation runs both ways)."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from project.asgi import application
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ARGUMENTS = '{"city": "Paris"}'
CALL = {"id": "toolu_01", "name": "get_weather", "arguments": ARGUMENTS}


@pytest.fixture
def token(anthropic_fake, api_key_env):
    provider = ProviderFactory(
        kind="anthropic", base_url=anthropic_fake.base_url, api_key_env=api_key_env
    )
    ModelAliasFactory(slug="claude", provider=provider, upstream_model="claude-fake")
    return Token.objects.create(user=UserFactory()).key


def post(url: str, token: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/chat", json=body, headers={"Authorization": f"Token {token}"}, timeout=20
    )


def test_rest_json_answer_carries_tool_calls_and_takes_results_back(
    live_server_url, token, anthropic_fake
):
    anthropic_fake.push(text="", tool_calls=[CALL])
    body = {"model": "claude", "message": "Weather in Paris?", "tools": [WEATHER]}
    reply = post(live_server_url, token, body).json()
    assert reply["finish_reason"] == "tool_calls" and reply["answer"] == ""
    assert reply["tool_calls"] == [
        {
            "id": "toolu_01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ARGUMENTS},
        }
    ]

    anthropic_fake.push(text="Sunny.")
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": reply["tool_calls"]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18 and sunny"},
    ]
    reply = post(
        live_server_url, token, {"model": "claude", "messages": messages, "tools": [WEATHER]}
    ).json()
    assert reply["answer"] == "Sunny." and reply["tool_calls"] == []
    sent = anthropic_fake.requests[-1].body["messages"]
    assert sent[2]["content"][0]["type"] == "tool_result"


def test_rest_sse_streams_tool_call_events(live_server_url, token, anthropic_fake):
    anthropic_fake.push(text="", tool_calls=[CALL])
    response = post(
        live_server_url,
        token,
        {"model": "claude", "message": "Weather?", "tools": [WEATHER], "stream": True},
    )
    events = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    pieces = [e["tool_call"] for e in events if "tool_call" in e]
    assert pieces[0] == {"index": 0, "id": "toolu_01", "name": "get_weather", "arguments": ""}
    assert all(p["id"] is None and p["name"] is None for p in pieces[1:])
    assert json.loads("".join(p["arguments"] for p in pieces)) == {"city": "Paris"}
    assert events[-1]["done"] is True and events[-1]["finish_reason"] == "tool_calls"


def test_rest_refuses_a_bad_tool_by_name(live_server_url, token):
    response = post(
        live_server_url,
        token,
        {"model": "claude", "message": "x", "tools": [{"type": "function", "function": {}}]},
    )
    assert response.status_code == 400
    assert "tools[0].function.name" in response.json()["error"]["message"]
    assert not UsageRecord.objects.filter(status="ok").exists()


async def signed_in_socket(token: str) -> WebsocketCommunicator:
    """A chat socket, connected and authenticated with ``token``."""
    ws = WebsocketCommunicator(
        application, "/ws/llm/chat/", headers=[(b"origin", b"http://testserver")]
    )
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": token})
    return ws


async def test_websocket_sends_tool_call_frames(token, anthropic_fake):
    anthropic_fake.push(text="", tool_calls=[CALL])
    ws = await signed_in_socket(token)
    await ws.send_json_to(
        {
            "type": "chat",
            "model": "claude",
            "messages": [{"role": "user", "content": "Weather?"}],
            "tools": [WEATHER],
            "tool_choice": "required",
        }
    )
    assert (await ws.receive_json_from())["type"] == "start"
    frames = []
    while (frame := await ws.receive_json_from(timeout=10))["type"] == "tool_call":
        frames.append(frame)
    assert frames[0] == {
        "type": "tool_call",
        "index": 0,
        "id": "toolu_01",
        "name": "get_weather",
        "arguments": "",
    }
    assert json.loads("".join(f["arguments"] for f in frames)) == {"city": "Paris"}
    assert frame["type"] == "done" and frame["finish_reason"] == "tool_calls"
    assert anthropic_fake.requests[-1].body["tool_choice"] == {"type": "any"}
    await ws.disconnect()
    record = await sync_to_async(UsageRecord.objects.get)()
    assert record.status == "ok" and record.finish_reason == "tool_calls"


def test_rest_carries_images_to_the_upstream(live_server_url, token, anthropic_fake):
    from llm_integration.models import ModelAlias

    ModelAlias.objects.filter(slug="claude").update(supports_vision=True)
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    reply = post(
        live_server_url,
        token,
        {"model": "claude", "messages": [{"role": "user", "content": content}]},
    )
    assert reply.status_code == 200, reply.text
    sent = anthropic_fake.requests[-1].body["messages"][0]["content"]
    assert sent[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": png},
    }


async def test_a_websocket_error_names_the_field_at_fault(token):
    ws = await signed_in_socket(token)
    await ws.send_json_to(
        {
            "type": "chat",
            "model": "claude",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "bad name"}}],
        }
    )
    frames = [await ws.receive_json_from(), await ws.receive_json_from()]
    assert frames[0]["type"] == "start"
    assert frames[1]["type"] == "error" and frames[1]["param"] == "tools[0].function.name"
    await ws.disconnect()


def test_tool_definitions_are_reserved_on_budgets(live_server_url, token, anthropic_fake):
    """A budget with room for the question but not for the tools it carries refuses the
    request before the upstream: the reservation counts the tool definitions."""
    from decimal import Decimal

    from llm_integration.models import Budget, ModelAlias

    ModelAlias.objects.filter(slug="claude").update(
        input_price_per_mtok=Decimal("1000"), output_price_per_mtok=Decimal("0")
    )
    Budget.objects.create(name="tight", limit_usd=Decimal("0.5"))
    big = {
        "type": "function",
        "function": {"name": "lookup", "description": "a long description " * 200},
    }
    body = {"model": "claude", "message": "Hi", "max_tokens": 10}
    assert post(live_server_url, token, body).status_code == 200
    refused = post(live_server_url, token, {**body, "tools": [big]})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert len([r for r in anthropic_fake.requests if r.method == "POST"]) == 1
