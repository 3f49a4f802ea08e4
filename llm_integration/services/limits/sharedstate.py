"""What the gateway's processes share: rate-limit counters, circuit states, cached answers.

It lives in the Django cache that ``CACHE_BACKEND`` names, reached without ever
blocking the event loop:

- Django's ``RedisCache``: a ``redis.asyncio`` client to the same server (``LOCATION``,
  ``OPTIONS``, ``KEY_PREFIX``), one per event loop (a connection pool cannot cross
  loops), every call awaited. Shared by every process.
- ``LocMemCache``: this process's memory, called in place (a lock, no I/O).
- any other backend (Memcached, database, file): Django's cache API in a worker thread.

Every call is bounded by ``CACHE_TIMEOUT`` seconds. ``guarded(call, fallback)`` is how
the gateway touches the store: when it fails (Redis down, unreachable or stalled), the
failure is logged, ``fallback`` is returned, and for ``CACHE_RETRY_INTERVAL`` seconds
every guarded call returns its fallback without trying, so a dead store costs each
process one attempt per interval. Circuits then read as closed, cached answers as
misses, and rate limits refuse with 503 ``rate_limit_unavailable`` (or admit uncounted
with ``RATE_LIMIT_FAIL_OPEN``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from django.dispatch import receiver

from ...conf import llm_settings

logger = logging.getLogger("llm_integration.cache")
T = TypeVar("T")

#: Redis connection options of Django's backend that are not redis-py's.
DJANGO_ONLY_OPTIONS = ("pool_class", "parser_class", "serializer")


class CacheUnavailable(Exception):
    """The shared store failed, or failed less than ``CACHE_RETRY_INTERVAL`` ago."""


class Store(Protocol):
    """The operations the gateway needs; values are JSON-compatible."""

    async def get_many(self, keys: list[str]) -> dict[str, Any]: ...

    async def set(self, key: str, value: Any, ttl: float | None) -> None: ...

    async def add(self, key: str, value: Any, ttl: float | None) -> bool: ...

    async def delete_many(self, keys: list[str]) -> None: ...

    async def incr_many(self, items: list[tuple[str, int]], ttl: float) -> list[int]:
        """Add each amount to its counter (a missing one starts at 0 and lives ``ttl``
        seconds); the new values. Atomic per counter."""
        ...


class RedisStore:
    """``redis.asyncio`` against the server of a Django ``RedisCache`` entry."""

    def __init__(self, url: str, options: dict, prefix: str) -> None:
        self.url = url
        self.options = {k: v for k, v in options.items() if k not in DJANGO_ONLY_OPTIONS}
        self.prefix = f"{prefix}:" if prefix else ""
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def client(self):
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = redis.asyncio.Redis.from_url(self.url, **self.options)
        return client

    def key(self, key: str) -> str:
        return self.prefix + key

    async def get_many(self, keys: list[str]) -> dict[str, Any]:
        values = await self.client().mget([self.key(k) for k in keys])
        return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    async def set(self, key: str, value: Any, ttl: float | None) -> None:
        await self.client().set(self.key(key), json.dumps(value), px=_ms(ttl))

    async def add(self, key: str, value: Any, ttl: float | None) -> bool:
        return bool(await self.client().set(self.key(key), json.dumps(value), px=_ms(ttl), nx=True))

    async def delete_many(self, keys: list[str]) -> None:
        if keys:
            await self.client().delete(*(self.key(k) for k in keys))

    async def incr_many(self, items: list[tuple[str, int]], ttl: float) -> list[int]:
        pipe = self.client().pipeline(transaction=False)
        for key, amount in items:
            full = self.key(key)
            pipe.set(full, 0, px=_ms(ttl), nx=True)  # counters always expire
            pipe.incrby(full, amount)
        return (await pipe.execute())[1::2]


def _ms(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, int(ttl * 1000))


class DjangoStore:
    """A Django cache object: called in place when it is this process's memory, in a
    worker thread otherwise (its calls may do I/O)."""

    def __init__(self, cache: BaseCache, *, in_place: bool | None = None) -> None:
        self.cache = cache
        self.in_place = isinstance(cache, LocMemCache) if in_place is None else in_place

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.in_place:
            return fn(*args)
        return await sync_to_async(fn, thread_sensitive=False)(*args)

    async def get_many(self, keys: list[str]) -> dict[str, Any]:
        return await self._run(self.cache.get_many, keys)

    async def set(self, key: str, value: Any, ttl: float | None) -> None:
        await self._run(self.cache.set, key, value, ttl)

    async def add(self, key: str, value: Any, ttl: float | None) -> bool:
        return await self._run(self.cache.add, key, value, ttl)

    async def delete_many(self, keys: list[str]) -> None:
        if keys:
            await self._run(self.cache.delete_many, keys)

    async def incr_many(self, items: list[tuple[str, int]], ttl: float) -> list[int]:
        return await self._run(self._incr_many, items, ttl)

    def _incr_many(self, items: list[tuple[str, int]], ttl: float) -> list[int]:
        values = []
        for key, amount in items:
            self.cache.add(key, 0, timeout=ttl)
            try:
                values.append(self.cache.incr(key, amount))
            except ValueError:  # expired between the two calls
                self.cache.add(key, 0, timeout=ttl)
                values.append(self.cache.incr(key, amount))
        return values


def store_for(alias: str) -> Store:
    """The store behind the Django cache ``alias``."""
    config = settings.CACHES[alias]
    cache = caches.create_connection(alias)
    if isinstance(cache, RedisCache):
        location = config.get("LOCATION")
        url = location[0] if isinstance(location, list | tuple) else location.split(",")[0]
        return RedisStore(url, dict(config.get("OPTIONS") or {}), config.get("KEY_PREFIX", ""))
    return DjangoStore(cache)


_stores: dict[str, Store] = {}
_lock = threading.Lock()
_down_until = 0.0  # time.monotonic() before which the store is not tried again


def store(alias: str | None = None) -> Store:
    """The process's store for ``alias`` (default: the ``CACHE_BACKEND`` setting)."""
    alias = alias or llm_settings.CACHE_BACKEND
    try:
        return _stores[alias]
    except KeyError:
        with _lock:
            if alias not in _stores:
                _stores[alias] = store_for(alias)
            return _stores[alias]


def available() -> bool:
    """False while the store is known down (within the retry interval of a failure)."""
    return time.monotonic() >= _down_until


async def attempt(call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` within ``CACHE_TIMEOUT``, or ``CacheUnavailable`` when the store
    is known down or fails now."""
    global _down_until
    if not available():
        raise CacheUnavailable("the shared cache failed moments ago")
    try:
        async with asyncio.timeout(float(llm_settings.CACHE_TIMEOUT)):
            return await call()
    except Exception as error:
        _down_until = time.monotonic() + float(llm_settings.CACHE_RETRY_INTERVAL)
        logger.warning(
            "llm.cache_unavailable",
            extra={"error_type": type(error).__name__},
            exc_info=not isinstance(error, TimeoutError),
        )
        raise CacheUnavailable(str(error) or type(error).__name__) from error


async def guarded(call: Callable[[], Awaitable[T]], fallback: T) -> T:
    """``await call()``, or ``fallback`` when the store is down (see the docstring)."""
    try:
        return await attempt(call)
    except CacheUnavailable:
        return fallback


def reset() -> None:
    """Forget the stores and any failure; the next call builds new ones."""
    global _down_until
    _down_until = 0.0
    with _lock:
        _stores.clear()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    if setting in ("CACHES", "LLM_INTEGRATION"):
        reset()
