"""The OpenAI-compatible adapter against a fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

import pytest

from llm_integration import exceptions as exc
from llm_integration.adapters.openai import OpenAIAdapter, OpenAICompatibleAdapter
from tests.conftest import TEST_KEY

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def make(fake, cls=OpenAIAdapter, **kw):
    kw.setdefault("api_key", TEST_KEY)
    return cls(
        model="gpt-4o-mini", base_url=fake.base_url, provider_name="openai-test", timeout=5.0, **kw
    )


async def collect(stream):
    return [chunk async for chunk in stream]


async def test_complete_returns_text_usage_and_sends_the_protocol(openai_fake):
    openai_fake.push(text="Hello world", prompt_tokens=12, completion_tokens=3)
    adapter = make(openai_fake, headers={"X-Team": "blue"})
    answer = await adapter.complete(MESSAGES, temperature=0.2, max_tokens=50)
    assert (answer.text, answer.finish_reason) == ("Hello world", "stop")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (12, 3)
    assert answer.usage.estimated is False
    sent = openai_fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {TEST_KEY}"
    assert sent.headers["x-team"] == "blue"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "temperature": 0.2,
        "max_completion_tokens": 50,
    }


async def test_compatible_servers_get_max_tokens_and_no_key(openai_fake):
    adapter = make(openai_fake, cls=OpenAICompatibleAdapter, api_key=None)
    await adapter.complete("Hi", max_tokens=20)
    sent = openai_fake.requests[-1]
    assert "authorization" not in sent.headers
    assert sent.body["max_tokens"] == 20 and "max_completion_tokens" not in sent.body


async def test_stream_yields_each_chunk_then_provider_usage(openai_fake):
    openai_fake.push(text="one two three", prompt_tokens=9, completion_tokens=4)
    chunks = await collect(make(openai_fake).complete_stream(MESSAGES))
    assert [c.text for c in chunks[:-1]] == ["one", " two", " three"]
    final = chunks[-1]
    assert (final.finish_reason, final.usage.prompt_tokens, final.usage.completion_tokens) == (
        "stop",
        9,
        4,
    )
    assert final.usage.estimated is False
    body = openai_fake.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_streams_and_calls_reuse_one_kept_alive_connection(openai_fake):
    # A stream read only to its [DONE] would drop its connection with the unread
    # terminating chunk: every stream would pay a new TCP connection.
    adapter = make(openai_fake)
    for _ in range(3):
        chunks = await collect(adapter.complete_stream(MESSAGES))
        assert chunks[-1].usage is not None
    await adapter.complete(MESSAGES)
    peers = {r.peer for r in openai_fake.requests}
    assert len(openai_fake.requests) == 4 and len(peers) == 1, peers


def test_sessions_close_with_their_event_loops(openai_fake, caplog):
    # Commands, tests and async_to_sync run short-lived event loops: each loop's session
    # is closed as the loop shuts down, its connections with it.
    import asyncio
    import gc
    import warnings

    from asgiref.sync import async_to_sync

    from llm_integration.adapters.http import sessions

    adapter = make(openai_fake)
    gc.collect()  # earlier tests' garbage is not this test's business
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            asyncio.run(adapter.complete(MESSAGES))
            async_to_sync(adapter.complete)(MESSAGES)
        assert not [loop for loop in sessions._sessions if loop.is_closed()]
        gc.collect()
    port = str(openai_fake.base_url.split(":")[-1].split("/")[0])
    assert not [w for w in caught if port in str(w.message)], [str(w.message) for w in caught]
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


async def test_stream_without_usage_chunk_is_estimated_and_flagged(openai_fake):
    openai_fake.push(mode="no_usage", text="alpha beta gamma", finish_reason="length")
    chunks = await collect(make(openai_fake).complete_stream(MESSAGES))
    final = chunks[-1]
    assert final.usage.estimated is True
    assert final.usage.completion_tokens == 3  # "alpha beta gamma" in o200k_base
    assert final.usage.prompt_tokens > 0
    assert final.finish_reason == "length"


async def test_401_maps_to_auth_error_without_leaking_the_key(openai_fake):
    openai_fake.push(mode="error", status=401, message=f"Incorrect API key provided: {TEST_KEY}")
    with pytest.raises(exc.UpstreamAuthenticationError) as info:
        await make(openai_fake).complete("Hi")
    assert TEST_KEY not in str(info.value)
    assert info.value.status == 401 and not info.value.retryable


async def test_429_carries_retry_after(openai_fake):
    openai_fake.push(mode="error", status=429, retry_after="3", message="Slow down")
    with pytest.raises(exc.UpstreamRateLimited) as info:
        await make(openai_fake).complete("Hi")
    assert info.value.retry_after == 3.0 and info.value.retryable
    assert "Slow down" in info.value.message


async def test_429_on_a_stream_is_raised_before_any_chunk(openai_fake):
    openai_fake.push(mode="error", status=429, retry_after="7")
    stream = make(openai_fake).complete_stream("Hi")
    with pytest.raises(exc.UpstreamRateLimited) as info:
        await anext(stream)
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retryable(openai_fake, status):
    openai_fake.push(mode="error", status=status)
    with pytest.raises(exc.UpstreamServerError) as info:
        await make(openai_fake).complete("Hi")
    assert info.value.retryable and info.value.status == status


async def test_context_length_errors_are_recognised(openai_fake):
    openai_fake.push(
        mode="error",
        status=400,
        message="This model's maximum context length is "
        "8192 tokens. However, your messages resulted in 9000 tokens.",
    )
    with pytest.raises(exc.ContextTooLong):
        await make(openai_fake).complete("Hi")


async def test_slow_upstream_times_out(openai_fake):
    openai_fake.push(mode="slow", delay=30)
    adapter = OpenAIAdapter(model="m", base_url=openai_fake.base_url, api_key=TEST_KEY, timeout=0.3)
    with pytest.raises(exc.UpstreamTimeout):
        await adapter.complete("Hi")


async def test_unreachable_upstream_is_a_connection_error(openai_fake):
    url = openai_fake.base_url
    openai_fake.stop()
    adapter = OpenAIAdapter(model="m", base_url=url, api_key=TEST_KEY, timeout=2)
    with pytest.raises(exc.UpstreamConnectionError):
        await adapter.complete("Hi")


async def test_stream_cut_midway_raises_with_partial_usage(openai_fake):
    openai_fake.push(mode="cut", text="one two three four", cut_after=2)
    received = []
    with pytest.raises(exc.StreamInterrupted) as info:
        async for chunk in make(openai_fake).complete_stream("Hi"):
            received.append(chunk.text)
    assert received == ["one", " two"]
    assert info.value.partial_text == "one two"
    assert info.value.partial_usage.completion_tokens == 2
    assert info.value.partial_usage.estimated


async def test_body_cut_midway_is_a_transport_error(openai_fake):
    openai_fake.push(mode="cut")
    with pytest.raises(exc.UpstreamConnectionError):
        await make(openai_fake).complete("Hi")


async def test_malformed_body_is_a_bad_response(openai_fake):
    openai_fake.push(mode="malformed")
    with pytest.raises(exc.BadUpstreamResponse):
        await make(openai_fake).complete("Hi")


async def test_malformed_stream_chunk_is_a_bad_response(openai_fake):
    openai_fake.push(mode="malformed", text="a b c")
    with pytest.raises(exc.BadUpstreamResponse):
        await collect(make(openai_fake).complete_stream("Hi"))


def test_count_tokens_is_exact_for_openai_models(openai_fake):
    adapter = make(openai_fake)
    assert adapter.count_tokens("hello world") == 2
    assert adapter.model_name == "gpt-4o-mini"
    assert TEST_KEY not in repr(adapter)


async def test_the_environments_proxy_is_used_and_no_proxy_honoured(openai_fake, monkeypatch):
    # HTTP(S)_PROXY / NO_PROXY as httpx honours them, looked up once per adapter.
    from llm_integration.adapters.http import env_proxy

    origin = openai_fake.base_url.removesuffix("/v1")
    monkeypatch.setenv("HTTP_PROXY", origin)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert str(env_proxy("http://upstream.example/v1")["proxy"]) == origin
    adapter = OpenAICompatibleAdapter(
        model="gpt-4o-mini", base_url="http://upstream.example/v1", timeout=5.0
    )
    await adapter.complete(MESSAGES)  # the fake answers a proxied request all the same
    assert openai_fake.requests[-1].path == "http://upstream.example/v1/chat/completions"
    monkeypatch.setenv("NO_PROXY", "upstream.example")
    assert env_proxy("http://upstream.example/v1") == {}


async def test_a_broken_connection_counts_exactly_what_was_delivered():
    # The second event and the connection's end arrive while the client is busy with
    # the first. aiohttp's public API raises on the next read before handing over what
    # it buffered with the break; whatever the adapter yields is what the error's
    # partial text (and so the estimate of what was consumed) holds.
    import asyncio
    import json

    def event(text):
        chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        first, second = event("a"), event(" b")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(first), first)
        )
        await writer.drain()
        await got_first.wait()
        writer.write(b"%x\r\n%s\r\n" % (len(second), second))
        await writer.drain()
        writer.close()  # no terminating chunk

    got_first = asyncio.Event()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = OpenAIAdapter(
        model="gpt-4o-mini", base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY, timeout=5
    )
    texts = []
    with pytest.raises(exc.StreamInterrupted) as raised:
        async for chunk in adapter.complete_stream(MESSAGES):
            texts.append(chunk.text)
            if len(texts) == 1:  # busy elsewhere while the rest and the end come in
                got_first.set()
                await asyncio.sleep(0.2)
    server.close()
    assert texts[0] == "a" and texts in (["a"], ["a", " b"])
    assert raised.value.partial_text == "".join(texts)


async def test_a_kept_alive_connection_closed_by_the_upstream_is_not_an_error():
    # The upstream closes each connection right after its answer (keep-alive limit or
    # idle timeout reached, no "Connection: close" header): the pooled connection is
    # closing by the time the next request is written. Without resending, every second
    # request failed; each request must reach the upstream exactly once.
    import asyncio
    import json

    answer = json.dumps(
        {
            "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    ).encode()
    done = b"data: [DONE]\n\n"
    chunk = json.dumps(
        {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
    ).encode()
    event = b"data: " + chunk + b"\n\n"
    received = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
        received.append(body)
        if body.get("stream"):
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (event, done))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
            )
        else:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
            )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = OpenAIAdapter(
        model="gpt-4o-mini", base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY, timeout=5
    )
    texts = []
    for i in range(6):
        if i % 2:
            texts.append("".join([c.text async for c in adapter.complete_stream(MESSAGES)]))
        else:
            texts.append((await adapter.complete(MESSAGES)).text)
    server.close()
    assert texts == ["ok"] * 6
    assert len(received) == 6


async def test_a_new_connection_closed_without_an_answer_is_not_sent_again():
    # Only a reused connection is sent again (the keep-alive race): an upstream that
    # reads a request on a new connection and hangs up may have acted on it.
    import asyncio

    received = []

    async def handle(reader, writer):
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = OpenAIAdapter(
        model="gpt-4o-mini", base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY, timeout=5
    )
    with pytest.raises(exc.UpstreamConnectionError):
        await adapter.complete(MESSAGES)
    server.close()
    assert len(received) == 1
