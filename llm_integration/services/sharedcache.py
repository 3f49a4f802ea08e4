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
"""

from __future__ import annotations

import threading

from django.core.cache import BaseCache, caches
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import llm_settings

_backends: dict[str, BaseCache] = {}
_lock = threading.Lock()


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
    """Forget the cache objects (closing them); the next call builds new ones."""
    with _lock:
        old = list(_backends.values())
        _backends.clear()
    for cache in old:
        cache.close()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    if setting in ("CACHES", "LLM_INTEGRATION"):
        reset()
