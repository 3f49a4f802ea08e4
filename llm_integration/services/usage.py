"""Cost arithmetic, usage records and their CSV export rows. Money is Decimal; prices are
per million tokens."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from ..adapters import Usage
from ..models import ModelAlias

MILLION = Decimal(1_000_000)
QUANTUM = Decimal("0.00000001")


def cost_of(alias: ModelAlias, usage: Usage) -> Decimal:
    """USD cost of ``usage`` at ``alias``'s prices, rounded to 8 decimal places."""
    cost = (
        Decimal(usage.prompt_tokens) * alias.input_price_per_mtok
        + Decimal(usage.completion_tokens) * alias.output_price_per_mtok
    ) / MILLION
    return cost.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def format_money(value: Decimal) -> str:
    """A decimal string without exponent, as the API renders money."""
    return format(value.quantize(QUANTUM).normalize(), "f") if value else "0"


#: The columns of both usage exports (the API's ``?format=csv`` and admin's action).
CSV_FIELDS = [
    "created_at",
    "request_id",
    "user_id",
    "plan",
    "alias",
    "provider",
    "upstream_model",
    "status",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "tokens_estimated",
    "cost_usd",
    "latency_ms",
    "cached",
    "streamed",
    "finish_reason",
    "unbilled_cost_usd",
]

#: What a spreadsheet reads as the start of a formula (OWASP's list, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def csv_cell(value):
    """``value`` as an export cell a spreadsheet shows as text, never runs as a formula:
    text from an upstream or a client (a ``finish_reason`` of ``=HYPERLINK(...)``) that
    starts like a formula gets a leading ``'``; a plain number (``-1.5``) stays one."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def csv_row(row) -> list:
    """A usage export row: money as plain decimals (``0``, ``0.00012``; never ``0E-8``),
    text neutralised by ``csv_cell``."""
    return [format_money(v) if isinstance(v, Decimal) else csv_cell(v) for v in row]


def period_usage(user_id: int, since) -> dict:
    """What a user used since ``since``: totals, by status and by model (CONTRACT §4)."""
    from django.db.models import Count, Sum

    from ..models import UsageRecord

    rows = UsageRecord.objects.filter(user_id=user_id, created_at__gte=since)
    totals = rows.aggregate(
        requests=Count("id"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost_usd"),
    )
    by_status = {s: n for s, n in rows.values_list("status").annotate(n=Count("id")).order_by()}
    by_model = {
        alias or "(none)": {"requests": n, "cost_usd": format_money(cost or Decimal(0))}
        for alias, n, cost in rows.values_list("alias")
        .annotate(n=Count("id"), cost=Sum("cost_usd"))
        .order_by()
    }
    return {
        "requests": totals["requests"] or 0,
        "prompt_tokens": totals["prompt"] or 0,
        "completion_tokens": totals["completion"] or 0,
        "cost_usd": format_money(totals["cost"] or Decimal(0)),
        "by_status": by_status,
        "by_model": by_model,
    }


def usage_report(user, *, now) -> dict:
    """The caller's usage today and this month, and the budgets that apply to them."""
    from ..models import Budget
    from .budgets import budget_status, period_start
    from .config import config
    from .quotas import status as quota_status

    snapshot = config.current()
    plan = config.plan_for(snapshot, user)
    budgets = [
        b
        for b in snapshot.budgets
        if b.scope in (Budget.Scope.GLOBAL, Budget.Scope.PROVIDER, Budget.Scope.ALIAS)
        or (b.scope == Budget.Scope.PLAN and plan is not None and b.plan_id == plan.pk)
        or (b.scope == Budget.Scope.USER and b.user_id == user.pk)
    ]
    statuses = []
    for budget in budgets:
        status = budget_status(budget, now=now)
        statuses.append(
            {
                "scope": budget.scope,
                "name": budget.name,
                "period": budget.period,
                "limit_usd": format_money(budget.limit_usd),
                "spent_usd": format_money(status["spent"]),
                "reserved_usd": format_money(status["reserved"]),
                "remaining_usd": format_money(status["remaining"]),
            }
        )
    entitlements = [
        entitlement
        for plans in snapshot.entitlements.values()
        for plan_id, entitlement in plans.items()
        if plan is not None and plan_id == plan.pk
    ]
    return {
        "day": period_usage(user.pk, period_start("day", now)),
        "month": period_usage(user.pk, period_start("month", now)),
        "budgets": statuses,
        "quotas": quota_status(entitlements, user.pk, now=now),
    }
