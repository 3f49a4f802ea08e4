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
from dataclasses import dataclass, field
from decimal import Decimal

from django.core.mail import mail_admins
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from ..exceptions import BudgetExceeded
from ..models import Budget, BudgetAlert, BudgetPeriod, units_to_usd, usd_to_units
from .allowances import Terms, allowances
from .db import write_lock

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


@dataclass
class Reservation:
    """What one request holds on its budgets until it settles."""

    holds: list[tuple[Budget, int, int]] = field(default_factory=list)  # budget, period id, units
    #: The holds come from this process's allowances (``services/allowances.py``).
    pooled: bool = False
    #: After settling: (budget, period id, spent units, alerted threshold) per budget.
    settled: list[tuple[Budget, int, int, int]] = field(default_factory=list)


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
        except IntegrityError:  # created by a concurrent request
            pid = BudgetPeriod.objects.get(budget=budget, period_start=start).pk
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
    """What an allowance on the budget was granted under (a changed limit voids it)."""
    return budget.hard, usd_to_units(budget.limit_usd)


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


class Ledger:
    """The budget rows of one group commit, changed in memory and written once.

    The rows a batch touches are read once, locked (``SELECT … FOR UPDATE`` on
    PostgreSQL; SQLite's write transaction holds the whole database), and every
    reservation and settlement of the batch is applied to them in order, in memory:
    a hard budget's check sees exactly what the jobs before it left. ``flush`` writes
    one ``UPDATE`` per row (deltas, so nothing else's change is lost) and gives each
    settlement the row's spent units after the batch. A few statements a batch instead
    of one or two per request.
    """

    def __init__(self) -> None:
        self.rows: dict[int, list[int]] = {}  # pid -> [spent, reserved, alerted]
        self.deltas: dict[int, list[int]] = {}  # pid -> [spent, reserved]
        self.waiting: list[tuple[list, list]] = []  # (holds, settled list to fill)
        self.spare: dict[int, list[list]] = {}  # allowances granted in this batch, by row
        self.freed: dict[int, list[list]] = {}  # pooled settlements of this batch, by row

    def load(self, pids) -> None:
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
            ahead = self.deltas.get(pid, (0, 0))  # what this batch already changed
            self.rows[pid] = [spent + ahead[0], reserved + ahead[1], alerted]

    def _change(self, pid: int, spent: int, reserved: int) -> None:
        row = self.rows.get(pid)
        if row is not None:
            row[0] += spent
            row[1] += reserved
        delta = self.deltas.setdefault(pid, [0, 0])
        delta[0] += spent
        delta[1] += reserved

    def reserve(
        self, budgets: list[Budget], cost: Decimal, *, now: dt.datetime, period_ids: dict | None
    ) -> Reservation:
        units = usd_to_units(cost)
        reservation = Reservation()
        pids = [_period_id(b, period_start(b.period, now), period_ids) for b in budgets]
        # Only a hard budget's check needs the row (read and locked once per batch).
        self.load(pid for budget, pid in zip(budgets, pids, strict=True) if budget.hard)
        for budget, pid in zip(budgets, pids, strict=True):
            row = self.rows.get(pid)
            if budget.hard and (
                row is None or row[0] + row[1] + units > usd_to_units(budget.limit_usd)
            ):
                for _budget, held_pid, held in reservation.holds:
                    self._change(held_pid, 0, -held)
                self._refuse(budget, row, now=now, period_ids=period_ids)
            self._change(pid, 0, units)
            reservation.holds.append((budget, pid, units))
        return reservation

    @staticmethod
    def _refuse(budget: Budget, row, *, now: dt.datetime, period_ids: dict | None):
        if row is None and period_ids is not None:  # the period row went away
            period_ids.pop((budget.pk, period_start(budget.period, now)), None)
        raise BudgetExceeded(
            f"The {budget.period} budget {budget.name!r} "
            f"({budget.scope} {budget.target_name}) is exhausted."
        )

    def grant(
        self,
        budgets: list[Budget],
        units: int,
        *,
        now: dt.datetime,
        period_ids: dict | None,
        back: dict[int, int],
        held: dict[int, int],
        share: float,
    ) -> Reservation:
        """``reserve`` for a request that did not fit in this process's allowances: give
        their unused part (``back``) back, reserve ``units``, and grant a new allowance
        (``services/allowances.py``), credited when the transaction commits."""
        pids = [_period_id(b, period_start(b.period, now), period_ids) for b in budgets]
        self.load(pid for budget, pid in zip(budgets, pids, strict=True) if budget.hard)
        for pid in pids:  # rows the request could not name (say, after a config change)
            if pid not in held:
                more, still = allowances.withdraw([pid])
                back.update(more)  # the caller's dicts: kept if the job runs again
                held.update(still or {pid: 0})
        for pid, free in back.items():
            self._change(pid, 0, -free)
        reservation = Reservation(pooled=True)
        grants: list[list] = []  # [pid, units granted, units held, terms], credited on commit
        for budget, pid in zip(budgets, pids, strict=True):
            row, extra = self.rows.get(pid), held.get(pid, 0) + units
            if budget.hard:
                room = self._room(budget, row)
                # Nothing this process holds unused may refuse its request: what this
                # batch granted or freed on the row, then what was credited in memory
                # since the request withdrew (a commit in between).
                if room < units:
                    self._reclaim(pid)
                    self._recall(pid, back)
                    room = self._room(budget, row)
                if room < units:
                    for grant in grants:
                        spare = self.spare[grant[0]]
                        spare[:] = [other for other in spare if other is not grant]
                        self._change(grant[0], 0, -grant[1])
                    self._refuse(budget, row, now=now, period_ids=period_ids)
                extra = min(extra, int((room - units) * share))
            self._change(pid, 0, units + extra)
            grant = [pid, units + extra, units, terms(budget)]
            grants.append(grant)
            self.spare.setdefault(pid, []).append(grant)
            reservation.holds.append((budget, pid, units))
        transaction.on_commit(functools.partial(allowances.credit, grants), robust=True)
        return reservation

    @staticmethod
    def _room(budget: Budget, row: list[int] | None) -> int:
        return -1 if row is None else usd_to_units(budget.limit_usd) - row[0] - row[1]

    def _reclaim(self, pid: int) -> None:
        """Take back the allowances this batch granted on the row, and the unused part of
        the holds this batch's settlements free, neither credited yet: a request of this
        process must not be refused for its own process's spare."""
        back = 0
        for grant in self.spare.pop(pid, ()):
            back += grant[1] - grant[2]
            grant[1] = grant[2]
        for freed in self.freed.pop(pid, ()):  # [pid, held, spent]: all of it leaves
            back += freed[1] - freed[2]
            freed[2] = freed[1]
        self._change(pid, 0, -back)

    def _recall(self, pid: int, back: dict[int, int]) -> None:
        """Take back what this process's allowance on the row gained since the request
        withdrew from it (a settlement or grant committed in between); ``back`` records
        it, so a failed transaction restores it."""
        more, _held = allowances.withdraw([pid])
        free = more.get(pid, 0)
        if free:
            back[pid] = back.get(pid, 0) + free
            self._change(pid, 0, -free)

    def settle(
        self, holds: list, cost: Decimal, *, pooled: bool = False
    ) -> list[tuple[Budget, int, int, int]]:
        """Release ``holds`` and add ``cost``; the returned list is filled by ``flush``.

        Pooled holds keep what the request did not spend in the process's allowance:
        only the spent part leaves ``reserved``."""
        units = usd_to_units(cost)
        if pooled:
            spent = [[pid, held, min(units, held)] for _budget, pid, held in holds]
            for entry in spent:
                self._change(entry[0], units, -entry[2])
                self.freed.setdefault(entry[0], []).append(entry)  # _reclaim may return it
            transaction.on_commit(functools.partial(allowances.settle, spent), robust=True)
        else:
            for _budget, pid, held in holds:
                self._change(pid, units, -held)
        settled: list[tuple[Budget, int, int, int]] = []
        self.waiting.append((holds, settled))
        return settled

    def flush(self) -> None:
        table = _table()
        returning = connection.features.can_return_columns_from_insert
        final: dict[int, tuple[int, int]] = {}
        stamp = connection.ops.adapt_datetimefield_value(timezone.now())  # the admin shows it
        with connection.cursor() as cursor:
            for pid, (spent, reserved) in sorted(self.deltas.items()):
                if not spent and not reserved:
                    continue
                sql = (
                    f"UPDATE {table} SET spent_units = spent_units + %s, "
                    f"reserved_units = reserved_units + %s, updated_at = %s WHERE id = %s"
                )
                params = [spent, reserved, stamp, pid]
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
        for holds, settled in self.waiting:
            settled.extend((b, pid, *final[pid]) for b, pid, _held in holds if pid in final)
        self.deltas.clear()
        self.waiting.clear()


def reserve_job(batch, budgets: list[Budget], cost: Decimal, *, now, period_ids) -> Reservation:
    """A group-commit job: ``reserve`` on the batch's ledger."""
    return batch.ledger.reserve(budgets, cost, now=now, period_ids=period_ids)


def grant_job(batch, budgets: list[Budget], units: int, **kwargs) -> Reservation:
    """A group-commit job: ``Ledger.grant`` on the batch's ledger."""
    return batch.ledger.grant(budgets, units, **kwargs)


def return_allowances(back: dict[int, int]) -> None:
    """Give unused allowances (units by period row) back to their rows, in a transaction
    of their own; if it fails they stay this process's."""
    if not back:
        return
    try:
        with write_lock(), transaction.atomic():
            ledger = Ledger()
            for pid, units in back.items():
                ledger._change(pid, 0, -units)
            ledger.flush()
    except Exception:
        allowances.restore(back)
        raise


def release_job(batch, holds: list) -> list:
    """A group-commit job: give ``holds`` back untouched."""
    return batch.ledger.settle(holds, Decimal(0)) if holds else []


def record_usage(
    batch, record, holds: list, cost: Decimal, pooled: bool = False
) -> list[tuple[Budget, int, int, int]]:
    """A request's last write (a group-commit job): its usage record, its settlement."""
    batch.add(record)
    return batch.ledger.settle(holds, cost, pooled=pooled) if holds else []


def alerts_due(settled: list[tuple[Budget, int, int, int]]) -> bool:
    """Whether ``fire_alerts`` has anything to do (no query: a threshold newly crossed)."""
    return any(_crossed(budget, spent, alerted) for budget, _pid, spent, alerted in settled)


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
    for budget, pid, spent, alerted in reservation.settled:
        alerts.extend(_fire_alerts(budget, pid, spent, alerted, now=now))
    return alerts


def _fire_alerts(
    budget: Budget, pid: int, spent_units: int, alerted: int, *, now: dt.datetime
) -> list[BudgetAlert]:
    from ..signals import budget_threshold_reached

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
        mail_admins(
            f"LLM budget {budget.name!r} reached {int(threshold)}%",
            f"The {budget.period} budget {budget.name!r} ({budget.scope} "
            f"{budget.target_name}) has spent ${spent} of ${budget.limit_usd} "
            f"({int(threshold)}% threshold) in the period starting {period_start_:%Y-%m-%d}.",
            fail_silently=True,
        )
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
