"""The gateway's configuration rows, read once and kept in memory until they change.

Aliases with their providers, fallbacks, plans, entitlements, budgets and
subscriptions change rarely and are read by every request. Each process keeps a
snapshot of them; saving or deleting any such row (admin, ``save()``, ``delete()``)
bumps a version number in Django's cache, so with Redis every process reloads on its
next check (at most ``CONFIG_CHECK_INTERVAL`` seconds later; at once in the process
that made the change). ``QuerySet.update()`` sends no signals: call ``invalidate()``
after bulk changes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from django.utils import timezone

from ..conf import llm_settings
from ..models import AliasFallback, Budget, ModelAlias, Plan, PlanEntitlement, Subscription
from . import sharedcache

VERSION_KEY = "llm:config:version"
#: The version of rows loaded while the cache could not say (never equal to a real one).
UNKNOWN = object()
MAX_USERS = 10_000


@dataclass
class Snapshot:
    version: object
    aliases: dict[str, ModelAlias]
    ordered: list[ModelAlias]
    fallbacks: dict[int, list[ModelAlias]]
    entitlements: dict[int, dict[int, PlanEntitlement]]
    plans: dict[str, Plan]
    budgets: list[Budget]
    user_plans: OrderedDict[int, tuple[Plan | None, object]] = field(default_factory=OrderedDict)
    period_ids: dict[tuple[int, object], int] = field(default_factory=dict)

    def alias(self, slug: str | None) -> ModelAlias | None:
        if slug:
            return self.aliases.get(slug)
        return self.aliases.get(llm_settings.DEFAULT_MODEL) or (
            self.ordered[0] if self.ordered else None
        )

    def budgets_for(self, *, user_id, plan_id, alias_id, provider_id) -> list[Budget]:
        return [
            b
            for b in self.budgets
            if b.scope == Budget.Scope.GLOBAL
            or (b.scope == Budget.Scope.PROVIDER and b.provider_id == provider_id)
            or (b.scope == Budget.Scope.ALIAS and b.alias_id == alias_id)
            or (b.scope == Budget.Scope.PLAN and plan_id is not None and b.plan_id == plan_id)
            or (b.scope == Budget.Scope.USER and user_id is not None and b.user_id == user_id)
        ]


def _load(version: object) -> Snapshot:
    ordered = list(ModelAlias.objects.filter(enabled=True).select_related("provider"))
    aliases = {a.slug: a for a in ordered}
    by_id = {a.pk: a for a in ordered}
    fallbacks: dict[int, list[ModelAlias]] = {}
    for fb in AliasFallback.objects.order_by("position", "id"):
        if fb.fallback_id in by_id:
            fallbacks.setdefault(fb.alias_id, []).append(by_id[fb.fallback_id])
    entitlements: dict[int, dict[int, PlanEntitlement]] = {}
    for e in PlanEntitlement.objects.all():
        entitlements.setdefault(e.alias_id, {})[e.plan_id] = e
    plans = {p.slug: p for p in Plan.objects.all()}
    budgets = list(Budget.objects.filter(enabled=True).select_related("provider", "alias", "plan"))
    return Snapshot(version, aliases, ordered, fallbacks, entitlements, plans, budgets)


class ConfigCache:
    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def _cache(self):
        return sharedcache.backend()

    def current(self) -> Snapshot:
        """The snapshot for the current version (loads rows when they changed)."""
        snapshot = self._snapshot
        now = time.monotonic()
        if snapshot is not None and now - self._checked < float(llm_settings.CONFIG_CHECK_INTERVAL):
            return snapshot
        cache = self._cache()
        version = sharedcache.guarded(lambda: cache.get(VERSION_KEY), UNKNOWN)
        if version is UNKNOWN and snapshot is not None:  # the cache down: keep the rows
            self._checked = now
            return snapshot
        if version is None:
            version = self._new_version()
        if snapshot is None or snapshot.version != version:
            with self._lock:
                if self._snapshot is None or self._snapshot.version != version:
                    self._snapshot = _load(version)
                snapshot = self._snapshot
        self._checked = now
        return snapshot

    def peek(self) -> Snapshot | None:
        """The snapshot if it is known current without any I/O (within the check
        interval), else None."""
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - self._checked < float(
            llm_settings.CONFIG_CHECK_INTERVAL
        ):
            return snapshot
        return None

    def plan_known(self, snapshot: Snapshot, user) -> bool:
        """Whether ``plan_for`` can answer from memory."""
        uid = getattr(user, "pk", None)
        if uid is None:
            return True
        entry = snapshot.user_plans.get(uid)
        return entry is not None and (entry[1] is None or entry[1] > timezone.now())

    def _new_version(self) -> object:
        version, cache = time.time_ns(), self._cache()

        def publish() -> object:
            cache.add(VERSION_KEY, version, timeout=None)
            return cache.get(VERSION_KEY, version)

        return sharedcache.guarded(publish, UNKNOWN)

    def invalidate(self) -> None:
        """Rows changed: every process reloads (this one at once; the others when the
        cache can tell them)."""
        cache = self._cache()
        sharedcache.guarded(lambda: cache.set(VERSION_KEY, time.time_ns(), timeout=None), None)
        self._snapshot = None
        self._checked = 0.0

    def plan_for(self, snapshot: Snapshot, user) -> Plan | None:
        """The user's current plan, else the default plan (cached per user)."""
        uid = getattr(user, "pk", None)
        default = snapshot.plans.get(llm_settings.DEFAULT_PLAN)
        if uid is None:
            return default
        if uid in snapshot.user_plans:
            plan, expires = snapshot.user_plans[uid]
            if expires is None or expires > timezone.now():
                return plan or default
        sub = (
            Subscription.objects.filter(user_id=uid, active=True)
            .values("plan_id", "expires_at")
            .first()
        )
        plan, expires = None, None
        if sub is not None and (sub["expires_at"] is None or sub["expires_at"] > timezone.now()):
            plan = next((p for p in snapshot.plans.values() if p.pk == sub["plan_id"]), None)
            expires = sub["expires_at"]
        snapshot.user_plans[uid] = (plan, expires)
        if len(snapshot.user_plans) > MAX_USERS:
            snapshot.user_plans.popitem(last=False)
        return plan or default


config = ConfigCache()


def invalidate() -> None:
    config.invalidate()
