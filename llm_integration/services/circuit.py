"""A circuit breaker per provider, kept in Django's cache so all processes agree.

closed ──N consecutive failures──> open ──cool-down over──> half-open (one probe)
  ^                                                            │
  └──────────────── probe succeeds ─────────── probe fails: open again

Every request asks ``allow()`` before its call and reports ``record_success()`` or
``record_failure()`` after it. With Redis each read is a blocking round trip on the
event loop, so a process keeps what it last read of a circuit (its *view*) for
``CIRCUIT_BREAKER_CHECK_INTERVAL`` seconds: a healthy provider costs one read per
interval instead of three per request. What this process changes (failures, opening,
closing) goes to the cache at once and into its view; a circuit opened by another
process is seen here within the interval; a circuit the view holds half-open is read
again before a probe is claimed, so a probe that closed it elsewhere is not repeated.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..conf import llm_settings
from ..metrics import CIRCUIT_OPEN
from . import sharedcache
from .clock import SYSTEM_CLOCK, Clock


@dataclass(slots=True)
class _View:
    read_at: float  # clock.monotonic()
    failures: int
    open_until: float | None


# cache object -> provider -> view (weak: a replaced cache object takes its views along)
_views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget() -> None:
    """Drop every process-local view (tests, after clearing the cache behind our back)."""
    _views.clear()


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
        return self._cache or sharedcache.backend()

    # -- the view ----------------------------------------------------------------------
    def _view(self, *, fresh: bool = False) -> _View:
        cache = self.cache
        views = _views.get(cache)
        view = views.get(self.provider) if views is not None else None
        if (
            view is None
            or fresh
            or self.clock.monotonic() - view.read_at
            >= float(llm_settings.CIRCUIT_BREAKER_CHECK_INTERVAL)
        ):
            keys = [self._failures, self._open_until]
            values = sharedcache.guarded(lambda: cache.get_many(keys), None)
            if values is None:  # the cache is down: keep what was known (else closed)
                known = view or _View(0.0, 0, None)
                values = {self._failures: known.failures, self._open_until: known.open_until}
            view = self._remember(
                int(values.get(self._failures) or 0), values.get(self._open_until)
            )
        return view

    def _remember(self, failures: int, open_until: float | None) -> _View:
        view = _View(self.clock.monotonic(), failures, open_until)
        _views.setdefault(self.cache, {})[self.provider] = view
        return view

    def _state_of(self, view: _View) -> str:
        if view.open_until is None:
            return "closed"
        return "open" if self.clock.time() < view.open_until else "half_open"

    # -- the breaker -------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The circuit's state as the shared cache has it now (always read)."""
        return self._state_of(self._view(fresh=True))

    def allow(self) -> bool:
        """Whether a request may go to this provider now (claims the half-open probe)."""
        state = self._state_of(self._view())
        if state == "half_open":  # another process's probe may have closed it
            state = self._state_of(self._view(fresh=True))
        if state == "closed":
            return True
        if state == "open":
            return False
        cooldown = float(llm_settings.CIRCUIT_BREAKER_COOLDOWN)
        cache = self.cache
        # The cache down: no probe can be claimed, so every request may probe.
        return sharedcache.guarded(
            lambda: cache.add(self._probe, 1, timeout=max(1, int(cooldown))), True
        )

    def record_success(self) -> None:
        view = self._view()
        if view.failures or view.open_until is not None:
            self._forget_failures()
            CIRCUIT_OPEN.labels(self.provider).set(0)

    def record_failure(self) -> None:
        cache = self.cache
        cooldown = float(llm_settings.CIRCUIT_BREAKER_COOLDOWN)

        def count() -> int:
            cache.add(self._failures, 0, timeout=None)
            return cache.incr(self._failures)

        failures = sharedcache.guarded(count, self._view().failures + 1)
        view = self._view(fresh=True)
        if failures >= int(llm_settings.CIRCUIT_BREAKER_THRESHOLD) or (
            self._state_of(view) == "half_open"
        ):
            self._open(self.clock.time() + cooldown, failures)
        else:
            self._remember(failures, view.open_until)

    def force_open(self) -> None:
        """Open the circuit now (a failed health check): requests skip this provider
        until the cool-down's probe."""
        open_until = self.clock.time() + float(llm_settings.CIRCUIT_BREAKER_COOLDOWN)
        self._open(open_until, self._view().failures)

    def reset(self) -> None:
        self._forget_failures()
        CIRCUIT_OPEN.labels(self.provider).set(0)

    def _open(self, open_until: float, failures: int) -> None:
        cache = self.cache

        def write() -> None:
            cache.set(self._open_until, open_until, timeout=None)
            cache.delete(self._probe)

        sharedcache.guarded(write, None)
        self._remember(failures, open_until)
        CIRCUIT_OPEN.labels(self.provider).set(1)

    def _forget_failures(self) -> None:
        cache, keys = self.cache, [self._failures, self._open_until, self._probe]
        sharedcache.guarded(lambda: cache.delete_many(keys), None)
        self._remember(0, None)
