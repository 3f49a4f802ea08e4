"""The circuit breaker's process-local view of the shared state, and the one cache
object per process the gateway's cache keys go through."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

from llm_integration.services import sharedcache
from llm_integration.services.circuit import CircuitBreaker
from llm_integration.services.clock import FakeClock

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


def breaker(cache, clock) -> CircuitBreaker:
    """A new breaker object each time, as the gateway makes one per request."""
    return CircuitBreaker("p", clock=clock, cache=cache)


def test_a_healthy_circuit_is_read_once_per_interval_not_per_request(cache, clock):
    for _ in range(100):
        b = breaker(cache, clock)
        assert b.allow()
        b.record_success()
    assert cache.reads == 1
    clock.advance(1.0)
    assert breaker(cache, clock).allow()
    assert cache.reads == 2


def test_a_circuit_opened_elsewhere_is_seen_within_the_interval(cache, clock):
    assert breaker(cache, clock).allow()  # this process's view: closed
    cache.set(OPEN_UNTIL, clock.time() + 30, timeout=None)  # another process opened it
    assert breaker(cache, clock).allow()  # still trusting the view
    clock.advance(1.0)
    assert not breaker(cache, clock).allow()


def test_interval_zero_reads_the_shared_state_every_time(cache, clock, settings):
    settings.LLM_INTEGRATION = {"CIRCUIT_BREAKER_CHECK_INTERVAL": 0}
    assert breaker(cache, clock).allow()
    cache.set(OPEN_UNTIL, clock.time() + 30, timeout=None)
    assert not breaker(cache, clock).allow()


def test_own_failures_count_at_once_and_a_success_resets_them(cache, clock):
    breaker(cache, clock).allow()
    breaker(cache, clock).record_failure()
    assert cache.get(FAILURES) == 1
    breaker(cache, clock).record_success()  # no new read needed: the view knows
    assert cache.get(FAILURES) is None
    breaker(cache, clock).record_failure()
    breaker(cache, clock).record_failure()  # threshold 2
    assert not breaker(cache, clock).allow()
    assert breaker(cache, clock).state == "open"


def test_half_open_is_read_again_before_a_probe_is_claimed(cache, clock):
    b = breaker(cache, clock)
    b.force_open()
    clock.advance(30)  # cool-down over: the view says half-open
    cache.delete_many([FAILURES, OPEN_UNTIL, PROBE])  # another process's probe closed it
    assert breaker(cache, clock).allow()
    assert cache.get(PROBE) is None  # no probe claimed: the circuit is closed


def test_one_probe_per_cool_down_and_a_failed_probe_reopens(cache, clock):
    breaker(cache, clock).force_open()
    assert not breaker(cache, clock).allow()
    clock.advance(30)
    assert breaker(cache, clock).allow()  # the probe
    assert not breaker(cache, clock).allow()  # only one
    breaker(cache, clock).record_failure()
    assert breaker(cache, clock).state == "open"
    clock.advance(30)
    assert breaker(cache, clock).allow()
    breaker(cache, clock).record_success()
    assert breaker(cache, clock).state == "closed" and cache.get(OPEN_UNTIL) is None


def test_state_always_reads_the_shared_cache(cache, clock):
    assert breaker(cache, clock).state == "closed"
    cache.set(OPEN_UNTIL, clock.time() + 30, timeout=None)
    assert breaker(cache, clock).state == "open"


# -- one cache object per process ----------------------------------------------------


def served(main):
    """Run ``main()`` on an event loop in a new thread: a fresh context, as a server's
    request tasks have (asgiref's Local keeps Django's cache objects per context)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def test_the_gateway_cache_is_one_object_across_tasks_while_djangos_is_one_per_task():
    async def both():
        return sharedcache.backend(), caches["default"]

    async def main():
        return await asyncio.gather(asyncio.create_task(both()), asyncio.create_task(both()))

    (ours_a, django_a), (ours_b, django_b) = served(main)
    assert ours_a is ours_b
    assert django_a is not django_b  # what made every request open a Redis connection


def test_changed_cache_settings_build_a_new_object(settings):
    before = sharedcache.backend()
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "x"}
    }
    assert sharedcache.backend() is not before
    assert sharedcache.backend() is sharedcache.backend()


@pytest.mark.skipif(
    "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
    reason="needs Redis: set REDIS_URL=redis://127.0.0.1:6379/15 (CI's second pass does)",
)
def test_requests_in_their_own_tasks_share_one_redis_connection():
    import redis

    stats = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    sharedcache.backend().get("warm")  # the process's one connection
    before = stats.info("stats")["total_connections_received"]

    async def request(i: int) -> None:
        cache = sharedcache.backend()
        cache.set(f"k{i}", i)
        assert cache.get(f"k{i}") == i

    async def main():
        await asyncio.gather(*(asyncio.create_task(request(i)) for i in range(20)))

    served(main)
    assert stats.info("stats")["total_connections_received"] - before == 0
