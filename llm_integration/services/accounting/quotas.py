"""Entitlement quotas: requests per day and tokens per month, per user, on one alias.

Held the way hard budgets are (CONTRACT §6). Before the upstream call a request
reserves its worst case — one request; its prompt and ``max_tokens`` — on each quota
of its entitlement with one conditional ``UPDATE`` (``used + reserved + n <= limit``),
atomic in any database, so concurrent requests in any number of processes never get
past a limit. When the request is recorded (in the usage record's transaction) the
reservation becomes what it used: the request, unless it was refused, and the tokens
the provider reported. A request that does not fit gets 429 ``quota_exceeded`` with
``Retry-After`` at the period's end. Periods are days and calendar months in
``TIME_ZONE``; each (entitlement, user, kind, period) has its own row, made on first use.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.utils import timezone

from ...exceptions import QuotaExceeded
from ...models import PlanEntitlement, QuotaPeriod
from ..db import write_lock

KIND = QuotaPeriod.Kind


@dataclass(slots=True)
class QuotaHold:
    """Units a request holds on one quota period row until it is recorded."""

    period_id: int
    kind: str
    units: int


@dataclass(frozen=True, slots=True)
class Quota:
    kind: str
    limit: int


def quotas_of(entitlement: PlanEntitlement | None) -> list[Quota]:
    if entitlement is None:
        return []
    quotas = []
    if entitlement.daily_request_limit is not None:
        quotas.append(Quota(KIND.REQUESTS_PER_DAY, entitlement.daily_request_limit))
    if entitlement.monthly_token_limit is not None:
        quotas.append(Quota(KIND.TOKENS_PER_MONTH, entitlement.monthly_token_limit))
    return quotas


def period_of(kind: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(start, end) of the day or calendar month containing ``now``, in ``TIME_ZONE``."""
    local = timezone.localtime(now)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == KIND.REQUESTS_PER_DAY:
        start = midnight
        end = timezone.make_aware(
            dt.datetime.combine(start.date() + dt.timedelta(days=1), dt.time())
        )
        return start, end
    start = midnight.replace(day=1)
    following = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return start, timezone.make_aware(dt.datetime.combine(following.date(), dt.time()))


def _period_id(entitlement: PlanEntitlement, user_id: int, kind: str, start) -> int:
    lookup = {"entitlement": entitlement, "user_id": user_id, "kind": kind, "period_start": start}
    pid = QuotaPeriod.objects.filter(**lookup).values_list("pk", flat=True).first()
    if pid is None:
        try:
            with transaction.atomic():
                pid = QuotaPeriod.objects.create(**lookup).pk
        except IntegrityError:  # made by a concurrent request (or the write refused)
            pid = QuotaPeriod.objects.filter(**lookup).values_list("pk", flat=True).first()
            if pid is None:
                raise
    return pid


def reserve(
    entitlement: PlanEntitlement | None, user_id: int | None, *, tokens: int, now: dt.datetime
) -> list[QuotaHold]:
    """Hold one request and ``tokens`` on the entitlement's quotas for the user, all or
    nothing (``QuotaExceeded``). Database I/O: a database thread."""
    quotas = quotas_of(entitlement)
    if not quotas or user_id is None:
        return []
    holds: list[QuotaHold] = []
    with write_lock(), transaction.atomic():
        for quota in quotas:
            start, end = period_of(quota.kind, now)
            pid = _period_id(entitlement, user_id, quota.kind, start)
            units = 1 if quota.kind == KIND.REQUESTS_PER_DAY else max(0, tokens)
            fits = QuotaPeriod.objects.filter(
                pk=pid, used__lte=Value(quota.limit - units) - F("reserved")
            ).update(reserved=F("reserved") + units)
            if not fits:
                _give_back(holds)
                raise QuotaExceeded(
                    _refusal(entitlement, quota, units), retry_after=_seconds(end, now)
                )
            holds.append(QuotaHold(pid, quota.kind, units))
    return holds


def _seconds(end: dt.datetime, now: dt.datetime) -> float:
    return max(1.0, math.ceil((end - now).total_seconds()))


def _refusal(entitlement: PlanEntitlement, quota: Quota, units: int) -> str:
    alias = entitlement.alias.slug
    if quota.kind == KIND.REQUESTS_PER_DAY:
        return (
            f"Your plan allows {quota.limit} requests a day to model {alias!r}; used up for today."
        )
    return (
        f"Your plan allows {quota.limit} tokens a month on model {alias!r}; this request could "
        f"use up to {units} (its prompt and max_tokens), more than is left this month. "
        "Lower max_tokens, or wait for the next month."
    )


def _give_back(holds: list[QuotaHold]) -> None:
    for hold in holds:
        QuotaPeriod.objects.filter(pk=hold.period_id).update(reserved=F("reserved") - hold.units)


def settle(holds: list[QuotaHold], *, counted: bool, tokens: int) -> None:
    """Turn the holds into use (inside the caller's transaction): the request if
    ``counted``, and ``tokens``."""
    for hold in holds:
        used = (1 if counted else 0) if hold.kind == KIND.REQUESTS_PER_DAY else max(0, tokens)
        QuotaPeriod.objects.filter(pk=hold.period_id).update(
            reserved=F("reserved") - hold.units, used=F("used") + used
        )


def release_job(batch, holds: list[QuotaHold]) -> None:
    """A group-commit job: give holds back untouched (a cancelled reservation)."""
    _give_back(holds)


def status(entitlements: list[PlanEntitlement], user_id: int, *, now: dt.datetime) -> list[dict]:
    """The user's quotas on ``entitlements`` this period (for the usage report)."""
    report = []
    for entitlement in entitlements:
        for quota in quotas_of(entitlement):
            start, end = period_of(quota.kind, now)
            row = QuotaPeriod.objects.filter(
                entitlement=entitlement, user_id=user_id, kind=quota.kind, period_start=start
            ).values("used", "reserved").first() or {"used": 0, "reserved": 0}
            day = quota.kind == KIND.REQUESTS_PER_DAY
            report.append(
                {
                    "model": entitlement.alias.slug,
                    "period": "day" if day else "month",
                    "unit": "requests" if day else "tokens",
                    "limit": quota.limit,
                    "used": row["used"],
                    "reserved": max(0, row["reserved"]),
                    "remaining": max(0, quota.limit - row["used"] - max(0, row["reserved"])),
                    "resets_at": end.isoformat(),
                }
            )
    return report
