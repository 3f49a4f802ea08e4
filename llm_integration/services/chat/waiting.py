"""Waiting at the limits (CONTRACT §8) for the chat service: a caller's rate limits, and
a candidate's rate limits and concurrency caps, let a request through or make it wait
its plan's ``queue_timeout_seconds`` in line (``limits/queue.py``), higher priority
first. Past it: 429 ``rate_limited`` with ``Retry-After``. The wait is on the request's
usage record (``queued_ms``)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ... import exceptions as exc
from ...conf import llm_settings
from ...models import ModelAlias, Plan
from ..limits import concurrency, sharedstate
from ..limits.concurrency import Cap, caps_for
from ..limits.queue import Attempt, Queue, QueueTimeout
from ..limits.ratelimit import Count, Limit

if TYPE_CHECKING:
    from .settlement import Call

#: How often the head of a line asks a shared cap again (a slot freed in another
#: process wakes nobody here).
POLL_SECONDS = 0.05


@dataclass(slots=True)
class Slot:
    """A candidate's slots under its caps, held until the request settles."""

    slots: concurrency.RedisSlots | concurrency.LocalSlots
    caps: list[Cap]
    member: str


def patience(plan: Plan | None) -> tuple[int, float]:
    """(priority, seconds it may wait) of a caller on ``plan``."""
    if plan is None:
        return 0, 0.0
    return plan.priority, float(plan.queue_timeout_seconds)


async def in_line(
    call: Call, scope: str, attempt: Attempt, *, wait: bool, kind: str, **options: bool
) -> None:
    """Through ``attempt`` in the line ``scope``, within what is left of the plan's
    patience (one wait in all, however many limits); the wait goes on the record."""
    plan = call.admission.plan if call.admission else None
    priority, seconds = patience(plan)
    allowed = max(0.0, seconds - call.queued) if wait else 0.0
    try:
        call.queued += await call.gateway.queue.through(
            scope, attempt, priority=priority, patience=allowed, kind=kind, **options
        )
    except QueueTimeout as timeout:
        call.queued += timeout.waited
        raise


def refused(what: str, waited: float, retry_after: float | None) -> exc.RateLimited:
    retry = max(1, math.ceil(retry_after or 1))
    after = f" after waiting {waited:.1f} s" if waited >= 0.05 else ""
    return exc.RateLimited(f"{what}{after}; retry in {retry} s.", retry_after=retry)


async def take_rate_limits(
    call: Call, limits: list[Limit], *, tokens: int, wait: bool = True
) -> list[Count]:
    """Count the request against ``limits``, waiting in line when the plan allows."""
    gateway = call.gateway
    if not limits:
        return []
    taken: list[Count] = []
    last: list[exc.RateLimited] = []

    async def attempt() -> float | None:
        try:
            taken[:] = await gateway.limiter.acquire(limits, tokens=tokens)
        except exc.RateLimited as error:
            last[:] = [error]
            return float(error.retry_after or 1)
        return None

    scope = "rate:" + ",".join(limit.key for limit in limits)
    try:
        await in_line(call, scope, attempt, wait=wait, kind="rate", hint_is_earliest=True)
    except QueueTimeout as timeout:
        if last and timeout.waited < 0.05:
            raise last[0] from None
        reason = last[0].reason if last else "Rate limit reached (requests ahead are waiting)"
        raise refused(reason, timeout.waited, timeout.retry_after) from None
    return taken


async def take_slot(call: Call, alias: ModelAlias, *, wait: bool) -> Slot | None:
    """A slot under ``alias``'s caps (its provider's and its own), waiting in line when
    the plan allows; None when it has none."""
    caps = caps_for(alias)
    if not caps:
        return None
    gateway, plan = call.gateway, call.admission.plan if call.admission else None
    store = sharedstate.store()
    slots = concurrency.slots_for(store)
    member = concurrency.new_member()
    shared = slots is not concurrency.local_slots()
    order = concurrency.place(patience(plan)[0], gateway.clock.time())

    async def attempt() -> float | None:
        now = gateway.clock.time()
        if shared:
            ok = await sharedstate.attempt(lambda: slots.acquire(caps, member, order, now))
            return None if ok else POLL_SECONDS
        # In this process's memory: no I/O to bound; a release here wakes the line.
        return None if await slots.acquire(caps, member, order, now) else 1.0

    try:
        await in_line(call, line_of(caps), attempt, wait=wait, kind="concurrency")
    except QueueTimeout as timeout:
        await sharedstate.guarded(lambda: slots.release(caps, member), None)
        full = " and ".join(f"{cap.label} ({cap.limit} at once)" for cap in caps)
        raise refused(f"Too many requests in flight for {full}", timeout.waited, 1) from None
    except sharedstate.CacheUnavailable:
        # The script may have run before the answer was lost: give back what it took.
        retry_later(Slot(slots, caps, member))
        if llm_settings.RATE_LIMIT_FAIL_OPEN:
            return None  # admitted, uncapped (as rate limits fail open)
        raise exc.RateLimitUnavailable(
            "Concurrency caps cannot be checked right now (the shared cache is unreachable).",
            retry_after=1,
        ) from None
    except BaseException:  # the client went away while it waited: it leaves the line
        await sharedstate.guarded(lambda: slots.release(caps, member), None)
        raise
    concurrency.leases.add(slots, caps, member, gateway.clock.time)
    return Slot(slots, caps, member)


def line_of(caps: list[Cap]) -> str:
    return "cc:" + ",".join(cap.key for cap in caps)


#: Releases the shared store refused, retried until their leases would have ended.
_retrying: set[asyncio.Task] = set()


async def release_slot(call: Call, slot: Slot) -> None:
    """Give ``slot`` back and let this process's next waiter ask at once. A release the
    shared store refuses (Redis down or stalled) is retried in the background until the
    lease would have ended anyway, so a hiccup does not keep slots for ``LEASE_SECONDS``."""
    concurrency.leases.remove(slot.member)
    queue = call.gateway.queue
    if slot.slots is concurrency.local_slots():
        await slot.slots.release(slot.caps, slot.member)  # memory: nothing to bound
    else:
        try:
            await sharedstate.attempt(lambda: slot.slots.release(slot.caps, slot.member))
        except sharedstate.CacheUnavailable:
            retry_later(slot)
            return
    wake_lines(queue, slot)


def retry_later(slot: Slot) -> None:
    """Release ``slot`` in the background once the shared store answers again."""
    task = asyncio.ensure_future(release_when_back(slot))
    _retrying.add(task)
    task.add_done_callback(_retrying.discard)


async def release_when_back(slot: Slot) -> None:
    interval = max(0.05, float(llm_settings.CACHE_RETRY_INTERVAL))
    for _ in range(math.ceil(concurrency.LEASE_SECONDS / interval)):
        await asyncio.sleep(interval)
        try:
            await sharedstate.attempt(lambda: slot.slots.release(slot.caps, slot.member))
        except sharedstate.CacheUnavailable:
            continue
        return


def wake_lines(queue: Queue, slot: Slot) -> None:
    """This process's lines at any of ``slot``'s caps: their heads ask again now."""
    keys = {cap.key for cap in slot.caps}
    for scope in list(queue.lines):
        if scope.startswith("cc:") and keys & set(scope[3:].split(",")):
            queue.wake(scope)
