"""The circuit breaker's process-local view of the shared state, and the shared store
the gateway's keys go through (one per process, async, never blocking the loop)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

from llm_integration.services.clock import FakeClock
from llm_integration.services.limits import sharedstate
from llm_integration.services.limits.circuit import CircuitBreaker
from llm_integration.services.limits.sharedstate import DjangoStore

FAILURES, OPEN_UNTIL, PROBE = "llm:cb:p:failures", "llm:cb:p:open_until", "llm:cb:p:probe"


class CountingCache(LocMemCache):
    """A real local-memory cache that counts its reads (each a round trip on Redis)."""

    def __init__(self) -> None:
        super().__init__("circuit-tests", {})
        self.reads = 0

    def get(self, *args, **kwargs):
        self.reads += 1
        return super().get(*args, **kwargs)

    def get_many(self, keys, version=None):
        self.reads += 1
        missing = object()
        found = {key: LocMemCache.get(self, key, missing, version) for key in keys}
        return {key: value for key, value in found.items() if value is not missing}


@pytest.fixture
def cache():
    cache = CountingCache()
    cache.clear()
    yield cache
    cache.clear()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(autouse=True)
def _thresholds(settings):
    settings.LLM_INTEGRATION = {
        "CIRCUIT_BREAKER_THRESHOLD": 2,
        "CIRCUIT_BREAKER_COOLDOWN": 30,
        "CIRCUIT_BREAKER_CHECK_INTERVAL": 1.0,
    }


@pytest.fixture
def store(cache):
    return DjangoStore(cache)


def breaker(store, clock) -> CircuitBreaker:
    """A new breaker object each time, as the gateway makes one per request."""
    return CircuitBreaker("p", clock=clock, store=store)


async def test_a_healthy_circuit_is_read_once_per_interval_not_per_request(cache, store, clock):
    for _ in range(100):
        b = breaker(store, clock)
        assert await b.allow()
        await b.record_success()
    assert cache.reads == 1
    clock.advance(1.0)
    assert await breaker(store, clock).allow()
    assert cache.reads == 2


async def test_a_circuit_opened_elsewhere_is_seen_within_the_interval(cache, store, clock):
    assert await breaker(store, clock).allow()  # this process's view: closed
    cache.set(OPEN_UNTIL, clock.time() + 30, timeout=None)  # another process opened it
    assert await breaker(store, clock).allow()  # still trusting the view
    clock.advance(1.0)
    assert not await breaker(store, clock).allow()


async def test_interval_zero_reads_the_shared_state_every_time(cache, store, clock, settings):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_CHECK_INTERVAL": 0}
    assert await breaker(store, clock).allow()
    cache.set(OPEN_UNTIL, clock.time() + 30, timeout=None)
    assert not await breaker(store, clock).allow()


async def test_own_failures_count_at_once_and_a_success_resets_them(cache, store, clock):
    await breaker(store, clock).allow()
    await breaker(store, clock).record_failure()
    assert cache.get(FAILURES) == 1
    await breaker(store, clock).record_success()  # no new read needed: the view knows
    assert cache.get(FAILURES) is None
    await breaker(store, clock).record_failure()
    await breaker(store, clock).record_failure()  # threshold 2
    assert not await breaker(store, clock).allow()
    assert await breaker(store, clock).state() == "open"


async def test_half_open_is_read_again_before_a_probe_is_claimed(cache, store, clock):
    b = breaker(store, clock)
    await b.force_open()
    clock.advance(30)  # cool-down over: the view says half-open
    cache.delete_many([FAILURES, OPEN_UNTIL, PROBE])  # another process's probe closed it
    assert await breaker(store, clock).allow()
    assert cache.get(PROBE) is None  # no probe claimed: the circuit is closed


async def test_one_probe_per_cool_down_and_a_failed_probe_reopens(cache, store, clock):
    await breaker(store, clock).force_open()
    assert not await breaker(store, clock).allow()
    clock.advance(30)
    assert await breaker(store, clock).allow()  # the probe
    assert not await breaker(store, clock).allow()  # only one
    await breaker(store, clock).record_failure()
    assert await breaker(store, clock).state() == "open"
    clock.advance(30)
    assert await breaker(store, clock).allow()
    await breaker(store, clock).record_success()
    assert await breaker(store, clock).state() == "closed" and cache.get(OPEN_UNTIL) is None


async def test_state_always_reads_the_shared_cache(cache, store, clock):
    assert await breaker(store, clock).state() == "closed"
    cache.set(OPEN_UNTIL, clock.time() + 30, timeout=None)
    assert await breaker(store, clock).state() == "open"


# -- the shared store ------------------------------------------------------------------


def served(main):
    """Run ``main()`` on an event loop in a new thread: a fresh context, as a server's
    request tasks have (asgiref's Local keeps Django's cache objects per context)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def test_the_store_is_one_object_across_tasks_while_djangos_cache_is_one_per_task():
    async def both():
        return sharedstate.store(), caches["default"]

    async def main():
        return await asyncio.gather(asyncio.create_task(both()), asyncio.create_task(both()))

    (ours_a, django_a), (ours_b, django_b) = served(main)
    assert ours_a is ours_b
    assert django_a is not django_b  # what made every request open a Redis connection


def test_changed_cache_settings_build_a_new_store(settings):
    before = sharedstate.store()
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "x"}
    }
    assert sharedstate.store() is not before
    assert sharedstate.store() is sharedstate.store()


@pytest.mark.skipif(
    "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
    reason="needs Redis: set REDIS_URL=redis://127.0.0.1:6379/15 (CI's second pass does)",
)
def test_requests_in_their_own_tasks_reuse_the_loops_redis_connections():
    import redis

    stats = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])

    async def request(i: int) -> None:
        store = sharedstate.store()
        await store.set(f"k{i}", i, None)
        assert (await store.get_many([f"k{i}"])) == {f"k{i}": i}

    async def twenty():
        await asyncio.gather(*(asyncio.create_task(request(i)) for i in range(20)))

    async def main():
        await twenty()  # the loop's pool: at most one connection per concurrent call
        before = stats.info("stats")["total_connections_received"]
        await twenty()
        return before

    before = served(main)
    assert stats.info("stats")["total_connections_received"] == before  # all reused
