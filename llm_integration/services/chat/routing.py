"""Steps 5–6: where a request goes. The candidates in order (the alias, then its
fallbacks), skipping providers whose circuit is open; per candidate its own rate
limits, a reservation of the worst case on every budget that applies, and the call
with retries. A candidate that fails in a way another might not falls through to the
next one; the client gets the most telling failure when none could answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ... import exceptions as exc
from ...conf import llm_settings
from ...models import ModelAlias
from ..accounting import budgets
from ..config.providers import adapter_for
from ..limits.circuit import CircuitBreaker
from ..limits.ratelimit import Limit, limits_for
from .reservation import release, reserve
from .retries import call_with_retries
from .settlement import Call, error_type
from .types import Prepared, Taken
from .waiting import take_rate_limits, take_slot

logger = logging.getLogger("llm_integration.services.chat")
T = TypeVar("T")
#: Makes a request ready for one candidate alias (413/400 if it cannot be).
Preparer = Callable[[ModelAlias], Prepared]

#: Failures after which the next candidate is tried (the request itself is fine).
FALL_THROUGH = (
    exc.UpstreamAuthenticationError,
    exc.UpstreamRateLimited,
    exc.UpstreamServerError,
    exc.UpstreamConnectionError,
    exc.UpstreamTimeout,
    exc.StreamInterrupted,
    exc.BadUpstreamResponse,
    exc.ConfigurationError,
    exc.BudgetExceeded,
    exc.RateLimited,
)


class Circuits:
    """The two circuits a candidate passes: its provider's endpoint and its deployment
    (that upstream model there).

    The endpoint's counts what says the endpoint itself is unusable: no connection, or
    the key refused (401). Any HTTP answer shows it reachable. The deployment's counts
    what one model does wrong: 5xx, no answer in time, a stream cut or an unreadable
    answer, and a 403 (access to that model refused). A half-open probe that ends with
    nothing to say of its circuit is given back at once.
    """

    def __init__(self, alias: ModelAlias, clock) -> None:
        self.endpoint = CircuitBreaker.of(alias.provider, clock=clock)
        self.deployment = CircuitBreaker.of_deployment(alias, clock=clock)

    async def allow(self) -> bool:
        """Whether the candidate may be tried. An open endpoint is seen before any probe
        is claimed; a deployment's probe is given back if the endpoint then refuses."""
        if await self.endpoint.peek() == "open":
            return False
        if not await self.deployment.allow():
            return False
        if await self.endpoint.allow():
            return True
        await self.deployment.abandon()
        return False

    async def abandon(self) -> None:
        """The candidate was not called after all (a limit, a budget)."""
        await self.deployment.abandon()
        await self.endpoint.abandon()

    async def record_failure(self, error: exc.LLMError) -> None:
        answered = isinstance(error, exc.UpstreamError) and error.status is not None
        if isinstance(error, exc.AdapterFailure):  # the gateway's own fault, not theirs
            await self.abandon()
            return
        if isinstance(error, exc.UpstreamAuthenticationError) and error.status == 403:
            await self.deployment.record_failure()
        elif isinstance(error, exc.UpstreamConnectionError | exc.UpstreamAuthenticationError):
            await self.deployment.abandon()
            await self.endpoint.record_failure()
            return
        elif isinstance(error, DEPLOYMENT_FAILURES):
            await self.deployment.record_failure()
        else:  # a 429 or a 400: says nothing of the model's health
            await self.deployment.abandon()
        if answered:
            await self.endpoint.record_success()
        else:
            await self.endpoint.abandon()

    async def record_success(self) -> None:
        await self.deployment.record_success()
        await self.endpoint.record_success()


#: Failures of one model at an endpoint (5xx, no answer in time, a stream cut, an
#: answer it could not have meant): they count against that deployment's circuit.
DEPLOYMENT_FAILURES = (
    exc.UpstreamServerError,
    exc.UpstreamTimeout,
    exc.StreamInterrupted,
    exc.BadUpstreamResponse,
)
#: Limits that belong to a candidate (its provider, its alias), not to the caller.
CANDIDATE_SCOPES = ("provider", "alias")


def caller_limits(call: Call) -> list[Limit]:
    """The limits of the caller (user, plan, entitlement, the RPM setting)."""
    adm = call.admission
    assert adm is not None
    limits = limits_for(
        user=call.user,
        plan=adm.plan,
        alias=adm.alias,
        provider=adm.alias.provider,
        entitlement=adm.entitlement,
    )
    limits = [limit for limit in limits if limit.key.split(":")[0] not in CANDIDATE_SCOPES]
    if (key := call.key) is not None and key.rpm_limit:
        limits.append(Limit(f"key:{key.id}", key.rpm_limit, None, f"API key {key.name!r}"))
    return limits


def candidate_limits(alias: ModelAlias) -> list[Limit]:
    """The limits of a candidate alias and its provider."""
    limits = limits_for(
        user=None, plan=None, alias=alias, provider=alias.provider, entitlement=None
    )
    return [limit for limit in limits if limit.key.split(":")[0] in CANDIDATE_SCOPES]


def final_error(error: BaseException | None, alias: ModelAlias) -> BaseException:
    """What the client gets when no candidate could answer."""
    if error is None:
        return exc.NoUpstreamAvailable(
            f"Every provider of model {alias.slug!r} is unavailable (circuit open)."
        )
    if isinstance(
        error, exc.UpstreamServerError | exc.UpstreamConnectionError | exc.StreamInterrupted
    ):
        return exc.NoUpstreamAvailable(
            f"No upstream could answer for model {alias.slug!r}: {error.message}"
        )
    return error


async def route(
    call: Call,
    first: Prepared,
    opener: Callable[[Any, Prepared], Awaitable[T]],
    preparer: Preparer,
) -> tuple[Prepared, T]:
    """Try the candidates in order; ``preparer(alias)`` makes the request ready for a
    candidate, ``opener(adapter, prepared)`` makes the call. A candidate that cannot do
    what the request needs (``UnsupportedContent``) is skipped.

    Returns the candidate that answered and what its opener returned; raises the most
    relevant failure.
    """
    gateway, adm = call.gateway, call.admission
    assert adm is not None
    clock = gateway.clock
    deadline = clock.monotonic() + float(llm_settings.REQUEST_DEADLINE)
    last: BaseException | None = None
    final = adm.candidates[-1].pk
    for alias in adm.candidates:
        # A candidate at its limits is passed over while another follows; the last
        # one is waited for, as long as the caller's plan allows (waiting.py).
        wait = alias.pk == final
        if alias.pk != first.alias.pk:
            try:
                prepared = preparer(alias)
            except exc.UnsupportedContent:
                continue  # never fall back to a model that cannot do what the request needs
            except (exc.InvalidRequest, exc.ContextTooLong) as error:
                last = error
                continue
        else:
            prepared = first
        circuits = Circuits(alias, clock)
        if not await circuits.allow():
            continue
        try:
            adapter = adapter_for(alias)
            counts = await take_rate_limits(
                call, candidate_limits(alias), tokens=prepared.worst_tokens, wait=wait
            )
        except (
            exc.ConfigurationError,
            exc.RateLimited,
            exc.InvalidRequest,
            exc.ContextTooLong,
        ) as error:
            await circuits.abandon()
            if alias.pk == first.alias.pk and not isinstance(error, FALL_THROUGH):
                raise
            last = error
            continue
        try:
            call.slot = await take_slot(call, alias, wait=wait)
        except BaseException as error:
            await circuits.abandon()
            await gateway.limiter.release(counts)
            if not isinstance(error, exc.RateLimited) or wait:
                raise
            last = error
            continue
        try:
            call.reservation = await reserve(call, prepared)
        except BaseException as error:
            await circuits.abandon()
            await call.release_slot()
            if not isinstance(error, exc.BudgetExceeded):
                raise
            await gateway.limiter.release(counts)
            last = error
            continue
        call.serving = prepared
        taken = Taken(counts, prepared.worst_tokens)
        call.taken.append(taken)
        try:
            result = await call_with_retries(
                lambda a=adapter, p=prepared: opener(a, p),
                policy=gateway.retrying,
                max_retries=alias.provider.max_retries,
                deadline=deadline,
                clock=clock,
                provider=alias.provider.name,
            )
        except asyncio.CancelledError:  # the client went away: the probe proved nothing
            await circuits.abandon()
            raise
        except exc.LLMError as error:
            await circuits.record_failure(error)
            if not isinstance(error, FALL_THROUGH):
                raise
            # The release owns the holds from here, even if this task is cancelled.
            held, call.reservation = call.reservation, budgets.Reservation()
            if (released := release(held)) is not None:
                await released
            await call.release_slot()
            call.serving = None
            call.taken.remove(taken)
            last = error
            logger.warning(
                "llm.fallback",
                extra={
                    "request_id": call.request_id,
                    "alias": alias.slug,
                    "provider": alias.provider.name,
                    "error_type": error_type(error),
                },
            )
            continue
        await circuits.record_success()
        return prepared, result
    raise final_error(last, adm.alias)
