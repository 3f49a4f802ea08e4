"""Every request parameter of OpenAI's chat API, as the installed openai SDK lists them,
is either seen by an OpenAI upstream or refused by name: none is dropped silently. A new
parameter in a later SDK fails this test until the gateway carries or refuses it."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from rest_framework.authtoken.models import Token

from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
#: A value that asks for something, per parameter (others get "x").
VALUES = {
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "seed": 7,
    "stop": ["END"],
    "temperature": 0.3,
    "top_p": 0.9,
    "user": "end-user-1",
    "tools": [WEATHER],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "max_completion_tokens": 50,
    "max_tokens": 40,
    "n": 2,
    "logprobs": True,
    "top_logprobs": 2,
    "store": True,
    "logit_bias": {"50256": -100},
    "metadata": {"task": "summary", "tags": "billing,beta"},
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "mp3"},
    "functions": [WEATHER["function"]],
    "function_call": "auto",
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "low",
    "service_tier": "flex",
    "verbosity": "low",
    "web_search_options": {},
    "stream_options": {"include_usage": True},
}
#: Sent upstream under another name (OpenAI wants max_completion_tokens).
RENAMED = {"max_tokens": "max_completion_tokens"}
#: Honoured by the gateway itself, with nothing to send upstream.
OWN = {"stream_options", "metadata"}


@pytest.fixture
def client(live_server_url, openai_fake, api_key_env):
    provider = ProviderFactory(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    ModelAliasFactory(slug="gpt", provider=provider, upstream_model="gpt-4o-mini")
    token = Token.objects.create(user=UserFactory()).key
    return openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)


def test_every_parameter_is_carried_or_refused_by_name(client, openai_fake):
    names = sorted(set(CompletionCreateParamsBase.__annotations__) - {"model", "messages"})
    carried, refused = [], []
    for name in names:
        value = VALUES.get(name, "x")
        before = len(openai_fake.requests)
        try:
            client.chat.completions.create(
                model="gpt",
                messages=[{"role": "user", "content": "hi"}],
                stream=name in OWN,
                extra_body={name: value},
            )
        except openai.BadRequestError as error:
            assert error.body["param"] == name, (name, error.body)
            assert len(openai_fake.requests) == before  # refused before any upstream call
            refused.append(name)
            continue
        body = openai_fake.requests[-1].body
        upstream_name = RENAMED.get(name, name)
        if name not in OWN:
            assert body.get(upstream_name) == value, f"{name} was accepted but not sent upstream"
        carried.append(name)
    assert {"tools", "tool_choice", "response_format", "top_p", "seed"} <= set(carried)
    assert {"reasoning_effort", "prompt_cache_key"} <= set(carried)
    assert {"logit_bias", "audio", "functions"} <= set(refused)
    assert "n" in refused  # n: 2 (n: 1 asks for what the gateway does anyway)


def test_reasoning_effort_is_a_thinking_budget_on_anthropic(live_server_url, alias_on):
    token = Token.objects.create(user=UserFactory()).key
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)
    fake = alias_on("anthropic", "claude")
    hello = [{"role": "user", "content": "hi"}]
    for effort, max_tokens, budget in (("medium", 8000, 2048), ("high", 3000, 2999)):
        client.chat.completions.create(
            model="claude", messages=hello, reasoning_effort=effort, max_tokens=max_tokens
        )
        thinking = fake.requests[-1].body["thinking"]
        assert thinking == {"type": "enabled", "budget_tokens": budget}
    client.chat.completions.create(
        model="claude", messages=hello, reasoning_effort="none", prompt_cache_key="repo-42"
    )
    assert fake.requests[-1].body["thinking"] == {"type": "disabled"}
    assert "prompt_cache_key" not in fake.requests[-1].body  # a hint, left out
    sent = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="claude", messages=hello, reasoning_effort="low", max_tokens=500
        )
    assert refused.value.body["param"] == "reasoning_effort" and len(fake.requests) == sent


def test_upstreams_that_cannot_reason_on_demand_refuse_reasoning_effort_by_name(
    live_server_url, alias_on
):
    token = Token.objects.create(user=UserFactory()).key
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)
    for kind in ("ollama",):
        fake = alias_on(kind, kind)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=kind, messages=[{"role": "user", "content": "hi"}], reasoning_effort="high"
            )
        assert refused.value.body["param"] == "reasoning_effort"
        # The cache hint changes no answer: left out where it means nothing.
        client.chat.completions.create(
            model=kind, messages=[{"role": "user", "content": "hi"}], prompt_cache_key="repo-42"
        )
        assert "prompt_cache_key" not in fake.requests[-1].body


def test_models_carry_their_window_and_capabilities(client):
    model = client.models.retrieve("gpt")
    extra = model.model_dump()
    assert extra["context_window"] == 8192 and extra["mode"] == "chat"
    assert extra["capabilities"] == {"tools": True, "vision": False, "response_format": True}
