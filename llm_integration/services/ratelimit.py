"""Step 3: requests and tokens per minute, kept in Django's cache.

Fixed one-minute windows keyed by the window number; every check is an atomic
increment (``cache.incr``: INCRBY on Redis, a locked update in local memory), never a
read-then-write, so limits hold across processes that share a Redis cache. A request
refused by one limit gives back what it took from the others.

Limits come from the rows (provider, alias, plan, entitlement) and the
``RATE_LIMIT_RPM`` setting; None means no limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..conf import llm_settings
from ..exceptions import RateLimited
from . import sharedcache
from .clock import SYSTEM_CLOCK, Clock

WINDOW = 60


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``rpm`` requests and ``tpm`` tokens a minute for ``key`` (e.g. user:7)."""

    key: str
    rpm: int | None = None
    tpm: int | None = None
    label: str = ""


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

    def _incr(self, key: str, amount: int) -> int:
        cache = self.cache
        cache.add(key, 0, timeout=WINDOW * 2)
        try:
            return cache.incr(key, amount)
        except ValueError:  # expired between add and incr
            cache.add(key, 0, timeout=WINDOW * 2)
            return cache.incr(key, amount)

    def acquire(self, limits: list[Limit], *, tokens: int) -> list[tuple[str, int]]:
        """Count one request of ``tokens`` against every limit, or refuse (429).

        Returns what was taken, for ``adjust``/``release``.
        """
        window, retry_after = self._window()
        taken: list[tuple[str, int]] = []
        for limit in limits:
            for kind, cap, amount in (("r", limit.rpm, 1), ("t", limit.tpm, tokens)):
                if cap is None or amount <= 0:
                    continue
                key = f"llm:rl:{limit.key}:{kind}:{window}"
                value = self._incr(key, amount)
                taken.append((key, amount))
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
        for key, amount in taken:
            try:
                self.cache.decr(key, amount)
            except ValueError:
                pass  # window already gone

    def adjust_tokens(self, taken: list[tuple[str, int]], *, actual: int, estimated: int) -> None:
        """After the call: count the real tokens instead of the admission estimate."""
        delta = actual - estimated
        if not delta:
            return
        for key, _amount in taken:
            if key.split(":")[-2] == "t":
                try:
                    self.cache.incr(key, delta)
                except ValueError:
                    pass


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
