"""Step 3: requests and tokens per minute, kept in the shared store.

Fixed one-minute windows keyed by the window number; every check is an atomic
increment (``INCRBY`` on Redis, every counter of a request in one pipelined round trip;
a locked update in local memory), never a read-then-write, so limits hold across
processes that share a Redis cache. A request refused by one limit gives back what it
took from the others.

After the call a request's token counters are corrected from its worst case to what it
used. That correction waits (``Deferred``) and rides with the next request's round
trip, or goes on its own at most ``FLUSH_DELAY`` later when no request comes. Until
then a counter holds the worst case (it only ever refuses early, never admits too much,
unless a provider reports more tokens than the worst case). Pending corrections are
sent at ASGI lifespan shutdown and at exit.

Limits come from the rows (provider, alias, plan, entitlement) and the
``RATE_LIMIT_RPM`` setting; None means no limit.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import threading
import weakref
from dataclasses import dataclass

from ...conf import llm_settings
from ...exceptions import RateLimited, RateLimitUnavailable
from ..clock import SYSTEM_CLOCK, Clock
from . import sharedstate
from .sharedstate import Store

WINDOW = 60
#: Counters live two windows: never a stray counter, whatever happens to a request.
COUNTER_TTL = WINDOW * 2
#: Seconds a token correction may wait for the next request's round trip.
FLUSH_DELAY = 0.05


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``rpm`` requests and ``tpm`` tokens a minute for ``key`` (e.g. user:7)."""

    key: str
    rpm: int | None = None
    tpm: int | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class Count:
    """What a request added to one counter."""

    key: str
    amount: int
    tokens: bool = False  # a tokens-per-minute counter (else requests per minute)


class Deferred:
    """Token corrections not yet sent, per store, merged by counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, store: Store, items: list[tuple[str, int]]) -> None:
        """Queue corrections (from a coroutine: the timer runs on its loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pending = self._items.setdefault(store, {})
            for key, delta in items:
                pending[key] = pending.get(key, 0) + delta
            schedule = self._timer_loop is None or self._timer_loop.is_closed()
            if schedule:
                self._timer_loop = loop
        if schedule:
            loop.call_later(FLUSH_DELAY, lambda: loop.create_task(self.aflush()))

    def take(self, store: Store) -> list[tuple[str, int]]:
        """What waits for ``store``, to go with a request's own counters."""
        with self._lock:
            pending = self._items.pop(store, None)
        return [(key, delta) for key, delta in pending.items() if delta] if pending else []

    def clear(self) -> None:
        """Forget what waits (tests: the store was cleared behind it)."""
        with self._lock:
            self._items.clear()
            self._timer_loop = None

    async def aflush(self) -> None:
        """Send everything that waits (one round trip per store); failures are logged
        by the guard and the counters keep the worst case."""
        with self._lock:
            self._timer_loop = None
            waiting = list(self._items.items())
            self._items.clear()
        for store, pending in waiting:
            items = [(key, delta) for key, delta in pending.items() if delta]
            if items:
                await sharedstate.guarded(
                    lambda s=store, i=items: s.incr_many(i, COUNTER_TTL), None
                )

    def flush(self) -> None:
        """``aflush`` where no event loop runs (at exit)."""
        with self._lock:
            waiting = bool(self._items)
        if waiting:
            asyncio.run(self.aflush())


deferred = Deferred()
atexit.register(deferred.flush)


class RateLimiter:
    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, store: Store | None = None) -> None:
        self.clock = clock
        self._store = store

    @property
    def store(self) -> Store:
        return self._store or sharedstate.store()

    def _window(self) -> tuple[int, float]:
        now = self.clock.time()
        window = int(now // WINDOW)
        return window, (window + 1) * WINDOW - now

    async def acquire(self, limits: list[Limit], *, tokens: int) -> list[Count]:
        """Count one request of ``tokens`` against every limit, or refuse (429).

        Returns what was counted, for ``adjust_tokens``/``release``.
        """
        window, retry_after = self._window()
        wanted: list[tuple[Count, int, str, Limit]] = []
        for limit in limits:
            for kind, cap, amount in (("r", limit.rpm, 1), ("t", limit.tpm, tokens)):
                if cap is not None and amount > 0:
                    key = f"llm:rl:{limit.key}:{kind}:{window}"
                    wanted.append((Count(key, amount, kind == "t"), cap, kind, limit))
        taken = [count for count, *_ in wanted]
        if not taken:
            return taken
        store = self.store
        items = deferred.take(store) + [(c.key, c.amount) for c in taken]  # corrections ride
        try:
            values = await sharedstate.attempt(lambda: store.incr_many(items, COUNTER_TTL))
        except sharedstate.CacheUnavailable:
            if llm_settings.RATE_LIMIT_FAIL_OPEN:
                return []  # admitted, uncounted
            retry = float(llm_settings.CACHE_RETRY_INTERVAL)
            raise RateLimitUnavailable(
                "Rate limits cannot be checked right now (the shared cache is unreachable); "
                f"retry in {math.ceil(retry)} s.",
                retry_after=retry,
            ) from None
        for (_count, cap, kind, limit), value in zip(wanted, values[-len(taken) :], strict=True):
            if value > cap:
                await self.release(taken)
                what = "requests" if kind == "r" else "tokens"
                reason = (
                    f"Rate limit of {cap} {what} per minute reached"
                    f"{' for ' + limit.label if limit.label else ''}"
                )
                raise RateLimited(
                    f"{reason}; retry in {math.ceil(retry_after)} s.",
                    retry_after=math.ceil(retry_after),
                    reason=reason,
                )
        return taken

    async def release(self, taken: list[Count]) -> None:
        if taken:
            items = [(c.key, -c.amount) for c in taken]
            await sharedstate.guarded(lambda: self.store.incr_many(items, COUNTER_TTL), None)

    def adjust_tokens(self, taken: list[Count], *, actual: int, estimated: int) -> None:
        """After the call: count the real tokens instead of the admission estimate
        (sent with the next request's round trip; see the module's docstring)."""
        delta = actual - estimated
        items = [(c.key, delta) for c in taken if c.tokens]
        if delta and items:
            deferred.add(self.store, items)


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
