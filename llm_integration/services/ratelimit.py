"""Step 3: requests and tokens per minute, kept in Django's cache.

Fixed one-minute windows keyed by the window number; every check is an atomic
increment (INCRBY on Redis, pipelined: one round trip per request; a locked update in
local memory), never a read-then-write, so limits hold across processes that share a
Redis cache. A request refused by one limit gives back what it took from the others.

After the call a request's token counters are corrected from its worst case to what it
used. On Redis that correction waits (``Deferred``) and rides in the next request's
pipeline, or goes on its own at most ``FLUSH_DELAY`` later when no request comes, so a
request costs one blocking round trip on the event loop, not two. Until then a counter
holds the worst case (it only ever refuses early, never admits too much, unless a
provider reports more tokens than the worst case). Pending corrections are sent at
ASGI lifespan shutdown and at exit.

Limits come from the rows (provider, alias, plan, entitlement) and the
``RATE_LIMIT_RPM`` setting; None means no limit.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import math
import threading
import weakref
from dataclasses import dataclass

from django.core.cache.backends.redis import RedisCache

from ..conf import llm_settings
from ..exceptions import RateLimited, RateLimitUnavailable
from . import sharedcache
from .clock import SYSTEM_CLOCK, Clock

WINDOW = 60
#: Seconds a token correction may wait for the next request's round trip to Redis.
FLUSH_DELAY = 0.05


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``rpm`` requests and ``tpm`` tokens a minute for ``key`` (e.g. user:7)."""

    key: str
    rpm: int | None = None
    tpm: int | None = None
    label: str = ""


def _redis(cache):
    """The redis-py client behind Django's own Redis backend, else None. Counters then go
    in one pipelined round trip per request instead of three per counter (``add``, then
    ``incr``'s EXISTS and INCRBY), each a blocking wait on the event loop."""
    if isinstance(cache, RedisCache):
        return cache._cache.get_client(write=True)  # Django's pool; ints are stored plain
    return None


def _pipelined(cache, client, items: list[tuple[str, int]]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key, amount in items:
        full = cache.make_and_validate_key(key)
        pipe.set(full, 0, ex=WINDOW * 2, nx=True)  # expires: never a stray counter
        pipe.incrby(full, amount)
    return pipe.execute()[1::2]


class Deferred:
    """Token corrections not yet sent to Redis, per cache object, merged by counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, cache, items: list[tuple[str, int]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            pending = self._items.setdefault(cache, {})
            for key, delta in items:
                pending[key] = pending.get(key, 0) + delta
            schedule = loop is not None and (
                self._timer_loop is None or self._timer_loop.is_closed()
            )
            if schedule:
                self._timer_loop = loop
        if loop is None:  # no event loop to wait on (a command, a sync test): send now
            self.flush()
        elif schedule:
            loop.call_later(FLUSH_DELAY, self.flush)

    def take(self, cache) -> list[tuple[str, int]]:
        """What waits for ``cache``, to go with a request's own counters."""
        with self._lock:
            pending = self._items.pop(cache, None)
        return [(key, delta) for key, delta in pending.items() if delta] if pending else []

    def clear(self) -> None:
        """Forget what waits (tests: the cache was cleared behind it)."""
        with self._lock:
            self._items.clear()
            self._timer_loop = None

    def flush(self) -> None:
        """Send everything that waits (one round trip per cache); errors are logged."""
        with self._lock:
            self._timer_loop = None
            waiting = list(self._items.items())
            self._items.clear()
        for cache, pending in waiting:
            items = [(key, delta) for key, delta in pending.items() if delta]
            client = _redis(cache)
            if not items or client is None:
                continue
            # The cache down: the counters keep the worst case (logged by the guard).
            sharedcache.guarded(functools.partial(_pipelined, cache, client, items), None)


deferred = Deferred()
atexit.register(deferred.flush)


class RateLimiter:
    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, cache=None) -> None:
        self.clock = clock
        self._cache = cache

    @property
    def cache(self):
        return self._cache or sharedcache.backend()

    def _window(self) -> tuple[int, float]:
        now = self.clock.time()
        window = int(now // WINDOW)
        return window, (window + 1) * WINDOW - now

    def _add(self, items: list[tuple[str, int]], *, create: bool = True) -> list[int | None]:
        """Add each amount to its counter, atomically; the new values. A missing counter
        starts at 0 and lives two windows (``create=False``: it is left missing, None)."""
        if not items:
            return []
        cache = self.cache
        client = _redis(cache)
        if client is not None:
            return _pipelined(cache, client, items)
        values: list[int | None] = []
        for key, amount in items:
            if create:
                cache.add(key, 0, timeout=WINDOW * 2)
            try:
                values.append(cache.incr(key, amount))
            except ValueError:  # expired since (or missing and not to be created)
                if not create:
                    values.append(None)
                    continue
                cache.add(key, 0, timeout=WINDOW * 2)
                values.append(cache.incr(key, amount))
        return values

    def acquire(self, limits: list[Limit], *, tokens: int) -> list[tuple[str, int]]:
        """Count one request of ``tokens`` against every limit, or refuse (429).

        Returns what was taken, for ``adjust``/``release``.
        """
        window, retry_after = self._window()
        wanted: list[tuple[str, int, int, str, Limit]] = []
        for limit in limits:
            for kind, cap, amount in (("r", limit.rpm, 1), ("t", limit.tpm, tokens)):
                if cap is not None and amount > 0:
                    wanted.append((f"llm:rl:{limit.key}:{kind}:{window}", amount, cap, kind, limit))
        taken = [(key, amount) for key, amount, *_ in wanted]
        if not taken:
            return taken
        waiting = deferred.take(self.cache)  # corrections ride along
        try:
            values = sharedcache.attempt(lambda: self._add(waiting + taken))[len(waiting) :]
        except sharedcache.CacheUnavailable:
            if llm_settings.RATE_LIMIT_FAIL_OPEN:
                return []  # admitted, uncounted
            retry = float(llm_settings.CACHE_RETRY_INTERVAL)
            raise RateLimitUnavailable(
                "Rate limits cannot be checked right now (the shared cache is unreachable); "
                f"retry in {math.ceil(retry)} s.",
                retry_after=retry,
            ) from None
        for (_key, _amount, cap, kind, limit), value in zip(wanted, values, strict=True):
            if value > cap:
                self.release(taken)
                what = "requests" if kind == "r" else "tokens"
                raise RateLimited(
                    f"Rate limit of {cap} {what} per minute reached"
                    f"{' for ' + limit.label if limit.label else ''}; retry in "
                    f"{math.ceil(retry_after)} s.",
                    retry_after=math.ceil(retry_after),
                )
        return taken

    def release(self, taken: list[tuple[str, int]]) -> None:
        if taken:
            items = [(key, -amount) for key, amount in taken]
            sharedcache.guarded(lambda: self._add(items, create=False), None)

    def adjust_tokens(self, taken: list[tuple[str, int]], *, actual: int, estimated: int) -> None:
        """After the call: count the real tokens instead of the admission estimate."""
        delta = actual - estimated
        if not delta or not taken:
            return
        items = [(key, delta) for key, _ in taken if key.split(":")[-2] == "t"]
        if not items:
            return
        cache = self.cache
        if _redis(cache) is None:  # no round trip to save
            sharedcache.guarded(lambda: self._add(items, create=False), None)
        else:
            deferred.add(cache, items)


def limits_for(*, user, plan, alias, provider, entitlement) -> list[Limit]:
    """Every limit that applies to this request, from the rows and settings."""
    limits: list[Limit] = []
    uid = getattr(user, "pk", None) or "anon"
    if provider.rpm_limit or provider.tpm_limit:
        limits.append(
            Limit(
                f"provider:{provider.pk}",
                provider.rpm_limit,
                provider.tpm_limit,
                f"provider {provider.name}",
            )
        )
    if alias.rpm_limit or alias.tpm_limit:
        limits.append(
            Limit(f"alias:{alias.pk}", alias.rpm_limit, alias.tpm_limit, f"model {alias.slug}")
        )
    if plan is not None and (plan.rpm_limit or plan.tpm_limit):
        limits.append(
            Limit(
                f"plan:{plan.pk}:user:{uid}",
                plan.rpm_limit,
                plan.tpm_limit,
                f"your plan ({plan.slug})",
            )
        )
    if entitlement is not None and (entitlement.rpm_limit or entitlement.tpm_limit):
        limits.append(
            Limit(
                f"ent:{entitlement.pk}:user:{uid}",
                entitlement.rpm_limit,
                entitlement.tpm_limit,
                f"model {alias.slug} on your plan",
            )
        )
    default_rpm = llm_settings.RATE_LIMIT_RPM
    if default_rpm:
        limits.append(Limit(f"user:{uid}", int(default_rpm), None, "your account"))
    return limits
