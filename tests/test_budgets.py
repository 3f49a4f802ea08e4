"""Hard budgets: worst-case reservation, exact settling, periods and alerts."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import django
import pytest
from asgiref.sync import sync_to_async
from django.core import mail

from llm_integration import exceptions as exc
from llm_integration.models import Budget, BudgetAlert, BudgetPeriod, UsageRecord
from llm_integration.services.accounting import budgets
from llm_integration.signals import budget_threshold_reached
from llm_integration.text.tokens import count_message_tokens
from tests.factories import (
    BudgetFactory,
    ModelAliasFactory,
    PlanFactory,
    ProviderFactory,
    SubscriptionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)

OPS_ADMINS = ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]


@pytest.fixture
def priced(openai_fake, api_key_env):
    """gpt-4o-mini at $1/$1 per million tokens: cost = tokens / 1M exactly."""
    provider = ProviderFactory(
        name="oa", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    return ModelAliasFactory(
        slug="chat",
        provider=provider,
        upstream_model="gpt-4o-mini",
        input_price_per_mtok=Decimal(1),
        output_price_per_mtok=Decimal(1),
        default_max_tokens=100,
    )


def test_period_starts(settings):
    now = dt.datetime(2026, 11, 19, 15, 30, tzinfo=dt.UTC)  # a Thursday
    assert budgets.period_start("day", now) == dt.datetime(2026, 11, 19, tzinfo=dt.UTC)
    assert budgets.period_start("week", now) == dt.datetime(2026, 11, 16, tzinfo=dt.UTC)
    assert budgets.period_start("month", now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert budgets.period_start("total", now) == budgets.EPOCH


async def test_worst_case_is_reserved_then_settled_to_the_real_cost(
    settings, gateway, priced, openai_fake
):
    # Each request's own reservation, written (allowances: tests/test_allowances.py).
    settings.LLM_INTEGRATION = {"BUDGET_ALLOWANCE_SHARE": 0}
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
    prompt = count_message_tokens([{"role": "user", "content": "Hi"}], model="gpt-4o-mini")
    openai_fake.push(mode="slow", delay=0.5, text="ok", prompt_tokens=prompt, completion_tokens=20)
    task = asyncio.create_task(gateway.chat(model="chat", messages="Hi", max_tokens=50))
    reserved = 0
    for _ in range(500):  # wait (bounded) until the request is in flight
        period = await BudgetPeriod.objects.filter(budget=budget).afirst()
        if period is not None and period.reserved_units:
            reserved = period.reserved_units
            break
        await asyncio.sleep(0.01)
    # prompt (exact for gpt-4o-mini) + max_tokens, at $1 per million, in 1e-8 USD units
    assert reserved == (prompt + 50) * 100
    result = await task
    period = await BudgetPeriod.objects.aget(budget=budget)
    assert period.reserved_units == 0
    assert period.spent_usd == Decimal(prompt + 20) / 10**6 == result.cost_usd


def test_reservation_is_all_or_nothing(priced):
    big = BudgetFactory(limit_usd=Decimal("1.00"))
    small = BudgetFactory(scope="alias", alias=priced, limit_usd=Decimal("0.10"))
    now = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    held = budgets.reserve([big, small], Decimal("0.06"), now=now)
    assert [h.units for h in held.holds] == [6_000_000, 6_000_000]
    with pytest.raises(exc.BudgetExceeded, match="alias chat"):
        budgets.reserve([big, small], Decimal("0.06"), now=now)
    # The failed attempt left nothing behind on the big budget.
    assert BudgetPeriod.objects.get(budget=big).reserved_units == 6_000_000
    budgets.settle(held, Decimal("0.01"))
    assert BudgetPeriod.objects.get(budget=big).spent_usd == Decimal("0.01")
    assert BudgetPeriod.objects.get(budget=small).reserved_units == 0


async def test_request_refused_when_worst_case_does_not_fit(gateway, priced, openai_fake):
    # Worst case of one request: prompt (exact, ~9 tokens) + max_tokens 100 at $1/1M.
    await sync_to_async(BudgetFactory)(name="tiny", limit_usd=Decimal("0.00005"))
    with pytest.raises(exc.BudgetExceeded) as info:
        await gateway.chat(model="chat", messages="Hi", request_id="req_b")
    assert (info.value.status_code, info.value.code) == (429, "budget_exceeded")
    assert openai_fake.requests == []
    record = await UsageRecord.objects.aget(request_id="req_b")
    assert (record.status, record.error_type) == ("refused", "budget_exceeded")


async def test_spend_stops_at_the_limit_and_never_passes_it(gateway, priced, openai_fake):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("0.001"))  # 1000 tokens
    ok = refused = 0
    for _ in range(20):
        openai_fake.push(text="x", prompt_tokens=10, completion_tokens=90)
        try:
            await gateway.chat(model="chat", messages="Hi")
            ok += 1
        except exc.BudgetExceeded:
            refused += 1
    period = await BudgetPeriod.objects.aget(budget=budget)
    assert period.spent_usd <= budget.limit_usd and period.reserved_units == 0
    assert period.spent_usd == Decimal("0.0001") * ok
    assert ok >= 8 and refused == 20 - ok


@pytest.mark.parametrize("scope", ["provider", "alias", "plan", "user"])
async def test_each_scope_applies_only_to_its_target(gateway, priced, scope):
    user = await sync_to_async(UserFactory)()
    other = await sync_to_async(UserFactory)()
    plan = await sync_to_async(PlanFactory)(slug="gold")
    await sync_to_async(SubscriptionFactory)(user=user, plan=plan)
    target = {
        "provider": {"provider": priced.provider},
        "alias": {"alias": priced},
        "plan": {"plan": plan},
        "user": {"user": user},
    }[scope]
    await sync_to_async(BudgetFactory)(scope=scope, limit_usd=Decimal(0), **target)
    with pytest.raises(exc.BudgetExceeded):
        await gateway.chat(user=user, model="chat", messages="Hi")
    if scope in ("plan", "user"):
        assert (await gateway.chat(user=other, model="chat", messages="Hi")).answer


async def test_soft_budget_alerts_but_does_not_refuse(gateway, priced, openai_fake):
    await sync_to_async(BudgetFactory)(limit_usd=Decimal(0), hard=False)
    assert (await gateway.chat(model="chat", messages="Hi")).answer


async def test_alerts_fire_once_per_threshold_and_period(
    gateway, clock, priced, openai_fake, settings
):
    settings.ADMINS = OPS_ADMINS  # the test environment mails through locmem
    budget = await sync_to_async(BudgetFactory)(
        name="team", limit_usd=Decimal("0.001"), alert_thresholds=[75, 90, 100]
    )
    received = []
    budget_threshold_reached.connect(
        lambda **kw: received.append(kw["threshold"]), weak=False, dispatch_uid="t"
    )
    try:
        prompt = count_message_tokens([{"role": "user", "content": "Hi"}], model="gpt-4o-mini")
        for tokens in (500, 260, 100, 100, 10):  # cumulative: 500, 760, 860, 960, ...
            answer = tokens - prompt  # each request costs `tokens` at $1 per million
            openai_fake.push(text="x", prompt_tokens=prompt, completion_tokens=answer)
            try:
                await gateway.chat(model="chat", messages="Hi", max_tokens=answer)
            except exc.BudgetExceeded:
                pass
        assert received == [75, 90]
        alerts = [a.threshold async for a in BudgetAlert.objects.filter(budget=budget)]
        assert sorted(alerts) == [75, 90]
        assert len(mail.outbox) == 2 and "reached 75%" in mail.outbox[0].subject
        # A new month is a new period: counters start at zero and alerts can fire again.
        clock.advance(11 * 86400)  # 2026-12-02
        openai_fake.push(text="x", prompt_tokens=prompt, completion_tokens=800 - prompt)
        await gateway.chat(model="chat", messages="Hi", max_tokens=800 - prompt)
        assert received == [75, 90, 75]
        assert await BudgetPeriod.objects.filter(budget=budget).acount() == 2
    finally:
        budget_threshold_reached.disconnect(dispatch_uid="t")


def test_budget_status_reports_spent_reserved_remaining(priced):
    budget = BudgetFactory(limit_usd=Decimal("5"), period=Budget.Period.DAY)
    now = dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC)
    held = budgets.reserve([budget], Decimal("1.5"), now=now)
    budgets.settle(held, Decimal("1.25"))
    budgets.reserve([budget], Decimal("0.5"), now=now)
    assert budgets.budget_status(budget, now=now) == {
        "spent": Decimal("1.25"),
        "reserved": Decimal("0.5"),
        "remaining": Decimal("3.25"),
    }


async def test_a_refusal_says_what_is_left_and_what_the_request_could_cost(
    gateway, priced, openai_fake
):
    await sync_to_async(BudgetFactory)(name="team", limit_usd=Decimal("0.0005"))
    openai_fake.push(text="x", prompt_tokens=8, completion_tokens=100)
    await gateway.chat(model="chat", messages="Hi", max_tokens=100)  # 108 of 500 spent
    with pytest.raises(exc.BudgetExceeded) as refused:
        await gateway.chat(model="chat", messages="Hi", max_tokens=1000)
    assert refused.value.message == (
        "The month budget 'team' (global) has $0.000392 left of $0.0005, and this request "
        "could cost up to $0.001008 (its prompt and max_tokens at the model's prices). "
        "Lower max_tokens to fit."
    )


async def test_the_first_refusal_of_a_period_alerts_once(gateway, priced, openai_fake, settings):
    settings.ADMINS = OPS_ADMINS  # the test environment mails through locmem
    budget = await sync_to_async(BudgetFactory)(
        name="team", limit_usd=Decimal("0.0005"), alert_thresholds=[75, 90, 100]
    )
    received = []
    budget_threshold_reached.connect(
        lambda **kw: received.append(kw["threshold"]), weak=False, dispatch_uid="refusal"
    )
    try:
        openai_fake.push(text="x", prompt_tokens=8, completion_tokens=100)
        await gateway.chat(model="chat", messages="Hi", max_tokens=100)  # 21.6 %: no alert
        for _ in range(3):
            with pytest.raises(exc.BudgetExceeded):
                await gateway.chat(model="chat", messages="Hi", max_tokens=1000)
    finally:
        budget_threshold_reached.disconnect(dispatch_uid="refusal")
    assert received == [75, 90, 100]  # at the first refusal, not again
    alerts = [a.threshold async for a in BudgetAlert.objects.filter(budget=budget)]
    assert sorted(alerts) == [75, 90, 100]
    assert len(mail.outbox) == 3 and "refused a request" in mail.outbox[-1].body


async def test_alert_mail_that_cannot_be_sent_is_logged_and_the_accounting_holds(
    gateway, priced, openai_fake, settings, caplog
):
    # A real SMTP backend pointed at a port nobody listens on.
    from tests.processes import free_port

    port = free_port()
    settings.ADMINS = OPS_ADMINS
    if django.VERSION >= (6, 1):
        smtp = {"host": "127.0.0.1", "port": port, "timeout": 2}
        settings.MAILERS = {
            "default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": smtp}
        }
    else:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    budget = await sync_to_async(BudgetFactory)(
        name="team", limit_usd=Decimal("0.001"), alert_thresholds=[50]
    )
    prompt = count_message_tokens([{"role": "user", "content": "Hi"}], model="gpt-4o-mini")
    openai_fake.push(text="x", prompt_tokens=prompt, completion_tokens=600 - prompt)
    result = await gateway.chat(model="chat", messages="Hi", max_tokens=600 - prompt)
    assert result.answer == "x" and result.cost_usd > 0
    assert [a.threshold async for a in BudgetAlert.objects.filter(budget=budget)] == [50]
    assert await UsageRecord.objects.filter(status="ok").acount() == 1
    failed = [r for r in caplog.records if r.getMessage() == "llm.budget_alert_mail_failed"]
    assert len(failed) == 1 and failed[0].exc_info is not None
