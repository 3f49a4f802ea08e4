"""A usage record the database refuses for its content (a constraint, a value out of
range, text it cannot store, a user deleted meanwhile) is written once more in a safe
form, never retried as it was, and never makes the accounting unhealthy for anyone
else: the database's own constraints decide, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from llm_integration import exceptions as exc
from llm_integration.adapters.untrusted import MAX_TOKEN_COUNT
from llm_integration.models import BudgetPeriod, UsageRecord
from llm_integration.services.accounting.writer import writer
from llm_integration.services.chat.settlement import record_usage, repaired
from tests.factories import BudgetFactory, ModelAliasFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

#: Records every database refuses (a CHECK constraint, the driver's range or encoding).
POISONS = {
    "negative tokens": {"prompt_tokens": -5, "completion_tokens": -7},
    "tokens past 2**63": {"completion_tokens": 2**64},
    "a lone surrogate": {"upstream_model": "caf\ud800"},
}
#: Records only PostgreSQL refuses (SQLite stores any integer and any length of text).
POSTGRES_POISONS = {
    "tokens past the column": {"prompt_tokens": 3_000_000_000},
    "a finish reason past its column": {"finish_reason": "x" * 40},
}


def usage(request_id: str, **fields) -> UsageRecord:
    return UsageRecord(request_id=request_id, status=UsageRecord.Status.OK, **fields)


async def write(record: UsageRecord, **options):
    return await writer.write(record_usage, record, [], record.cost_usd, False, [], **options)


@pytest.mark.parametrize(
    "case",
    [
        *POISONS,
        *(
            pytest.param(
                case,
                marks=pytest.mark.skipif(
                    connection.vendor != "postgresql", reason="PostgreSQL's limits"
                ),
            )
            for case in POSTGRES_POISONS
        ),
    ],
)
async def test_a_poisoned_record_is_written_repaired_and_the_gateway_stays_healthy(case):
    fields = POISONS.get(case) or POSTGRES_POISONS[case]
    await write(usage(f"req-{case}", **fields), keep=True, repair=repaired)
    row = await UsageRecord.objects.aget(request_id=f"req-{case}")
    assert 0 <= row.prompt_tokens <= MAX_TOKEN_COUNT
    assert 0 <= row.completion_tokens <= MAX_TOKEN_COUNT
    assert len(row.finish_reason) <= 32 and "\ud800" not in row.upstream_model
    assert Decimal(0) <= row.cost_usd < Decimal("1e10")
    assert writer.healthy() and not writer.kept
    await write(usage("req-next"), keep=True, repair=repaired)
    assert await UsageRecord.objects.filter(request_id="req-next").aexists()


async def test_a_user_deleted_meanwhile_is_dropped_from_the_record():
    user = await sync_to_async(UserFactory)()
    pk = user.pk
    await user.adelete()
    await write(usage("req-orphan", user_id=pk), keep=True, repair=repaired)
    row = await UsageRecord.objects.aget(request_id="req-orphan")
    assert row.user_id is None
    assert writer.healthy() and not writer.kept


async def test_without_a_repair_only_its_own_caller_fails():
    with pytest.raises(Exception):  # noqa: B017 (whichever error the database raises)
        await write(usage("req-bad", prompt_tokens=-5), keep=True)
    assert writer.healthy() and not writer.kept  # not kept, not retried forever
    await write(usage("req-good"), keep=True)
    assert await UsageRecord.objects.filter(request_id="req-good").aexists()
    assert not await UsageRecord.objects.filter(request_id="req-bad").aexists()


@pytest.fixture
def refusing():
    """A rule of the database refusing every usage row as a constraint would (the
    trigger outlives the test's rows: dropped after it)."""
    yield sync_to_async(refuse_usage_rows)
    with connection.cursor() as cursor:
        suffix = "" if connection.vendor == "sqlite" else " ON llm_integration_usagerecord"
        cursor.execute(f"DROP TRIGGER IF EXISTS llm_refuse_usage{suffix}")


def refuse_usage_rows() -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "CREATE TRIGGER llm_refuse_usage BEFORE INSERT ON llm_integration_usagerecord "
                "BEGIN SELECT RAISE(ABORT, 'usage refused by a rule'); END"
            )
        else:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION llm_refuse_usage() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'usage refused by a rule' USING ERRCODE = 'check_violation'; "
                "END; $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER llm_refuse_usage BEFORE INSERT ON llm_integration_usagerecord "
                "FOR EACH ROW EXECUTE FUNCTION llm_refuse_usage()"
            )


async def test_a_record_refused_even_repaired_gives_back_what_it_held(gateway, settings, refusing):
    """Nothing is written, so nothing is charged: the client is told so, the budget's
    reservation goes back, and the accounting stays healthy for everyone else."""
    settings.LLM_INTEGRATION = {"BUDGET_ALLOWANCE_SHARE": 0}  # reservations written
    await sync_to_async(ModelAliasFactory)(slug="default", provider__kind="dummy")
    await sync_to_async(BudgetFactory)(limit_usd=Decimal("5"))
    await refusing()
    with pytest.raises(exc.AccountingUnavailable, match="nothing was charged"):
        await gateway.chat(messages="Hi")
    for _ in range(200):  # the release is a write of its own (bounded wait)
        period = await BudgetPeriod.objects.aget()
        if period.reserved_units == 0:
            break
        await asyncio.sleep(0.05)
    assert (period.reserved_units, period.spent_units) == (0, 0)
    assert writer.healthy() and not writer.kept
