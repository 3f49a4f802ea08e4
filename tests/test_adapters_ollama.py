"""The Ollama adapter against a fake Ollama server on 127.0.0.1 (NDJSON)."""

from __future__ import annotations

import pytest

from llm_integration import exceptions as exc
from llm_integration.adapters.ollama import OllamaAdapter


def make(fake, **kw):
    kw.setdefault("timeout", 5.0)
    return OllamaAdapter(
        model="llama3.2", base_url=fake.base_url, provider_name="ollama-test", **kw
    )


async def collect(stream):
    return [chunk async for chunk in stream]


async def test_complete_sends_options_and_reads_eval_counts(ollama_fake):
    ollama_fake.push(text="Hi from llama", prompt_tokens=26, completion_tokens=4)
    answer = await make(ollama_fake, keep_alive="5m").complete(
        "Hello", temperature=0.1, max_tokens=64
    )
    assert answer.text == "Hi from llama"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (26, 4)
    assert not answer.usage.estimated
    body = ollama_fake.requests[-1].body
    assert body == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": False,
        "options": {"temperature": 0.1, "num_predict": 64},
        "keep_alive": "5m",
    }


async def test_stream_reads_ndjson_and_final_counts(ollama_fake):
    ollama_fake.push(
        text="one two three", prompt_tokens=8, completion_tokens=3, finish_reason="length"
    )
    chunks = await collect(make(ollama_fake).complete_stream("Hello"))
    assert [c.text for c in chunks[:-1]] == ["one", " two", " three"]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (8, 3)
    assert chunks[-1].finish_reason == "length"
    assert ollama_fake.requests[-1].body["stream"] is True


async def test_cached_prompt_without_prompt_eval_count_is_estimated(ollama_fake):
    ollama_fake.push(mode="no_usage", completion_tokens=5)
    chunks = await collect(make(ollama_fake).complete_stream("Hello"))
    usage = chunks[-1].usage
    assert usage.estimated and usage.completion_tokens == 5 and usage.prompt_tokens > 0


async def test_model_not_pulled_is_a_bad_request(ollama_fake):
    ollama_fake.push(
        mode="error", status=404, message="model 'llama3.2' not found, try pulling it first"
    )
    with pytest.raises(exc.UpstreamBadRequest) as info:
        await make(ollama_fake).complete("Hello")
    assert "not found" in info.value.message


async def test_server_error_is_retryable(ollama_fake):
    ollama_fake.push(mode="error", status=500, message="llama runner process has terminated")
    with pytest.raises(exc.UpstreamServerError):
        await collect(make(ollama_fake).complete_stream("Hello"))


async def test_slow_upstream_times_out(ollama_fake):
    ollama_fake.push(mode="slow", delay=30)
    with pytest.raises(exc.UpstreamTimeout):
        await make(ollama_fake, timeout=0.3).complete("Hello")


async def test_stream_cut_midway(ollama_fake):
    ollama_fake.push(mode="cut", text="a b c d", cut_after=2)
    with pytest.raises(exc.StreamInterrupted) as info:
        await collect(make(ollama_fake).complete_stream("Hello"))
    assert info.value.partial_text == "a b"


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_json_is_a_bad_response(ollama_fake, stream):
    ollama_fake.push(mode="malformed", text="a b c")
    adapter = make(ollama_fake)
    with pytest.raises(exc.BadUpstreamResponse):
        if stream:
            await collect(adapter.complete_stream("Hello"))
        else:
            await adapter.complete("Hello")
