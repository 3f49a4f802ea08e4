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

from ..conf import llm_settings
from ..exceptions import UpstreamError, UpstreamTimeout
from .clock import Clock

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
    """Stop after ``max_retries`` retries, at the request's deadline, or when the
    upstream asks for a wait longer than ``retry_after_max`` or than what is left."""

    def __init__(
        self, *, max_retries: int, deadline: float, clock: Clock, retry_after_max: float
    ) -> None:
        self.max_retries = max_retries
        self.deadline = deadline
        self.clock = clock
        self.retry_after_max = retry_after_max

    def __call__(self, retry_state: RetryCallState) -> bool:
        if retry_state.attempt_number > self.max_retries:
            return True
        retry_after = retry_after_of(retry_state) or 0.0
        remaining = self.deadline - self.clock.monotonic()
        return retry_after > self.retry_after_max or retry_after >= remaining or remaining <= 0


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    deadline: float,
    clock: Clock,
    provider: str = "",
) -> T:
    """``await fn()``, retried as above; ``deadline`` is a ``clock.monotonic()`` instant."""

    async def attempt() -> T:
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("The request's deadline passed.", provider=provider)
        try:
            async with asyncio.timeout(remaining):
                return await fn()
        except TimeoutError:
            raise UpstreamTimeout("The request's deadline passed.", provider=provider) from None

    backoff = wait_random_exponential(
        multiplier=float(llm_settings.RETRY_BACKOFF_BASE), max=float(llm_settings.RETRY_BACKOFF_MAX)
    )
    retrying = AsyncRetrying(
        stop=stop_at_deadline(
            max_retries=max_retries,
            deadline=deadline,
            clock=clock,
            retry_after_max=float(llm_settings.RETRY_AFTER_MAX),
        ),
        wait=wait_retry_after(backoff),
        retry=retry_if_exception(is_retryable),
        sleep=clock.sleep,
        reraise=True,
    )
    return await retrying(attempt)
