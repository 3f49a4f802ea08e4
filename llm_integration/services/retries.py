"""Step 6: retries of one upstream call with tenacity.

Only retryable failures are retried (429, 5xx/529, timeouts, connection errors and
streams that broke before their first chunk), never 400/401/403. The wait is the
upstream's ``Retry-After`` when it gives one, else exponential backoff with full
jitter; a Retry-After beyond ``RETRY_AFTER_MAX`` or the request's deadline ends the
retries at once so the caller can fall back instead of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from ..conf import llm_settings
from ..exceptions import UpstreamError, UpstreamTimeout
from .clock import Clock

T = TypeVar("T")


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, UpstreamError) and error.retryable


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    deadline: float,
    clock: Clock,
    provider: str = "",
) -> T:
    """``await fn()``, retried as above; ``deadline`` is a ``clock.monotonic()`` instant."""
    backoff = wait_random_exponential(
        multiplier=float(llm_settings.RETRY_BACKOFF_BASE), max=float(llm_settings.RETRY_BACKOFF_MAX)
    )
    retry_after_max = float(llm_settings.RETRY_AFTER_MAX)

    def wait_for(attempt_number: int, error: BaseException | None) -> float:
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        return backoff(SimpleNamespace(attempt_number=attempt_number))

    def stop_after(attempt_number: int, error: BaseException | None) -> bool:
        if attempt_number > max_retries:
            return True
        retry_after = getattr(error, "retry_after", None) or 0
        remaining = deadline - clock.monotonic()
        return retry_after > retry_after_max or retry_after >= remaining or remaining <= 0

    async def attempt() -> T:
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("The request's deadline passed.", provider=provider)
        try:
            async with asyncio.timeout(remaining):
                return await fn()
        except TimeoutError:
            raise UpstreamTimeout("The request's deadline passed.", provider=provider) from None

    # The first attempt outside tenacity: most calls succeed at once, and tenacity's
    # bookkeeping would cost them more than the call itself.
    try:
        return await attempt()
    except BaseException as error:
        if not is_retryable(error) or stop_after(1, error):
            raise
        first_wait = wait_for(1, error)
    await clock.sleep(first_wait)

    def failure(state: RetryCallState) -> BaseException | None:
        return state.outcome.exception() if state.outcome else None

    retrying = AsyncRetrying(  # attempts 2, 3…: tenacity counts them from 1
        stop=lambda state: stop_after(state.attempt_number + 1, failure(state)),
        wait=lambda state: wait_for(state.attempt_number + 1, failure(state)),
        retry=retry_if_exception(is_retryable),
        sleep=clock.sleep,
        reraise=True,
    )
    return await retrying(attempt)
