"""Budget allowances: a request's reservation without a database write of its own.

Every request reserves its worst-case cost on its budgets before its upstream call
(CONTRACT §6), and every process must see those reservations. One request at a time,
that is a write transaction per request, and on PostgreSQL a wait for the budget row's
lock, which every request of every process wants.

Instead, a request that finds no allowance to reserve from reserves, in its
transaction, a little more on the budget's period row than it needs itself: the
process's *allowance*. It sits in ``reserved_units`` like any reservation, so every
process's check counts it, and the process's next requests reserve from it in memory.
A request's usage record turns what the request cost from reserved into spent, in the
record's transaction; the rest of its hold goes back to the allowance.

How much: a grant covers what the process holds in flight on that row once more, and
on a hard budget never more than ``BUDGET_ALLOWANCE_SHARE`` of the room the request
leaves. Near the limit grants shrink to nothing, and every request reserves exactly
its own worst case, as it does with ``BUDGET_ALLOWANCE_SHARE = 0``. A request that
does not fit in the allowance first gives the unused part back, in the same
transaction, with whatever the process's other requests freed or were granted since it
looked (``Ledger.reclaim``, ``Ledger.recall``), so nothing this process holds can make
it refuse its own request.

What a process holds unused goes back to the row after ``BUDGET_ALLOWANCE_IDLE``
seconds without a request on it, when the budget's limit changes, and when the
writer stops (at exit). A process killed without exiting leaves its unused allowance
reserved, as it leaves the reservations of its requests in flight.

All of it is guarded by one lock: requests take and release on the event loop, and
grants and settlements land in the writer's thread when their transaction commits.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Terms:
    """What an allowance on a budget was granted under: a changed limit voids it."""

    hard: bool
    limit_units: int


@dataclass(slots=True)
class Allowance:
    granted: int = 0  # units reserved on the row for this process
    held: int = 0  # the part that requests in flight hold
    terms: Terms | None = None
    used: float = 0.0  # time.monotonic() of the last take or grant


@dataclass(slots=True)
class Grant:
    """An allowance a transaction reserved on a period row, credited once it commits."""

    period_id: int
    granted: int  # units reserved on the row for this process, the request's included
    held: int  # the part the granting request holds
    terms: Terms


@dataclass(slots=True)
class Spend:
    """A pooled request's settlement on a row: of the ``held`` units, ``spent`` became
    spending (they leave the allowance); the rest stays the process's."""

    period_id: int
    held: int
    spent: int


@dataclass(slots=True)
class Withdrawal:
    """What ``withdraw`` took back, by period row: the unused units (for the request's
    transaction to return to the rows) and what requests in flight still hold."""

    returned: dict[int, int] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)


class Allowances:
    """This process's allowances, by budget period row id."""

    def __init__(self) -> None:
        self._rows: dict[int, Allowance] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._rows)

    def clear(self) -> None:
        """Forget every allowance (tests, whose rolled-back rows take their ids back)."""
        with self._lock:
            self._rows.clear()

    def get(self, pid: int) -> Allowance | None:
        with self._lock:
            row = self._rows.get(pid)
            return None if row is None else Allowance(row.granted, row.held, row.terms, row.used)

    # -- requests (event loop) ---------------------------------------------------------
    def take(self, pids: list[int], terms: list[Terms], units: int) -> bool:
        """Hold ``units`` on every row, from the allowances, or nothing (False)."""
        with self._lock:
            rows = [self._rows.get(pid) for pid in pids]
            for row, term in zip(rows, terms, strict=True):
                if row is None or row.terms != term or row.granted - row.held < units:
                    return False
            now = time.monotonic()
            for row in rows:
                row.held += units
                row.used = now
            return True

    def withdraw(self, pids: Iterable[int]) -> Withdrawal:
        """Take back the unused part of these rows' allowances, for the request's
        transaction to return."""
        withdrawal = Withdrawal()
        with self._lock:
            for pid in pids:
                row = self._rows.get(pid)
                if row is None:
                    continue
                if free := row.granted - row.held:
                    row.granted -= free
                    withdrawal.returned[pid] = free
                withdrawal.held[pid] = row.held
        return withdrawal

    def release(self, holds: Iterable[tuple[int, int]]) -> None:
        """Requests that did not reach an upstream give their holds back: (row, units)."""
        with self._lock:
            for pid, units in holds:
                if (row := self._rows.get(pid)) is not None:
                    row.held -= units

    def restore(self, returned: dict[int, int]) -> None:
        """The transaction that was to return these units failed: they are still ours."""
        with self._lock:
            for pid, units in returned.items():
                self._rows.setdefault(pid, Allowance()).granted += units

    # -- committed transactions (writer thread) ----------------------------------------
    def credit(self, grants: list[Grant]) -> None:
        """Reservations committed: the grants are this process's now."""
        now = time.monotonic()
        with self._lock:
            for grant in grants:
                row = self._rows.setdefault(grant.period_id, Allowance())
                row.granted += grant.granted
                row.held += grant.held
                row.terms = grant.terms
                row.used = now

    def settle(self, spends: list[Spend]) -> None:
        """Usage records committed: their holds end, what they spent leaves."""
        with self._lock:
            for spend in spends:
                if (row := self._rows.get(spend.period_id)) is not None:
                    row.held -= spend.held
                    row.granted -= spend.spent

    def idle(self, before: float = math.inf) -> dict[int, int]:
        """Take back the unused part of allowances not used since ``before`` (monotonic);
        the caller returns it to the rows (or ``restore``s it)."""
        back: dict[int, int] = {}
        with self._lock:
            for pid, row in list(self._rows.items()):
                if row.used > before:
                    continue
                if free := row.granted - row.held:
                    row.granted -= free
                    back[pid] = free
                if row.granted == 0 and row.held == 0:
                    del self._rows[pid]
        return back


allowances = Allowances()
