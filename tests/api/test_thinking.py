"""Extended thinking and Anthropic's other knobs through ``/v1/messages`` (CONTRACT §12),
with the official anthropic SDK: ``thinking``, ``top_k`` and the ``anthropic-beta``
header reach Anthropic upstreams; the reasoning blocks come back plain and streamed and
go upstream again unchanged in later turns; upstreams that cannot take a knob refuse it
by name."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

THINK = {"type": "enabled", "budget_tokens": 2048}
REASONING = [
    {"thinking": "The user greets me. A greeting back is best.", "signature": "sig-A1"},
    {"redacted": "opaque-bytes=="},
]
BETAS = "interleaved-thinking-2025-05-14, context-1m-2025-08-07"
PRICES = {"input_price_per_mtok": Decimal("3"), "output_price_per_mtok": Decimal("15")}


@pytest.fixture
def claude(live_server_url):
    token = Token.objects.create(user=UserFactory()).key
    return anthropic.Anthropic(base_url=live_server_url, api_key=token, max_retries=0)


def ask(client, *, stream: bool, **extra):
    request = {
        "model": "thinker",
        "max_tokens": 4096,
        "thinking": THINK,
        "messages": [{"role": "user", "content": "Hello"}],
        "extra_body": {"top_k": 5},
        "extra_headers": {"anthropic-beta": BETAS},
        **extra,
    }
    if not stream:
        return client.messages.create(**request)
    with client.messages.stream(**request) as events:
        return events.get_final_message()


def sent(fake):
    return [r for r in fake.requests if r.method == "POST"][-1]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_thinking_reaches_anthropic_and_its_blocks_come_back(claude, alias_on, stream):
    fake = alias_on("anthropic", "thinker", **PRICES)
    fake.push(text="Hi there!", thinking=REASONING, prompt_tokens=12, completion_tokens=300)
    message = ask(claude, stream=stream)
    thought, redacted, answer = message.content
    assert (thought.type, thought.thinking, thought.signature) == (
        "thinking",
        REASONING[0]["thinking"],
        "sig-A1",
    )
    assert (redacted.type, redacted.data) == ("redacted_thinking", "opaque-bytes==")
    assert (answer.type, answer.text) == ("text", "Hi there!")
    request = sent(fake)
    assert request.body["thinking"] == THINK and request.body["top_k"] == 5
    assert (
        request.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    )
    # Reasoning is output: the upstream's 300 tokens are billed as it counted them.
    record = UsageRecord.objects.get()
    assert record.completion_tokens == 300
    assert record.cost_usd == Decimal("0.004536")  # 12 × 3 + 300 × 15


def test_reasoning_goes_back_upstream_unchanged_in_the_next_turn(claude, alias_on):
    fake = alias_on("anthropic", "thinker", **PRICES)
    fake.push(text="Sunny.")
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should look.", "signature": "sig-B2"},
                {"type": "redacted_thinking", "data": "opaque=="},
                {"type": "tool_use", "id": "toolu_7", "name": "lookup", "input": {"q": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_7", "content": "18°C"}],
        },
    ]
    tool = {"name": "lookup", "input_schema": {"type": "object"}}
    ask(claude, stream=False, messages=history, tools=[tool])
    assistant = sent(fake).body["messages"][1]["content"]
    assert assistant == [
        {"type": "thinking", "thinking": "I should look.", "signature": "sig-B2"},
        {"type": "redacted_thinking", "data": "opaque=="},
        {"type": "tool_use", "id": "toolu_7", "name": "lookup", "input": {"q": "Paris"}},
    ]


@pytest.mark.parametrize(
    "kind,extra,refused",
    [
        ("openai", {"thinking": None, "extra_body": {"top_k": 5}}, "top_k"),
        ("openai", {"extra_body": {"context_management": {"edits": []}}}, "context_management"),
        ("openai", {"extra_body": {"output_config": {"format": {}}}}, "output_config.format"),
        ("ollama", {"extra_body": {"output_config": {"effort": "low"}}}, "output_config"),
    ],
)
def test_upstreams_that_cannot_take_a_knob_refuse_it_by_name(
    claude, alias_on, kind, extra, refused
):
    fake = alias_on(kind, "thinker")
    request = {k: v for k, v in extra.items() if v is not None}
    if extra.get("thinking", THINK) is None:
        request["thinking"] = anthropic.NOT_GIVEN
    with pytest.raises(anthropic.BadRequestError) as error:
        ask(claude, stream=False, **request)
    assert refused in error.value.body["error"]["message"]
    assert not [r for r in fake.requests if r.method == "POST"]


def test_ollama_takes_top_k_and_thinking_and_goes_without_the_beta_header(claude, alias_on):
    fake = alias_on("ollama", "thinker")
    fake.push(text="Hi.")
    ask(claude, stream=False)
    request = sent(fake)
    assert request.body["options"]["top_k"] == 5 and request.body["think"] is True
    assert "anthropic-beta" not in request.headers


@pytest.mark.parametrize(
    "extra,effort",
    [
        ({}, "medium"),  # a budget of 2,048 tokens
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
        ({"thinking": {"type": "enabled", "budget_tokens": 16000}}, "high"),
        (
            {"thinking": anthropic.NOT_GIVEN, "extra_body": {"output_config": {"effort": "low"}}},
            "low",
        ),
    ],
)
def test_thinking_and_effort_are_reasoning_effort_to_openai_upstreams(
    claude, alias_on, extra, effort
):
    fake = alias_on("openai", "thinker")
    fake.push(text="Hi.")
    ask(claude, stream=False, **{"extra_body": {}, **extra})
    body = sent(fake).body
    assert body["reasoning_effort"] == effort and "thinking" not in body


def test_context_management_and_output_config_reach_anthropic_as_sent(claude, alias_on):
    fake = alias_on("anthropic", "thinker")
    fake.push(text="Hi.")
    editing = {"edits": [{"type": "clear_tool_uses_20250919"}]}
    ask(
        claude,
        stream=False,
        extra_body={"context_management": editing, "output_config": {"effort": "medium"}},
    )
    body = sent(fake).body
    assert body["context_management"] == editing and body["output_config"] == {"effort": "medium"}


def test_reasoning_tokens_are_reported_and_billed_as_output(live_server_url, alias_on):
    import openai

    token = Token.objects.create(user=UserFactory()).key
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)
    fake = alias_on("openai", "thinker", **PRICES)
    fake.push(text="Hi.", prompt_tokens=10, completion_tokens=200, reasoning_tokens=190)
    reply = client.chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "Hello"}], reasoning_effort="high"
    )
    assert reply.usage.completion_tokens_details.reasoning_tokens == 190
    record = UsageRecord.objects.get()
    assert record.completion_tokens == 200
    assert record.cost_usd == Decimal("0.00303")  # 10 × 3 + 200 × 15


def test_a_malformed_thinking_setting_is_refused_naming_it(claude, alias_on):
    alias_on("anthropic", "thinker")
    with pytest.raises(anthropic.BadRequestError) as error:
        ask(claude, stream=False, thinking={"type": "enabled", "budget_tokens": 10})
    assert "thinking.budget_tokens" in error.value.body["error"]["message"]


def test_the_sdk_beta_client_is_served_by_the_same_endpoint(claude, alias_on):
    fake = alias_on("anthropic", "thinker")
    fake.push(text="Hi.", thinking=REASONING[:1])
    message = claude.beta.messages.create(
        model="thinker",
        max_tokens=4096,
        thinking=THINK,
        betas=["interleaved-thinking-2025-05-14"],
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    request = sent(fake)
    assert request.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"


def test_openai_clients_send_reasoning_back_as_thinking_blocks(live_server_url, alias_on):
    """LiteLLM's field on an assistant message reaches an Anthropic upstream unchanged."""
    import openai

    token = Token.objects.create(user=UserFactory()).key
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)
    fake = alias_on("anthropic", "thinker")
    fake.push(text="Fine.")
    blocks = [{"type": "thinking", "thinking": "They asked twice.", "signature": "sig-C3"}]
    client.chat.completions.create(
        model="thinker",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "thinking_blocks": blocks},
            {"role": "user", "content": "Hi again"},
        ],
    )
    assert sent(fake).body["messages"][1]["content"] == [
        *blocks,
        {"type": "text", "text": "Hello!"},
    ]
