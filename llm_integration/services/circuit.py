"""A circuit breaker per provider, kept in Django's cache so all processes agree.

closed ──N consecutive failures──> open ──cool-down over──> half-open (one probe)
  ^                                                            │
  └──────────────── probe succeeds ─────────── probe fails: open again
"""

from __future__ import annotations

from django.core.cache import caches

from ..conf import llm_settings
from ..metrics import CIRCUIT_OPEN
from .clock import SYSTEM_CLOCK, Clock


class CircuitBreaker:
    def __init__(self, provider: str, *, clock: Clock = SYSTEM_CLOCK, cache=None) -> None:
        self.provider = provider
        self.clock = clock
        self._cache = cache
        self._failures = f"llm:cb:{provider}:failures"
        self._open_until = f"llm:cb:{provider}:open_until"
        self._probe = f"llm:cb:{provider}:probe"

    @property
    def cache(self):
        return self._cache or caches[llm_settings.CACHE_BACKEND]

    @property
    def state(self) -> str:
        open_until = self.cache.get(self._open_until)
        if open_until is None:
            return "closed"
        return "open" if self.clock.time() < open_until else "half_open"

    def allow(self) -> bool:
        """Whether a request may go to this provider now (claims the half-open probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        cooldown = float(llm_settings.CIRCUIT_BREAKER_COOLDOWN)
        return self.cache.add(self._probe, 1, timeout=max(1, int(cooldown)))

    def record_success(self) -> None:
        if self.cache.get(self._failures) or self.cache.get(self._open_until) is not None:
            self.cache.delete_many([self._failures, self._open_until, self._probe])
            CIRCUIT_OPEN.labels(self.provider).set(0)

    def record_failure(self) -> None:
        cache = self.cache
        cooldown = float(llm_settings.CIRCUIT_BREAKER_COOLDOWN)
        cache.add(self._failures, 0, timeout=None)
        failures = cache.incr(self._failures)
        if failures >= int(llm_settings.CIRCUIT_BREAKER_THRESHOLD) or self.state == "half_open":
            cache.set(self._open_until, self.clock.time() + cooldown, timeout=None)
            cache.delete(self._probe)
            CIRCUIT_OPEN.labels(self.provider).set(1)

    def force_open(self) -> None:
        """Open the circuit now (a failed health check): requests skip this provider
        until the cool-down's probe."""
        cooldown = float(llm_settings.CIRCUIT_BREAKER_COOLDOWN)
        self.cache.set(self._open_until, self.clock.time() + cooldown, timeout=None)
        self.cache.delete(self._probe)
        CIRCUIT_OPEN.labels(self.provider).set(1)

    def reset(self) -> None:
        self.cache.delete_many([self._failures, self._open_until, self._probe])
        CIRCUIT_OPEN.labels(self.provider).set(0)
