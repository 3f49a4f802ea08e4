"""Group commit: the gateway's accounting writes share transactions, and fail alone."""

from __future__ import annotations

import asyncio
import functools
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError

from llm_integration import exceptions as exc
from llm_integration.models import BudgetPeriod, Plan, UsageRecord
from llm_integration.services.accounting import budgets
from llm_integration.services.accounting.writer import writer
from tests.factories import BudgetFactory

pytestmark = pytest.mark.django_db(transaction=True)


def record(request_id: str) -> UsageRecord:
    return UsageRecord(request_id=request_id, status=UsageRecord.Status.OK)


def add_record(batch, request_id: str) -> str:
    batch.add(record(request_id))
    return request_id


def reserve(now):
    return functools.partial(budgets.reserve_job, now=now, period_ids={})


def duplicate(batch, slug: str) -> None:
    Plan.objects.create(slug=slug, name="one")
    Plan.objects.create(slug=slug, name="two")  # unique slug: this transaction is done for


async def test_waiting_writes_share_one_transaction(gated):
    w = gated.writer
    first = await gated.shut()
    pending = [w.write(add_record, f"req-{i}") for i in range(20)]
    gated.open()
    await first
    assert await asyncio.gather(*pending) == [f"req-{i}" for i in range(20)]
    assert w.jobs == 21 and w.commits == 2  # the held job's, then all twenty at once
    ids = await sync_to_async(list)(UsageRecord.objects.values_list("request_id", flat=True))
    assert sorted(ids) == sorted(f"req-{i}" for i in range(20))


async def test_a_write_that_breaks_the_transaction_fails_alone(gated):
    w = gated.writer
    first = await gated.shut()
    before = w.write(add_record, "before")
    broken = w.write(duplicate, "dup")  # breaks the whole batch's transaction
    after = w.write(add_record, "after")
    gated.open()
    await first
    assert await before == "before" and await after == "after"
    with pytest.raises(IntegrityError):
        await broken
    ids = await sync_to_async(list)(UsageRecord.objects.values_list("request_id", flat=True))
    assert sorted(ids) == ["after", "before"]
    assert not await sync_to_async(Plan.objects.exists)()  # nothing of the broken job's


async def test_a_refusal_reaches_only_its_own_caller(gated):
    w = gated.writer
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"), hard=True)
    now = budgets.timezone.now()
    first = await gated.shut()
    pending = [w.write(reserve(now), [budget], Decimal("0.4")) for _ in range(4)]
    gated.open()
    await first
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert w.commits == 2  # the four in one transaction: each checked against the ones before
    held = [r for r in results if isinstance(r, budgets.Reservation)]
    refused = [r for r in results if isinstance(r, exc.BudgetExceeded)]
    assert (len(held), len(refused)) == (2, 2)  # 0.4 + 0.4 fit in 1, a third does not
    period = await sync_to_async(BudgetPeriod.objects.get)(budget=budget)
    assert period.reserved_units == 2 * 40_000_000


async def test_a_multi_budget_refusal_gives_back_what_it_held():
    roomy = await sync_to_async(BudgetFactory)(name="roomy", limit_usd=Decimal("10"))
    tight = await sync_to_async(BudgetFactory)(name="tight", limit_usd=Decimal("0.1"))
    now = budgets.timezone.now()
    with pytest.raises(exc.BudgetExceeded):
        await writer.write(reserve(now), [roomy, tight], Decimal("0.5"))
    rows = await sync_to_async(list)(BudgetPeriod.objects.values_list("reserved_units", flat=True))
    assert rows and set(rows) == {0}


async def test_a_batch_applies_its_writes_in_order(gated):
    # A release ahead of a reservation in the same transaction makes room for it.
    w = gated.writer
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"), hard=True)
    now = budgets.timezone.now()
    held = await w.write(reserve(now), [budget], Decimal("0.8"))
    first = await gated.shut()
    release = w.write(budgets.release_job, held.holds)
    again = w.write(reserve(now), [budget], Decimal("0.8"))
    refused = w.write(reserve(now), [budget], Decimal("0.8"))
    gated.open()
    await first
    await release
    assert len((await again).holds) == 1
    with pytest.raises(exc.BudgetExceeded):
        await refused
    period = await sync_to_async(BudgetPeriod.objects.get)(budget=budget)
    assert (period.reserved_units, period.spent_units) == (80_000_000, 0)


def test_rows_go_in_as_the_orm_would_write_them():
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from llm_integration.services.accounting.writer import insert_rows

    user = get_user_model().objects.create_user("writer")
    fields = {
        "user": user,
        "plan": "pro",
        "alias": "chat",
        "provider": "oa",
        "upstream_model": "gpt-4o-mini",
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "tokens_estimated": True,
        "cost_usd": Decimal("0.00001234"),
        "latency_ms": 87,
        "status": UsageRecord.Status.ERROR,
        "error_type": "upstream_timeout",
        "finish_reason": "cancelled",
        "cached": False,
        "streamed": True,
    }
    UsageRecord.objects.create(request_id="orm", **fields)
    with transaction.atomic():
        insert_rows(UsageRecord, [UsageRecord(request_id=f"raw-{i}", **fields) for i in range(3)])
    rows = {r.request_id: r for r in UsageRecord.objects.all()}
    assert sorted(rows) == ["orm", "raw-0", "raw-1", "raw-2"]
    for name in ["raw-0", "raw-1", "raw-2"]:
        for field in [*fields, "created_at"]:
            if field != "created_at":
                assert getattr(rows[name], field) == getattr(rows["orm"], field), field
        assert rows[name].created_at is not None
