"""The chat path end to end against fake upstreams: accounting, retries, fallbacks,
circuit breakers, caching and streaming. Time is a FakeClock: no real waiting."""

from __future__ import annotations

import os
import re
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import caches

from llm_integration import exceptions as exc
from llm_integration.models import AliasFallback, UsageRecord
from llm_integration.services.chat import Delta, Done, new_request_id
from tests.conftest import TEST_KEY
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory
from tests.fakes.openai import OpenAIFake

pytestmark = pytest.mark.django_db(transaction=True)


def openai_alias(fake, key_env, *, slug="chat", retries=0, timeout=5.0, **kw):
    provider = ProviderFactory(
        name=f"p-{slug}",
        kind="openai",
        base_url=fake.base_url,
        api_key_env=key_env,
        max_retries=retries,
        timeout_seconds=timeout,
    )
    kw.setdefault("input_price_per_mtok", Decimal("2.50"))
    kw.setdefault("output_price_per_mtok", Decimal("10.00"))
    return ModelAliasFactory(slug=slug, provider=provider, upstream_model="gpt-4o-mini", **kw)


@pytest.fixture
def chat_alias(openai_fake, api_key_env):
    return openai_alias(openai_fake, api_key_env)


@pytest.fixture
def backup_fake():
    fake = OpenAIFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def with_fallback(openai_fake, backup_fake, api_key_env):
    primary = openai_alias(openai_fake, api_key_env, slug="chat")
    backup = openai_alias(backup_fake, api_key_env, slug="backup")
    AliasFallback.objects.create(alias=primary, fallback=backup, position=0)
    return primary, backup


async def records(**filters) -> list[UsageRecord]:
    return [r async for r in UsageRecord.objects.filter(**filters).order_by("id")]


async def drain(stream) -> list:
    return [event async for event in stream]


# -- accounting ----------------------------------------------------------------------


async def test_ok_request_is_recorded_with_provider_tokens_and_decimal_cost(
    gateway, chat_alias, openai_fake
):
    user = await sync_to_async(UserFactory)()
    openai_fake.push(text="Fine.", prompt_tokens=1000, completion_tokens=200)
    result = await gateway.chat(user=user, model="chat", messages="How are you?")
    assert result.answer == "Fine." and result.model == "chat" and not result.cached
    assert result.cost_usd == Decimal("0.0045")  # 1000 * 2.50/1M + 200 * 10/1M
    [record] = await records(request_id=result.request_id)
    assert (record.user_id, record.alias, record.provider, record.upstream_model) == (
        user.pk,
        "chat",
        "p-chat",
        "gpt-4o-mini",
    )
    assert (record.prompt_tokens, record.completion_tokens, record.cost_usd) == (
        1000,
        200,
        Decimal("0.0045"),
    )
    assert (record.status, record.streamed, record.tokens_estimated, record.cached) == (
        "ok",
        False,
        False,
        False,
    )


async def test_stream_ends_with_done_carrying_usage_and_cost(gateway, chat_alias, openai_fake):
    openai_fake.push(text="a b", prompt_tokens=100, completion_tokens=50)
    events = await drain(gateway.stream(model="chat", messages="Hi"))
    assert [e.text for e in events if isinstance(e, Delta)] == ["a", " b"]
    done = events[-1]
    assert isinstance(done, Done) and done.cost_usd == Decimal("0.00075")
    [record] = await records(request_id=done.request_id)
    assert (record.status, record.streamed, record.completion_tokens) == ("ok", True, 50)


async def test_unknown_model_and_bad_input_are_recorded(gateway, chat_alias):
    with pytest.raises(exc.ModelNotFound):
        await gateway.chat(model="nope", messages="Hi", request_id="req_404")
    with pytest.raises(exc.InvalidRequest):
        await gateway.chat(
            model="chat", messages=[{"role": "bot", "content": "x"}], request_id="req_400"
        )
    assert [(r.status, r.error_type) for r in await records()] == [
        ("error", "model_not_found"),
        ("error", "invalid_request"),
    ]


async def test_client_closing_the_stream_records_cancelled(gateway, chat_alias, openai_fake):
    openai_fake.push(text="one two three four five")
    stream = gateway.stream(model="chat", messages="Hi", request_id="req_gone")
    assert isinstance(await anext(stream), Delta)
    await stream.aclose()
    [record] = await records(request_id="req_gone")
    assert (record.status, record.completion_tokens, record.tokens_estimated) == (
        "cancelled",
        1,
        True,
    )
    assert record.cost_usd > 0


async def test_closing_after_done_does_not_record_twice(gateway, chat_alias):
    stream = gateway.stream(model="chat", messages="Hi", request_id="req_once")
    async for event in stream:
        if isinstance(event, Done):
            break
    await stream.aclose()
    assert len(await records(request_id="req_once")) == 1


# -- retries -------------------------------------------------------------------------


async def test_429_retry_after_is_honoured_then_succeeds(gateway, clock, openai_fake, api_key_env):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=2)
    openai_fake.push(mode="error", status=429, retry_after="2")
    openai_fake.push(text="after the wait")
    result = await gateway.chat(model="chat", messages="Hi")
    assert result.answer == "after the wait"
    assert clock.slept == [2.0]
    assert len(openai_fake.requests) == 2 and len(await records()) == 1


async def test_5xx_backoff_is_exponential_with_jitter_and_bounded(
    gateway, clock, openai_fake, api_key_env, settings
):
    settings.LLM_INTEGRATION = {"RETRY_BACKOFF_BASE": 1.0, "RETRY_BACKOFF_MAX": 20.0}
    await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=2)
    openai_fake.push(mode="error", status=500)
    openai_fake.push(mode="error", status=503)
    openai_fake.push(text="third time lucky")
    assert (await gateway.chat(model="chat", messages="Hi")).answer == "third time lucky"
    assert len(clock.slept) == 2
    assert 0 <= clock.slept[0] <= 2.0 and 0 <= clock.slept[1] <= 4.0


async def test_retries_stop_at_the_rows_max_retries(gateway, openai_fake, api_key_env):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=1)
    for _ in range(3):
        openai_fake.push(mode="error", status=500)
    with pytest.raises(exc.NoUpstreamAvailable):
        await gateway.chat(model="chat", messages="Hi", request_id="req_x")
    assert len(openai_fake.requests) == 2
    [record] = await records()
    assert (record.status, record.error_type) == ("error", "no_upstream")


@pytest.mark.parametrize(
    ("status", "error"), [(401, exc.UpstreamAuthenticationError), (400, exc.UpstreamBadRequest)]
)
async def test_client_side_errors_are_never_retried(
    gateway, openai_fake, api_key_env, status, error
):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=3)
    openai_fake.push(mode="error", status=status)
    with pytest.raises(error):
        await gateway.chat(model="chat", messages="Hi")
    assert len(openai_fake.requests) == 1


async def test_timeout_is_504_and_recorded(gateway, openai_fake, api_key_env):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, timeout=0.3)
    openai_fake.push(mode="slow", delay=30)
    with pytest.raises(exc.UpstreamTimeout) as info:
        await gateway.chat(model="chat", messages="Hi")
    assert info.value.status_code == 504
    assert [(r.status, r.error_type) for r in await records()] == [("error", "upstream_timeout")]


async def test_malformed_body_is_502(gateway, chat_alias, openai_fake):
    openai_fake.push(mode="malformed")
    with pytest.raises(exc.BadUpstreamResponse) as info:
        await gateway.chat(model="chat", messages="Hi")
    assert info.value.status_code == 502


async def test_stream_retries_before_the_first_token(gateway, openai_fake, api_key_env):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=1)
    openai_fake.push(mode="error", status=503)
    openai_fake.push(text="x y")
    events = await drain(gateway.stream(model="chat", messages="Hi"))
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "x y"
    assert len(openai_fake.requests) == 2


async def test_stream_cut_after_a_token_is_not_retried_and_records_partial_usage(
    gateway, openai_fake, api_key_env
):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=3)
    openai_fake.push(mode="cut", text="one two three four", cut_after=2)
    received = []
    with pytest.raises(exc.StreamInterrupted):
        async for event in gateway.stream(model="chat", messages="Hi", request_id="req_cut"):
            received.append(event.text)
    assert received == ["one", " two"] and len(openai_fake.requests) == 1
    [record] = await records(request_id="req_cut")
    assert (record.status, record.error_type, record.completion_tokens) == (
        "error",
        "stream_interrupted",
        2,
    )
    assert record.tokens_estimated and record.cost_usd > 0


# -- fallbacks and circuit breakers --------------------------------------------------


async def test_fallback_answers_when_the_primary_fails(
    gateway, with_fallback, openai_fake, backup_fake
):
    openai_fake.push(mode="error", status=500)
    backup_fake.push(text="from the backup", prompt_tokens=3, completion_tokens=3)
    result = await gateway.chat(model="chat", messages="Hi")
    assert (result.answer, result.model) == ("from the backup", "backup")
    [record] = await records()
    assert (record.alias, record.provider, record.status) == ("backup", "p-backup", "ok")


async def test_long_retry_after_falls_back_instead_of_waiting(
    gateway, clock, openai_fake, backup_fake, api_key_env
):
    primary = await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=3)
    backup = await sync_to_async(openai_alias)(backup_fake, api_key_env, slug="backup")
    await AliasFallback.objects.acreate(alias=primary, fallback=backup)
    openai_fake.push(mode="error", status=429, retry_after="60")
    assert (await gateway.chat(model="chat", messages="Hi")).model == "backup"
    assert clock.slept == [] and len(openai_fake.requests) == 1


async def test_unreachable_primary_falls_back(gateway, with_fallback, openai_fake):
    openai_fake.stop()  # connection refused
    assert (await gateway.chat(model="chat", messages="Hi")).model == "backup"


async def test_circuit_opens_skips_the_provider_and_recovers(
    gateway, clock, with_fallback, openai_fake, settings
):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_THRESHOLD": 2, "CIRCUIT_BREAKER_COOLDOWN": 30}
    for _ in range(2):
        openai_fake.push(mode="error", status=500)
        assert (await gateway.chat(model="chat", messages="Hi")).model == "backup"
    assert len(openai_fake.requests) == 2
    # Open: the primary is not even tried.
    assert (await gateway.chat(model="chat", messages="Hi")).model == "backup"
    assert len(openai_fake.requests) == 2
    # After the cool-down one probe goes through, succeeds and closes the circuit.
    clock.advance(31)
    assert (await gateway.chat(model="chat", messages="Hi")).model == "chat"
    assert (await gateway.chat(model="chat", messages="Hi")).model == "chat"
    assert len(openai_fake.requests) == 4
    assert await UsageRecord.objects.acount() == 5


async def test_all_circuits_open_is_503(gateway, chat_alias, openai_fake, settings):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_THRESHOLD": 1}
    openai_fake.push(mode="error", status=500)
    with pytest.raises(exc.NoUpstreamAvailable):
        await gateway.chat(model="chat", messages="Hi")
    with pytest.raises(exc.NoUpstreamAvailable, match="circuit open"):
        await gateway.chat(model="chat", messages="Hi")
    assert len(openai_fake.requests) == 1 and await UsageRecord.objects.acount() == 2


async def test_a_provider_moved_to_another_url_starts_with_a_closed_circuit(
    gateway, chat_alias, openai_fake, backup_fake, settings
):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_THRESHOLD": 1, "CIRCUIT_BREAKER_COOLDOWN": 30}
    openai_fake.push(mode="error", status=500)
    with pytest.raises(exc.NoUpstreamAvailable):
        await gateway.chat(model="chat", messages="Hi")
    with pytest.raises(exc.NoUpstreamAvailable, match="circuit open"):
        await gateway.chat(model="chat", messages="Hi")
    # The admin points the provider elsewhere: no waiting out the old endpoint's cool-down.
    provider = chat_alias.provider
    provider.base_url = backup_fake.base_url
    await provider.asave()
    assert (await gateway.chat(model="chat", messages="Hi")).model == "chat"
    assert (len(openai_fake.requests), len(backup_fake.requests)) == (1, 1)
    # Back to the old URL: its circuit is still open.
    provider.base_url = openai_fake.base_url
    await provider.asave()
    with pytest.raises(exc.NoUpstreamAvailable, match="circuit open"):
        await gateway.chat(model="chat", messages="Hi")


# -- response cache ------------------------------------------------------------------


async def test_identical_requests_are_served_from_cache_at_no_cost(
    gateway, openai_fake, api_key_env
):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, cache_responses=True)
    openai_fake.push(text="cached answer", prompt_tokens=10, completion_tokens=5)
    first = await gateway.chat(model="chat", messages="Same question")
    second = await gateway.chat(model="chat", messages="Same question")
    assert (second.answer, second.cached, second.cost_usd) == ("cached answer", True, 0)
    assert first.cost_usd > 0 and len(openai_fake.requests) == 1
    await gateway.chat(model="chat", messages="Another question")
    assert len(openai_fake.requests) == 2
    cached = [r.cached for r in await records()]
    assert cached == [False, True, False]


async def test_streams_are_served_from_the_cache_and_fill_it(gateway, openai_fake, api_key_env):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, cache_responses=True)
    openai_fake.push(text="streamed once", prompt_tokens=10, completion_tokens=5)

    async def streamed() -> list:
        return [event async for event in gateway.stream(model="chat", messages="Same")]

    first = await streamed()
    second = await streamed()
    plain = await gateway.chat(model="chat", messages="Same")  # one cache for both
    assert "".join(e.text for e in first[:-1]) == "streamed once"
    assert [type(e).__name__ for e in second] == ["Delta", "Done"]
    assert second[0].text == "streamed once" and second[-1].cached is True
    assert second[-1].cost_usd == 0 and second[-1].usage.completion_tokens == 5
    assert plain.cached is True and plain.answer == "streamed once"
    assert len(openai_fake.requests) == 1
    assert [(r.cached, r.streamed) for r in await records()] == [
        (False, True),
        (True, True),
        (True, False),
    ]


async def test_a_cached_plain_answer_serves_a_stream_but_not_other_effort(
    gateway, openai_fake, api_key_env
):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, cache_responses=True)
    openai_fake.push(text="plain first")
    await gateway.chat(model="chat", messages="Q")
    events = [e async for e in gateway.stream(model="chat", messages="Q")]
    assert events[0].text == "plain first" and events[-1].cached
    openai_fake.push(text="thought harder")
    harder = await gateway.chat(model="chat", messages="Q", options={"reasoning_effort": "high"})
    assert harder.answer == "thought harder" and not harder.cached


async def test_cache_is_off_unless_configured(gateway, chat_alias, openai_fake, settings):
    await gateway.chat(model="chat", messages="Q", temperature=0)
    await gateway.chat(model="chat", messages="Q", temperature=0)
    assert len(openai_fake.requests) == 2
    settings.LLM_INTEGRATION = {"CACHE_ENABLED": True}
    await gateway.chat(model="chat", messages="Q", temperature=0)
    await gateway.chat(model="chat", messages="Q", temperature=0)
    await gateway.chat(model="chat", messages="Q", temperature=0.7)
    assert len(openai_fake.requests) == 4


async def test_a_response_cache_of_its_own_keeps_at_most_its_size(
    gateway, openai_fake, api_key_env, settings
):
    settings.CACHES = {
        **settings.CACHES,
        "few": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "few-answers",
            "OPTIONS": {"MAX_ENTRIES": 3},
        },
    }
    settings.LLM_INTEGRATION = {"RESPONSE_CACHE_BACKEND": "few"}
    await sync_to_async(openai_alias)(openai_fake, api_key_env, cache_responses=True)
    for n in range(10):
        await gateway.chat(model="chat", messages=f"Question {n}")
    assert (await gateway.chat(model="chat", messages="Question 9")).cached
    assert not (await gateway.chat(model="chat", messages="Question 0")).cached  # pushed out
    caches["few"].clear()  # the answers live there, and only there
    assert not (await gateway.chat(model="chat", messages="Question 9")).cached


async def test_stale_cache_serves_degraded_when_upstreams_are_down(
    gateway, clock, openai_fake, api_key_env
):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, cache_responses=True)
    await gateway.chat(model="chat", messages="Q")
    clock.advance(7200)  # past CACHE_TTL, within CACHE_STALE_TTL
    openai_fake.push(mode="error", status=503)
    result = await gateway.chat(model="chat", messages="Q")
    assert result.degraded and result.cached and result.answer
    assert len(openai_fake.requests) == 2


async def test_stale_cache_serves_a_stream_degraded_when_upstreams_are_down(
    gateway, clock, openai_fake, api_key_env
):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, cache_responses=True)
    openai_fake.push(text="kept a while")
    await gateway.chat(model="chat", messages="Q")
    clock.advance(7200)  # past CACHE_TTL, within CACHE_STALE_TTL
    openai_fake.push(mode="error", status=503)
    events = [event async for event in gateway.stream(model="chat", messages="Q")]
    assert events[0].text == "kept a while"
    assert events[-1].degraded and events[-1].cached and events[-1].cost_usd == 0
    assert [(r.status, r.cached, r.streamed) for r in await records()][-1] == ("ok", True, True)


async def test_connection_reset_is_retried(gateway, openai_fake, api_key_env):
    await sync_to_async(openai_alias)(openai_fake, api_key_env, retries=1)
    openai_fake.push(mode="reset")
    openai_fake.push(text="after the reset")
    assert (await gateway.chat(model="chat", messages="Hi")).answer == "after the reset"
    assert len(openai_fake.requests) == 2


FAULTS = [
    {"mode": "error", "status": 429, "retry_after": "1"},
    {"mode": "error", "status": 500},
    {"mode": "error", "status": 503},
    {"mode": "slow", "delay": 5},
    {"mode": "reset"},
    {"mode": "malformed"},
    {"mode": "cut"},
    {"mode": "error", "status": 401},
    {"mode": "ok"},
]


@pytest.mark.parametrize("stream", [False, True])
async def test_one_usage_record_per_request_whatever_fails(
    gateway, openai_fake, api_key_env, stream, settings
):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_THRESHOLD": 100}  # keep calling upstream
    await sync_to_async(openai_alias)(openai_fake, api_key_env, timeout=0.3)
    outcomes = []
    for i, fault in enumerate(FAULTS):
        openai_fake.push(**fault)
        try:
            if stream:
                await drain(gateway.stream(model="chat", messages="Hi", request_id=f"r{i}"))
            else:
                await gateway.chat(model="chat", messages="Hi", request_id=f"r{i}")
            outcomes.append("ok")
        except exc.LLMError as error:
            outcomes.append(error.code)
    rows = await records()
    assert [r.request_id for r in rows] == [f"r{i}" for i in range(len(FAULTS))]
    assert [r.status for r in rows] == ["ok" if o == "ok" else "error" for o in outcomes]
    # Which request meets which fault can shift by one when a pooled connection the fake
    # closed is found dead; what matters is many kinds of failure, each recorded once.
    assert "ok" in outcomes and len(set(outcomes)) >= 4


async def test_metrics_and_structured_log(gateway, chat_alias, openai_fake, caplog, settings):
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0

    before = sample("llm_requests_total", alias="chat", provider="p-chat", status="ok")
    tokens = sample("llm_tokens_used_total", alias="chat", provider="p-chat", type="completion")
    openai_fake.push(prompt_tokens=10, completion_tokens=7)
    with caplog.at_level("INFO", logger="llm_integration"):
        result = await gateway.chat(model="chat", messages="secret prompt text")
    assert sample("llm_requests_total", alias="chat", provider="p-chat", status="ok") == before + 1
    assert (
        sample("llm_tokens_used_total", alias="chat", provider="p-chat", type="completion")
        == tokens + 7
    )
    [line] = [r for r in caplog.records if r.getMessage() == "llm.request"]
    assert (line.request_id, line.alias, line.status, line.completion_tokens) == (
        result.request_id,
        "chat",
        "ok",
        7,
    )
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert "secret prompt text" not in logged and TEST_KEY not in logged
    assert TEST_KEY not in caplog.text
    settings.LLM_INTEGRATION = {"LOG_PROMPTS": True}
    caplog.clear()
    with caplog.at_level("INFO", logger="llm_integration"):
        await gateway.chat(model="chat", messages="secret prompt text")
    assert "secret prompt text" in " ".join(str(vars(r)) for r in caplog.records)


@pytest.mark.django_db(transaction=True)
def test_sync_face_for_code_without_an_event_loop(chat_alias, openai_fake):
    from llm_integration.services.chat import chat

    openai_fake.push(text="sync answer")
    assert chat(model="chat", messages="Hi").answer == "sync answer"
    assert UsageRecord.objects.count() == 1


# -- request ids ---------------------------------------------------------------------


def test_request_ids_are_random_hex_and_unique():
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids():
    new_request_id()  # the parent has random bytes in store
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child.startswith("req_") and child != new_request_id()
