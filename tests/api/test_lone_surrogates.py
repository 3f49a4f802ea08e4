"""A lone UTF-16 surrogate a client writes as a JSON escape (``"\\ud800"``) — in any field
name or any value, on every surface, streaming or not — is a 400 in that surface's
error shape, naming where it is; never a 500, and nothing reaches the service layer
(no usage record). Valid surrogate pairs and escaped backslashes are not mistaken
for one."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from rest_framework import exceptions as drf
from rest_framework.authtoken.models import Token

from llm_integration.envelope import envelope
from llm_integration.formats.anthropic import anthropic_error
from llm_integration.models import UsageRecord
from tests.api.test_rest_api import client_for
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

SURROGATES = ("\ud800", "\udfff")

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}
#: (surface, a valid request); each is served (200) as it is.
REQUESTS = [
    (
        "/api/v1/chat",
        {
            "model": "default",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "temperature": 0.5,
            "max_tokens": 20,
            "stream": False,
        },
    ),
    ("/api/v1/chat", {"message": "Hi", "system_prompt": "Be brief.", "stream": True}),
    (
        "/v1/chat/completions",
        {
            "model": "default",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
            "max_tokens": 20,
            "temperature": 0.5,
            "user": "u-1",
            "tools": [TOOL],
            "tool_choice": "auto",
        },
    ),
    (
        "/v1/chat/completions",
        {
            "model": "default",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "/v1/embeddings",
        {"model": "embed", "input": ["one", "two"], "encoding_format": "float", "user": "u-1"},
    ),
    (
        "/v1/messages",
        {
            "model": "default",
            "max_tokens": 20,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "metadata": {"user_id": "u-1"},
            "stop_sequences": ["zz"],
            "tools": [
                {
                    "name": "lookup",
                    "description": "Look a word up.",
                    "input_schema": {"type": "object", "properties": {}},
                }
            ],
        },
    ),
    (
        "/v1/messages",
        {
            "model": "default",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
        },
    ),
    (
        "/v1/messages/count_tokens",
        {
            "model": "default",
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        },
    ),
]


def variants(body: Any, bad: str) -> Iterator[tuple[str, Any]]:
    """(where, a copy of ``body`` with ``bad`` there): each field name replaced by it,
    each value replaced by it, each text with it appended; one at a time."""

    def walk(node: Any, path: str, rebuild: Callable[[Any], Any]) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                at = f"{path}.{key}" if path else key
                renamed = {(bad if k == key else k): v for k, v in node.items()}
                yield (f"{path}.{bad}" if path else bad), rebuild(renamed)
                yield from walk(value, at, lambda new, key=key: rebuild({**node, key: new}))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                yield from walk(
                    item, f"{path}[{i}]", lambda new, i=i: rebuild([*node[:i], new, *node[i + 1 :]])
                )
        else:
            yield path, rebuild(bad)
            if isinstance(node, str):
                yield path, rebuild(node + bad)

    yield from walk(body, "", lambda new: new)


@pytest.fixture
def token(db):
    dummy = ProviderFactory(name="dummy", kind="dummy")
    ModelAliasFactory(slug="default", provider=dummy)
    ModelAliasFactory(slug="embed", provider=dummy, mode="embedding")
    return Token.objects.create(user=UserFactory(username="alice")).key


async def send(client, path: str, raw: bytes | str, content_type="application/json"):
    response = await client.post(path, raw, content_type=content_type)
    if response.streaming:  # it must end
        async for _part in response.streaming_content:
            pass
    return response


def check_refusal(response, path: str, where: str, bad: str) -> None:
    assert response.status_code == 400, (path, where, response.status_code)
    assert not response.streaming
    body = json.loads(response.content.decode("utf-8"))  # strict UTF-8: it rendered
    shown = where.replace(bad, "\ufffd")
    escape = json.dumps(bad)[1:-1]  # \ud800, as the client wrote it
    if path.startswith("/v1/messages"):  # Anthropic's shape
        assert body["type"] == "error" and body["request_id"] == response["request-id"]
        assert body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
    else:
        error = body["error"]
        assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
        assert error["request_id"] == response["X-Request-ID"]
        if path.startswith("/v1/"):  # OpenAI's shape: the parameter at fault
            assert error["param"] == shown
        message = error["message"]
    assert message == f"{shown} is not valid Unicode: a lone surrogate ({escape})."


@pytest.mark.parametrize(("path", "request_body"), REQUESTS)
async def test_a_lone_surrogate_anywhere_is_a_400_in_the_surfaces_shape(token, path, request_body):
    client = client_for(token)
    served = await send(client, path, json.dumps(request_body).encode())
    assert served.status_code == 200, served.content
    records = await UsageRecord.objects.acount()
    tried = 0
    for bad in SURROGATES:
        for where, body in variants(request_body, bad):
            raw = json.dumps(body).encode()  # ensure_ascii: the escape an attacker sends
            assert b"\\u" in raw
            check_refusal(await send(client, path, raw), path, where, bad)
            tried += 1
    assert tried >= 4 * len(request_body)  # a name and a value per field, twice
    assert await UsageRecord.objects.acount() == records  # nothing reached the service


@pytest.mark.parametrize(
    "text",
    [
        "\U0001f600 a pair, escaped",
        "\\ud800 is an escaped backslash, then text",
        "\\\\\\ud800 and more backslashes",
    ],
)
async def test_pairs_and_escaped_backslashes_are_text(token, text):
    raw = json.dumps({"model": "default", "messages": [{"role": "user", "content": text}]})
    response = await send(client_for(token), "/v1/chat/completions", raw.encode())
    assert response.status_code == 200
    assert text in response.json()["choices"][0]["message"]["content"]


async def test_a_utf16_body_is_checked_too(token):
    raw = json.dumps({"model": "default", "messages": [{"role": "\ud800", "content": "Hi"}]})
    response = await send(
        client_for(token),
        "/v1/chat/completions",
        raw,  # the client encodes it in the charset named
        content_type="application/json; charset=utf-16",
    )
    check_refusal(response, "/v1/chat/completions", "messages[0].role", "\ud800")


async def test_a_surrogate_encoded_as_utf8_bytes_is_a_400(token):
    raw = b'{"model": "default", "messages": [{"role": "user", "content": "a\xed\xa0\x80"}]}'
    response = await send(client_for(token), "/v1/chat/completions", raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert await sync_to_async(UsageRecord.objects.count)() == 0


def test_error_shapes_render_whatever_a_message_echoes():
    error = drf.ValidationError({"messages[0].\ud800": ["Unknown field \udfff."]})
    body, status, _headers = envelope(error, request_id="req_1", openai=True)
    assert status == 400
    assert body["error"]["param"] == "messages[0].\ufffd"
    assert body["error"]["message"] == "messages[0].\ufffd: Unknown field \ufffd."
    json.dumps(body, ensure_ascii=False).encode("utf-8")
    body, status, _headers = anthropic_error(error, "req_1")
    assert status == 400 and body["error"]["message"] == "messages[0].\ufffd: Unknown field \ufffd."
    json.dumps(body, ensure_ascii=False).encode("utf-8")
