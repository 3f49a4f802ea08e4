"""Tool calling on /v1 with the official openai SDK, against each upstream protocol
(OpenAI, Anthropic, Ollama) served by a loopback fake: a full round trip (the call, the
result sent back, the answer), plain and streamed, and what each upstream received."""

from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from tests.api.conftest import KINDS
from tests.factories import ModelAliasFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
#: What an upstream counts for these prompts with the tool's definition in them (the
#: gateway bills its own count instead of a report under half of it).
PROMPT_WITH_TOOL = 90


@pytest.fixture(params=KINDS)
def upstream(request, alias_on):
    """(kind, the fake) behind the alias ``tools``."""
    prices = {"input_price_per_mtok": Decimal("1"), "output_price_per_mtok": Decimal("2")}
    return request.param, alias_on(request.param, "tools", **prices)


@pytest.fixture
def client(live_server_url):
    token = Token.objects.create(user=UserFactory()).key
    return openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)


def chat_body(fake) -> dict:
    return [r for r in fake.requests if r.method == "POST"][-1].body


def assert_tools_reached(kind: str, body: dict) -> None:
    if kind == "anthropic":
        assert body["tools"] == [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": WEATHER["function"]["parameters"],
            }
        ]
        assert body["tool_choice"] == {"type": "auto"}
    else:
        assert body["tools"] == [WEATHER]


def assert_result_reached(kind: str, body: dict, call_id: str) -> None:
    """The assistant's call and the tool's result, in the upstream's own format."""
    messages = body["messages"]
    if kind == "openai":
        assert messages[1] == {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ARGUMENTS},
                }
            ],
        }
        assert messages[2] == {"role": "tool", "content": "18 and sunny", "tool_call_id": call_id}
    elif kind == "anthropic":
        assert messages[1] == {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": "get_weather",
                    "input": json.loads(ARGUMENTS),
                }
            ],
        }
        assert messages[2] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "18 and sunny"}],
        }
    else:
        assert messages[1]["tool_calls"] == [
            {"function": {"name": "get_weather", "arguments": json.loads(ARGUMENTS)}}
        ]
        assert messages[2] == {
            "role": "tool",
            "content": "18 and sunny",
            "tool_name": "get_weather",
        }


def follow_up(call_id: str) -> list[dict]:
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "18 and sunny"},
    ]


def test_a_tool_round_trip(client, upstream):
    kind, fake = upstream
    fake.push(
        text="",
        tool_calls=[{"id": "call_w1", "name": "get_weather", "arguments": ARGUMENTS}],
        prompt_tokens=PROMPT_WITH_TOOL,
    )
    first = client.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(ARGUMENTS)
    assert call.id == "call_w1" or kind == "ollama"  # Ollama gives no ids: the gateway does
    assert_tools_reached(kind, chat_body(fake))

    fake.push(text="It is 18 and sunny in Paris.", prompt_tokens=PROMPT_WITH_TOOL)
    second = client.chat.completions.create(
        model="tools", messages=follow_up(call.id), tools=[WEATHER]
    )
    assert second.choices[0].message.content == "It is 18 and sunny in Paris."
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert_result_reached(kind, chat_body(fake), call.id)
    records = UsageRecord.objects.order_by("id")
    assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in records] == [
        ("ok", PROMPT_WITH_TOOL, 7),
        ("ok", PROMPT_WITH_TOOL, 7),
    ]
    assert records[0].finish_reason == "tool_calls" and records[0].cost_usd > 0


def test_a_streamed_tool_round_trip(client, upstream):
    kind, fake = upstream
    fake.push(
        text="",
        tool_calls=[{"id": "call_w2", "name": "get_weather", "arguments": ARGUMENTS}],
        prompt_tokens=PROMPT_WITH_TOOL,
    )
    chunks = list(
        client.chat.completions.create(
            model="tools",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    head, *rest = pieces
    # OpenAI's stream shape: the first piece names the call, the others carry arguments.
    assert head.index == 0 and head.type == "function" and head.function.name == "get_weather"
    assert head.id == "call_w2" or kind == "ollama"
    assert all(p.index == 0 and p.id is None and p.function.name is None for p in rest)
    arguments = head.function.arguments + "".join(p.function.arguments for p in rest)
    assert json.loads(arguments) == json.loads(ARGUMENTS)
    if kind != "ollama":  # Ollama sends each call whole
        assert len(rest) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        PROMPT_WITH_TOOL,
        7,
    )

    fake.push(text="It is 18 and sunny in Paris.", prompt_tokens=PROMPT_WITH_TOOL)
    answer = client.chat.completions.create(
        model="tools", messages=follow_up(head.id), tools=[WEATHER], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert text == "It is 18 and sunny in Paris."
    assert_result_reached(kind, chat_body(fake), head.id)
    assert list(
        UsageRecord.objects.order_by("id").values_list("status", "streamed", "finish_reason")
    ) == [
        ("ok", True, "tool_calls"),
        ("ok", True, "stop"),
    ]


@pytest.mark.parametrize(
    "choice,anthropic_choice",
    [
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", {"type": "none"}),
    ],
)
def test_tool_choice_and_parallel_calls_are_passed_or_translated(
    client, upstream, choice, anthropic_choice
):
    kind, fake = upstream
    kwargs = {
        "model": "tools",
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER],
        "tool_choice": choice,
        "parallel_tool_calls": False,
    }
    if kind == "ollama" and choice != "none":
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**kwargs)
        assert info.value.body["code"] == "unsupported_parameter"
        assert info.value.body["param"] in ("tool_choice", "parallel_tool_calls")
        return
    if kind == "ollama":
        kwargs.pop("parallel_tool_calls")
    client.chat.completions.create(**kwargs)
    body = chat_body(fake)
    if kind == "openai":
        assert body["tool_choice"] == choice and body["parallel_tool_calls"] is False
    elif kind == "anthropic":
        assert body["tool_choice"] == anthropic_choice
    else:
        assert "tools" not in body  # tool_choice none: Ollama is not offered the tools


def test_tool_definitions_count_in_the_prompt_estimate():
    """Budgets and limits see the tools: the reservation's prompt counts them."""
    from llm_integration.adapters import Message, Tool
    from llm_integration.text.tokens import count_message_tokens

    messages = [Message("user", "Weather?")]
    tool = Tool("get_weather", "The weather in a city.", WEATHER["function"]["parameters"])
    without = count_message_tokens(messages, model="gpt-4o-mini")
    with_tools = count_message_tokens(messages, model="gpt-4o-mini", tools=[tool])
    assert with_tools - without > len(json.dumps(WEATHER)) // 8


@pytest.mark.parametrize(
    "messages,param",
    [
        ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], "messages[0].tool_call_id"),
        (
            [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
                    "content": None,
                },
                {"role": "tool", "tool_call_id": "c2", "content": "x"},
            ],
            "messages[2].tool_call_id",
        ),
        (
            [{"role": "user", "content": "x", "tool_calls": []}],
            "messages[0].tool_calls",
        ),
    ],
)
def test_a_tool_conversation_that_does_not_hold_together_is_refused(
    client, upstream, messages, param
):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tools", messages=messages)
    assert info.value.body["param"] == param


@pytest.mark.parametrize(
    "tools,param",
    [
        ([{"type": "function", "function": {"name": "bad name"}}], "tools[0].function.name"),
        ([{"type": "code_interpreter"}], "tools[0]"),
        ([WEATHER, WEATHER], "tools[1].function.name"),
    ],
)
def test_bad_tools_are_refused_by_name(client, upstream, tools, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "x"}], tools=tools
        )
    assert info.value.body["param"] == param


def test_a_model_without_tool_calling_refuses_tools_and_is_never_a_fallback_for_them(
    client, upstream, openai_fake, api_key_env
):
    from llm_integration.models import AliasFallback, ModelAlias

    _kind, fake = upstream
    plain = ModelAliasFactory(slug="plain", provider__kind="dummy", supports_tools=False)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "x"}], tools=[WEATHER]
        )
    assert info.value.body["code"] == "unsupported_content"
    assert info.value.body["param"] == "tools"

    AliasFallback.objects.create(alias=ModelAlias.objects.get(slug="tools"), fallback=plain)
    fake.push(mode="error", status=503)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "x"}], tools=[WEATHER]
        )
    assert info.value.status_code == 503  # the dummy fallback that cannot do tools is skipped
    fake.push(mode="error", status=503)
    answer = client.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "x"}]
    )
    assert answer.model == "plain"  # without tools, it is a fallback as before


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
ANSWER = '{"name": "Ada", "age": 36}'


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("fmt", [SCHEMA_FORMAT, {"type": "json_object"}], ids=["schema", "object"])
def test_structured_output_reaches_each_upstream_in_its_own_form(client, upstream, fmt, stream):
    kind, fake = upstream
    if kind == "anthropic":  # answered through the forced tool: its input is the answer
        name = "person" if fmt is SCHEMA_FORMAT else "response"
        fake.push(text="", tool_calls=[{"id": "toolu_1", "name": name, "arguments": ANSWER}])
    else:
        fake.push(text=ANSWER)
    messages = [{"role": "user", "content": "Who wrote the first program?"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="tools", messages=messages, response_format=fmt, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
        assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    else:
        answer = client.chat.completions.create(
            model="tools", messages=messages, response_format=fmt
        )
        text, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
        assert answer.choices[0].message.tool_calls is None
    assert json.loads(text) == {"name": "Ada", "age": 36} and finish == "stop"
    body = chat_body(fake)
    if kind == "openai":
        assert body["response_format"] == fmt
    elif kind == "anthropic":
        schema = PERSON if fmt is SCHEMA_FORMAT else {"type": "object"}
        name = "person" if fmt is SCHEMA_FORMAT else "response"
        assert [(t["name"], t["input_schema"]) for t in body["tools"]] == [(name, schema)]
        assert body["tool_choice"] == {"type": "tool", "name": name}
    else:
        assert body["format"] == (PERSON if fmt is SCHEMA_FORMAT else "json")
    assert UsageRecord.objects.get().status == "ok"


@pytest.mark.parametrize(
    "fmt,param",
    [
        ({"type": "xml"}, "response_format"),
        (
            {"type": "json_schema", "json_schema": {"schema": PERSON}},
            "response_format.json_schema.name",
        ),
        ({"type": "json_object", "strict": True}, "response_format.strict"),
    ],
)
def test_a_bad_response_format_is_refused_by_name(client, upstream, fmt, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "x"}], response_format=fmt
        )
    assert info.value.body["param"] == param
    assert not fmt.get("strict") or info.value.body["code"] == "unsupported_parameter"


def test_a_model_without_structured_output_refuses_response_format(client):
    ModelAliasFactory(slug="plain", provider__kind="dummy", supports_response_format=False)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="plain",
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_object"},
        )
    assert info.value.body["code"] == "unsupported_content"
    assert info.value.body["param"] == "response_format"
