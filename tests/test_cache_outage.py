"""The shared cache down (Redis unreachable): the gateway keeps answering, says why it
cannot when rate limits apply, and tries the cache once per interval, not per call.

The cache here is Django's Redis backend pointed at a port nothing listens on: every
attempt is refused at once, no Redis server needed.
"""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import sync_to_async
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from llm_integration.services import sharedcache
from llm_integration.services.circuit import CircuitBreaker
from tests.api.test_rest_api import client_for, error_of, post_chat
from tests.factories import ModelAliasFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

DEAD = "redis://127.0.0.1:1/0"


@pytest.fixture
def cache_down(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": DEAD}
    }
    yield
    sharedcache.reset()


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
    assert not sharedcache.available()
    assert outages(caplog) == 1  # config version, circuit, ...: one attempt, then none
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


def test_without_the_cache_a_process_still_opens_its_own_circuits(cache_down, settings):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_THRESHOLD": 2}
    breaker = CircuitBreaker("p")
    assert breaker.allow() and breaker.state == "closed"
    breaker.record_failure()
    breaker.record_failure()
    assert not CircuitBreaker("p").allow()  # known here, though nothing could be shared
    CircuitBreaker("p").record_success()


def test_the_cache_is_tried_again_after_the_interval(cache_down, settings, monkeypatch):
    settings.LLM_INTEGRATION = {"CACHE_RETRY_INTERVAL": 5}
    calls = []

    def failing():
        calls.append(1)
        raise ConnectionError("refused")

    now = [1000.0]
    monkeypatch.setattr(sharedcache.time, "monotonic", lambda: now[0])
    assert sharedcache.guarded(failing, "fallback") == "fallback"
    assert sharedcache.guarded(failing, "fallback") == "fallback"
    assert len(calls) == 1  # the second call did not try
    now[0] += 5
    assert sharedcache.guarded(lambda: "back", "fallback") == "back"
    assert sharedcache.available()
