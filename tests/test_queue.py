"""Waiting at the limits (CONTRACT §8): over a concurrency cap or a rate limit a request
waits its plan's ``queue_timeout_seconds``, higher priority first and first come first
served within a priority; past it, 429 ``rate_limited`` with ``Retry-After``; a client
that goes away leaves the line; the wait is recorded (``queued_ms``) and measured.

Against a loopback OpenAI fake whose answers are held until the test opens its gate:
what the upstream received, and in which order, is the evidence. The conditions the
tests wait for (a request in line, a request at the upstream) are polled, never timed.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from prometheus_client import REGISTRY

from llm_integration import exceptions as exc
from llm_integration.models import UsageRecord
from llm_integration.services.chat import Gateway
from llm_integration.services.clock import FakeClock
from llm_integration.services.limits import concurrency
from llm_integration.services.limits.concurrency import Cap, LocalSlots
from tests.factories import (
    ModelAliasFactory,
    PlanFactory,
    ProviderFactory,
    SubscriptionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def capped(capped_alias):
    return capped_alias(1)


def user_on(slug: str, *, priority: int = 0, wait: int = 60):
    plan = PlanFactory(slug=slug, priority=priority, queue_timeout_seconds=wait)
    return SubscriptionFactory(plan=plan, user=UserFactory()).user


async def until(condition, what: str) -> None:
    """Poll ``condition`` (a state to reach, not a time to wait) for at most 30 s."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def waiting(gateway: Gateway) -> int:
    return sum(len(line) for line in gateway.queue.lines.values())


def said(fake) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in fake.requests]


async def test_waiters_are_served_by_priority_then_arrival(capped):
    batch = await sync_to_async(user_on)("batch", priority=0)
    critical = await sync_to_async(user_on)("critical", priority=5)
    gateway = Gateway()

    def ask(user, text):
        return asyncio.create_task(gateway.chat(user=user, model="capped", messages=text))

    tasks = [ask(batch, "first")]
    await until(lambda: len(capped.requests) == 1, "the first request at the upstream")
    for n, (user, text) in enumerate(
        [(batch, "b1"), (critical, "c1"), (batch, "b2"), (critical, "c2"), (batch, "b3")]
    ):
        tasks.append(ask(user, text))
        await until(lambda n=n: waiting(gateway) == n + 1, f"{text} in line")
    assert said(capped) == ["first"]  # the cap holds: nobody else reached the upstream
    capped.gate.set()
    results = await asyncio.gather(*tasks)
    assert said(capped) == ["first", "c1", "c2", "b1", "b2", "b3"]
    assert all(r.answer for r in results)
    records = {r.request_id: r async for r in UsageRecord.objects.all()}
    assert [records[r.request_id].queued_ms > 0 for r in results] == [False] + [True] * 5


async def test_past_its_patience_a_request_gets_429_with_retry_after(capped):
    clock = FakeClock()  # the wait passes at once: its length is the clock's
    gateway = Gateway(clock=clock)
    holder = await sync_to_async(user_on)("holder")
    patient = await sync_to_async(user_on)("patient", wait=3)
    first = asyncio.create_task(gateway.chat(user=holder, model="capped", messages="hold"))
    await until(lambda: len(capped.requests) == 1, "the first request at the upstream")
    with pytest.raises(exc.RateLimited) as refused:
        await gateway.chat(user=patient, model="capped", messages="wait")
    assert refused.value.retry_after >= 1
    assert "in flight for model capped (1 at once) after waiting 3.0 s" in refused.value.message
    record = await UsageRecord.objects.aget(status="refused")
    assert (record.error_type, record.queued_ms) == ("rate_limited", 3000)
    assert waiting(gateway) == 0 and said(capped) == ["hold"]
    capped.gate.set()
    assert (await first).answer


async def test_without_patience_a_capped_request_is_refused_at_once(capped):
    holder = await sync_to_async(user_on)("holder")
    hasty = await sync_to_async(user_on)("hasty", wait=0)
    gateway = Gateway()
    first = asyncio.create_task(gateway.chat(user=holder, model="capped", messages="hold"))
    await until(lambda: len(capped.requests) == 1, "the first request at the upstream")
    with pytest.raises(exc.RateLimited) as refused:
        await gateway.chat(user=hasty, model="capped", messages="now")
    assert "after waiting" not in refused.value.message
    assert waiting(gateway) == 0
    capped.gate.set()
    await first


async def test_a_client_that_goes_away_leaves_the_line(capped):
    user = await sync_to_async(user_on)("line")
    gateway = Gateway()

    def ask(text):
        return asyncio.create_task(gateway.chat(user=user, model="capped", messages=text))

    first = ask("first")
    await until(lambda: len(capped.requests) == 1, "the first request at the upstream")
    leaving, staying = ask("leaving"), ask("staying")
    await until(lambda: waiting(gateway) == 2, "two in line")
    leaving.cancel()
    await until(lambda: waiting(gateway) == 1, "the cancelled request out of line")
    capped.gate.set()
    await first
    assert (await staying).answer
    assert said(capped) == ["first", "staying"]
    statuses = sorted([r.status async for r in UsageRecord.objects.all()])
    assert statuses == ["cancelled", "ok", "ok"]


async def test_a_fallback_serves_while_the_capped_alias_is_full(capped, api_key_env):
    from llm_integration.models import AliasFallback, ModelAlias

    def rows():
        spare = ModelAliasFactory(
            slug="spare", provider=ModelAlias.objects.get(slug="capped").provider
        )
        AliasFallback.objects.create(alias=ModelAlias.objects.get(slug="capped"), fallback=spare)
        return user_on("fallback")

    user = await sync_to_async(rows)()
    gateway = Gateway()
    first = asyncio.create_task(gateway.chat(user=user, model="capped", messages="hold"))
    await until(lambda: len(capped.requests) == 1, "the first request at the upstream")
    capped.push(mode="ok")
    result = await gateway.chat(user=user, model="capped", messages="elsewhere")
    assert result.model == "spare" and waiting(gateway) == 0
    capped.gate.set()
    await first


async def test_an_rpm_limit_waits_for_the_next_minute_when_the_plan_allows(openai_fake):
    clock = FakeClock()  # 12:00:00: the next window opens in 60 s
    gateway = Gateway(clock=clock)

    def rows():
        ModelAliasFactory(slug="default", provider=ProviderFactory(kind="dummy"))
        plan = PlanFactory(slug="slow", rpm_limit=1, queue_timeout_seconds=90)
        impatient = PlanFactory(slug="quick", rpm_limit=1, queue_timeout_seconds=30)
        return (
            SubscriptionFactory(plan=plan).user,
            SubscriptionFactory(plan=impatient).user,
        )

    patient, impatient = await sync_to_async(rows)()
    await gateway.chat(user=patient, messages="one")
    second = await gateway.chat(user=patient, messages="two")
    assert clock.slept == [60.0]  # waited for the window to turn, then went on
    record = await UsageRecord.objects.aget(request_id=second.request_id)
    assert record.queued_ms == 60_000

    await gateway.chat(user=impatient, messages="one")
    with pytest.raises(exc.RateLimited) as refused:  # the window turns past its patience
        await gateway.chat(user=impatient, messages="two")
    assert refused.value.retry_after == 60 and clock.slept == [60.0]


async def test_the_wait_and_the_line_are_measured(capped):
    user = await sync_to_async(user_on)("measured")
    gateway = Gateway()
    before = REGISTRY.get_sample_value("llm_queue_wait_seconds_count", {"limit": "concurrency"})
    first = asyncio.create_task(gateway.chat(user=user, model="capped", messages="hold"))
    await until(lambda: len(capped.requests) == 1, "the first request at the upstream")
    second = asyncio.create_task(gateway.chat(user=user, model="capped", messages="next"))
    await until(lambda: waiting(gateway) == 1, "one in line")
    assert REGISTRY.get_sample_value("llm_queue_depth", {"limit": "concurrency"}) == 1
    capped.gate.set()
    await asyncio.gather(first, second)
    assert REGISTRY.get_sample_value("llm_queue_depth", {"limit": "concurrency"}) == 0
    after = REGISTRY.get_sample_value("llm_queue_wait_seconds_count", {"limit": "concurrency"})
    assert after == (before or 0) + 1


async def test_a_killed_processs_slots_free_themselves_when_their_leases_end():
    slots = concurrency.slots_for(concurrency.sharedstate.store())
    cap = Cap(f"alias:lease-test-{id(slots)}", 1, "model x")
    now = 1_000_000.0
    assert await slots.acquire([cap], "dead-process-1", 1, now)
    assert not await slots.acquire([cap], "alive-1", 2, now + 1)  # held, and now waiting
    later = now + concurrency.LEASE_SECONDS + 0.001
    assert await slots.acquire([cap], "alive-1", 2, later)
    await slots.release([cap], "alive-1")


async def test_a_waiter_that_stopped_asking_leaves_the_shared_line():
    slots = LocalSlots()
    cap = Cap("alias:waiters", 1, "model x")
    assert await slots.acquire([cap], "holder", 5, 0.0)
    assert not await slots.acquire([cap], "gone", 1, 1.0)  # registered, ahead of "late"
    await slots.release([cap], "holder")
    assert not await slots.acquire([cap], "late", 2, 2.0)  # "gone" is owed the slot
    assert await slots.acquire([cap], "late", 2, 2.0 + concurrency.WAITER_SECONDS)


async def test_a_request_waits_its_plans_patience_once_across_limits(openai_fake, api_key_env):
    # 12:00:40: the minute turns in 20 s (within the holder's 30 s lease on this clock).
    clock = FakeClock(dt.datetime(2026, 11, 21, 12, 0, 40, tzinfo=dt.UTC))
    gateway = Gateway(clock=clock)

    def rows():
        provider = ProviderFactory(
            name="cloud", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
        )
        ModelAliasFactory(slug="free", provider=provider, upstream_model="gpt-4o-mini")
        ModelAliasFactory(
            slug="capped", provider=provider, upstream_model="gpt-4o-mini", max_concurrency=1
        )
        plan = PlanFactory(slug="rpm", rpm_limit=1, queue_timeout_seconds=25)
        return user_on("holder"), SubscriptionFactory(plan=plan).user

    holder, user = await sync_to_async(rows)()
    openai_fake.push(mode="held")
    held = asyncio.create_task(gateway.chat(user=holder, model="capped", messages="hold"))
    await until(lambda: len(openai_fake.requests) == 1, "the holder at the upstream")
    await gateway.chat(user=user, model="free", messages="one")  # the minute's request
    with pytest.raises(exc.RateLimited) as refused:
        # 20 s for the minute to turn, then 5 s (not 25) at the cap.
        await gateway.chat(user=user, model="capped", messages="two")
    assert "after waiting 5.0 s" in refused.value.message
    record = await UsageRecord.objects.aget(status="refused")
    assert record.queued_ms == 25_000
    openai_fake.gate.set()
    await held


async def test_a_waiter_for_a_full_alias_does_not_hold_back_its_providers_others():
    slots = LocalSlots()
    provider = Cap("provider:1", 3, "provider p")
    full_alias, other_alias = Cap("alias:1", 2, "model a"), Cap("alias:2", 5, "model b")
    for member in ("a1", "a2"):
        assert await slots.acquire([provider, full_alias], member, 10, 0.0)
    assert not await slots.acquire([provider, full_alias], "waits-for-a", 1, 1.0)
    assert await slots.acquire([provider, other_alias], "b1", 20, 2.0)  # the provider's third
    assert not await slots.acquire([provider, other_alias], "b2", 21, 2.0)  # now it is full


async def test_the_shared_store_keeps_the_same_rules():
    """The caps in the test run's store (Redis in CI's second pass, else memory)."""
    slots = concurrency.slots_for(concurrency.sharedstate.store())
    tag = id(slots)
    provider = Cap(f"provider:rules-{tag}", 3, "provider p")
    full_alias = Cap(f"alias:rules-a-{tag}", 2, "model a")
    other_alias = Cap(f"alias:rules-b-{tag}", 5, "model b")
    now = 2_000_000.0
    members = ["a1", "a2", "waits", "b1", "b2"]
    try:
        for member in ("a1", "a2"):
            assert await slots.acquire([provider, full_alias], member, 10, now)
        assert not await slots.acquire([provider, full_alias], "waits", 1, now)
        assert await slots.acquire([provider, other_alias], "b1", 20, now)
        assert not await slots.acquire([provider, other_alias], "b2", 21, now)
        await slots.release([provider, full_alias], "a2")
        assert await slots.acquire([provider, full_alias], "waits", 1, now)
        assert not await slots.acquire([provider, other_alias], "b2", 21, now)
        # A waiter holds its place where the cap is full for it: others wait behind it.
        assert not await slots.acquire([provider, full_alias], "a3", 30, now)
        await slots.release([provider, other_alias], "b1")
        assert not await slots.acquire([provider, other_alias], "b2", 40, now)  # a3 first
        await slots.release([provider, full_alias], "waits")
        assert await slots.acquire([provider, full_alias], "a3", 30, now)
        members.append("a3")
    finally:
        for member in members:
            await slots.release([provider, full_alias, other_alias], member)
