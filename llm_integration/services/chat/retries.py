"""Step 6: retries of one upstream call, with tenacity owning the whole loop.

Only retryable failures are retried (429, 5xx/529, timeouts, connection errors and
streams that broke before their first chunk), never 400/401/403. The wait is the
upstream's ``Retry-After`` when it gives one (``wait_retry_after``), else exponential
backoff with full jitter; a Retry-After beyond ``RETRY_AFTER_MAX`` or the request's
deadline ends the retries at once (``stop_at_deadline``) so the caller can fall back
instead of waiting. Time comes from the gateway's clock: tests sleep on a FakeClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ...conf import llm_settings
from ...exceptions import UpstreamError, UpstreamTimeout
from ..clock import Clock

T = TypeVar("T")


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, UpstreamError) and error.retryable


def failure_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def retry_after_of(state: RetryCallState) -> float | None:
    value = getattr(failure_of(state), "retry_after", None)
    return None if value is None else float(value)


class wait_retry_after(wait_base):
    """Wait what the upstream's ``Retry-After`` says, else what ``fallback`` says."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        retry_after = retry_after_of(retry_state)
        return self.fallback(retry_state) if retry_after is None else retry_after


class stop_at_deadline(stop_base):
    """Stop after the call's ``max_retries`` retries, at its ``deadline``, or when the
    upstream asks for a wait longer than ``RETRY_AFTER_MAX`` or than what is left (the
    call's own values travel in its keyword arguments: one strategy serves them all)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        options = retry_state.kwargs
        if retry_state.attempt_number > options["max_retries"]:
            return True
        retry_after = retry_after_of(retry_state) or 0.0
        remaining = options["deadline"] - self.clock.monotonic()
        retry_after_max = float(llm_settings.RETRY_AFTER_MAX)
        return retry_after > retry_after_max or retry_after >= remaining or remaining <= 0


class wait_backoff(wait_base):
    """Exponential backoff with full jitter, from the settings at call time."""

    def __call__(self, retry_state: RetryCallState) -> float:
        return wait_random_exponential(
            multiplier=float(llm_settings.RETRY_BACKOFF_BASE),
            max=float(llm_settings.RETRY_BACKOFF_MAX),
        )(retry_state)


def retry_policy(clock: Clock) -> AsyncRetrying:
    """The gateway's retry policy on ``clock``. Its strategies read each call's own
    limits from the call's keyword arguments, so one ``AsyncRetrying`` serves every
    call: each call has its own ``RetryCallState``, and the strategies are plain
    functions that never suspend, so concurrent calls never see each other's state."""
    return AsyncRetrying(
        stop=stop_at_deadline(clock),
        wait=wait_retry_after(wait_backoff()),
        retry=retry_if_exception(is_retryable),
        sleep=clock.sleep,
        reraise=True,
    )


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: AsyncRetrying,
    max_retries: int,
    deadline: float,
    clock: Clock,
    provider: str = "",
) -> T:
    """``await fn()`` under ``policy`` (``retry_policy``), at most ``max_retries`` times
    again; ``deadline`` is a ``clock.monotonic()`` instant."""

    async def attempt(*, deadline: float, max_retries: int) -> T:
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("The request's deadline passed.", provider=provider)
        try:
            async with asyncio.timeout(remaining):
                return await fn()
        except TimeoutError:
            raise UpstreamTimeout("The request's deadline passed.", provider=provider) from None

    return await policy(attempt, deadline=deadline, max_retries=max_retries)
