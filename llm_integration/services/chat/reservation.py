"""Step 4: a request's worst-case cost reserved on every budget that applies, before
its upstream call; and given back untouched when it reaches no upstream.

A request reserves from this process's allowance on each budget when it can (no
database write, ``services/allowances.py``); otherwise its reservation is a job of the
group-commit writer (a grant of a new allowance, or with allowances off its own hold).
A reservation whose request was cancelled while the write was under way is given back
once the write lands: nobody else would settle it.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from django.db import DatabaseError

from ... import exceptions as exc
from ...conf import llm_settings
from ...models import usd_to_units
from ...signals import budget_alerts_fired
from ..accounting import budgets, quotas
from ..accounting.allowances import Withdrawal, allowances
from ..accounting.writer import writer
from ..db import run_db
from .types import Prepared

if TYPE_CHECKING:
    from .settlement import Call


async def reserve(call: Call, prepared: Prepared) -> budgets.Reservation:
    """Hold ``prepared``'s worst case on the budgets of the request (429 if one is full)."""
    alias, adm = prepared.alias, call.admission
    assert adm is not None
    plan = adm.plan
    snapshot = adm.snapshot
    applicable = snapshot.budgets_for(
        user_id=getattr(call.user, "pk", None),
        plan_id=plan.pk if plan else None,
        alias_id=alias.pk,
        provider_id=alias.provider_id,
        key_id=call.key.id if call.key is not None else None,
    )
    if not applicable:
        return budgets.Reservation()
    now, ids = call.gateway.clock.now(), snapshot.period_ids
    pids = budgets.period_rows(applicable, now=now, period_ids=ids)
    rows = [pid for pid in pids if pid is not None]
    claim = budgets.claim_rows(rows)
    share = min(1.0, float(llm_settings.BUDGET_ALLOWANCE_SHARE))
    if share <= 0 or int(llm_settings.DB_THREADS) <= 0:
        job = functools.partial(budgets.reserve_job, now=now, period_ids=ids)
        pending = writer.write(job, applicable, prepared.worst_cost, claim=claim)
    else:
        units = usd_to_units(prepared.worst_cost)
        terms = [budgets.terms(budget) for budget in applicable]
        if len(rows) == len(pids) and allowances.take(rows, terms, units):
            holds = [budgets.Hold(b, pid, units) for b, pid in zip(applicable, rows, strict=True)]
            return budgets.Reservation(holds, pooled=True)
        withdrawal = allowances.withdraw(rows)
        job = functools.partial(
            budgets.grant_job, now=now, period_ids=ids, withdrawal=withdrawal, share=share
        )
        pending = writer.write(job, applicable, units, claim=claim)
        pending.add_done_callback(functools.partial(restore_if_failed, withdrawal))
    try:
        return await accounted(pending, release_orphan)
    except exc.BudgetExceeded as refused:
        await alert_refusal(call, refused)
        raise


async def accounted(pending: asyncio.Future, orphaned: Callable[[asyncio.Future], None]):
    """``pending``'s result, within ``ACCOUNTING_TIMEOUT``. A write the database refuses,
    or that it keeps waiting (locked), is 503 ``accounting_unavailable`` before any
    upstream call; a reservation that lands after its request gave up is given back
    (``orphaned``)."""
    timeout = float(llm_settings.ACCOUNTING_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(pending)
    except (asyncio.CancelledError, TimeoutError) as stopped:
        # Nobody will settle what this reservation holds: give it back when it lands.
        pending.add_done_callback(orphaned)
        if isinstance(stopped, TimeoutError):
            raise unavailable("did not answer in time") from None
        raise
    except exc.LLMError:
        raise
    except (DatabaseError, ArithmeticError, ValueError, TypeError) as error:
        # The writer's failure, sent here: the database (or its driver) refused the write.
        raise unavailable(f"refused the write: {type(error).__name__}") from error


def unavailable(why: str) -> exc.AccountingUnavailable:
    retry = float(llm_settings.ACCOUNTING_RETRY_INTERVAL)
    return exc.AccountingUnavailable(
        f"Usage cannot be recorded right now (the database {why}); nothing was charged. "
        f"Retry in {math.ceil(retry)} s.",
        retry_after=retry,
    )


#: (budget, period row) whose first refusal this process has alerted.
refusals_alerted: set[tuple[int, int]] = set()


async def alert_refusal(call: Call, refused: exc.BudgetExceeded) -> None:
    """A period's first refusal fires the budget's alert, once (the row elects one
    process; this process asks once per period row)."""
    budget, pid = refused.budget, refused.period_id
    if budget is None or pid is None or (budget.pk, pid) in refusals_alerted:
        return
    refusals_alerted.add((budget.pk, pid))
    alerts = await run_db(budgets.alert_refusal, budget, pid, now=call.gateway.clock.now())
    if alerts:
        await budget_alerts_fired.asend(sender=type(call), user=call.user, alerts=alerts)


async def reserve_quotas(call: Call, prepared: Prepared) -> list[quotas.QuotaHold]:
    """Hold one request and the worst-case tokens on the entitlement's quotas (429
    ``quota_exceeded`` when one is used up)."""
    adm = call.admission
    assert adm is not None
    pending = asyncio.ensure_future(
        run_db(
            quotas.reserve,
            adm.entitlement,
            getattr(call.user, "pk", None),
            tokens=prepared.worst_tokens,
            now=call.gateway.clock.now(),
        )
    )
    return await accounted(pending, release_orphan_quotas)


def release_orphan_quotas(pending: asyncio.Future) -> None:
    if not pending.cancelled() and pending.exception() is None and pending.result():
        writer.write(quotas.release_job, pending.result())


def release(reservation: budgets.Reservation) -> Awaitable | None:
    """Give back what a request that reached no upstream holds (a write unless pooled)."""
    holds = reservation.holds
    if not holds:
        return None
    if reservation.pooled:
        allowances.release((hold.period_id, hold.units) for hold in holds)
        return None
    return writer.write(budgets.release_job, holds, claim=reservation.claim())


def release_orphan(pending: asyncio.Future) -> None:
    if pending.cancelled() or pending.exception() is not None:
        return
    release(pending.result())


def restore_if_failed(withdrawal: Withdrawal, pending: asyncio.Future) -> None:
    """A grant's transaction failed (not a refusal): what it was to return is still ours."""
    if not withdrawal.returned or pending.cancelled():
        return
    if not isinstance(pending.exception(), exc.LLMError | None):
        allowances.restore(withdrawal.returned)
