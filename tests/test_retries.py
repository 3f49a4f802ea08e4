"""Retries: tenacity owns the loop; the upstream's Retry-After is honoured; each call's
own limits hold, also when many calls share one policy at once."""

from __future__ import annotations

import asyncio

import pytest

from llm_integration import exceptions as exc
from llm_integration.services.chat.retries import call_with_retries, retry_policy
from llm_integration.services.clock import FakeClock


def failing(attempts: list, *, retry_after: float | None = None, succeed_on: int = 0):
    async def call():
        attempts.append(1)
        if len(attempts) == succeed_on:
            return "answer"
        raise exc.UpstreamServerError("down", provider="p", status=503, retry_after=retry_after)

    return call


async def test_retries_wait_what_the_upstream_says_else_back_off():
    clock = FakeClock()
    policy = retry_policy(clock)
    attempts: list = []
    result = await call_with_retries(
        failing(attempts, retry_after=3, succeed_on=3),
        policy=policy,
        max_retries=2,
        deadline=clock.monotonic() + 60,
        clock=clock,
    )
    assert (result, len(attempts), clock.slept) == ("answer", 3, [3.0, 3.0])
    clock.slept.clear()
    attempts.clear()
    await call_with_retries(
        failing(attempts, succeed_on=2), policy=policy, max_retries=2, deadline=1e12, clock=clock
    )
    assert len(clock.slept) == 1 and 0 <= clock.slept[0] <= 0.5  # full jitter, base 0.5


async def test_a_retry_after_beyond_the_deadline_or_the_maximum_is_not_waited_for():
    clock = FakeClock()
    policy = retry_policy(clock)
    for retry_after, deadline in ((30.0, 60.0), (5.0, 4.0)):  # RETRY_AFTER_MAX 10; too late
        attempts: list = []
        with pytest.raises(exc.UpstreamServerError):
            await call_with_retries(
                failing(attempts, retry_after=retry_after),
                policy=policy,
                max_retries=5,
                deadline=clock.monotonic() + deadline,
                clock=clock,
            )
        assert len(attempts) == 1 and clock.slept == []


async def test_a_refusal_is_never_retried():
    clock = FakeClock()
    attempts: list = []

    async def refused():
        attempts.append(1)
        raise exc.UpstreamBadRequest("no", provider="p", status=400)

    with pytest.raises(exc.UpstreamBadRequest):
        await call_with_retries(
            refused, policy=retry_policy(clock), max_retries=5, deadline=1e12, clock=clock
        )
    assert attempts == [1]


async def test_concurrent_calls_sharing_one_policy_keep_their_own_limits():
    clock = FakeClock()
    policy = retry_policy(clock)
    counts = {n: [] for n in range(8)}

    async def one(n: int) -> None:
        async def call():
            counts[n].append(1)
            await asyncio.sleep(0)  # interleave with the other calls
            raise exc.UpstreamServerError("down", provider="p", status=500, retry_after=0)

        with pytest.raises(exc.UpstreamServerError):
            await call_with_retries(call, policy=policy, max_retries=n, deadline=1e12, clock=clock)

    await asyncio.gather(*(one(n) for n in counts))
    assert {n: len(c) for n, c in counts.items()} == {n: n + 1 for n in counts}
