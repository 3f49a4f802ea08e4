"""Step 2: which plan a caller is on, and whether that plan may use an alias.

An alias that no plan's entitlement names is open to every caller; once any plan names
it, only the plans that name it may use it. Callers without a current subscription are
on the ``DEFAULT_PLAN``.
"""

from __future__ import annotations

from django.utils import timezone

from ..conf import llm_settings
from ..exceptions import ModelNotAllowed
from ..models import ModelAlias, Plan, PlanEntitlement, Subscription


def plan_for(user) -> Plan | None:
    if getattr(user, "pk", None):
        sub = (
            Subscription.objects.select_related("plan").filter(user_id=user.pk, active=True).first()
        )
        if sub is not None and (sub.expires_at is None or sub.expires_at > timezone.now()):
            return sub.plan
    return Plan.objects.filter(slug=llm_settings.DEFAULT_PLAN).first()


def entitlement_for(alias: ModelAlias, plan: Plan | None) -> PlanEntitlement | None:
    """The plan's entitlement on ``alias``, None for an open alias; 403 if locked."""
    entitlements = list(PlanEntitlement.objects.filter(alias=alias))
    if not entitlements:
        return None
    for e in entitlements:
        if plan is not None and e.plan_id == plan.pk:
            return e
    raise ModelNotAllowed(f"The model {alias.slug!r} is not part of your plan.")


def visible_aliases(user) -> list[tuple[ModelAlias, bool]]:
    """Every enabled alias with whether it is locked for ``user`` (for model lists)."""
    plan = plan_for(user)
    allowed: dict[int, set[int]] = {}
    for alias_id, plan_id in PlanEntitlement.objects.values_list("alias_id", "plan_id"):
        allowed.setdefault(alias_id, set()).add(plan_id)
    result = []
    for alias in ModelAlias.objects.filter(enabled=True, provider__enabled=True).select_related(
        "provider"
    ):
        plans = allowed.get(alias.pk)
        locked = plans is not None and (plan is None or plan.pk not in plans)
        result.append((alias, locked))
    return result
