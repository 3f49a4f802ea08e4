"""Entitlement quotas: requests per day and tokens per month, per user, held like hard
budgets (reserved before the call, settled after), across processes."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from asgiref.sync import sync_to_async
from rest_framework.authtoken.models import Token

from llm_integration import exceptions as exc
from llm_integration.models import QuotaPeriod, UsageRecord
from tests.factories import (
    ModelAliasFactory,
    PlanEntitlementFactory,
    ProviderFactory,
    SubscriptionFactory,
)
from tests.processes import ServerProcesses

pytestmark = pytest.mark.django_db(transaction=True)


def entitled(**quotas):
    """A user on a plan whose entitlement on the dummy alias 'default' has ``quotas``."""
    alias = ModelAliasFactory(slug="default", provider=ProviderFactory(kind="dummy"))
    entitlement = PlanEntitlementFactory(alias=alias, **quotas)
    return SubscriptionFactory(plan=entitlement.plan).user


async def test_a_daily_request_quota_refuses_until_the_next_day(gateway, clock):
    user = await sync_to_async(entitled)(daily_request_limit=3)
    for _ in range(3):
        await gateway.chat(user=user, messages="Hi")
    with pytest.raises(exc.QuotaExceeded) as refused:
        await gateway.chat(user=user, messages="Hi", request_id="req_over")
    # FakeClock: 2026-11-21 12:00 UTC; the day ends at midnight (TIME_ZONE=UTC).
    assert refused.value.retry_after == 12 * 3600 and refused.value.status_code == 429
    assert "3 requests a day" in refused.value.message
    record = await UsageRecord.objects.aget(request_id="req_over")
    assert (record.status, record.error_type) == ("refused", "quota_exceeded")
    clock.advance(12 * 3600)
    assert (await gateway.chat(user=user, messages="Hi")).answer
    rows = [r async for r in QuotaPeriod.objects.order_by("period_start")]
    assert [(r.used, r.reserved) for r in rows] == [(3, 0), (1, 0)]


async def test_a_monthly_token_quota_holds_the_worst_case_and_counts_what_was_used(gateway):
    user = await sync_to_async(entitled)(monthly_token_limit=120)
    first = await gateway.chat(user=user, messages="Hi", max_tokens=40)
    used = first.usage.total_tokens
    period = await QuotaPeriod.objects.aget()
    assert (period.used, period.reserved) == (used, 0)
    with pytest.raises(exc.QuotaExceeded, match="Lower max_tokens") as refused:
        await gateway.chat(user=user, messages="Hi", max_tokens=120 - used)
    assert refused.value.retry_after == 10 * 86400 - 12 * 3600  # December 1st
    assert (await gateway.chat(user=user, messages="Hi", max_tokens=20)).answer


async def test_requests_without_quotas_write_no_quota_rows(gateway):
    user = await sync_to_async(entitled)()
    await gateway.chat(user=user, messages="Hi")
    assert not await QuotaPeriod.objects.aexists()


async def test_the_usage_report_shows_the_quotas(gateway, clock):
    from llm_integration.services.accounting.reports import usage_report

    user = await sync_to_async(entitled)(daily_request_limit=5, monthly_token_limit=1000)
    result = await gateway.chat(user=user, messages="Hi", max_tokens=50)
    report = await sync_to_async(usage_report)(user, now=clock.now())
    assert report["quotas"] == [
        {
            "model": "default",
            "period": "day",
            "unit": "requests",
            "limit": 5,
            "used": 1,
            "reserved": 0,
            "remaining": 4,
            "resets_at": "2026-11-22T00:00:00+00:00",
        },
        {
            "model": "default",
            "period": "month",
            "unit": "tokens",
            "limit": 1000,
            "used": result.usage.total_tokens,
            "reserved": 0,
            "remaining": 1000 - result.usage.total_tokens,
            "resets_at": "2026-12-01T00:00:00+00:00",
        },
    ]


def test_a_daily_quota_holds_across_two_server_processes(tmp_path):
    user = entitled(daily_request_limit=10)
    token = Token.objects.create(user=user).key

    async def fire() -> list[int]:
        headers = {"Authorization": f"Token {token}"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:

            async def one(i: int) -> int:
                url = f"{servers[i % 2]}/api/v1/chat"
                return (await client.post(url, json={"message": "Hi"})).status_code

            return await asyncio.gather(*(one(i) for i in range(30)))

    with ServerProcesses(2, tmp_path, REDIS_URL="") as servers:
        statuses = asyncio.run(fire())
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    period = QuotaPeriod.objects.get()
    assert (period.used, period.reserved) == (10, 0)
    refused = UsageRecord.objects.filter(status="refused", error_type="quota_exceeded")
    assert refused.count() == 20


def test_period_bounds_follow_the_time_zone(settings):
    from llm_integration.services.accounting.quotas import KIND, period_of

    settings.TIME_ZONE = "Europe/Berlin"
    now = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC)  # 00:30 on Jan 1st in Berlin
    start, end = period_of(KIND.REQUESTS_PER_DAY, now)
    assert (start.isoformat(), end.isoformat()) == (
        "2027-01-01T00:00:00+01:00",
        "2027-01-02T00:00:00+01:00",
    )
    start, end = period_of(KIND.TOKENS_PER_MONTH, now)
    assert (start.date(), end.date()) == (dt.date(2027, 1, 1), dt.date(2027, 2, 1))
