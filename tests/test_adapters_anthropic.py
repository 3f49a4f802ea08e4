"""The Anthropic adapter (official SDK) against a fake Messages API on 127.0.0.1."""

from __future__ import annotations

import pytest

from llm_integration import exceptions as exc
from llm_integration.adapters.anthropic import AnthropicAdapter
from tests.conftest import TEST_KEY

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def make(fake, **kw):
    kw.setdefault("api_key", TEST_KEY)
    kw.setdefault("timeout", 5.0)
    return AnthropicAdapter(
        model="claude-fake", base_url=fake.base_url, provider_name="anthropic-test", **kw
    )


async def collect(stream):
    return [chunk async for chunk in stream]


async def test_complete_puts_system_top_level_and_reads_usage(anthropic_fake):
    anthropic_fake.push(text="Hello from Claude", prompt_tokens=21, completion_tokens=5)
    answer = await make(anthropic_fake).complete(MESSAGES, temperature=0.5)
    assert answer.text == "Hello from Claude" and answer.finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (21, 5)
    sent = anthropic_fake.requests[-1]
    assert sent.path == "/v1/messages"
    key = sent.headers.get("x-api-key") or sent.headers["authorization"].removeprefix("Bearer ")
    assert key == TEST_KEY and "anthropic-version" in sent.headers
    assert sent.body["system"] == "Be brief."
    assert sent.body["messages"] == [{"role": "user", "content": "Hi there"}]
    assert sent.body["max_tokens"] == 1024 and sent.body["temperature"] == 0.5


async def test_default_max_tokens_from_the_alias_is_sent(anthropic_fake):
    await make(anthropic_fake, default_max_tokens=77).complete("Hi")
    assert anthropic_fake.requests[-1].body["max_tokens"] == 77


async def test_base_url_with_v1_is_not_doubled(anthropic_fake):
    adapter = AnthropicAdapter(
        model="claude-fake", base_url=f"{anthropic_fake.base_url}/v1", api_key=TEST_KEY
    )
    await adapter.complete("Hi")
    assert anthropic_fake.requests[-1].path == "/v1/messages"


async def test_stream_events_give_text_and_cumulative_usage(anthropic_fake):
    anthropic_fake.push(
        text="one two three", prompt_tokens=30, completion_tokens=12, finish_reason="length"
    )
    chunks = await collect(make(anthropic_fake).complete_stream(MESSAGES))
    assert "".join(c.text for c in chunks) == "one two three"
    final = chunks[-1]
    # message_start says output_tokens=1, message_delta 12 (cumulative): 12, not 13.
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (30, 12)
    assert final.finish_reason == "length" and not final.usage.estimated


async def test_401_is_an_auth_error_without_the_key(anthropic_fake):
    anthropic_fake.push(mode="error", status=401, message=f"invalid x-api-key {TEST_KEY}")
    with pytest.raises(exc.UpstreamAuthenticationError) as info:
        await make(anthropic_fake).complete("Hi")
    assert TEST_KEY not in str(info.value)


async def test_429_carries_retry_after(anthropic_fake):
    anthropic_fake.push(mode="error", status=429, retry_after="4", message="Rate limited")
    with pytest.raises(exc.UpstreamRateLimited) as info:
        await make(anthropic_fake).complete("Hi")
    assert info.value.retry_after == 4.0


@pytest.mark.parametrize("status", [500, 529])
async def test_server_errors_and_overload_are_retryable(anthropic_fake, status):
    anthropic_fake.push(mode="error", status=status)
    with pytest.raises(exc.UpstreamServerError) as info:
        await make(anthropic_fake).complete("Hi")
    assert info.value.retryable and info.value.status == status


async def test_prompt_too_long_is_context_too_long(anthropic_fake):
    anthropic_fake.push(
        mode="error", status=400, message="prompt is too long: 210000 tokens > 200000 maximum"
    )
    with pytest.raises(exc.ContextTooLong):
        await make(anthropic_fake).complete("Hi")


async def test_overloaded_error_event_mid_stream(anthropic_fake):
    anthropic_fake.push(mode="error_event", text="a b c d", cut_after=2)
    received = []
    with pytest.raises(exc.UpstreamServerError) as info:
        async for chunk in make(anthropic_fake).complete_stream("Hi"):
            received.append(chunk.text)
    assert received == ["a", " b"]
    assert info.value.partial_text == "a b"


async def test_slow_upstream_times_out(anthropic_fake):
    anthropic_fake.push(mode="slow", delay=30)
    with pytest.raises(exc.UpstreamTimeout):
        await make(anthropic_fake, timeout=0.3).complete("Hi")


async def test_stream_cut_midway(anthropic_fake):
    anthropic_fake.push(mode="cut", text="one two three four", cut_after=3)
    received = []
    with pytest.raises(exc.StreamInterrupted) as info:
        async for chunk in make(anthropic_fake).complete_stream("Hi"):
            received.append(chunk.text)
    assert received == ["one", " two", " three"]
    assert info.value.partial_usage.completion_tokens == 3


async def test_malformed_body_is_a_bad_response(anthropic_fake):
    anthropic_fake.push(mode="malformed")
    with pytest.raises(exc.BadUpstreamResponse):
        await make(anthropic_fake).complete("Hi")


async def test_malformed_stream_event_is_a_bad_response(anthropic_fake):
    anthropic_fake.push(mode="malformed", text="a b c")
    with pytest.raises(exc.BadUpstreamResponse):
        await collect(make(anthropic_fake).complete_stream("Hi"))


def test_token_counts_for_claude_are_estimates(anthropic_fake):
    from llm_integration.text.tokens import is_exact

    adapter = make(anthropic_fake)
    assert adapter.count_tokens("hello world") == 2 and not is_exact(adapter.model_name)


async def test_a_temperature_above_anthropics_range_is_refused_not_clamped(anthropic_fake):
    with pytest.raises(exc.InvalidRequest) as info:
        await make(anthropic_fake).complete(MESSAGES, temperature=1.5)
    assert info.value.param == "temperature"
    assert not anthropic_fake.requests  # nothing was sent


async def test_tool_results_and_a_following_user_turn_merge_into_one_user_turn(anthropic_fake):
    """Anthropic wants user and assistant to alternate: two tool results and the user's
    next words travel as one user turn, in order."""
    from llm_integration.adapters import Message, ToolCall

    calls = (ToolCall("t1", "a", '{"x": 1}'), ToolCall("t2", "b", "{}"))
    messages = [
        Message("user", "Do both."),
        Message("assistant", "On it.", calls),
        Message("tool", "one", tool_call_id="t1"),
        Message("tool", "two", tool_call_id="t2"),
        Message("user", "And then?"),
    ]
    await make(anthropic_fake).complete(messages)
    sent = anthropic_fake.requests[-1].body["messages"]
    assert sent == [
        {"role": "user", "content": "Do both."},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "On it."},
                {"type": "tool_use", "id": "t1", "name": "a", "input": {"x": 1}},
                {"type": "tool_use", "id": "t2", "name": "b", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "two"},
                {"type": "text", "text": "And then?"},
            ],
        },
    ]


async def test_tool_call_arguments_that_are_not_a_json_object_are_refused(anthropic_fake):
    from llm_integration.adapters import Message, ToolCall

    messages = [
        Message("user", "x"),
        Message("assistant", "", (ToolCall("t1", "a", "not json"),)),
        Message("tool", "r", tool_call_id="t1"),
    ]
    with pytest.raises(exc.InvalidRequest) as info:
        await make(anthropic_fake).complete(messages)
    assert info.value.param == "messages[1].tool_calls"
