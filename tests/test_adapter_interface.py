"""The seed's adapter interface, on every real protocol: ``complete()`` returns a ``str``
and ``complete_stream()`` yields ``str``s, carrying usage, finish reason and model; the
common sampling options are passed on, or refused by name where an upstream has none."""

from __future__ import annotations

import pytest

from llm_integration import exceptions as exc
from llm_integration.adapters.anthropic import AnthropicAdapter
from llm_integration.adapters.base import Completion, StreamChunk
from llm_integration.adapters.dummy import DummyAdapter
from llm_integration.adapters.ollama import OllamaAdapter
from llm_integration.adapters.openai import OpenAIAdapter
from tests.conftest import TEST_KEY


@pytest.fixture(params=["openai", "anthropic", "ollama"])
def upstream(request, openai_fake, anthropic_fake, ollama_fake):
    if request.param == "openai":
        adapter = OpenAIAdapter(
            model="gpt-4o-mini", base_url=openai_fake.base_url, api_key=TEST_KEY
        )
        return adapter, openai_fake
    if request.param == "anthropic":
        adapter = AnthropicAdapter(
            model="claude-fake", base_url=anthropic_fake.base_url, api_key=TEST_KEY
        )
        return adapter, anthropic_fake
    return OllamaAdapter(model="llama3.2", base_url=ollama_fake.base_url), ollama_fake


async def test_complete_is_a_str_with_its_usage(upstream):
    adapter, fake = upstream
    fake.push(text="Hello there", prompt_tokens=9, completion_tokens=2)
    answer = await adapter.complete("Hi")
    assert isinstance(answer, str) and isinstance(answer, Completion)
    assert answer == "Hello there" and answer.upper() == "HELLO THERE"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, 2)
    assert answer.finish_reason == "stop" and answer.model


async def test_a_stream_joins_into_the_answer(upstream):
    adapter, fake = upstream
    fake.push(text="one two three", prompt_tokens=5, completion_tokens=3)
    chunks = [c async for c in adapter.complete_stream("Hi")]
    assert all(isinstance(c, str) and isinstance(c, StreamChunk) for c in chunks)
    assert "".join(chunks) == "one two three"
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].finish_reason == "stop"


async def test_sampling_options_reach_the_openai_upstream(openai_fake):
    adapter = OpenAIAdapter(model="gpt-4o-mini", base_url=openai_fake.base_url, api_key=TEST_KEY)
    await adapter.complete("Hi", top_p=0.9, seed=7, presence_penalty=0.5, user="end-user-1")
    body = openai_fake.requests[-1].body
    assert (body["top_p"], body["seed"], body["presence_penalty"], body["user"]) == (
        0.9,
        7,
        0.5,
        "end-user-1",
    )


async def test_sampling_options_reach_anthropic_and_ollama_or_are_refused_by_name(
    anthropic_fake, ollama_fake
):
    claude = AnthropicAdapter(model="claude-fake", base_url=anthropic_fake.base_url, api_key="k")
    await claude.complete("Hi", top_p=0.5, user="u1")
    body = anthropic_fake.requests[-1].body
    assert (body["top_p"], body["metadata"]) == (0.5, {"user_id": "u1"})
    with pytest.raises(exc.InvalidRequest, match="does not take 'seed'") as refused:
        await claude.complete("Hi", seed=3)
    assert refused.value.param == "seed"

    llama = OllamaAdapter(model="llama3.2", base_url=ollama_fake.base_url)
    await llama.complete("Hi", top_p=0.5, seed=3)
    assert (
        ollama_fake.requests[-1].body["options"] | {"top_p": 0.5, "seed": 3}
        == (ollama_fake.requests[-1].body["options"])
    )
    with pytest.raises(exc.InvalidRequest, match="does not take 'user'"):
        await llama.complete("Hi", user="u1")


async def test_an_unknown_option_is_named():
    with pytest.raises(exc.InvalidRequest, match="Unknown option 'logit_bias'") as refused:
        await DummyAdapter(model="echo").complete("Hi", logit_bias={"1": 2})
    assert refused.value.param == "logit_bias"
