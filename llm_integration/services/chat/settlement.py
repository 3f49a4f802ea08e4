"""Step 7: a request settles exactly once, however it ends.

``Call.finish`` writes the usage record and settles the budgets in one group commit,
fires budget alerts (and sends ``budget_alerts_fired``, which the WebSocket consumer
turns into notices), corrects the rate-limit token counts, updates the metrics and
logs one structured line.

An answer is handed over only once its record has committed. When the record cannot be
written in time, what the client is told is true: a non-streamed answer is withheld
and its record, still queued, is written as a refusal (``unbilled_cost_usd`` keeps what
the upstream charged, budgets and quotas count nothing), so "nothing was charged"
holds; if a transaction already holds the record, its outcome is awaited once more,
and if it is still undecided the client is told the cost that will be charged. A
streamed answer is the client's already: its record stays as it is, and the error says
what it costs.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import models

from ... import exceptions as exc
from ... import metrics
from ...adapters import Usage
from ...adapters.untrusted import MAX_TOKEN_COUNT
from ...conf import llm_settings
from ...models import ModelAlias, UsageRecord
from ...signals import budget_alerts_fired
from ...text.tokens import count_message_tokens, estimate_text_tokens
from ...text.unicode import clean
from ..accounting import budgets
from ..accounting.pricing import cost_of, format_money
from ..accounting.quotas import QuotaHold
from ..accounting.quotas import release_job as release_quotas
from ..accounting.quotas import settle as settle_quotas
from ..accounting.writer import Ticket, writer
from ..db import run_db
from ..policy.keys import KeyGrant
from .reservation import accounted, release
from .types import Admission, Outcome, Prepared, Taken
from .waiting import Slot, release_slot

if TYPE_CHECKING:
    from .gateway import Gateway

logger = logging.getLogger("llm_integration.services.chat")

#: Failures that are the gateway's refusals (recorded ``refused``), not errors.
REFUSALS = (
    exc.RateLimited,
    exc.BudgetExceeded,
    exc.QuotaExceeded,
    exc.ModelNotAllowed,
    exc.PolicyRefused,
    exc.NoLocalModel,
)


def error_type(error: BaseException | None) -> str:
    if error is None:
        return ""
    return getattr(error, "code", "") or type(error).__name__


def status_for(error: BaseException) -> str:
    return UsageRecord.Status.REFUSED if isinstance(error, REFUSALS) else UsageRecord.Status.ERROR


def record_usage(batch, record, holds, cost, pooled, quota_holds) -> list:
    """A request's last write (a group-commit job): its usage record, its budgets and
    quotas settled."""
    if quota_holds:
        counted = record.status != UsageRecord.Status.REFUSED
        tokens = record.prompt_tokens + record.completion_tokens
        settle_quotas(quota_holds, counted=counted, tokens=tokens)
    return budgets.record_usage(batch, record, holds, cost, pooled)


def give_back(pooled: bool, holds: list, quota_holds: list[QuotaHold]) -> None:
    """What a request held, back, when its record could not be written at all."""
    for pending in (
        release(budgets.Reservation(holds, pooled=pooled)),
        writer.write(release_quotas, quota_holds) if quota_holds else None,
    ):
        if pending is not None:  # nobody awaits it: its failure is the writer's to log
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())


def unbilled(args: tuple) -> tuple:
    """``record_usage``'s arguments for an answer withheld because its record could not
    be written in time: a refusal, charged to nobody, the upstream's cost kept aside."""
    record, holds, _cost, pooled, quota_holds = args
    record.status = UsageRecord.Status.REFUSED
    record.error_type = exc.AccountingUnavailable.code
    record.unbilled_cost_usd, record.cost_usd = record.cost_usd, Decimal(0)
    return record, holds, Decimal(0), pooled, quota_holds


def repaired(args: tuple) -> tuple:
    """``record_usage``'s arguments with a record the database cannot refuse for its
    content: text cut to its column and free of lone surrogates, numbers within their
    column's range, a user that no longer exists dropped."""
    record, holds, _cost, pooled, quota_holds = args
    for f in UsageRecord._meta.concrete_fields:
        value = getattr(record, f.attname)
        if isinstance(f, models.CharField) and isinstance(value, str):
            setattr(record, f.attname, clean(value)[: f.max_length])
        elif isinstance(f, models.IntegerField) and not f.primary_key:
            whole = value if isinstance(value, int) else 0
            setattr(record, f.attname, min(max(whole, 0), MAX_TOKEN_COUNT))
        elif isinstance(f, models.DecimalField):
            ceiling = Decimal(10) ** (f.max_digits - f.decimal_places) - 1
            finite = isinstance(value, Decimal) and value.is_finite()
            setattr(
                record, f.attname, min(max(value, Decimal(0)), ceiling) if finite else Decimal(0)
            )
    users = get_user_model().objects
    if record.user_id is not None and not users.filter(pk=record.user_id).exists():
        record.user_id = None
    return record, holds, record.cost_usd, pooled, quota_holds


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
    #: Rate-limit counts taken (the caller's, the serving candidate's).
    taken: list[Taken] = field(default_factory=list)
    #: What the request holds on its entitlement's quotas.
    quota_holds: list[QuotaHold] = field(default_factory=list)
    started: float = 0.0
    recorded: bool = False
    outcome: Outcome | None = None
    #: The API key the request came with (None: a session or a DRF token).
    key: KeyGrant | None = None
    #: Seconds waited at caps and rate limits; the slot held under the serving caps.
    queued: float = 0.0
    slot: Slot | None = None
    #: What the gateway left out of the request, as the caller allowed
    #: (``DROP_UNSUPPORTED_TOOLS``): ``tool:web_search``.
    dropped: tuple[str, ...] = ()
    #: The conversation (managed context) the request is a turn of, if any.
    conversation: str = ""

    async def release_slot(self) -> None:
        """Give back the serving candidate's concurrency slot (once)."""
        slot, self.slot = self.slot, None
        if slot is not None:
            await release_slot(self, slot)

    @property
    def alias(self) -> ModelAlias | None:
        if self.serving is not None:
            return self.serving.alias
        return self.admission.alias if self.admission else None

    def usage_record(
        self,
        status: str,
        usage: Usage,
        error: BaseException | None,
        finish_reason: str,
        cached: bool,
        withheld: bool = False,
    ) -> tuple[UsageRecord, Decimal]:
        """The request's usage record (not saved) and its cost: no I/O. ``withheld``:
        the client gets no answer, so the cost goes to ``unbilled_cost_usd``."""
        alias = self.alias
        cost = cost_of(alias, usage) if alias is not None and not cached else Decimal(0)
        if self.serving is not None and cost > self.serving.worst_cost:
            # The upstream used more than the request reserved (it wrote past max_tokens,
            # or counted the prompt higher): the budgets were promised the worst case.
            logger.warning(
                "llm.upstream_overran",
                extra={
                    "request_id": self.request_id,
                    "completion_tokens": usage.completion_tokens,
                    "max_tokens": self.serving.request.max_tokens,
                    "cost_usd": format_money(cost),
                    "reserved_usd": format_money(self.serving.worst_cost),
                },
            )
            cost = self.serving.worst_cost
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
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            tokens_estimated=usage.estimated,
            cost_usd=cost,
            latency_ms=int(self.seconds() * 1000),
            status=status,
            error_type=error_type(error),
            finish_reason=finish_reason,
            cached=cached,
            streamed=self.streamed,
            api_key_id=self.key.id if self.key is not None else None,
            queued_ms=min(round(self.queued * 1000), 2**31 - 1),
            dropped=",".join(self.dropped)[:200],
            conversation=self.conversation,
        )
        if (adm := self.admission) is not None:
            record.route = adm.route.rule
            record.tags = UsageRecord.stored_tags(adm.labels.tags)
        if withheld:
            record.unbilled_cost_usd, record.cost_usd = cost, Decimal(0)
            return record, Decimal(0)
        return record, cost

    def seconds(self) -> float:
        return max(0.0, self.gateway.clock.monotonic() - self.started)

    async def record(
        self, status, usage, error, finish_reason, cached, withheld
    ) -> tuple[Decimal, list]:
        """Write the record and settle the budgets in one (group) commit; alerts after.
        (cost, the budget alerts it fired)."""
        record, cost = self.usage_record(status, usage, error, finish_reason, cached, withheld)
        # The write owns the holds from here: a cancelled wait cannot settle them twice.
        reservation = self.reservation
        holds, reservation.holds = reservation.holds, []
        claim = budgets.claim_rows(hold.period_id for hold in holds) if holds else None
        quota_holds, self.quota_holds = self.quota_holds, []
        # Kept and written again if the database is unavailable: the request happened.
        answer = status == UsageRecord.Status.OK and not self.streamed  # not yet handed over
        ticket = Ticket()
        pending = writer.write(
            record_usage,
            record,
            holds,
            cost,
            reservation.pooled,
            quota_holds,
            claim=claim,
            keep=True,
            repair=repaired,
            on_give_up=unbilled if answer else None,
            ticket=ticket,
        )
        try:
            settled = await accounted(pending, lambda _done: None)
        except exc.AccountingUnavailable as refused:
            if ticket.state == Ticket.DONE:  # refused for good, even repaired: not kept
                give_back(reservation.pooled, holds, quota_holds)
                raise
            if status != UsageRecord.Status.OK:
                raise
            settled = await self.undecided(
                pending, ticket, refused, cost, (reservation.pooled, holds, quota_holds)
            )
        reservation.settled.extend(settled)
        alerts = []
        if budgets.alerts_due(settled):
            now = self.gateway.clock.now()
            alerts = await run_db(budgets.fire_alerts, reservation, now=now)
        return cost, alerts

    async def undecided(
        self,
        pending: asyncio.Future,
        ticket: Ticket,
        refused: exc.AccountingUnavailable,
        cost: Decimal,
        held: tuple,
    ) -> list:
        """An answer whose record did not commit in time: what its client may be told.
        Returns what settled if the record lands after all (the answer is served)."""
        if self.streamed:
            raise self.charged_later(cost)
        if writer.give_up(ticket):
            raise refused  # "nothing was charged": the record is written as a refusal
        # A transaction holds the record: its outcome decides, within the request's
        # deadline (a lock the database gives up on ends it sooner).
        try:
            async with asyncio.timeout(float(llm_settings.REQUEST_DEADLINE)):
                return await asyncio.shield(pending)
        except exc.LLMError:
            raise
        except Exception:
            if writer.give_up(ticket):
                raise refused from None
            if ticket.state == Ticket.DONE:  # refused for good: nothing was written
                give_back(*held)
                raise refused from None
            raise self.charged_later(cost) from None

    def charged_later(self, cost) -> exc.AccountingUnavailable:
        retry = float(llm_settings.ACCOUNTING_RETRY_INTERVAL)
        what = "This answer, already delivered," if self.streamed else "This answer"
        return exc.AccountingUnavailable(
            f"Usage cannot be recorded right now. {what} cost ${format_money(cost)}, "
            f"which is charged when its record is written. Retry in {math.ceil(retry)} s.",
            retry_after=retry,
        )

    async def fail(self, error: BaseException) -> None:
        """Record a request that ended before an answer: cancelled (with what its
        prompt consumed), refused or failed."""
        if isinstance(error, asyncio.CancelledError):
            await self.finish(
                UsageRecord.Status.CANCELLED, usage=self.consumed(""), finish_reason="cancelled"
            )
        else:
            await self.finish(status_for(error), error=error)

    async def finish(
        self,
        status: str,
        *,
        usage: Usage | None = None,
        error: BaseException | None = None,
        finish_reason: str = "",
        cached: bool = False,
        withheld: bool = False,
    ) -> Decimal:
        """Write the usage record, settle budgets, update metrics and log (once).
        ``withheld``: an answer the client does not get (its cost kept aside)."""
        if self.recorded:
            return Decimal(0)
        self.recorded = True
        # The upstream is done with its slot: given back beside the record's write.
        releasing = asyncio.ensure_future(self.release_slot()) if self.slot else None
        usage = usage or Usage()
        try:
            cost, alerts = await self.record(status, usage, error, finish_reason, cached, withheld)
        except exc.AccountingUnavailable:
            if status == UsageRecord.Status.OK:
                raise  # an answer is not handed over before its record is written
            # A failure's record waits in the writer until the database takes it; the
            # client hears the failure itself.
            cost, alerts = Decimal(0), []
        finally:
            if releasing is not None:
                await releasing
        self.outcome = Outcome(status, usage, cost, finish_reason)
        for taken in self.taken:
            self.gateway.limiter.adjust_tokens(
                taken.counts, actual=usage.total_tokens, estimated=taken.tokens
            )
        alias = self.alias
        slug, provider = (alias.slug, alias.provider.name) if alias else ("", "")
        seconds = self.seconds()
        metrics.observe(
            alias=slug,
            provider=provider,
            status=status,
            seconds=seconds,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost=float(cost),
            error_type=error_type(error),
            cached=cached,
        )
        metrics.observe_budgets(self.reservation.settled)
        if alerts:
            await budget_alerts_fired.asend(sender=type(self), user=self.user, alerts=alerts)
        fields = {
            "request_id": self.request_id,
            "alias": slug,
            "provider": provider,
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
            prompt_tokens=count_message_tokens(
                self.serving.request.messages, model=model, tools=self.serving.request.tools
            ),
            completion_tokens=estimate_text_tokens(text, model=model),
            estimated=True,
        )
