"""The gateway's configuration rows, read once and kept in memory until they change.

Aliases with their providers, fallbacks, plans, entitlements, budgets and
subscriptions change rarely and are read by every request. Each process keeps a
snapshot of them. Saving or deleting any such row (admin, ``save()``, ``delete()``,
``llm_bootstrap`` in another process) adds one to the single ``ConfigVersion`` row, in
the same transaction. Every process reads that row at most once per
``CONFIG_CHECK_INTERVAL`` seconds (in a database thread, never on the event loop) and
reloads its snapshot when the number moved: a change made anywhere applies in every
serving process within that interval, with or without a shared cache.
``QuerySet.update()`` sends no signals: call ``invalidate()`` after bulk changes.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ...conf import llm_settings
from ...models import (
    AliasFallback,
    Budget,
    ConfigVersion,
    ModelAlias,
    Plan,
    PlanEntitlement,
    RoutingRule,
    Subscription,
)
from ..db import run_db

MAX_USERS = 10_000


@dataclass
class Snapshot:
    version: int
    aliases: dict[str, ModelAlias]
    ordered: list[ModelAlias]
    fallbacks: dict[int, list[ModelAlias]]
    entitlements: dict[int, dict[int, PlanEntitlement]]
    plans: dict[str, Plan]
    budgets: list[Budget]
    #: Enabled routing rules in order (``services.policy.rules.RuleBook`` compiles them).
    rules: list[RoutingRule] = field(default_factory=list)
    user_plans: OrderedDict[int, tuple[Plan | None, object]] = field(default_factory=OrderedDict)
    period_ids: dict[tuple[int, object], int] = field(default_factory=dict)

    def alias(self, slug: str | None) -> ModelAlias | None:
        if slug:
            return self.aliases.get(slug)
        return self.aliases.get(llm_settings.DEFAULT_MODEL) or (
            self.ordered[0] if self.ordered else None
        )

    def budgets_for(self, *, user_id, plan_id, alias_id, provider_id, key_id=None) -> list[Budget]:
        """The enabled budgets on a request's scopes (a key's own: by its id, so a
        thousand keys with budgets cost a request nothing)."""
        found = [
            b
            for b in self.shared_budgets
            if b.scope == Budget.Scope.GLOBAL
            or (b.scope == Budget.Scope.PROVIDER and b.provider_id == provider_id)
            or (b.scope == Budget.Scope.ALIAS and b.alias_id == alias_id)
            or (b.scope == Budget.Scope.PLAN and plan_id is not None and b.plan_id == plan_id)
            or (b.scope == Budget.Scope.USER and user_id is not None and b.user_id == user_id)
        ]
        if key_id is not None and (own := self.key_budgets.get(key_id)):
            found.extend(own)
        return found

    @functools.cached_property
    def shared_budgets(self) -> list[Budget]:
        """The budgets that are not one key's."""
        return [b for b in self.budgets if b.scope != Budget.Scope.KEY]

    @functools.cached_property
    def key_budgets(self) -> dict[int, list[Budget]]:
        """API keys' own budgets, by key id."""
        found: dict[int, list[Budget]] = {}
        for b in self.budgets:
            if b.scope == Budget.Scope.KEY:
                found.setdefault(b.api_key_id, []).append(b)
        return found


def read_version() -> int:
    """The configuration's version number (one indexed read)."""
    return ConfigVersion.objects.order_by("pk").values_list("version", flat=True).first() or 0


def _load(version: int) -> Snapshot:
    ordered = list(ModelAlias.objects.filter(enabled=True).select_related("provider"))
    aliases = {a.slug: a for a in ordered}
    by_id = {a.pk: a for a in ordered}
    fallbacks: dict[int, list[ModelAlias]] = {}
    for fb in AliasFallback.objects.order_by("position", "id"):
        if fb.fallback_id in by_id:
            fallbacks.setdefault(fb.alias_id, []).append(by_id[fb.fallback_id])
    entitlements: dict[int, dict[int, PlanEntitlement]] = {}
    for e in PlanEntitlement.objects.select_related("alias"):
        entitlements.setdefault(e.alias_id, {})[e.plan_id] = e
    plans = {p.slug: p for p in Plan.objects.all()}
    budgets = list(Budget.objects.filter(enabled=True).select_related("provider", "alias", "plan"))
    rules = list(RoutingRule.objects.filter(enabled=True).select_related("serve_with"))
    return Snapshot(version, aliases, ordered, fallbacks, entitlements, plans, budgets, rules)


class ConfigCache:
    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def current(self) -> Snapshot:
        """The snapshot of the current version, checked at most once per interval
        (database I/O: call from sync code or a database thread; see ``acurrent``)."""
        snapshot = self.peek()
        if snapshot is not None:
            return snapshot
        version = read_version()
        with self._lock:
            if self._snapshot is None or self._snapshot.version != version:
                self._snapshot = _load(version)
            self._checked = time.monotonic()
            return self._snapshot

    async def acurrent(self) -> Snapshot:
        """``current()`` from the event loop: no I/O while the snapshot is fresh."""
        return self.peek() or await run_db(self.current)

    def peek(self) -> Snapshot | None:
        """The snapshot if it is known current without any I/O (checked less than
        ``CONFIG_CHECK_INTERVAL`` seconds ago), else None."""
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

    def forget(self) -> None:
        """Drop this process's snapshot: the next request reloads the rows."""
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
    """The rows changed: a new version for every process (in the caller's transaction),
    and this process reloads at once (again once the transaction commits)."""
    bumped = ConfigVersion.objects.update(version=F("version") + 1, changed_at=timezone.now())
    if not bumped:
        ConfigVersion.objects.create(version=1)
    config.forget()
    transaction.on_commit(config.forget)
