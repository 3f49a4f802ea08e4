"""Budget allowances: reservations from what the process holds, with the same limits.

Prices are $1 per million tokens (1 token = 100 units of 1e-8 USD); gpt-4o-mini counts
prompts exactly, so a request's worst case is (prompt + max_tokens) * 100 units."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from llm_integration import exceptions as exc
from llm_integration.models import AliasFallback, BudgetPeriod, UsageRecord
from llm_integration.services.accounting import budgets
from llm_integration.services.accounting.allowances import (
    Allowances,
    Grant,
    Spend,
    Terms,
    Withdrawal,
    allowances,
)
from llm_integration.services.accounting.writer import writer
from llm_integration.text.tokens import count_message_tokens
from tests.conftest import WriterGate
from tests.factories import BudgetFactory, ModelAliasFactory, ProviderFactory
from tests.fakes.openai import OpenAIFake

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = count_message_tokens([{"role": "user", "content": "Hi"}], model="gpt-4o-mini")
WORST = (PROMPT + 50) * 100  # max_tokens=50
COST = (PROMPT + 20) * 100  # what the fake answers: the prompt and 20 tokens


def priced_alias(fake, key_env, slug="chat"):
    provider = ProviderFactory(
        name=f"p-{slug}", kind="openai", base_url=fake.base_url, api_key_env=key_env
    )
    return ModelAliasFactory(
        slug=slug,
        provider=provider,
        upstream_model="gpt-4o-mini",
        input_price_per_mtok=Decimal(1),
        output_price_per_mtok=Decimal(1),
        default_max_tokens=50,
    )


@pytest.fixture
def priced(openai_fake, api_key_env):
    return priced_alias(openai_fake, api_key_env)


async def period_of(budget) -> BudgetPeriod:
    return await BudgetPeriod.objects.aget(budget=budget)


async def in_flight(budget) -> int:
    """The row's reserved units once a request holds something (bounded wait)."""
    for _ in range(500):
        period = await BudgetPeriod.objects.filter(budget=budget).afirst()
        if period is not None and period.reserved_units:
            return period.reserved_units
        await asyncio.sleep(0.01)
    raise AssertionError("nothing was reserved")


def answer(fake, n=1, **kw):
    for _ in range(n):
        fake.push(text="ok", prompt_tokens=PROMPT, completion_tokens=20, **kw)


async def test_first_request_reserves_its_worst_case_and_as_much_again(
    gateway, priced, openai_fake
):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
    answer(openai_fake, mode="slow", delay=0.5)
    task = asyncio.create_task(gateway.chat(model="chat", messages="Hi"))
    assert await in_flight(budget) == 2 * WORST  # its own hold + an allowance as large
    result = await task
    period = await period_of(budget)
    assert period.spent_units == COST == result.cost_usd * 10**8
    # What the request did not spend stays reserved for this process's next requests.
    assert period.reserved_units == 2 * WORST - COST
    assert allowances.get(period.pk).held == 0
    assert allowances.get(period.pk).granted == period.reserved_units


async def test_next_requests_reserve_without_a_write_of_their_own(gateway, priced, openai_fake):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
    answer(openai_fake, 4)
    writes = []
    for _ in range(4):
        jobs = writer.jobs
        await gateway.chat(model="chat", messages="Hi")
        writes.append(writer.jobs - jobs)
    # A grant of two worst cases, then two requests reserve from memory and write only
    # their usage record; each leaves what it did not spend. The fourth's worst case no
    # longer fits in what is left: it writes a grant again.
    assert 2 * WORST - 3 * COST < WORST <= 2 * WORST - 2 * COST
    assert writes == [2, 1, 1, 2]
    period = await period_of(budget)
    assert period.spent_units == 4 * COST
    assert period.reserved_units == allowances.get(period.pk).granted


async def test_stopping_the_writer_gives_the_allowance_back(gateway, priced, openai_fake):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
    answer(openai_fake)
    await gateway.chat(model="chat", messages="Hi")
    assert (await period_of(budget)).reserved_units > 0
    await sync_to_async(writer.stop)()
    period = await period_of(budget)
    assert (period.reserved_units, period.spent_units) == (0, COST)
    assert allowances.get(period.pk) is None


async def test_an_idle_allowance_goes_back_by_itself(settings, gateway, priced, openai_fake):
    settings.LLM_INTEGRATION = {"BUDGET_ALLOWANCE_IDLE": 0.05}
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
    answer(openai_fake)
    await gateway.chat(model="chat", messages="Hi")
    for _ in range(1000):  # the writer's thread returns it (bounded wait)
        period = await period_of(budget)
        if period.reserved_units == 0:
            break
        await asyncio.sleep(0.005)
    assert (period.reserved_units, period.spent_units) == (0, COST)


async def test_grants_stay_below_the_share_of_the_room_left(settings, gateway, priced, openai_fake):
    settings.LLM_INTEGRATION = {"BUDGET_ALLOWANCE_SHARE": 0.25}
    # Room for the worst case and 400 units more: the allowance is a quarter of those.
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal(WORST + 400) / 10**8)
    answer(openai_fake, mode="slow", delay=0.5)
    task = asyncio.create_task(gateway.chat(model="chat", messages="Hi"))
    assert await in_flight(budget) == WORST + 100
    await task


@pytest.mark.parametrize("share", [0, 0.125, 1])
async def test_the_limit_admits_exactly_as_many_requests_as_without_allowances(
    settings, gateway, priced, openai_fake, share
):
    # One process, requests one after the other: a request is admitted while its worst
    # case fits next to what the ones before spent, whatever the process holds (a request
    # that does not fit gives the unused part back first): the same count in every mode.
    settings.LLM_INTEGRATION = {"BUDGET_ALLOWANCE_SHARE": share}
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal(10 * COST) / 10**8)
    answer(openai_fake, 12)
    outcomes = []
    for _ in range(12):
        try:
            await gateway.chat(model="chat", messages="Hi")
            outcomes.append("ok")
        except exc.BudgetExceeded:
            outcomes.append("refused")
    ok = (10 * COST - WORST) // COST + 1
    assert outcomes == ["ok"] * ok + ["refused"] * (12 - ok)
    period = await period_of(budget)
    assert (period.spent_units, period.reserved_units) == (ok * COST, 0)


async def test_a_changed_limit_voids_the_allowance(gateway, priced, openai_fake):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
    answer(openai_fake, 2)
    await gateway.chat(model="chat", messages="Hi")
    held = (await period_of(budget)).reserved_units
    assert held > WORST  # enough for the next request...
    budget.limit_usd = Decimal(COST + WORST) / 10**8  # ...but the limit now leaves one
    await sync_to_async(budget.save)()
    jobs = writer.jobs
    await gateway.chat(model="chat", messages="Hi")
    assert writer.jobs - jobs == 2  # checked against the new limit in the database
    period = await period_of(budget)
    assert period.spent_units + period.reserved_units <= COST + WORST
    with pytest.raises(exc.BudgetExceeded):
        await gateway.chat(model="chat", messages="Hi")


async def test_a_fallback_gives_the_primarys_hold_back_in_memory(gateway, openai_fake, api_key_env):
    backup_fake = OpenAIFake().start()
    try:
        primary = await sync_to_async(priced_alias)(openai_fake, api_key_env)
        backup = await sync_to_async(priced_alias)(backup_fake, api_key_env, slug="backup")
        await AliasFallback.objects.acreate(alias=primary, fallback=backup, position=0)
        budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
        openai_fake.push(mode="error", status=500)
        answer(backup_fake)
        jobs = writer.jobs
        result = await gateway.chat(model="chat", messages="Hi")
        assert result.model == "backup"
        # The primary's grant and the record: the backup took its hold from the
        # allowance, and the primary gave its own back without a write.
        assert writer.jobs - jobs == 2
        period = await period_of(budget)
        assert allowances.get(period.pk).held == 0
        assert period.reserved_units == allowances.get(period.pk).granted == 2 * WORST - COST
    finally:
        backup_fake.stop()


@pytest.mark.parametrize("share", [0, 0.125])
async def test_a_request_cancelled_while_reserving_holds_nothing(
    settings, gateway, priced, openai_fake, share
):
    settings.LLM_INTEGRATION = {"BUDGET_ALLOWANCE_SHARE": share}
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("5"))
    gate = WriterGate(writer)
    held = await gate.shut()
    task = asyncio.create_task(gateway.chat(model="chat", messages="Hi"))
    for _ in range(1000):  # until the request waits on its reservation (bounded)
        if writer._queue.qsize():
            break
        await asyncio.sleep(0.001)
    task.cancel()
    gate.open()
    await held
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(1000):  # until its reservation has landed and been released (bounded)
        period = await BudgetPeriod.objects.filter(budget=budget).afirst()
        allowance = allowances.get(period.pk) if period else None
        if allowance is not None and allowance.held == 0:
            break  # the hold went back to the allowance, which keeps the grant
        if period is not None and allowance is None and period.reserved_units == 0:
            break  # without allowances: a second write released it
        await asyncio.sleep(0.005)
    await sync_to_async(writer.stop)()
    period = await period_of(budget)
    assert (period.reserved_units, period.spent_units) == (0, 0)
    cancelled = await UsageRecord.objects.aget()
    assert cancelled.status == UsageRecord.Status.CANCELLED
    assert openai_fake.requests == []  # it never reached the upstream


async def test_grants_in_one_transaction_refuse_nobody_for_their_own_allowance(priced, gated):
    # Room for exactly two worst cases: the first grant takes all the room (share 1),
    # the second request in the same transaction takes it back from that grant.
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal(2 * WORST) / 10**8)
    now = budgets.timezone.now()
    job = functools.partial(
        budgets.grant_job, now=now, period_ids={}, withdrawal=Withdrawal(), share=1.0
    )
    first = await gated.shut()
    pending = [gated.writer.write(job, [budget], WORST) for _ in range(3)]
    gated.open()
    await first
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert gated.writer.commits == 2  # the three in one transaction
    assert [type(r).__name__ for r in results] == ["Reservation", "Reservation", "BudgetExceeded"]
    period = await period_of(budget)
    assert period.reserved_units == 2 * WORST
    allowance = allowances.get(period.pk)
    assert (allowance.granted, allowance.held) == (2 * WORST, 2 * WORST)


async def _a_held_allowance(limit_units: int):
    """A budget whose row holds request A's grant (A's worst case and as much again) and
    a second request's hold taken from it in memory: nothing free in the allowance."""
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal(limit_units) / 10**8)
    now = budgets.timezone.now()
    a = await writer.write(_grant(budget, now, Withdrawal()), [budget], WORST)
    pid = a.holds[0].period_id
    assert allowances.take([pid], [budgets.terms(budget)], WORST)  # request B, in memory
    return budget, now, a, pid


async def assert_consistent(budget, pid):
    """A's cost spent; B and C held; what the row reserves is what the process holds
    (nothing counted twice, nothing lost) and within the limit."""
    period = await period_of(budget)
    allowance = allowances.get(pid)
    assert period.spent_units == COST and allowance.held == 2 * WORST
    assert period.reserved_units == allowance.granted
    assert period.spent_units + period.reserved_units <= 3 * WORST - 1


def _grant(budget, now, withdrawal):
    del budget  # the job's argument, given to write()
    return functools.partial(
        budgets.grant_job, now=now, period_ids={}, withdrawal=withdrawal, share=1.0
    )


async def test_a_settlement_in_the_same_transaction_frees_room_for_a_grant(priced, gated):
    # Room left after A's cost and B's hold: 2 W - 1 - COST, enough for C. But until the
    # batch commits, A's unused hold still sits in reserved as the process's allowance.
    budget, now, a, pid = await _a_held_allowance(3 * WORST - 1)
    record = UsageRecord(request_id="a", status="ok", cost_usd=Decimal(COST) / 10**8)
    first = await gated.shut()
    settled = gated.writer.write(budgets.record_usage, record, a.holds, record.cost_usd, True)
    withdrawal = allowances.withdraw([pid])  # C: nothing free yet
    granted = gated.writer.write(_grant(budget, now, withdrawal), [budget], WORST)
    gated.open()
    await first
    await settled
    assert isinstance(await granted, budgets.Reservation)  # refused before the fix
    await assert_consistent(budget, pid)


async def test_a_settlement_committed_after_the_request_looked_frees_room(priced):
    budget, now, a, pid = await _a_held_allowance(3 * WORST - 1)
    withdrawal = allowances.withdraw([pid])  # C looks first: nothing free
    record = UsageRecord(request_id="a", status="ok", cost_usd=Decimal(COST) / 10**8)
    await writer.write(budgets.record_usage, record, a.holds, record.cost_usd, True)
    assert allowances.get(pid).granted - allowances.get(pid).held == WORST - COST  # freed
    reservation = await writer.write(_grant(budget, now, withdrawal), [budget], WORST)
    assert isinstance(reservation, budgets.Reservation)  # refused before the fix
    # Returned in C's transaction (restored if it fails).
    assert withdrawal.returned == {pid: WORST - COST}
    await assert_consistent(budget, pid)


def test_allowances_take_all_or_nothing_and_give_back_only_what_is_unused():
    table = Allowances()
    terms = Terms(hard=True, limit_units=1000)
    table.credit([Grant(1, 300, 100, terms), Grant(2, 150, 100, terms)])
    assert not table.take([1, 2], [terms, terms], 60)  # row 2 has 50 free
    assert table.get(1).held == 100  # nothing taken from row 1 either
    assert table.take([1, 2], [terms, terms], 50)
    assert not table.take([1], [Terms(True, 999)], 10)  # granted under another limit
    assert table.withdraw([1, 2]) == Withdrawal({1: 150}, {1: 150, 2: 150})
    table.settle([Spend(1, held=150, spent=40)])  # a request that held 150 spent 40
    assert (table.get(1).granted, table.get(1).held) == (110, 0)
    table.restore({1: 5})
    assert table.idle() == {1: 115}  # row 2 is all held: nothing to give back
    assert table.get(1) is None and table.get(2).granted == 150
    table.release([(2, 150)])
    assert table.idle(before=0.0) == {}  # used since: kept
    assert table.idle() == {2: 150} and not table


async def test_a_refusal_by_one_budget_leaves_nothing_held_on_the_others(
    gateway, priced, openai_fake
):
    roomy = await sync_to_async(BudgetFactory)(name="roomy", limit_usd=Decimal("1"))
    tight = await sync_to_async(BudgetFactory)(
        name="tight", scope="alias", alias=priced, limit_usd=Decimal(WORST + COST - 1) / 10**8
    )
    answer(openai_fake, 2)
    await gateway.chat(model="chat", messages="Hi")  # fits; the second does not
    with pytest.raises(exc.BudgetExceeded, match="tight"):
        await gateway.chat(model="chat", messages="Hi")
    for budget in (roomy, tight):
        period = await period_of(budget)
        # The refused request gave back what the first left unused, on both rows.
        assert (period.spent_units, period.reserved_units) == (COST, 0)


async def test_a_new_period_gets_its_own_allowance(gateway, clock, priced, openai_fake):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"), period="day")
    answer(openai_fake, 2)
    await gateway.chat(model="chat", messages="Hi")
    clock.advance(86400)
    await gateway.chat(model="chat", messages="Hi")
    periods = [p async for p in BudgetPeriod.objects.filter(budget=budget)]
    assert len(periods) == 2
    assert all(p.spent_units == COST and p.reserved_units == 2 * WORST - COST for p in periods)
    await sync_to_async(writer.stop)()  # yesterday's, unused since, goes back with today's
    assert [p.reserved_units async for p in BudgetPeriod.objects.filter(budget=budget)] == [0, 0]


async def test_every_write_to_a_budget_row_moves_its_updated_at(gateway, priced, openai_fake):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("1"))
    answer(openai_fake, 2)
    await gateway.chat(model="chat", messages="Hi")
    first = (await period_of(budget)).updated_at
    await gateway.chat(model="chat", messages="Hi")  # its hold from memory, its record written
    period = await period_of(budget)
    assert period.spent_units == 2 * COST and period.updated_at > first


# -- llm_release_reservations: what killed processes left reserved -------------------


def test_rows_nobody_wrote_for_a_day_are_released(priced):
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    left = BudgetFactory(name="left-by-a-killed-worker", limit_usd=Decimal("1"))
    live = BudgetFactory(name="in-use", limit_usd=Decimal("1"))
    now = timezone.now()
    stale = BudgetPeriod.objects.create(budget=left, period_start=now, reserved_units=500)
    fresh = BudgetPeriod.objects.create(budget=live, period_start=now, reserved_units=700)
    BudgetPeriod.objects.filter(pk=stale.pk).update(updated_at=now - dt.timedelta(hours=25))

    out = StringIO()
    call_command("llm_release_reservations", "--dry-run", stdout=out)
    assert "left-by-a-killed-worker" in out.getvalue() and "in-use" not in out.getvalue()
    assert "1 budget rows would be released" in out.getvalue()
    assert BudgetPeriod.objects.get(pk=stale.pk).reserved_units == 500

    out = StringIO()
    call_command("llm_release_reservations", stdout=out)
    assert "Released 1 budget rows." in out.getvalue()
    assert BudgetPeriod.objects.get(pk=stale.pk).reserved_units == 0
    assert BudgetPeriod.objects.get(pk=fresh.pk).reserved_units == 700


def test_release_refuses_an_age_that_could_catch_live_requests(settings):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="at least 1h") as info:
        call_command("llm_release_reservations", "--idle-for", "0h")
    assert info.value.returncode == 2
    settings.LLM_INTEGRATION = {"REQUEST_DEADLINE": 7200}  # requests may run two hours
    with pytest.raises(CommandError, match="7202 s"):
        call_command("llm_release_reservations", "--idle-for", "2h")
    with pytest.raises(CommandError, match="--idle-for takes a number and a unit"):
        call_command("llm_release_reservations", "--idle-for", "30m")
