"""``/v1/messages``: the official anthropic SDK as the client, each upstream protocol
(OpenAI, Anthropic, Ollama) behind the alias on a loopback fake — text, system, a full
tool round trip plain and streamed, token counts, errors in Anthropic's shape."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from tests.api.conftest import KINDS
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ARGUMENTS = '{"city": "Paris"}'
#: What an upstream counts for a prompt with the tool's definition in it (the gateway
#: bills its own count instead of a report under half of it).
PROMPT_WITH_TOOL = 90


@pytest.fixture(params=KINDS)
def upstream(request, alias_on):
    prices = {"input_price_per_mtok": Decimal("3"), "output_price_per_mtok": Decimal("15")}
    return request.param, alias_on(request.param, "claude-like", **prices)


@pytest.fixture
def token(db):
    return Token.objects.create(user=UserFactory()).key


@pytest.fixture
def client(live_server_url, token):
    return anthropic.Anthropic(base_url=live_server_url, api_key=token, max_retries=0)


def sent(fake) -> dict:
    return [r for r in fake.requests if r.method == "POST"][-1].body


def test_text_and_system_reach_every_upstream_and_are_billed(client, upstream):
    kind, fake = upstream
    fake.push(text="Bonjour!", prompt_tokens=20, completion_tokens=3)
    message = client.messages.create(
        model="claude-like",
        max_tokens=64,
        system="Answer in French.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    )
    assert [b.text for b in message.content] == ["Bonjour!"]
    assert message.stop_reason == "end_turn" and message.model == "claude-like"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 3)
    body = sent(fake)
    if kind == "anthropic":
        assert body["system"] == "Answer in French." and body["max_tokens"] == 64
    else:
        assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
    record = UsageRecord.objects.get()
    assert record.status == "ok" and record.cost_usd == Decimal("0.000105")  # 20×3 + 3×15


def test_a_tool_round_trip(client, upstream):
    kind, fake = upstream
    fake.push(
        text="", tool_calls=[{"id": "toolu_9", "name": "get_weather", "arguments": ARGUMENTS}]
    )
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="claude-like", max_tokens=200, tools=[WEATHER], messages=[question]
    )
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert use.id == "toolu_9" or kind == "ollama"

    fake.push(text="18 and sunny.")
    second = client.messages.create(
        model="claude-like",
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            question,
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C, sun"}],
            },
        ],
    )
    assert second.content[0].text == "18 and sunny." and second.stop_reason == "end_turn"
    messages = sent(fake)["messages"]
    if kind == "anthropic":
        assert messages[2]["content"][0] == {
            "type": "tool_result",
            "tool_use_id": use.id,
            "content": "18C, sun",
        }
    else:
        assert messages[-1]["role"] == "tool" and messages[-1]["content"] == "18C, sun"
    assert UsageRecord.objects.filter(status="ok").count() == 2


def test_a_streamed_tool_round_trip(client, upstream):
    kind, fake = upstream
    fake.push(
        text="",
        tool_calls=[{"id": "toolu_7", "name": "get_weather", "arguments": ARGUMENTS}],
        prompt_tokens=PROMPT_WITH_TOOL,
    )
    with client.messages.stream(
        model="claude-like",
        max_tokens=200,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and "content_block_start" in kinds
    assert final.stop_reason == "tool_use"
    (use,) = final.content
    assert use.type == "tool_use" and use.input == {"city": "Paris"}
    assert use.id == "toolu_7" or kind == "ollama"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_WITH_TOOL, 7)

    fake.push(text="It is sunny.")
    with client.messages.stream(
        model="claude-like",
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sun"}],
            },
        ],
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "It is sunny."
    assert list(UsageRecord.objects.order_by("id").values_list("streamed", "finish_reason")) == [
        (True, "tool_calls"),
        (True, "stop"),
    ]


def test_tool_choice_is_translated(client, upstream):
    kind, fake = upstream
    fake.push(text="", tool_calls=[{"id": "toolu_1", "name": "get_weather", "arguments": "{}"}])
    kwargs = {
        "model": "claude-like",
        "max_tokens": 50,
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [{"role": "user", "content": "x"}],
    }
    if kind == "ollama":  # Ollama cannot be made to call a tool: refused, not dropped
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(**kwargs)
        assert "tool_choice" in info.value.body["error"]["message"]
        return
    client.messages.create(**kwargs)
    body = sent(fake)
    if kind == "anthropic":
        assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    else:
        assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False


def test_count_tokens_counts_tools_and_is_not_billed(client, upstream):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    plain = client.messages.count_tokens(model="claude-like", messages=messages)
    with_tools = client.messages.count_tokens(
        model="claude-like", messages=messages, tools=[WEATHER]
    )
    assert 0 < plain.input_tokens < with_tools.input_tokens
    assert not UsageRecord.objects.exists()


def test_the_key_goes_as_x_api_key_or_bearer(live_server_url, token, upstream):
    body = {
        "model": "claude-like",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x"}],
    }
    url = f"{live_server_url}/v1/messages"
    for headers in ({"x-api-key": token}, {"Authorization": f"Bearer {token}"}):
        assert httpx.post(url, json=body, headers=headers).status_code == 200
    response = httpx.post(url, json=body, headers={"x-api-key": "wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    response = httpx.post(url, json=body)
    assert response.status_code == 401 and response.json()["type"] == "error"


@pytest.mark.parametrize(
    "extra,error,name",
    [
        ({"extra_body": {"mcp_servers": []}}, anthropic.BadRequestError, "mcp_servers"),
        ({"model": "nope"}, anthropic.NotFoundError, "nope"),
        ({"extra_body": {"temperature": 1.5}}, anthropic.BadRequestError, "temperature"),
    ],
)
def test_errors_are_anthropic_shaped_and_name_the_field(client, upstream, extra, error, name):
    kwargs = {
        "model": "claude-like",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x"}],
    }
    kwargs.update(extra)
    with pytest.raises(error) as info:
        client.messages.create(**kwargs)
    body = info.value.body
    assert body["type"] == "error" and name in body["error"]["message"]
    assert not UsageRecord.objects.filter(status="ok").exists()


def test_an_image_for_a_model_without_vision_is_refused_by_name(client, upstream):
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="claude-like",
            max_tokens=10,
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "What?"}]}],
        )
    assert "does not support images" in info.value.body["error"]["message"]


def test_a_block_the_gateway_does_not_carry_is_refused_by_name(client, upstream):
    document = {"type": "document", "source": {"type": "text", "data": "x"}}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="claude-like",
            max_tokens=10,
            messages=[{"role": "user", "content": [document, {"type": "text", "text": "What?"}]}],
        )
    assert "messages[0].content[0]" in info.value.body["error"]["message"]


def test_a_failure_mid_stream_is_an_error_event(client, upstream):
    _kind, fake = upstream
    fake.push(text="one two three four", mode="cut", cut_after=2)
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(
            model="claude-like", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            for _ in stream:
                pass
    assert info.value.body["error"]["type"] == "api_error"
    assert UsageRecord.objects.get().status == "error"
