"""Step 4 and 7: hard budgets that hold under concurrency, and their alerts.

Before the upstream call the request's worst-case cost is *reserved* on every budget
that applies; after it, ``settle`` moves the real cost from reserved to spent. Both go
through a ``Ledger`` inside one transaction: the period rows of the hard budgets are
read under a lock (``SELECT … FOR UPDATE`` on PostgreSQL, the database write lock on
SQLite) and checked (``spent + reserved + cost <= limit``), then every change is written
as a delta ``UPDATE``. Nothing can change a locked row between the check and the write,
so concurrent requests in any number of processes cannot overshoot; if any budget
refuses, the request holds nothing and gets 429 ``budget_exceeded``. The gateway's
requests share these transactions (group commit, ``services/writer.py``).

Periods roll over by themselves: each (budget, period start) has its own row, created
on first use. Alerts fire once per threshold and period: a conditional UPDATE of
``alerted_threshold`` elects exactly one process to send the signal, log and mail.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.core.mail import mail_admins
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from ...conf import llm_settings
from ...exceptions import BudgetExceeded
from ...models import Budget, BudgetAlert, BudgetPeriod, units_to_usd, usd_to_units
from ..db import write_lock
from .allowances import Grant, Spend, Terms, Withdrawal, allowances
from .pricing import format_money
from .writer import Chore, Claim, writer

logger = logging.getLogger("llm_integration.budgets")
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """Start of the period containing ``now``, in the project's time zone."""
    if period == Budget.Period.TOTAL:
        return EPOCH
    local = timezone.localtime(now)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.DAY:
        return midnight
    if period == Budget.Period.WEEK:
        return midnight - dt.timedelta(days=midnight.weekday())
    return midnight.replace(day=1)


def applicable_budgets(*, user, plan, alias, provider) -> list[Budget]:
    """Enabled budgets on this request's scopes (one query)."""
    scope = Q(scope=Budget.Scope.GLOBAL) | Q(scope=Budget.Scope.PROVIDER, provider=provider)
    scope |= Q(scope=Budget.Scope.ALIAS, alias=alias)
    if plan is not None:
        scope |= Q(scope=Budget.Scope.PLAN, plan=plan)
    if getattr(user, "pk", None):
        scope |= Q(scope=Budget.Scope.USER, user_id=user.pk)
    return list(Budget.objects.filter(scope, enabled=True))


@dataclass(slots=True)
class Hold:
    """Units a request holds on one budget's period row until it settles."""

    budget: Budget
    period_id: int
    units: int


@dataclass(slots=True)
class Settled:
    """A budget after a request settled on it: its period row's spent units (the whole
    batch's) and the highest alert threshold already fired this period."""

    budget: Budget
    period_id: int
    spent_units: int
    alerted: int


@dataclass
class Reservation:
    """What one request holds on its budgets until it settles."""

    holds: list[Hold] = field(default_factory=list)
    #: The holds come from this process's allowances (``services/allowances.py``).
    pooled: bool = False
    #: After settling: each budget's state.
    settled: list[Settled] = field(default_factory=list)

    def claim(self) -> Claim:
        """The period rows a write about these holds touches."""
        return claim_rows(hold.period_id for hold in self.holds)


def claim_rows(pids) -> Claim:
    """A writer job's claim on budget period rows: read and locked, in id order, before
    any job of its transaction runs."""
    return Claim(Ledger, tuple(pids))


def _period_id(budget: Budget, start: dt.datetime, cache: dict | None) -> int:
    key = (budget.pk, start)
    if cache is not None and key in cache:
        return cache[key]
    pid = (
        BudgetPeriod.objects.filter(budget=budget, period_start=start)
        .values_list("pk", flat=True)
        .first()
    )
    if pid is None:
        try:
            with transaction.atomic():
                pid = BudgetPeriod.objects.create(budget=budget, period_start=start).pk
        except IntegrityError:  # created by a concurrent request (or the write refused)
            pid = (
                BudgetPeriod.objects.filter(budget=budget, period_start=start)
                .values_list("pk", flat=True)
                .first()
            )
            if pid is None:
                raise
    if cache is not None:
        cache[key] = pid
    return pid


def _table() -> str:
    return connection.ops.quote_name(BudgetPeriod._meta.db_table)


def reserve(
    budgets: list[Budget], cost: Decimal, *, now: dt.datetime, period_ids: dict | None = None
) -> Reservation:
    """Reserve ``cost`` on every budget, all or nothing; BudgetExceeded if one is full.

    ``period_ids`` caches (budget, period start) -> row id between requests. One
    transaction of its own; the gateway's requests share theirs (``reserve_job``).
    """
    if not budgets:
        return Reservation()
    with write_lock(), transaction.atomic():
        ledger = Ledger()
        reservation = ledger.reserve(budgets, cost, now=now, period_ids=period_ids)
        ledger.flush()
    return reservation


def period_rows(budgets: list[Budget], *, now: dt.datetime, period_ids: dict) -> list[int | None]:
    """The period row of each budget, as far as ``period_ids`` knows them (else None)."""
    return [period_ids.get((b.pk, period_start(b.period, now))) for b in budgets]


def terms(budget: Budget) -> Terms:
    """What an allowance on the budget is granted under (a changed limit voids it)."""
    return Terms(budget.hard, usd_to_units(budget.limit_usd))


def settle(reservation: Reservation, cost: Decimal) -> None:
    """Release the reservation and add the real ``cost`` (call ``fire_alerts`` after)."""
    if not reservation.holds:
        return
    with write_lock(), transaction.atomic():
        ledger = Ledger()
        settled = ledger.settle(reservation.holds, cost)
        ledger.flush()
    reservation.settled.extend(settled)
    reservation.holds = []


@dataclass(slots=True)
class PeriodRow:
    """A budget period row as the ledger sees it: read, plus this batch's changes."""

    spent: int
    reserved: int
    alerted: int


@dataclass(slots=True)
class Change:
    """What a batch adds to a period row's columns (written as one delta UPDATE)."""

    spent: int = 0
    reserved: int = 0


@dataclass(slots=True)
class Settlement:
    """Holds settled in this batch; ``settled`` is filled by ``flush``."""

    holds: list[Hold]
    settled: list[Settled]


class Ledger:
    """The budget rows of one group commit, changed in memory and written once (a
    writer ``Part``).

    The rows a batch touches are read once, locked (``SELECT … FOR UPDATE`` on
    PostgreSQL; SQLite's write transaction holds the whole database), and every
    reservation and settlement of the batch is applied to them in order, in memory:
    a hard budget's check sees exactly what the jobs before it left. ``flush`` writes
    one ``UPDATE`` per row (deltas, so nothing else's change is lost) and gives each
    settlement the row's spent units after the batch. A few statements a batch instead
    of one or two per request.
    """

    def __init__(self) -> None:
        self.rows: dict[int, PeriodRow] = {}
        self.changes: dict[int, Change] = {}
        self.settlements: list[Settlement] = []
        self.granted: dict[int, list[Grant]] = {}  # allowances granted in this batch, by row
        self.spent: dict[int, list[Spend]] = {}  # pooled settlements of this batch, by row

    def claim(self, pids) -> None:
        """Read and lock the rows (once per batch), in id order."""
        missing = sorted({pid for pid in pids if pid not in self.rows})
        if not missing:
            return
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, spent_units, reserved_units, alerted_threshold FROM {_table()} "
                f"WHERE id IN ({', '.join(['%s'] * len(missing))}) ORDER BY id{lock}",
                missing,
            )
            found = cursor.fetchall()
        for pid, spent, reserved, alerted in found:
            ahead = self.changes.get(pid, Change())  # what this batch already changed
            self.rows[pid] = PeriodRow(spent + ahead.spent, reserved + ahead.reserved, alerted)

    def change(self, pid: int, *, spent: int = 0, reserved: int = 0) -> None:
        row = self.rows.get(pid)
        if row is not None:
            row.spent += spent
            row.reserved += reserved
        change = self.changes.setdefault(pid, Change())
        change.spent += spent
        change.reserved += reserved

    def reserve(
        self, budgets: list[Budget], cost: Decimal, *, now: dt.datetime, period_ids: dict | None
    ) -> Reservation:
        units = usd_to_units(cost)
        reservation = Reservation()
        pids = [_period_id(b, period_start(b.period, now), period_ids) for b in budgets]
        # Only a hard budget's check needs the row (read and locked once per batch).
        self.claim(pid for budget, pid in zip(budgets, pids, strict=True) if budget.hard)
        for budget, pid in zip(budgets, pids, strict=True):
            if budget.hard and self.room(budget, self.rows.get(pid)) < units:
                for hold in reservation.holds:
                    self.change(hold.period_id, reserved=-hold.units)
                self.refuse(
                    budget, self.rows.get(pid), units, now=now, period_ids=period_ids, pid=pid
                )
            self.change(pid, reserved=units)
            reservation.holds.append(Hold(budget, pid, units))
        return reservation

    @staticmethod
    def refuse(
        budget: Budget,
        row: PeriodRow | None,
        units: int,
        *,
        now: dt.datetime,
        period_ids,
        pid: int | None = None,
    ):
        if row is None and period_ids is not None:  # the period row went away
            period_ids.pop((budget.pk, period_start(budget.period, now)), None)
        raise BudgetExceeded(
            refusal(budget, row, units), budget=budget, period_id=pid if row is not None else None
        )

    def grant(
        self,
        budgets: list[Budget],
        units: int,
        *,
        now: dt.datetime,
        period_ids: dict | None,
        withdrawal: Withdrawal,
        share: float,
    ) -> Reservation:
        """``reserve`` for a request that did not fit in this process's allowances: give
        their unused part (``withdrawal.returned``) back, reserve ``units``, and grant a
        new allowance (``services/allowances.py``), credited when the transaction
        commits."""
        pids = [_period_id(b, period_start(b.period, now), period_ids) for b in budgets]
        self.claim(pid for budget, pid in zip(budgets, pids, strict=True) if budget.hard)
        for pid in pids:  # rows the request could not name (say, after a config change)
            if pid not in withdrawal.held:
                more = allowances.withdraw([pid])
                withdrawal.returned.update(more.returned)  # kept if the job runs again
                withdrawal.held.update(more.held or {pid: 0})
        for pid, free in withdrawal.returned.items():
            self.change(pid, reserved=-free)
        reservation = Reservation(pooled=True)
        grants: list[Grant] = []  # credited on commit
        for budget, pid in zip(budgets, pids, strict=True):
            row, extra = self.rows.get(pid), withdrawal.held.get(pid, 0) + units
            if budget.hard:
                room = self.room(budget, row)
                # Nothing this process holds unused may refuse its request: what this
                # batch granted or freed on the row, then what was credited in memory
                # since the request withdrew (a commit in between).
                if room < units:
                    self.reclaim(pid)
                    self.recall(pid, withdrawal)
                    room = self.room(budget, row)
                if room < units:
                    for grant in grants:
                        mine = self.granted[grant.period_id]
                        mine[:] = [other for other in mine if other is not grant]
                        self.change(grant.period_id, reserved=-grant.granted)
                    self.refuse(budget, row, units, now=now, period_ids=period_ids, pid=pid)
                extra = min(extra, int((room - units) * share))
            self.change(pid, reserved=units + extra)
            grant = Grant(pid, units + extra, units, terms(budget))
            grants.append(grant)
            self.granted.setdefault(pid, []).append(grant)
            reservation.holds.append(Hold(budget, pid, units))
        transaction.on_commit(functools.partial(allowances.credit, grants), robust=True)
        return reservation

    @staticmethod
    def room(budget: Budget, row: PeriodRow | None) -> int:
        if row is None:
            return -1
        return usd_to_units(budget.limit_usd) - row.spent - row.reserved

    def reclaim(self, pid: int) -> None:
        """Take back the allowances this batch granted on the row, and the unused part of
        the holds this batch's settlements free, neither credited yet: a request of this
        process must not be refused for its own process's spare."""
        back = 0
        for grant in self.granted.pop(pid, ()):
            back += grant.granted - grant.held
            grant.granted = grant.held
        for spend in self.spent.pop(pid, ()):  # all of the hold leaves the allowance
            back += spend.held - spend.spent
            spend.spent = spend.held
        self.change(pid, reserved=-back)

    def recall(self, pid: int, withdrawal: Withdrawal) -> None:
        """Take back what this process's allowance on the row gained since the request
        withdrew from it (a settlement or grant committed in between); ``withdrawal``
        records it, so a failed transaction restores it."""
        free = allowances.withdraw([pid]).returned.get(pid, 0)
        if free:
            withdrawal.returned[pid] = withdrawal.returned.get(pid, 0) + free
            self.change(pid, reserved=-free)

    def settle(self, holds: list[Hold], cost: Decimal, *, pooled: bool = False) -> list[Settled]:
        """Release ``holds`` and add ``cost``; the returned list is filled by ``flush``.

        Pooled holds keep what the request did not spend in the process's allowance:
        only the spent part leaves ``reserved``."""
        units = usd_to_units(cost)
        if pooled:
            spends = [Spend(h.period_id, h.units, min(units, h.units)) for h in holds]
            for spend in spends:
                self.change(spend.period_id, spent=units, reserved=-spend.spent)
                self.spent.setdefault(spend.period_id, []).append(spend)  # reclaim may return it
            transaction.on_commit(functools.partial(allowances.settle, spends), robust=True)
        else:
            for hold in holds:
                self.change(hold.period_id, spent=units, reserved=-hold.units)
        settled: list[Settled] = []
        self.settlements.append(Settlement(holds, settled))
        return settled

    def flush(self) -> None:
        due = sorted((pid, c) for pid, c in self.changes.items() if c.spent or c.reserved)
        final: dict[int, tuple[int, int]] = {}
        if due:
            final = self.write(due)
        for settlement in self.settlements:
            settlement.settled.extend(
                Settled(hold.budget, hold.period_id, *final[hold.period_id])
                for hold in settlement.holds
                if hold.period_id in final
            )
        self.changes.clear()
        self.settlements.clear()

    @staticmethod
    def write(due: list[tuple[int, Change]]) -> dict[int, tuple[int, int]]:
        """One ``UPDATE`` per changed row; each row's spent units and alerted threshold
        after it."""
        table = _table()
        returning = connection.features.can_return_columns_from_insert
        final: dict[int, tuple[int, int]] = {}
        stamp = connection.ops.adapt_datetimefield_value(timezone.now())  # the admin shows it
        with connection.cursor() as cursor:
            for pid, change in due:
                sql = (
                    f"UPDATE {table} SET spent_units = spent_units + %s, "
                    f"reserved_units = reserved_units + %s, updated_at = %s WHERE id = %s"
                )
                params = [change.spent, change.reserved, stamp, pid]
                if returning:
                    cursor.execute(sql + " RETURNING spent_units, alerted_threshold", params)
                    row = cursor.fetchone()
                else:
                    cursor.execute(sql, params)
                    row = (
                        BudgetPeriod.objects.filter(pk=pid)
                        .values_list("spent_units", "alerted_threshold")
                        .first()
                    )
                if row is not None:
                    final[pid] = (int(row[0]), int(row[1]))
        return final


def refusal(budget: Budget, row: PeriodRow | None, units: int) -> str:
    """Why a hard budget refuses a request: what is left, and what the request could
    cost at most (it is refused for its worst case, not for what is spent)."""
    limit = usd_to_units(budget.limit_usd)
    left = max(0, limit - row.spent - row.reserved) if row is not None else 0
    where = f"The {budget.period} budget {budget.name!r} ({budget.described})"
    if left <= 0:
        return f"{where} is used up for this period (${format_money(budget.limit_usd)} limit)."
    return (
        f"{where} has ${format_money(units_to_usd(left))} left of "
        f"${format_money(budget.limit_usd)}, and this request could cost up to "
        f"${format_money(units_to_usd(units))} (its prompt and max_tokens at the model's "
        "prices). Lower max_tokens to fit."
    )


def reserve_job(batch, budgets: list[Budget], cost: Decimal, *, now, period_ids) -> Reservation:
    """A group-commit job: ``reserve`` on the batch's ledger."""
    return batch.part(Ledger).reserve(budgets, cost, now=now, period_ids=period_ids)


def grant_job(batch, budgets: list[Budget], units: int, **kwargs) -> Reservation:
    """A group-commit job: ``Ledger.grant`` on the batch's ledger."""
    return batch.part(Ledger).grant(budgets, units, **kwargs)


def return_allowances(back: dict[int, int]) -> None:
    """Give unused allowances (units by period row) back to their rows, in a transaction
    of their own; if it fails they stay this process's."""
    if not back:
        return
    try:
        with write_lock(), transaction.atomic():
            ledger = Ledger()
            for pid, units in back.items():
                ledger.change(pid, reserved=-units)
            ledger.flush()
    except Exception:
        allowances.restore(back)
        raise


def return_idle_allowances(*, final: bool = False) -> None:
    """The writer's chore: give back allowances unused for ``BUDGET_ALLOWANCE_IDLE``
    seconds (all of them when the writer stops)."""
    idle = float(llm_settings.BUDGET_ALLOWANCE_IDLE)
    return_allowances(allowances.idle(math.inf if final else time.monotonic() - idle))


writer.add_chore(
    Chore(
        run=return_idle_allowances,
        interval=lambda: float(llm_settings.BUDGET_ALLOWANCE_IDLE),
        due=lambda: bool(allowances),
    )
)


def release_job(batch, holds: list[Hold]) -> list[Settled]:
    """A group-commit job: give ``holds`` back untouched."""
    return batch.part(Ledger).settle(holds, Decimal(0)) if holds else []


def record_usage(
    batch, record, holds: list[Hold], cost: Decimal, pooled: bool = False
) -> list[Settled]:
    """A request's last write (a group-commit job): its usage record, its settlement."""
    batch.add(record)
    return batch.part(Ledger).settle(holds, cost, pooled=pooled) if holds else []


def alerts_due(settled: list[Settled]) -> bool:
    """Whether ``fire_alerts`` has anything to do (no query: a threshold newly crossed)."""
    return any(_crossed(s.budget, s.spent_units, s.alerted) for s in settled)


def _crossed(budget: Budget, spent_units: int, alerted: int) -> list:
    limit = usd_to_units(budget.limit_usd)
    if limit <= 0:
        return []
    percent = spent_units * 100 / limit
    return sorted(
        t
        for t in (budget.alert_thresholds or [])
        if isinstance(t, int | float) and alerted < t <= percent
    )


def fire_alerts(reservation: Reservation, *, now: dt.datetime) -> list[BudgetAlert]:
    """Alerts for thresholds that the settled budgets have newly crossed."""
    alerts: list[BudgetAlert] = []
    for s in reservation.settled:
        alerts.extend(_fire_alerts(s.budget, s.period_id, s.spent_units, s.alerted, now=now))
    return alerts


def alert_refusal(budget: Budget, pid: int, *, now: dt.datetime) -> list[BudgetAlert]:
    """A hard budget's first refusal in a period fires the thresholds up to 100 % not yet
    fired: for the refused request the budget is full, whatever a few cents left say."""
    row = BudgetPeriod.objects.filter(pk=pid).values("spent_units", "alerted_threshold").first()
    if row is None or row["alerted_threshold"] >= 100:
        return []
    return _fire_alerts(
        budget, pid, row["spent_units"], row["alerted_threshold"], now=now, refused=True
    )


def _fire_alerts(
    budget: Budget,
    pid: int,
    spent_units: int,
    alerted: int,
    *,
    now: dt.datetime,
    refused: bool = False,
) -> list[BudgetAlert]:
    from ...signals import budget_threshold_reached

    if refused:
        thresholds = budget.alert_thresholds or []
        crossed = sorted(
            t for t in thresholds if isinstance(t, int | float) and alerted < t <= 100
        ) or [100]
    else:
        crossed = _crossed(budget, spent_units, alerted)
    if not crossed:
        return []
    top = int(crossed[-1])
    # Elect one process: only the UPDATE that raises the mark fires these thresholds.
    won = BudgetPeriod.objects.filter(pk=pid, alerted_threshold__lt=top).update(
        alerted_threshold=top
    )
    if not won:
        return []
    period_start_ = BudgetPeriod.objects.values_list("period_start", flat=True).get(pk=pid)
    fired = []
    spent = units_to_usd(spent_units)
    for threshold in crossed:
        try:
            with transaction.atomic():
                alert = BudgetAlert.objects.create(
                    budget=budget,
                    period_start=period_start_,
                    threshold=int(threshold),
                    spent_usd=spent,
                    limit_usd=budget.limit_usd,
                    created_at=now,
                )
        except IntegrityError:
            continue
        fired.append(alert)
        logger.warning(
            "llm.budget_alert",
            extra={
                "budget": budget.name,
                "threshold": int(threshold),
                "spent_usd": str(spent),
                "limit_usd": str(budget.limit_usd),
            },
        )
        budget_threshold_reached.send(
            sender=Budget,
            budget=budget,
            threshold=int(threshold),
            spent_usd=spent,
            limit_usd=budget.limit_usd,
        )
        why = " and refused a request that did not fit" if refused else ""
        try:
            mail_admins(
                f"LLM budget {budget.name!r} reached {int(threshold)}%",
                f"The {budget.period} budget {budget.name!r} ({budget.described}) has spent "
                f"${spent} of ${budget.limit_usd}{why} ({int(threshold)}% threshold) in the "
                f"period starting {period_start_:%Y-%m-%d}.",
            )
        except Exception:  # a mail server down must not undo the accounting
            logger.exception("llm.budget_alert_mail_failed", extra={"budget": budget.name})
    return fired


def budget_status(budget: Budget, *, now: dt.datetime) -> dict[str, Decimal]:
    """Spent, reserved and remaining of the budget's current period (for the API)."""
    start = period_start(budget.period, now)
    row = BudgetPeriod.objects.filter(budget=budget, period_start=start).values(
        "spent_units", "reserved_units"
    ).first() or {"spent_units": 0, "reserved_units": 0}
    spent, reserved = units_to_usd(row["spent_units"]), units_to_usd(row["reserved_units"])
    return {
        "spent": spent,
        "reserved": reserved,
        "remaining": max(Decimal(0), budget.limit_usd - spent - reserved),
    }
