"""One cache object per process for the gateway's own keys (circuits, rate-limit
windows, cached answers, the config version).

``django.core.cache.caches[alias]`` hands out one backend object per thread *and per
asyncio context*: under ASGI every request task gets a fresh ``RedisCache`` with its
own connection pool, so each request opened a new connection to Redis (TCP connect,
``HELLO``, ``SELECT``) for its first cache call, and threw it away. Measured with
``redis-cli monitor``: one ``HELLO`` per request; throughput at 50 clients fell from
235 to 190–200 req/s with ``REDIS_URL`` set.

The backends Django ships are safe to share between threads (redis-py's pool,
pymemcache's pooled client, local memory behind a lock, the database cache through
each thread's connection), so the gateway keeps one per alias for the process. It is
rebuilt when ``CACHES`` or ``LLM_INTEGRATION`` change (tests' ``override_settings``);
redis-py's pool notices a fork by itself.

``guarded(call, fallback)`` is how the gateway touches the cache: when the cache fails
(Redis down or unreachable), the failure is logged, ``fallback`` is returned, and for
``CACHE_RETRY_INTERVAL`` seconds every guarded call returns its fallback without trying,
so a dead cache costs each process one (timed-out) attempt per interval on the event
loop instead of one per call. Circuits then read as closed, cached answers as misses,
the configuration keeps its snapshot, and rate limits refuse with 503
``rate_limit_unavailable`` (or admit uncounted with ``RATE_LIMIT_FAIL_OPEN``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.core.cache import BaseCache, caches
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import llm_settings

_backends: dict[str, BaseCache] = {}
_lock = threading.Lock()
_down_until = 0.0  # time.monotonic() before which the cache is not tried again

logger = logging.getLogger("llm_integration.cache")
T = TypeVar("T")


class CacheUnavailable(Exception):
    """The shared cache failed, or failed less than ``CACHE_RETRY_INTERVAL`` ago."""


def available() -> bool:
    """False while the cache is known down (within the retry interval of a failure)."""
    return time.monotonic() >= _down_until


def attempt(call: Callable[[], T]) -> T:
    """``call()``, or ``CacheUnavailable`` when the cache is known down or fails now."""
    global _down_until
    if not available():
        raise CacheUnavailable("the shared cache failed moments ago")
    try:
        return call()
    except Exception as error:
        _down_until = time.monotonic() + float(llm_settings.CACHE_RETRY_INTERVAL)
        logger.warning(
            "llm.cache_unavailable",
            extra={"error_type": type(error).__name__},
            exc_info=True,
        )
        raise CacheUnavailable(str(error)) from error


def guarded(call: Callable[[], T], fallback: T) -> T:
    """``call()``, or ``fallback`` when the cache is down (see the module's docstring)."""
    try:
        return attempt(call)
    except CacheUnavailable:
        return fallback


def backend(alias: str | None = None) -> BaseCache:
    """The process's cache object for ``alias`` (default: the ``CACHE_BACKEND`` setting)."""
    alias = alias or llm_settings.CACHE_BACKEND
    try:
        return _backends[alias]
    except KeyError:
        with _lock:
            if alias not in _backends:
                _backends[alias] = caches.create_connection(alias)
            return _backends[alias]


def reset() -> None:
    """Forget the cache objects (closing them) and any failure; the next call builds new
    ones."""
    global _down_until
    _down_until = 0.0
    with _lock:
        old = list(_backends.values())
        _backends.clear()
    for cache in old:
        cache.close()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    if setting in ("CACHES", "LLM_INTEGRATION"):
        reset()
