"""The shared cache down or stalled (Redis unreachable, or accepting and never answering):
the gateway keeps answering, says why it cannot when rate limits apply, tries the cache
once per interval, and never blocks its event loop waiting for it.

The caches here are Django's Redis backend pointed at a port nothing listens on, or at
a loopback server that accepts connections and never answers: no Redis server needed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading

import pytest
from asgiref.sync import sync_to_async
from rest_framework.authtoken.models import Token

from llm_integration import exceptions as exc
from llm_integration.models import Provider, UsageRecord
from llm_integration.services.chat import Delta, Done
from llm_integration.services.limits import sharedstate
from llm_integration.services.limits.circuit import CircuitBreaker
from tests.api.test_rest_api import client_for, error_of, post_chat
from tests.factories import ModelAliasFactory, PlanFactory, SubscriptionFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

DEAD = "redis://127.0.0.1:1/0"


def redis_cache(location: str) -> dict:
    return {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location}
    }


@pytest.fixture
def cache_down(settings):
    settings.CACHES = redis_cache(DEAD)
    yield
    sharedstate.reset()


class StallingServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a Redis that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def cache_stalled(settings):
    server = StallingServer()
    settings.CACHES = redis_cache(f"redis://127.0.0.1:{server.port}/0")
    yield server
    server.close()
    sharedstate.reset()


@pytest.fixture
def token(db):
    ModelAliasFactory(slug="default", provider__kind="dummy")
    return Token.objects.create(user=UserFactory()).key


def outages(caplog) -> int:
    return sum(r.getMessage() == "llm.cache_unavailable" for r in caplog.records)


async def test_chat_answers_with_the_cache_down_and_tries_it_once_per_interval(
    cache_down, gateway, caplog
):
    await sync_to_async(ModelAliasFactory)(slug="default", provider__kind="dummy")
    caplog.set_level(logging.WARNING, logger="llm_integration.cache")
    for _ in range(3):
        assert (await gateway.chat(messages="Hi")).answer
    assert not sharedstate.available()
    assert outages(caplog) == 1  # circuit, limits, ...: one attempt, then none
    assert await UsageRecord.objects.filter(status="ok").acount() == 3


async def test_rate_limits_refuse_with_503_while_the_cache_is_down(cache_down, token, settings):
    settings.LLM_INTEGRATION = {"RATE_LIMIT_RPM": 100}
    response = await post_chat(client_for(token), {"message": "hi"})
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "rate_limit_unavailable" and "shared cache" in error["message"]
    assert int(response["Retry-After"]) >= 1
    record = await UsageRecord.objects.aget()
    assert (record.status, record.error_type) == ("error", "rate_limit_unavailable")


async def test_rate_limits_fail_open_when_configured(cache_down, gateway, settings):
    settings.LLM_INTEGRATION = {"RATE_LIMIT_RPM": 1, "RATE_LIMIT_FAIL_OPEN": True}
    await sync_to_async(ModelAliasFactory)(slug="default", provider__kind="dummy")
    for _ in range(3):  # over the limit, but nothing can count: admitted
        assert (await gateway.chat(messages="Hi")).answer


async def test_without_the_cache_a_process_still_opens_its_own_circuits(cache_down, settings):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_THRESHOLD": 2}
    breaker = CircuitBreaker("p")
    assert await breaker.allow() and await breaker.state() == "closed"
    await breaker.record_failure()
    await breaker.record_failure()
    assert not await CircuitBreaker("p").allow()  # known here, though nothing was shared
    await CircuitBreaker("p").record_success()


async def test_the_cache_is_tried_again_after_the_interval(cache_down, settings, monkeypatch):
    settings.LLM_INTEGRATION = {"CACHE_RETRY_INTERVAL": 5}
    calls = []

    async def failing():
        calls.append(1)
        raise ConnectionError("refused")

    async def working():
        return "back"

    now = [1000.0]
    monkeypatch.setattr(sharedstate.time, "monotonic", lambda: now[0])
    assert await sharedstate.guarded(failing, "fallback") == "fallback"
    assert await sharedstate.guarded(failing, "fallback") == "fallback"
    assert len(calls) == 1  # the second call did not try
    now[0] += 5
    assert await sharedstate.guarded(working, "fallback") == "back"
    assert sharedstate.available()


# -- a stalled Redis -------------------------------------------------------------------


@pytest.fixture
async def stream_and_limited(settings, cache_stalled):
    """A slow stream for a user without limits, and a user whose plan has one."""
    settings.LLM_INTEGRATION = {"CACHE_TIMEOUT": 1.0, "CACHE_RETRY_INTERVAL": 0}
    alias = await sync_to_async(ModelAliasFactory)(slug="default", provider__kind="dummy")
    await Provider.objects.filter(pk=alias.provider_id).aupdate(options={"delay": 0.05})
    free = await sync_to_async(UserFactory)()
    limited = await sync_to_async(SubscriptionFactory)(
        plan=await sync_to_async(PlanFactory)(slug="metered", rpm_limit=100)
    )
    return free, limited.user


async def run_beside_a_stream(gateway, free, others) -> tuple[list[float], list, float]:
    """Stream 40 words (0.05 s apart) to ``free`` while ``others`` run once the stream
    has started; (gaps between the stream's words, the others' outcomes, when the
    stream ended)."""
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    started = asyncio.Event()

    async def stream():
        async for event in gateway.stream(user=free, messages=" ".join(["w"] * 34)):
            if isinstance(event, Delta):
                arrivals.append(loop.time())
                started.set()
            assert not isinstance(event, Done) or event.usage.completion_tokens
        return loop.time()

    async def later(call):
        await started.wait()
        try:
            result = await call()
        except exc.LLMError as error:
            result = error
        return result, loop.time()

    ended, *outcomes = await asyncio.gather(stream(), *(later(c) for c in others))
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return gaps, outcomes, ended


async def test_a_stalled_redis_neither_stops_running_streams_nor_hangs_new_requests(
    gateway, stream_and_limited
):
    free, limited = stream_and_limited
    gaps, outcomes, ended = await run_beside_a_stream(
        gateway,
        free,
        [lambda: gateway.chat(user=limited, messages="Hi") for _ in range(3)],
    )
    assert len(gaps) > 30
    # The loop never waited for Redis: each stalled call (1 s) would show as a gap.
    assert max(gaps) < 0.5
    for result, finished in outcomes:
        assert isinstance(result, exc.RateLimitUnavailable)  # as documented: 503
        assert finished < ended  # refused after CACHE_TIMEOUT, while the stream still ran
    refused = await UsageRecord.objects.filter(error_type="rate_limit_unavailable").acount()
    assert refused == 3


async def test_a_stalled_redis_with_fail_open_admits_uncounted(
    gateway, stream_and_limited, settings
):
    settings.LLM_INTEGRATION = {**settings.LLM_INTEGRATION, "RATE_LIMIT_FAIL_OPEN": True}
    free, limited = stream_and_limited
    gaps, outcomes, _ended = await run_beside_a_stream(
        gateway, free, [lambda: gateway.chat(user=limited, messages="Hi")]
    )
    assert max(gaps) < 0.5
    [(result, _finished)] = outcomes
    assert result.answer.endswith("You said: Hi")
