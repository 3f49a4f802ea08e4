"""The one path every chat request takes (the seam the gateway service grows on).

Today: validate, resolve the alias, call its adapter, and write exactly one usage
record whatever happens (ok, error, cancelled). Entitlements, rate limits, budgets,
caching, retries and fallbacks slot in between resolve and call (see DESIGN.md).

    result = await achat(user=request.user, model="chat-default", messages=[...])
    async for event in astream_chat(user=..., model=..., messages=[...]):
        if isinstance(event, Delta): ...
        else: event.usage, event.cost_usd   # Done, always last
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .. import exceptions as exc
from ..adapters import Usage
from ..adapters.base import build_request
from ..models import ModelAlias, UsageRecord
from .providers import adapter_for, aget_alias
from .tokens import count_message_tokens, count_text_tokens
from .usage import arecord, cost_of

logger = logging.getLogger("llm_integration.services.chat")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


@dataclass(slots=True)
class ChatResult:
    answer: str
    model: str
    request_id: str
    usage: Usage
    cost_usd: Decimal
    finish_reason: str = "stop"
    cached: bool = False


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
class _Call:
    """What one request accumulates on its way through, for its usage record."""

    request_id: str
    user: Any
    alias: ModelAlias | None = None
    started: float = field(default_factory=time.monotonic)
    streamed: bool = False
    recorded: bool = False

    async def record(
        self,
        *,
        status: str,
        usage: Usage | None = None,
        error: Exception | None = None,
        finish_reason: str = "",
    ) -> Decimal:
        """Write this request's one usage record (later calls are no-ops)."""
        alias = self.alias
        usage = usage or Usage()
        if self.recorded:
            return Decimal(0)
        self.recorded = True
        cost = cost_of(alias, usage) if alias is not None else Decimal(0)
        user = self.user if getattr(self.user, "is_authenticated", False) else None
        await arecord(
            request_id=self.request_id,
            user=user,
            alias=alias.slug if alias else "",
            provider=alias.provider.name if alias else "",
            upstream_model=alias.upstream_model if alias else "",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            tokens_estimated=usage.estimated,
            cost_usd=cost,
            latency_ms=int((time.monotonic() - self.started) * 1000),
            status=status,
            error_type=getattr(error, "code", type(error).__name__) if error else "",
            finish_reason=finish_reason,
            streamed=self.streamed,
        )
        logger.info(
            "llm.request",
            extra={
                "request_id": self.request_id,
                "alias": alias.slug if alias else "",
                "provider": alias.provider.name if alias else "",
                "status": status,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_usd": str(cost),
                "error_type": getattr(error, "code", "") if error else "",
            },
        )
        return cost


async def achat(
    *,
    user: Any = None,
    model: str | None = None,
    messages: Sequence[Any] | str,
    system_prompt: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    request_id: str | None = None,
) -> ChatResult:
    call = _Call(request_id=request_id or new_request_id(), user=user)
    try:
        request = build_request(
            messages, system_prompt=system_prompt, temperature=temperature, max_tokens=max_tokens
        )
        call.alias = await aget_alias(model)
        completion = await adapter_for(call.alias).complete(request)
    except asyncio.CancelledError:
        await call.record(status=UsageRecord.Status.CANCELLED, finish_reason="cancelled")
        raise
    except Exception as error:
        await call.record(status=UsageRecord.Status.ERROR, error=error)
        raise
    cost = await call.record(
        status=UsageRecord.Status.OK, usage=completion.usage, finish_reason=completion.finish_reason
    )
    return ChatResult(
        answer=completion.text,
        model=call.alias.slug,
        request_id=call.request_id,
        usage=completion.usage,
        cost_usd=cost,
        finish_reason=completion.finish_reason,
    )


async def astream_chat(
    *,
    user: Any = None,
    model: str | None = None,
    messages: Sequence[Any] | str,
    system_prompt: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    request_id: str | None = None,
) -> AsyncIterator[Delta | Done]:
    """Deltas, then one Done. Closing the iterator early records a cancelled request."""
    call = _Call(request_id=request_id or new_request_id(), user=user, streamed=True)
    parts: list[str] = []
    request = None
    try:
        request = build_request(
            messages, system_prompt=system_prompt, temperature=temperature, max_tokens=max_tokens
        )
        call.alias = await aget_alias(model)
        adapter = adapter_for(call.alias)
        async for chunk in adapter.complete_stream(request):
            if chunk.text:
                parts.append(chunk.text)
                yield Delta(chunk.text)
            if chunk.usage is not None:
                cost = await call.record(
                    status=UsageRecord.Status.OK,
                    usage=chunk.usage,
                    finish_reason=chunk.finish_reason or "stop",
                )
                yield Done(
                    model=call.alias.slug,
                    request_id=call.request_id,
                    usage=chunk.usage,
                    cost_usd=cost,
                    finish_reason=chunk.finish_reason or "stop",
                )
                return
    except exc.UpstreamError as error:
        await call.record(status=UsageRecord.Status.ERROR, usage=error.partial_usage, error=error)
        raise
    except exc.LLMError as error:
        await call.record(status=UsageRecord.Status.ERROR, error=error)
        raise
    except (GeneratorExit, asyncio.CancelledError):
        # The client went away or cancelled: record what was consumed so far.
        await call.record(
            status=UsageRecord.Status.CANCELLED,
            usage=_consumed(call, request, parts),
            finish_reason="cancelled",
        )
        raise
    except Exception as error:
        await call.record(status=UsageRecord.Status.ERROR, error=error)
        raise


def _consumed(call: _Call, request: Any, parts: list[str]) -> Usage | None:
    if request is None or call.alias is None:
        return None
    model_name = call.alias.upstream_model
    return Usage(
        prompt_tokens=count_message_tokens(request.messages, model=model_name),
        completion_tokens=count_text_tokens("".join(parts), model=model_name),
        estimated=True,
    )
