"""Rate limits: per user (plan, entitlement, setting), per provider and alias; RPM & TPM."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from llm_integration import exceptions as exc
from llm_integration.models import UsageRecord
from llm_integration.services.clock import FakeClock
from llm_integration.services.limits import sharedstate
from llm_integration.services.limits.ratelimit import Limit, RateLimiter, deferred
from tests.factories import (
    ModelAliasFactory,
    PlanEntitlementFactory,
    PlanFactory,
    ProviderFactory,
    SubscriptionFactory,
    UserFactory,
)


async def test_fixed_window_counts_and_says_when_to_retry():
    clock = FakeClock()  # 12:00:00 exactly
    limiter = RateLimiter(clock=clock)
    limit = [Limit("user:1", rpm=2)]
    await limiter.acquire(limit, tokens=0)
    clock.advance(15)
    await limiter.acquire(limit, tokens=0)
    with pytest.raises(exc.RateLimited) as info:
        await limiter.acquire(limit, tokens=0)
    assert info.value.retry_after == 45 and info.value.status_code == 429
    clock.advance(45)  # next window
    await limiter.acquire(limit, tokens=0)


async def test_refusal_gives_back_what_it_took_from_other_limits():
    limiter = RateLimiter(clock=FakeClock())
    wide, narrow = Limit("a", rpm=10), Limit("b", rpm=1)
    await limiter.acquire([wide, narrow], tokens=0)
    for _ in range(5):
        with pytest.raises(exc.RateLimited):
            await limiter.acquire([wide, narrow], tokens=0)
    # "a" was only really used once: nine more fit.
    for _ in range(9):
        await limiter.acquire([wide], tokens=0)
    with pytest.raises(exc.RateLimited):
        await limiter.acquire([wide], tokens=0)


async def test_tokens_per_minute_with_adjustment_to_the_real_count():
    limiter = RateLimiter(clock=FakeClock())
    limit = [Limit("t", tpm=1000)]
    taken = await limiter.acquire(limit, tokens=800)
    limiter.adjust_tokens(taken, actual=100, estimated=800)
    await limiter.acquire(limit, tokens=800)  # 100 + 800 fits
    with pytest.raises(exc.RateLimited, match="1000 tokens"):
        await limiter.acquire(limit, tokens=200)


async def test_token_corrections_ride_with_the_next_request_or_go_alone():
    store = sharedstate.store()
    limiter = RateLimiter(clock=FakeClock())
    mine = await limiter.acquire([Limit("mine", tpm=1000)], tokens=800)
    limiter.adjust_tokens(mine, actual=100, estimated=800)
    key = mine[0].key
    assert await store.get_many([key]) == {key: 800}  # waiting: no round trip of its own
    await limiter.acquire([Limit("other", rpm=5)], tokens=0)  # another request's round trip
    assert await store.get_many([key]) == {key: 100}
    limiter.adjust_tokens(mine, actual=50, estimated=100)  # nobody else comes: the timer
    for _ in range(500):
        if await store.get_many([key]) == {key: 50}:
            break
        await asyncio.sleep(0.01)
    assert await store.get_many([key]) == {key: 50}


@pytest.mark.skipif(
    "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
    reason="needs Redis: set REDIS_URL=redis://127.0.0.1:6379/15 (CI's second pass does)",
)
async def test_redis_counters_are_plain_integers_that_always_expire():
    import redis.asyncio

    store = sharedstate.store()
    raw = redis.asyncio.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    limiter = RateLimiter(clock=FakeClock())
    taken = await limiter.acquire([Limit("u", rpm=5, tpm=1000)], tokens=300)
    keys = [store.key(c.key) for c in taken]
    assert [int(v) for v in await raw.mget(keys)] == [1, 300]
    assert all(0 < ttl <= 120 for ttl in [await raw.ttl(k) for k in keys])
    await raw.delete(*keys)  # the window expired before the request ended
    await limiter.release(taken)
    limiter.adjust_tokens(taken, actual=50, estimated=300)
    await deferred.aflush()
    assert -1 not in [await raw.ttl(k) for k in keys]  # -1: forever
    await raw.aclose()


@pytest.mark.django_db(transaction=True)
async def test_plan_rpm_refuses_and_records_refused(gateway, clock):
    await sync_to_async(PlanFactory)(slug="free", rpm_limit=2)
    user = await sync_to_async(UserFactory)()
    await sync_to_async(ModelAliasFactory)(slug="default", provider__kind="dummy")
    for _ in range(2):
        await gateway.chat(user=user, messages="hi")
    with pytest.raises(exc.RateLimited) as info:
        await gateway.chat(user=user, messages="hi", request_id="req_rl")
    assert info.value.retry_after == 60
    record = await UsageRecord.objects.aget(request_id="req_rl")
    assert (record.status, record.error_type, record.plan) == ("refused", "rate_limited", "free")
    # Another user on the same plan has an allowance of their own.
    other = await sync_to_async(UserFactory)()
    await gateway.chat(user=other, messages="hi")
    clock.advance(60)
    await gateway.chat(user=user, messages="hi")


@pytest.mark.django_db(transaction=True)
async def test_entitlement_and_setting_limits(gateway, settings):
    settings.LLM_INTEGRATION = {"RATE_LIMIT_RPM": 3}
    alias = await sync_to_async(ModelAliasFactory)(slug="default", provider__kind="dummy")
    user = await sync_to_async(UserFactory)()
    ent = await sync_to_async(PlanEntitlementFactory)(alias=alias, rpm_limit=1)
    await sync_to_async(SubscriptionFactory)(user=user, plan=ent.plan)
    await gateway.chat(user=user, messages="hi")
    with pytest.raises(exc.RateLimited, match="on your plan"):
        await gateway.chat(user=user, messages="hi")


@pytest.mark.django_db(transaction=True)
async def test_provider_limit_is_shared_and_falls_back(gateway):
    from llm_integration.models import AliasFallback

    busy = await sync_to_async(ProviderFactory)(name="busy", kind="dummy", rpm_limit=1)
    primary = await sync_to_async(ModelAliasFactory)(slug="default", provider=busy)
    backup = await sync_to_async(ModelAliasFactory)(slug="backup", provider__kind="dummy")
    first = await gateway.chat(user=await sync_to_async(UserFactory)(), messages="hi")
    assert first.model == "default"
    await AliasFallback.objects.acreate(alias=primary, fallback=backup)
    second = await gateway.chat(user=await sync_to_async(UserFactory)(), messages="hi")
    assert second.model == "backup"
    await AliasFallback.objects.all().adelete()
    with pytest.raises(exc.RateLimited, match="provider busy"):
        await gateway.chat(messages="hi")
