"""Waiting at the limits (CONTRACT §8): a request over a concurrency cap or a rate limit
waits its plan's ``queue_timeout_seconds`` instead of getting 429 at once.

Each process keeps one line per limit it waits on (a concurrency cap, or a caller's
rate limits), ordered by place: higher priority first, then arrival. Only the head of
a line asks the limit again; when it gets through it leaves and the next becomes head
at once. A newcomer asks straight away only if no one in this process's line is ahead
of it. A request whose client goes away (its task is cancelled) leaves the line.

Across processes, a concurrency cap keeps one line in the shared store as well
(``concurrency.py``), so a slot freed anywhere goes to the best waiter anywhere. Rate
limits have no shared line: when a minute turns, each process's head asks in turn.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ... import metrics
from ..clock import Clock

#: What an attempt answers: None (through), or seconds until asking again may help.
Attempt = Callable[[], Awaitable[float | None]]


class QueueTimeout(Exception):
    """The request waited its whole ``queue_timeout_seconds`` (or was not allowed to)."""

    def __init__(self, waited: float, retry_after: float | None) -> None:
        super().__init__(waited)
        self.waited = waited
        self.retry_after = retry_after


@dataclass(order=True)
class Waiter:
    place: tuple[int, int]
    woken: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class Queue:
    """This process's lines, by limit."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lines: dict[str, list[Waiter]] = {}
        self._arrivals = itertools.count()

    def depth(self, scope: str) -> int:
        return len(self.lines.get(scope, ()))

    def wake(self, scope: str) -> None:
        """Something was freed in this process: the line's head asks again now."""
        line = self.lines.get(scope)
        if line:
            line[0].woken.set()

    async def through(
        self,
        scope: str,
        attempt: Attempt,
        *,
        priority: int,
        patience: float,
        kind: str,
        hint_is_earliest: bool = False,
    ) -> float:
        """Seconds waited until ``attempt`` got through; ``QueueTimeout`` if it did not
        within ``patience`` seconds (0: one try, no waiting). ``hint_is_earliest``: the
        attempt's answer is when it can get through at the earliest (a rate window's
        end), so a wait that ends before then gives up at once."""
        line = self.lines.get(scope)
        place = (-priority, next(self._arrivals))
        hint: float | None = None  # the last attempt's answer (None: not asked yet)
        if not line or place < line[0].place:
            hint = await attempt()
            if hint is None:
                return 0.0
            if patience <= 0:
                raise QueueTimeout(0.0, hint)
        elif patience <= 0:
            raise QueueTimeout(0.0, None)
        waiter = Waiter(place)
        line = self.lines.setdefault(scope, [])
        heapq.heappush(line, waiter)
        started = self.clock.monotonic()
        deadline = started + patience
        metrics.QUEUE_DEPTH.labels(kind).inc()
        try:
            while True:
                if line[0] is waiter and hint is None:  # (a newcomer that just asked waits)
                    hint = await attempt()
                    if hint is None:
                        waited = self.clock.monotonic() - started
                        metrics.QUEUE_WAIT.labels(kind).observe(waited)
                        return waited
                remaining = deadline - self.clock.monotonic()
                hopeless = hint_is_earliest and line[0] is waiter and (hint or 0) > remaining
                if remaining <= 0 or hopeless:
                    # Out of patience, or the limit cannot let it through before then.
                    raise QueueTimeout(self.clock.monotonic() - started, hint)
                pause = min(hint, remaining) if line[0] is waiter and hint else remaining
                waiter.woken.clear()
                await self._pause(waiter.woken, pause)
                hint = None  # ask again
        finally:
            metrics.QUEUE_DEPTH.labels(kind).dec()
            line.remove(waiter)
            heapq.heapify(line)
            if line:
                line[0].woken.set()
            else:
                self.lines.pop(scope, None)

    async def _pause(self, woken: asyncio.Event, seconds: float) -> None:
        """Until ``woken`` or ``seconds`` on the clock (a fake clock passes at once)."""
        wake = asyncio.ensure_future(woken.wait())
        sleep = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait({wake, sleep}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            sleep.cancel()
