"""Aggregates of usage: a caller's report (``GET /api/v1/usage``) and the admin dashboard's
(read-only; they scan usage by date index)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from ...models import ApiKey, Budget, UsageRecord
from ..config.snapshot import config
from .budgets import budget_status, period_start
from .pricing import QUANTUM, format_money
from .quotas import status as quota_status
from .usage import period_usage


def daily(days: int = 30, *, now: dt.datetime | None = None) -> list[dict]:
    """Requests, tokens and spend per day for the last ``days`` days (empty days too)."""
    today = timezone.localdate(now or timezone.now())
    first = today - dt.timedelta(days=days - 1)
    start = timezone.make_aware(dt.datetime.combine(first, dt.time.min))
    rows = (
        UsageRecord.objects.filter(created_at__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            requests=Count("id"),
            cost=Sum("cost_usd"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
        .order_by("day")
    )
    by_day = {r["day"]: r for r in rows}
    series = []
    for i in range(days):
        day = first + dt.timedelta(days=i)
        row = by_day.get(day, {})
        series.append(
            {
                "day": day,
                "requests": row.get("requests", 0),
                "tokens": row.get("tokens") or 0,
                "cost": row.get("cost") or Decimal(0),
            }
        )
    return series


def top(field: str, *, since: dt.datetime, limit: int = 10) -> list[dict]:
    rows = list(
        UsageRecord.objects.filter(created_at__gte=since)
        .values(field)
        .annotate(
            requests=Count("id"),
            cost=Sum("cost_usd"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
        .order_by("-cost", "-requests")[:limit]
    )
    for row in rows:  # SQLite sums decimals as floats: round back to money
        row["cost"] = format_money(Decimal(row["cost"] or 0).quantize(QUANTUM))
    return rows


def by_rule(*, since: dt.datetime) -> list[dict]:
    """Requests, tokens and cost per routing rule that applied (requests no rule
    matched are left out)."""
    rows = top("route", since=since, limit=50)
    return [row for row in rows if row["route"]]


def by_key(*, since: dt.datetime, limit: int = 20) -> list[dict]:
    """Requests, tokens and cost per API key (requests without one are left out)."""
    rows = list(
        UsageRecord.objects.filter(created_at__gte=since, api_key__isnull=False)
        .values("api_key__prefix", "api_key__name", "api_key__user__username")
        .annotate(
            requests=Count("id"),
            cost=Sum("cost_usd"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
        .order_by("-cost", "-requests")[:limit]
    )
    return [
        {
            "prefix": row["api_key__prefix"],
            "name": row["api_key__name"],
            "owner": row["api_key__user__username"],
            "requests": row["requests"],
            "tokens": row["tokens"],
            "cost": format_money(Decimal(row["cost"] or 0).quantize(QUANTUM)),
        }
        for row in rows
    ]


def by_tag(*, since: dt.datetime, limit: int = 20) -> list[dict]:
    """Requests, tokens and cost per tag. A request with two tags counts under each:
    the database groups by tag set (few of them), the sets are split here."""
    sets = (
        UsageRecord.objects.filter(created_at__gte=since)
        .exclude(tags="")
        .values("tags")
        .annotate(
            requests=Count("id"),
            cost=Sum("cost_usd"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
        .order_by()
    )
    totals: dict[str, dict] = {}
    for row in sets:
        for tag in (t for t in row["tags"].split(",") if t):
            total = totals.setdefault(tag, {"tag": tag, "requests": 0, "tokens": 0, "cost": 0})
            total["requests"] += row["requests"]
            total["tokens"] += row["tokens"] or 0
            total["cost"] += Decimal(row["cost"] or 0)
    ranked = sorted(totals.values(), key=lambda r: (-r["cost"], -r["requests"], r["tag"]))
    for row in ranked:
        row["cost"] = format_money(Decimal(row["cost"]).quantize(QUANTUM))
    return ranked[:limit]


#: What ``costs`` groups by, and the usage column each reads.
COST_KEYS = {
    "provider": "provider",
    "alias": "alias",
    "user": "user__username",
    "plan": "plan",
    "tag": "tags",
    "key": "api_key__prefix",
}


def costs(by: str, *, since: dt.datetime) -> list[dict]:
    """Requests, tokens and cost since ``since`` per provider, alias, user, plan or tag
    (a request with two tags counts under each), most expensive first; the sums of the
    usage records exactly."""
    rows = (
        UsageRecord.objects.filter(created_at__gte=since)
        .values(COST_KEYS[by])
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost_usd"),
        )
        .order_by()
    )
    items: dict[str, dict] = {}
    for row in rows:
        value = row[COST_KEYS[by]] or ""
        keys = [tag for tag in value.split(",") if tag] if by == "tag" else [value]
        for key in keys:
            item = items.setdefault(
                key,
                {"key": key, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0},
            )
            item["requests"] += row["requests"]
            item["prompt_tokens"] += row["prompt_tokens"] or 0
            item["completion_tokens"] += row["completion_tokens"] or 0
            item["cost"] += Decimal(row["cost"] or 0)
    ranked = sorted(items.values(), key=lambda i: (-i["cost"], -i["requests"], i["key"]))
    for item in ranked:
        item["cost_usd"] = format_money(Decimal(item.pop("cost")).quantize(QUANTUM))
    return ranked


#: Failures that are the provider's (a request the client got wrong, a limit or a
#: budget of ours, is not).
PROVIDER_FAILURES = (
    "upstream_error",
    "upstream_auth",
    "upstream_bad_request",
    "rate_limited",  # the provider's 429 (the gateway's own limits are "refused")
    "upstream_unavailable",
    "upstream_unreachable",
    "upstream_timeout",
    "stream_interrupted",
    "bad_upstream_response",
    "no_upstream",
)


def provider_errors(*, since: dt.datetime) -> list[dict]:
    """Per provider: requests that reached it, and how many it failed."""
    failed = Q(status="error", error_type__in=PROVIDER_FAILURES)
    rows = (
        UsageRecord.objects.filter(created_at__gte=since)
        .exclude(provider="")
        .exclude(status="refused")
        .values("provider")
        .annotate(requests=Count("id"), errors=Count("id", filter=failed))
        .order_by("provider")
    )
    return [
        {**r, "rate": (r["errors"] / r["requests"] * 100) if r["requests"] else 0.0} for r in rows
    ]


def axis_label(value: float, unit: str) -> str:
    """A chart value as people read it: ``$0.00009``, ``$12.5``, ``1,200 tokens``."""
    if unit == "$":
        return "$" + format(Decimal(repr(value)).normalize(), "f") if value else "$0"
    return f"{value:,.0f} {unit}"


def bar_chart(
    values: list[float],
    labels: list[str],
    *,
    title: str,
    unit: str,
    width: int = 720,
    height: int = 180,
) -> str:
    """A bar chart as inline SVG (server-rendered: nothing loads from anywhere)."""
    from django.utils.html import escape

    top_value = max(values) if values and max(values) > 0 else 0
    gap, left, bottom = 2, 48, 20
    bar_w = (width - left) / max(len(values), 1) - gap
    parts = [
        f'<svg class="llm-chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="100%" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="12" font-size="11">{escape(axis_label(top_value, unit))}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#999"/>',
    ]
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = (height - bottom - 16) * (value / top_value) if top_value else 0
        x = left + i * (bar_w + gap)
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{height - bottom - h:.1f}" '
            f'width="{bar_w:.1f}" height="{h:.1f}" fill="#417690">'
            f"<title>{escape(label)}: {escape(axis_label(value, unit))}</title></rect>"
        )
        if i % 5 == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 4}" font-size="10">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def usage_report(user, *, now) -> dict:
    """The caller's usage today and this month, and the budgets that apply to them."""
    snapshot = config.current()
    plan = config.plan_for(snapshot, user)
    budgets = [
        b
        for b in snapshot.budgets
        if b.scope in (Budget.Scope.GLOBAL, Budget.Scope.PROVIDER, Budget.Scope.ALIAS)
        or (b.scope == Budget.Scope.PLAN and plan is not None and b.plan_id == plan.pk)
        or (b.scope == Budget.Scope.USER and b.user_id == user.pk)
    ]
    statuses = [budget_report(budget, now=now) for budget in budgets]
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
        "keys": key_usage(user, now=now, key_budgets=snapshot.key_budgets),
    }


def budget_report(budget: Budget, *, now) -> dict:
    status = budget_status(budget, now=now)
    return {
        "scope": budget.scope,
        "name": budget.name,
        "period": budget.period,
        "limit_usd": format_money(budget.limit_usd),
        "spent_usd": format_money(status["spent"]),
        "reserved_usd": format_money(status["reserved"]),
        "remaining_usd": format_money(status["remaining"]),
    }


def key_usage(user, *, now, key_budgets: dict[int, list[Budget]]) -> list[dict]:
    """The user's API keys (active ones, and any used this month) with what each spent
    today and this month, and its own budget."""
    spent: dict[str, dict[int, dict]] = {}
    for period in ("day", "month"):
        rows = (
            UsageRecord.objects.filter(
                user_id=user.pk, api_key__isnull=False, created_at__gte=period_start(period, now)
            )
            .values("api_key")
            .annotate(requests=Count("id"), cost=Sum("cost_usd"))
            .order_by()
        )
        spent[period] = {row["api_key"]: row for row in rows}
    listed = []
    for key in ApiKey.objects.filter(user_id=user.pk).order_by("created_at", "id"):
        state = key.state(now)
        if state != "active" and key.pk not in spent["month"]:
            continue
        item = {"id": key.pk, "name": key.name, "prefix": key.prefix, "state": state}
        for period in ("day", "month"):
            row = spent[period].get(key.pk) or {"requests": 0, "cost": 0}
            item[period] = {
                "requests": row["requests"],
                "cost_usd": format_money(Decimal(row["cost"] or 0).quantize(QUANTUM)),
            }
        budgets = key_budgets.get(key.pk)
        item["budget"] = budget_report(budgets[0], now=now) if budgets else None
        listed.append(item)
    return listed
