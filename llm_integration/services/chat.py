"""The one path every chat request takes (DESIGN.md), for every surface.

    1. validate input                              -> 400 / 413
    2. resolve the alias, check the caller's plan  -> 404 / 403
    3. fit the conversation into the context window; rate limits -> 413 / 429
    4. response cache (non-streaming, opted in)    -> answer, no upstream cost
    5. route: the alias, then its fallbacks, skipping open circuits; per candidate,
       its own rate limits and a reservation of the worst-case cost on every budget
       that applies (429 budget_exceeded), then the call with retries (tenacity)
    6. settle: exactly one usage record, the reservation released and the real cost
       added, alerts, metrics, the circuit breaker, a structured log line

    result = await achat(user=user, model="chat-default", messages=[...])
    async for event in astream_chat(user=user, model=..., messages=[...]):
        ...   # Delta(text) ..., then one Done(usage, cost_usd, ...)

``Gateway(clock=FakeClock())`` gives tests deterministic time, waits and windows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync

from .. import exceptions as exc
from .. import metrics
from ..adapters import ChatRequest, Completion, StreamChunk, Usage
from ..conf import llm_settings
from ..models import ModelAlias, Plan, PlanEntitlement, UsageRecord, usd_to_units
from . import budgets, caching
from .allowances import allowances
from .circuit import CircuitBreaker
from .clock import SYSTEM_CLOCK, Clock
from .config import Snapshot, config
from .context import fit_to_window
from .db import run_db
from .entitlements import entitlement_for
from .providers import adapter_for
from .ratelimit import Count, Limit, RateLimiter, limits_for
from .retries import call_with_retries
from .tokens import count_message_tokens, count_text_tokens, is_exact
from .usage import cost_of, format_money
from .validation import check_prompt_size, validate
from .writer import writer

logger = logging.getLogger("llm_integration.services.chat")

REFUSALS = (exc.RateLimited, exc.BudgetExceeded, exc.ModelNotAllowed)
# Failures after which the next candidate is tried (the request itself is fine).
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
# Upstream failures that count against a provider's circuit.
CIRCUIT_FAILURES = (
    exc.UpstreamAuthenticationError,
    exc.UpstreamServerError,
    exc.UpstreamConnectionError,
    exc.UpstreamTimeout,
    exc.StreamInterrupted,
    exc.BadUpstreamResponse,
)


def new_request_id() -> str:
    """``req_`` and 128 random bits (``os.urandom``) in hex, like a uuid4's.

    The bytes are read 4 KiB at a time: ``os.urandom`` is a system call that lets go of
    the GIL, and on the event loop each time it may wait for the accounting writer's
    thread to hand the GIL back.
    """
    global _entropy
    with _entropy_lock:
        if len(_entropy) < 16:
            _entropy = bytearray(os.urandom(4096))
        chunk = _entropy[-16:]
        del _entropy[-16:]
    return "req_" + chunk.hex()


_entropy = bytearray()
_entropy_lock = threading.Lock()


def _forget_entropy() -> None:  # a forked child must not repeat its parent's ids
    global _entropy
    _entropy = bytearray()


os.register_at_fork(after_in_child=_forget_entropy)


@dataclass(slots=True)
class ChatResult:
    answer: str
    model: str
    request_id: str
    usage: Usage
    cost_usd: Decimal
    finish_reason: str = "stop"
    cached: bool = False
    degraded: bool = False


@dataclass(slots=True)
class Delta:
    text: str


@dataclass(slots=True)
class Done:
    model: str
    request_id: str
    usage: Usage
    cost_usd: Decimal
    finish_reason: str = "stop"
    cached: bool = False


@dataclass(slots=True)
class Outcome:
    """How a request ended, as recorded: for surfaces that must report a cancel's usage."""

    status: str
    usage: Usage
    cost_usd: Decimal
    finish_reason: str


class ChatStream:
    """The events of a streamed chat (Delta..., Done) with its request id; once it has
    ended, however it ended, ``outcome`` holds what was recorded."""

    def __init__(self, events: AsyncIterator[Delta | Done], call: Call) -> None:
        self._events = events
        self.call = call

    @property
    def request_id(self) -> str:
        return self.call.request_id

    @property
    def outcome(self) -> Outcome | None:
        return self.call.outcome

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Delta | Done:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()


@dataclass(slots=True)
class Admission:
    """What the database says about a request: alias, plan, entitlement, candidates."""

    alias: ModelAlias
    plan: Plan | None
    entitlement: PlanEntitlement | None
    candidates: list[ModelAlias]
    snapshot: Snapshot


def admit(user: Any, model: str | None) -> Admission:
    return _admit_with(config.current(), user, model)


def admit_cached(user: Any, model: str | None) -> Admission | None:
    """``admit`` without touching the database, or None if it would have to."""
    snapshot = config.peek()
    if snapshot is None or not config.plan_known(snapshot, user):
        return None
    return _admit_with(snapshot, user, model)


def _admit_with(snapshot, user: Any, model: str | None) -> Admission:
    alias = snapshot.alias(model)
    if alias is None:
        raise exc.ModelNotFound(f"Unknown model {model or llm_settings.DEFAULT_MODEL!r}.")
    plan = config.plan_for(snapshot, user)
    entitlement = entitlement_for(alias, plan, snapshot)
    candidates = [alias, *snapshot.fallbacks.get(alias.pk, ())]
    candidates = [c for c in candidates if c.provider.enabled]
    if not candidates:
        raise exc.NoUpstreamAvailable(f"No enabled provider serves model {alias.slug!r}.")
    return Admission(alias, plan, entitlement, candidates, snapshot)


@dataclass(slots=True)
class Prepared:
    """A request made ready for one candidate alias."""

    alias: ModelAlias
    request: ChatRequest
    prompt_tokens: int
    worst_cost: Decimal

    @property
    def worst_tokens(self) -> int:
        return self.prompt_tokens + (self.request.max_tokens or 0)


def prepare(alias: ModelAlias, request: ChatRequest) -> Prepared:
    model = alias.upstream_model
    max_tokens = request.max_tokens or alias.default_max_tokens
    prompt = check_prompt_size(request, model=model)
    messages, prompt = fit_to_window(
        request.messages,
        model=model,
        context_window=alias.context_window,
        max_tokens=max_tokens,
        prompt_tokens=prompt,
    )
    upper = prompt if is_exact(model) else int(prompt * llm_settings.ESTIMATE_SAFETY_FACTOR) + 16
    worst = cost_of(alias, Usage(prompt_tokens=upper, completion_tokens=max_tokens))
    request = dataclasses.replace(request, messages=messages, max_tokens=max_tokens)
    return Prepared(alias, request, prompt, worst)


@dataclass
class Call:
    """One request on its way through; writes its usage record exactly once."""

    gateway: Gateway
    request_id: str
    user: Any
    streamed: bool = False
    admission: Admission | None = None
    serving: Prepared | None = None
    reservation: budgets.Reservation = field(default_factory=budgets.Reservation)
    #: Rate-limit counts taken (caller's and serving candidate's), with the tokens counted.
    limits_taken: list[tuple[list[Count], int]] = field(default_factory=list)
    started: float = 0.0
    recorded: bool = False
    outcome: Outcome | None = None
    alerts: list = field(default_factory=list)

    @property
    def alias(self) -> ModelAlias | None:
        if self.serving is not None:
            return self.serving.alias
        return self.admission.alias if self.admission else None

    def _usage_record(
        self,
        status: str,
        usage: Usage,
        error: BaseException | None,
        finish_reason: str,
        cached: bool,
    ) -> tuple[UsageRecord, Decimal]:
        """The request's usage record (not saved) and its cost: no I/O."""
        alias = self.alias
        cost = cost_of(alias, usage) if alias is not None and not cached else Decimal(0)
        user = self.user if getattr(self.user, "is_authenticated", False) else None
        plan = self.admission.plan if self.admission else None
        record = UsageRecord(
            request_id=self.request_id,
            user=user,
            plan=plan.slug if plan else "",
            alias=alias.slug if alias else "",
            provider=alias.provider.name if alias else "",
            upstream_model=alias.upstream_model if alias else "",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            tokens_estimated=usage.estimated,
            cost_usd=cost,
            latency_ms=int(max(0.0, self.gateway.clock.monotonic() - self.started) * 1000),
            status=status,
            error_type=error_type(error),
            finish_reason=finish_reason,
            cached=cached,
            streamed=self.streamed,
        )
        return record, cost

    async def _record(self, status, usage, error, finish_reason, cached) -> Decimal:
        """Write the record and settle the budgets in one (group) commit; alerts after."""
        record, cost = self._usage_record(status, usage, error, finish_reason, cached)
        # The write owns the holds from here: a cancelled wait cannot settle them twice.
        held, self.reservation.holds = self.reservation.holds, []
        settled = await writer.write(
            budgets.record_usage,
            record,
            held,
            cost,
            self.reservation.pooled,
            rows=[pid for _b, pid, _u in held],
        )
        self.reservation.settled.extend(settled)
        if budgets.alerts_due(settled):
            now = self.gateway.clock.now()
            self.alerts = await run_db(budgets.fire_alerts, self.reservation, now=now)
        return cost

    async def finish(
        self,
        status: str,
        *,
        usage: Usage | None = None,
        error: BaseException | None = None,
        finish_reason: str = "",
        cached: bool = False,
    ) -> Decimal:
        """Write the usage record, settle budgets, update metrics and log (once)."""
        if self.recorded:
            return Decimal(0)
        self.recorded = True
        usage = usage or Usage()
        cost = await self._record(status, usage, error, finish_reason, cached)
        self.outcome = Outcome(status, usage, cost, finish_reason)
        total = usage.prompt_tokens + usage.completion_tokens
        for taken, counted in self.limits_taken:
            self.gateway.limiter.adjust_tokens(taken, actual=total, estimated=counted)
        alias = self.alias
        labels = (alias.slug if alias else "", alias.provider.name if alias else "")
        seconds = max(0.0, self.gateway.clock.monotonic() - self.started)
        metrics.observe(
            alias=labels[0],
            provider=labels[1],
            status=status,
            seconds=seconds,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=float(cost),
            error_type=error_type(error),
            cached=cached,
        )
        metrics.observe_budgets(self.reservation.settled)
        if self.alerts:
            await notify_alerts(self.user, self.alerts)
        fields = {
            "request_id": self.request_id,
            "alias": labels[0],
            "provider": labels[1],
            "status": status,
            "latency_ms": int(seconds * 1000),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_usd": format_money(cost),
            "cached": cached,
            "streamed": self.streamed,
            "error_type": error_type(error),
        }
        if llm_settings.LOG_PROMPTS and self.serving is not None:
            fields["prompt"] = self.serving.request.messages[-1].content
        logger.info("llm.request", extra=fields)
        return cost

    def consumed(self, text: str) -> Usage | None:
        """An estimate of what a cut-short request consumed (its prompt and ``text``);
        None once the request is recorded (a stream closed after its end, say)."""
        if self.serving is None or self.recorded:
            return None
        model = self.serving.alias.upstream_model
        return Usage(
            prompt_tokens=count_message_tokens(self.serving.request.messages, model=model),
            completion_tokens=count_text_tokens(text, model=model),
            estimated=True,
        )


async def notify_alerts(user: Any, alerts: list) -> None:
    """Tell the requesting user's open pages (WebSocket group) that a budget crossed a
    threshold; through Redis this reaches sockets served by any process."""
    from channels.layers import get_channel_layer

    from ..consumers import user_group

    layer = get_channel_layer()
    if layer is None or not getattr(user, "pk", None):
        return
    for alert in alerts:
        budget = alert.budget
        await layer.group_send(
            user_group(user.pk),
            {
                "type": "llm.notice",
                "payload": {
                    "kind": "budget_alert",
                    "budget": budget.name,
                    "scope": budget.scope,
                    "threshold": alert.threshold,
                    "spent_usd": format_money(alert.spent_usd),
                    "limit_usd": format_money(alert.limit_usd),
                    "text": f"Budget {budget.name!r} has reached {alert.threshold}% "
                    f"(${format_money(alert.spent_usd)} of ${format_money(alert.limit_usd)}).",
                },
            },
        )


def error_type(error: BaseException | None) -> str:
    if error is None:
        return ""
    return getattr(error, "code", "") or type(error).__name__


def status_for(error: BaseException) -> str:
    return UsageRecord.Status.REFUSED if isinstance(error, REFUSALS) else UsageRecord.Status.ERROR


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


def _release_orphan(pending: asyncio.Future) -> None:
    if pending.cancelled() or pending.exception() is not None:
        return
    _release(pending.result())


def _release(reservation: budgets.Reservation) -> Awaitable | None:
    """Give back what a request that reached no upstream holds (a write unless pooled)."""
    held = reservation.holds
    if not held:
        return None
    if reservation.pooled:
        allowances.release((pid, units) for _b, pid, units in held)
        return None
    return writer.write(budgets.release_job, held, rows=[pid for _b, pid, _u in held])


def _restore_if_failed(back: dict[int, int], pending: asyncio.Future) -> None:
    """A grant's transaction failed (not a refusal): what it was to return is still ours."""
    if not back or pending.cancelled():
        return
    if not isinstance(pending.exception(), exc.LLMError | None):
        allowances.restore(back)


class Gateway:
    """The chat service. ``clock`` drives time, waits, windows and budget periods."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.limiter = RateLimiter(clock=clock)

    # -- shared steps ------------------------------------------------------------------
    async def _admit(self, call: Call, *, model: str | None, request: ChatRequest) -> Prepared:
        adm = admit_cached(call.user, model)  # no I/O when the snapshot is warm
        call.admission = adm = adm or await run_db(admit, call.user, model)
        first = prepare(adm.alias, request)
        call.serving = None
        caller = limits_for(
            user=call.user,
            plan=adm.plan,
            alias=adm.alias,
            provider=adm.alias.provider,
            entitlement=adm.entitlement,
        )
        caller = [limit for limit in caller if limit.key.split(":")[0] not in ("provider", "alias")]
        taken = await self.limiter.acquire(caller, tokens=first.worst_tokens)
        call.limits_taken.append((taken, first.worst_tokens))
        return first

    def _candidate_limits(self, prepared: Prepared) -> list[Limit]:
        alias = prepared.alias
        return [
            limit
            for limit in limits_for(
                user=None, plan=None, alias=alias, provider=alias.provider, entitlement=None
            )
            if limit.key.split(":")[0] in ("provider", "alias")
        ]

    async def _route(self, call: Call, request: ChatRequest, first: Prepared, opener):
        """Try the candidates in order; ``opener(adapter, prepared)`` makes the call.

        Returns (prepared, opener's result). Raises the most relevant failure.
        """
        adm = call.admission
        assert adm is not None
        deadline = self.clock.monotonic() + float(llm_settings.REQUEST_DEADLINE)
        last: BaseException | None = None
        for alias in adm.candidates:
            breaker = CircuitBreaker(alias.provider.name, clock=self.clock)
            if not await breaker.allow():
                continue
            try:
                prepared = first if alias.pk == first.alias.pk else prepare(alias, request)
                adapter = adapter_for(alias)
                taken = await self.limiter.acquire(
                    self._candidate_limits(prepared), tokens=prepared.worst_tokens
                )
            except (
                exc.ConfigurationError,
                exc.RateLimited,
                exc.InvalidRequest,
                exc.ContextTooLong,
            ) as error:
                if alias.pk == first.alias.pk and not isinstance(error, FALL_THROUGH):
                    raise
                last = error
                continue
            try:
                call.reservation = await self._reserve(call, prepared)
            except exc.BudgetExceeded as error:
                await self.limiter.release(taken)
                last = error
                continue
            call.serving = prepared
            call.limits_taken.append((taken, prepared.worst_tokens))
            try:
                result = await call_with_retries(
                    lambda a=adapter, p=prepared: opener(a, p),
                    max_retries=alias.provider.max_retries,
                    deadline=deadline,
                    clock=self.clock,
                    provider=alias.provider.name,
                )
            except exc.LLMError as error:
                if isinstance(error, CIRCUIT_FAILURES):
                    await breaker.record_failure()
                if not isinstance(error, FALL_THROUGH):
                    raise
                # The release owns the holds from here, even if this task is cancelled.
                held, call.reservation = call.reservation, budgets.Reservation()
                if (released := _release(held)) is not None:
                    await released
                call.serving = None
                call.limits_taken.pop()
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
            await breaker.record_success()
            return prepared, result
        raise final_error(last, adm.alias)

    async def _reserve(self, call: Call, prepared: Prepared) -> budgets.Reservation:
        alias = prepared.alias
        adm = call.admission
        plan = adm.plan if adm else None
        snapshot = adm.snapshot
        applicable = snapshot.budgets_for(
            user_id=getattr(call.user, "pk", None),
            plan_id=plan.pk if plan else None,
            alias_id=alias.pk,
            provider_id=alias.provider_id,
        )
        if not applicable:
            return budgets.Reservation()
        now, ids = self.clock.now(), snapshot.period_ids
        pids = budgets.period_rows(applicable, now=now, period_ids=ids)
        rows = [pid for pid in pids if pid is not None]
        share = min(1.0, float(llm_settings.BUDGET_ALLOWANCE_SHARE))
        if share <= 0 or int(llm_settings.DB_THREADS) <= 0:
            job = functools.partial(budgets.reserve_job, now=now, period_ids=ids)
            pending = writer.write(job, applicable, prepared.worst_cost, rows=rows)
        else:
            units = usd_to_units(prepared.worst_cost)
            terms = [budgets.terms(budget) for budget in applicable]
            if len(rows) == len(pids) and allowances.take(rows, terms, units):
                holds = [(b, pid, units) for b, pid in zip(applicable, rows, strict=True)]
                return budgets.Reservation(holds, pooled=True)
            back, held = allowances.withdraw(rows)
            job = functools.partial(
                budgets.grant_job, now=now, period_ids=ids, back=back, held=held, share=share
            )
            pending = writer.write(job, applicable, units, rows=rows)
            pending.add_done_callback(functools.partial(_restore_if_failed, back))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            # Nobody will settle what this reservation holds: give it back when it lands.
            pending.add_done_callback(_release_orphan)
            raise

    # -- non-streaming -----------------------------------------------------------------
    async def chat(
        self,
        *,
        user: Any = None,
        model: str | None = None,
        messages: Sequence[Any] | str,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: Any = None,
        request_id: str | None = None,
    ) -> ChatResult:
        call = Call(self, request_id or new_request_id(), user, started=self.clock.monotonic())
        key = None
        try:
            request = validate(
                messages,
                system_prompt=system_prompt,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=stop,
            )
            first = await self._admit(call, model=model, request=request)
            if caching.cacheable(first.alias, first.request):
                key = caching.cache_key(first.alias, first.request)
                hit = await caching.lookup(key, now=self.clock.time())
                if hit is not None:
                    call.serving = first
                    await call.finish(
                        UsageRecord.Status.OK,
                        usage=hit.usage,
                        finish_reason=hit.finish_reason,
                        cached=True,
                    )
                    return ChatResult(
                        hit.text,
                        first.alias.slug,
                        call.request_id,
                        hit.usage,
                        Decimal(0),
                        hit.finish_reason,
                        cached=True,
                    )

            async def complete(adapter, prepared: Prepared) -> Completion:
                return await adapter.complete(prepared.request)

            try:
                prepared, completion = await self._route(call, request, first, complete)
            except exc.LLMError as error:
                stale = (
                    await caching.lookup(key, now=self.clock.time(), stale=True) if key else None
                )
                if stale is None:
                    raise
                call.serving = first
                await call.finish(
                    UsageRecord.Status.OK,
                    usage=stale.usage,
                    cached=True,
                    finish_reason=stale.finish_reason,
                )
                logger.warning(
                    "llm.degraded",
                    extra={"request_id": call.request_id, "error_type": error_type(error)},
                )
                return ChatResult(
                    stale.text,
                    first.alias.slug,
                    call.request_id,
                    stale.usage,
                    Decimal(0),
                    stale.finish_reason,
                    cached=True,
                    degraded=True,
                )
        except asyncio.CancelledError:
            await call.finish(
                UsageRecord.Status.CANCELLED, usage=call.consumed(""), finish_reason="cancelled"
            )
            raise
        except Exception as error:
            await call.finish(status_for(error), error=error)
            raise
        cost = await call.finish(
            UsageRecord.Status.OK, usage=completion.usage, finish_reason=completion.finish_reason
        )
        if key is not None and prepared.alias.pk == first.alias.pk:
            await caching.store(
                key,
                text=completion.text,
                finish_reason=completion.finish_reason,
                usage=completion.usage,
                now=self.clock.time(),
            )
        return ChatResult(
            completion.text,
            prepared.alias.slug,
            call.request_id,
            completion.usage,
            cost,
            completion.finish_reason,
        )

    # -- streaming ---------------------------------------------------------------------
    def stream(
        self,
        *,
        user: Any = None,
        model: str | None = None,
        messages: Sequence[Any] | str,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: Any = None,
        request_id: str | None = None,
    ) -> ChatStream:
        """Deltas, then one Done. Closing the iterator early records ``cancelled``.

        Retries and fallbacks happen only until the first chunk has arrived: after a
        token has gone to the client, a failure ends the stream with that error.
        """
        call = Call(
            self,
            request_id or new_request_id(),
            user,
            streamed=True,
            started=self.clock.monotonic(),
        )
        events = self._stream(call, model, messages, system_prompt, temperature, max_tokens, stop)
        return ChatStream(events, call)

    async def _stream(
        self, call: Call, model, messages, system_prompt, temperature, max_tokens, stop
    ) -> AsyncIterator[Delta | Done]:
        parts: list[str] = []
        chunks = None
        try:
            request = validate(
                messages,
                system_prompt=system_prompt,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=stop,
            )
            first = await self._admit(call, model=model, request=request)

            async def open_stream(adapter, prepared: Prepared):
                iterator = adapter.complete_stream(prepared.request)
                try:
                    head = await anext(iterator)
                except BaseException:
                    await iterator.aclose()
                    raise
                return iterator, head

            prepared, (chunks, head) = await self._route(call, request, first, open_stream)
            chunk: StreamChunk | None = head
            while chunk is not None:
                if chunk.text:
                    parts.append(chunk.text)
                    yield Delta(chunk.text)
                if chunk.usage is not None:
                    finish = chunk.finish_reason or "stop"
                    cost = await call.finish(
                        UsageRecord.Status.OK, usage=chunk.usage, finish_reason=finish
                    )
                    yield Done(prepared.alias.slug, call.request_id, chunk.usage, cost, finish)
                    return
                chunk = await anext(chunks, None)
            raise exc.StreamInterrupted(
                "The upstream stream ended without usage.", provider=prepared.alias.provider.name
            )
        except (GeneratorExit, asyncio.CancelledError):
            await call.finish(
                UsageRecord.Status.CANCELLED,
                usage=call.consumed("".join(parts)),
                finish_reason="cancelled",
            )
            raise
        except exc.UpstreamError as error:
            usage = error.partial_usage or call.consumed("".join(parts))
            await call.finish(UsageRecord.Status.ERROR, usage=usage, error=error)
            raise
        except Exception as error:
            await call.finish(status_for(error), error=error)
            raise
        finally:
            if chunks is not None:
                await chunks.aclose()


default_gateway = Gateway()


async def achat(**kwargs: Any) -> ChatResult:
    """The chat path, async face (see ``Gateway.chat`` for the arguments)."""
    return await default_gateway.chat(**kwargs)


def astream_chat(**kwargs: Any) -> ChatStream:
    """The streaming chat path (see ``Gateway.stream``)."""
    return default_gateway.stream(**kwargs)


def chat(**kwargs: Any) -> ChatResult:
    """The chat path, sync face, for views, commands and scripts without an event loop."""
    return async_to_sync(default_gateway.chat)(**kwargs)
