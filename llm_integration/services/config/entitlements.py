"""Step 2: which plan a caller is on, and whether that plan may use an alias.

An alias that no plan's entitlement names is open to every caller; once any plan names
it, only the plans that name it may use it. Callers without a current subscription are
on the ``DEFAULT_PLAN``. Reads the in-memory configuration snapshot (``config``).
"""

from __future__ import annotations

from ...exceptions import ModelNotAllowed
from ...models import ModelAlias, Plan, PlanEntitlement
from .snapshot import Snapshot, config


def plan_for(user) -> Plan | None:
    return config.plan_for(config.current(), user)


def entitlement_for(
    alias: ModelAlias, plan: Plan | None, snapshot: Snapshot | None = None
) -> PlanEntitlement | None:
    """The plan's entitlement on ``alias``, None for an open alias; 403 if locked."""
    entitlements = (snapshot or config.current()).entitlements.get(alias.pk)
    if not entitlements:
        return None
    entitlement = entitlements.get(plan.pk) if plan is not None else None
    if entitlement is None:
        raise ModelNotAllowed(f"The model {alias.slug!r} is not part of your plan.")
    return entitlement


def visible_aliases(user) -> list[tuple[ModelAlias, bool]]:
    """Every enabled alias of an enabled provider, with whether it is locked for ``user``."""
    snapshot = config.current()
    plan = config.plan_for(snapshot, user)
    result = []
    for alias in snapshot.ordered:
        if not alias.provider.enabled:
            continue
        plans = snapshot.entitlements.get(alias.pk)
        locked = bool(plans) and (plan is None or plan.pk not in plans)
        result.append((alias, locked))
    return result
