"""Bad input gets a clear error and loses nothing: invalid Unicode and deeply nested
JSON are 400s on REST, ``/v1`` and the WebSocket (nothing charged, the socket still
usable); ``/v1`` checks types as the REST API does; unknown API paths answer 404 in
the envelope."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from llm_integration.models import UsageRecord
from tests.api.test_rest_api import client_for, error_of, rows  # noqa: F401 (fixture)
from tests.test_consumers import communicator

pytestmark = pytest.mark.django_db(transaction=True)

SURROGATE_CHAT = b'{"message": "a\\ud800b"}'
SURROGATE_COMPLETION = (
    b'{"model": "default", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
)
# Deep enough for RecursionError in json on every Python (3.13 parses 1,000 levels).
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"message": ' + DEEP + b"}"


async def post(token, path: str, body: bytes):
    return await client_for(token).post(path, body, content_type="application/json")


async def charged() -> list:
    return [r.cost_usd async for r in UsageRecord.objects.exclude(cost_usd=0)]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/v1/chat", SURROGATE_CHAT),
        ("/v1/chat/completions", SURROGATE_COMPLETION),
        ("/api/v1/chat", DEEP),
        ("/api/v1/chat", DEEP_OBJECT),
        ("/v1/chat/completions", DEEP),
    ],
    ids=["rest-surrogate", "v1-surrogate", "rest-deep", "rest-deep-object", "v1-deep"],
)
async def test_invalid_unicode_and_deep_json_are_400s_and_cost_nothing(rows, path, body):  # noqa: F811
    response = await post(rows["token"], path, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert "Unicode" in error["message"] or "nested too deeply" in error["message"]
    assert await charged() == []


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_tokens", "100"),
        ("max_completion_tokens", "5"),
        ("temperature", "0.5"),
        ("stream", "true"),
    ],
)
async def test_v1_checks_types_as_the_rest_api_does(rows, field, value):  # noqa: F811
    body = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], field: value}
    response = await post(rows["token"], "/v1/chat/completions", json.dumps(body).encode())
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]
    rest = await post(
        rows["token"], "/api/v1/chat", json.dumps({"message": "Hi", "max_tokens": "100"}).encode()
    )
    assert rest.status_code == 400


@pytest.mark.parametrize(
    "path,openai",
    [
        ("/api/v1/nothing", False),
        ("/api/other", False),
        ("/api/v1/models/", False),
        ("/v1/nope", True),
    ],
)
async def test_unknown_api_paths_answer_404_in_the_envelope(rows, path, openai):  # noqa: F811
    response = await client_for(rows["token"]).get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "not_found" and error["request_id"] == response["X-Request-ID"]
    assert ("param" in error) is openai


async def test_a_websocket_survives_deep_json_and_invalid_unicode(rows):  # noqa: F811
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": rows["token"]})
    await ws.send_to(text_data="[" * 100_000 + "]" * 100_000)
    assert (await ws.receive_json_from())["type"] == "error"
    await ws.send_to(
        text_data='{"type": "chat", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    )
    frames = [await ws.receive_json_from(), await ws.receive_json_from()]
    assert frames[-1]["type"] == "error" and "Unicode" in frames[-1]["message"]
    # Still usable.
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "ok?"}]})
    kinds = []
    while (frame := await ws.receive_json_from())["type"] != "done":
        kinds.append(frame["type"])
    assert kinds[0] == "start" and "token" in kinds
    assert await charged() != []  # only the last chat cost anything
    assert await sync_to_async(UsageRecord.objects.filter(cost_usd__gt=0).count)() == 1
    await ws.disconnect()


async def test_rest_refuses_a_field_it_does_not_carry_by_name(rows):  # noqa: F811
    for body, field in (
        ({"message": "Hi", "logit_bias": {"1": 5}}, "logit_bias"),
        ({"messages": [{"role": "user", "content": "Hi", "name": "al"}]}, "messages[0].name"),
    ):
        response = await post(rows["token"], "/api/v1/chat", json.dumps(body).encode())
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "unsupported_parameter" and field in error["message"]
    assert await charged() == []


async def test_a_websocket_chat_refuses_a_field_it_does_not_carry_by_name(rows):  # noqa: F811
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": rows["token"]})
    await ws.send_json_to(
        {"type": "chat", "messages": [{"role": "user", "content": "Hi"}], "system_prompt": "x"}
    )
    frame = await ws.receive_json_from()
    assert frame["type"] == "error" and frame["code"] == "unsupported_parameter"
    assert "system_prompt" in frame["message"]
    await ws.send_json_to(
        {"type": "chat", "messages": [{"role": "user", "content": "Hi", "name": "al"}]}
    )
    frames = [await ws.receive_json_from(), await ws.receive_json_from()]
    assert frames[-1]["code"] == "unsupported_parameter"
    assert "messages[0].name" in frames[-1]["message"]
    assert await charged() == []
    await ws.disconnect()
