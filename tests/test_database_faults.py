"""The database refuses writes, or is locked: requests fail before their first token
with 503 ``accounting_unavailable`` within ``ACCOUNTING_TIMEOUT``, never with a 500; an
answer already served is never left without its usage record (the write is kept and
done once the database takes it); nothing is served unbilled after the first failure.

"Read-only" is made by the database itself: on SQLite the gateway's connections are
reopened with ``PRAGMA query_only`` (SQLite's own "attempt to write a readonly
database"); on PostgreSQL triggers refuse the gateway's writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.db.backends.signals import connection_created

from llm_integration import exceptions as exc
from llm_integration.models import BudgetPeriod, UsageRecord, usd_to_units
from llm_integration.services.accounting.writer import writer
from llm_integration.services.chat import Delta
from llm_integration.services.db import close_db_threads
from tests.conftest import WriterGate
from tests.factories import BudgetFactory, ModelAliasFactory, ProviderFactory

pytestmark = pytest.mark.django_db(transaction=True)

TABLES = ("llm_integration_usagerecord", "llm_integration_budgetperiod")


def read_only(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.cursor().execute("PRAGMA query_only = 1")


def refuse_writes() -> None:
    if connection.vendor == "sqlite":
        connection_created.connect(read_only)
        writer.stop()
        close_db_threads()  # the writer's and the pool's connections reopen read-only
        return
    with connection.cursor() as cursor:
        for table in TABLES:
            for event in ("INSERT", "UPDATE"):
                name = f"llm_refuse_{event.lower()}_{table}"
                if connection.vendor == "sqlite":
                    cursor.execute(
                        f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
                        "BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END"
                    )
                else:
                    cursor.execute(
                        "CREATE OR REPLACE FUNCTION llm_refuse() RETURNS trigger AS $$ BEGIN "
                        "RAISE EXCEPTION 'cannot execute in a read-only transaction'; END; "
                        "$$ LANGUAGE plpgsql"
                    )
                    cursor.execute(
                        f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
                        "FOR EACH ROW EXECUTE FUNCTION llm_refuse()"
                    )


def accept_writes() -> None:
    if connection.vendor == "sqlite":  # connections that failed reopen writable
        connection_created.disconnect(read_only)
        return
    with connection.cursor() as cursor:
        for table in TABLES:
            for event in ("INSERT", "UPDATE"):
                name = f"llm_refuse_{event.lower()}_{table}"
                suffix = "" if connection.vendor == "sqlite" else f" ON {table}"
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}{suffix}")


@pytest.fixture
def faults(settings):
    settings.LLM_INTEGRATION = {"ACCOUNTING_TIMEOUT": 1.0, "ACCOUNTING_RETRY_INTERVAL": 0.1}
    yield
    accept_writes()
    writer.kept.clear()
    writer.failed_at = None
    writer.stop()
    close_db_threads()  # no connection opened read-only outlives the test


@pytest.fixture
def dummy():
    return ModelAliasFactory(slug="default", provider=ProviderFactory(kind="dummy"))


async def drain(stream) -> str:
    return "".join([e.text async for e in stream if isinstance(e, Delta)])


async def test_a_request_with_a_budget_fails_before_its_first_token(gateway, faults, dummy):
    await sync_to_async(BudgetFactory)(limit_usd=Decimal("5"))
    await sync_to_async(refuse_writes)()
    delivered = []
    with pytest.raises(exc.AccountingUnavailable) as refused:
        async for event in gateway.stream(messages="Hi"):
            delivered.append(event)
    assert delivered == [] and refused.value.status_code == 503
    assert refused.value.retry_after is not None


async def test_an_answer_served_keeps_its_record_until_the_database_takes_it(
    gateway, faults, dummy
):
    await sync_to_async(refuse_writes)()
    with pytest.raises(exc.AccountingUnavailable):  # the stream ends with an error event
        await drain(gateway.stream(messages="Hi", request_id="req_owed"))
    assert len(writer.kept) == 1
    # Nothing more is served unbilled: the next request fails before the upstream.
    with pytest.raises(exc.AccountingUnavailable, match="failed a write moments ago"):
        await gateway.chat(messages="Hi again")
    await sync_to_async(accept_writes)()
    for _ in range(200):  # the writer writes what it owes (bounded wait)
        if await UsageRecord.objects.filter(request_id="req_owed").aexists():
            break
        await asyncio.sleep(0.05)
    record = await UsageRecord.objects.aget(request_id="req_owed")
    assert (record.status, record.streamed) == ("ok", True) and record.completion_tokens > 0
    assert writer.healthy()
    assert (await gateway.chat(messages="Back?")).answer


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's database-wide lock")
async def test_a_locked_database_is_a_503_within_the_timeout_not_a_500_after_20_s(
    gateway, faults, dummy
):
    await sync_to_async(BudgetFactory)(limit_usd=Decimal("5"))
    locker = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(exc.AccountingUnavailable, match="did not answer in time"):
            await gateway.chat(messages="Hi")
        assert time.monotonic() - started < 10  # ACCOUNTING_TIMEOUT (1 s), not 20 s
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    for _ in range(400):  # the late reservation is given back once it lands
        period = await BudgetPeriod.objects.afirst()
        if period is not None and period.reserved_units == 0:
            break
        await asyncio.sleep(0.05)
    await sync_to_async(writer.stop)()
    period = await BudgetPeriod.objects.afirst()
    assert period is None or (period.reserved_units, period.spent_units) == (0, 0)


class DatabaseLock:
    """Another connection holding what the gateway's record needs: SQLite's write lock,
    or PostgreSQL's lock on the usage table."""

    def __enter__(self) -> DatabaseLock:
        settings = connection.settings_dict
        if connection.vendor == "sqlite":
            self.conn = sqlite3.connect(settings["NAME"], isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            self.conn = psycopg.connect(
                dbname=settings["NAME"],
                host=settings["HOST"] or None,
                port=settings["PORT"] or None,
                user=settings["USER"] or None,
                password=settings["PASSWORD"] or None,
            )
            self.conn.execute("LOCK TABLE llm_integration_usagerecord IN ACCESS EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc_info) -> None:
        self.conn.rollback() if connection.vendor != "sqlite" else self.conn.execute("ROLLBACK")
        self.conn.close()


async def test_an_answer_withheld_is_charged_to_nobody(gateway, faults, dummy):
    """Its record still queued when the wait ends (the writer is busy): the client is
    told nothing was charged, and the record is written as a refusal, its upstream cost
    aside, nothing spent on the budget."""
    await sync_to_async(BudgetFactory)(limit_usd=Decimal("5"))
    warm = await gateway.chat(messages="Warm up")  # an allowance: reserving needs no write
    gate = WriterGate(writer)
    await gate.shut()
    try:
        with pytest.raises(exc.AccountingUnavailable, match="nothing was charged"):
            await gateway.chat(messages="Withheld", request_id="req_withheld")
    finally:
        gate.open()
    record = await written("req_withheld")
    assert (record.status, record.error_type, record.cost_usd) == (
        "refused",
        "accounting_unavailable",
        0,
    )
    assert record.unbilled_cost_usd > 0 and record.completion_tokens > 0
    await sync_to_async(writer.stop)()  # allowances go back: the period holds what was spent
    period = await BudgetPeriod.objects.aget()
    assert (period.spent_units, period.reserved_units) == (usd_to_units(warm.cost_usd), 0)


async def test_an_answer_whose_record_is_being_written_is_told_its_cost(
    gateway, faults, dummy, settings
):
    """Its record in a transaction that waits on a lock past the request's deadline:
    the client is told what the answer costs and that it is charged once written, and
    it is; a stream, already delivered, likewise."""
    settings.LLM_INTEGRATION = {**settings.LLM_INTEGRATION, "REQUEST_DEADLINE": 1.0}
    with DatabaseLock():
        with pytest.raises(exc.AccountingUnavailable, match=r"cost \$0\.0.*charged when"):
            await gateway.chat(messages="First", request_id="req_first")
        with pytest.raises(exc.AccountingUnavailable, match=r"already delivered, cost \$0\.0"):
            await drain(gateway.stream(messages="Second", request_id="req_second"))
    for request_id, streamed in (("req_first", False), ("req_second", True)):
        record = await written(request_id)
        assert (record.status, record.streamed) == ("ok", streamed)
        assert record.cost_usd > 0 and record.unbilled_cost_usd == 0


async def written(request_id: str) -> UsageRecord:
    for _ in range(400):  # the writer writes it once it can (bounded wait)
        record = await UsageRecord.objects.filter(request_id=request_id).afirst()
        if record is not None:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"{request_id} was never written")
