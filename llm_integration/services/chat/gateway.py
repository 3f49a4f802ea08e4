"""The one path every chat request takes (DESIGN.md), for every surface.

    1. validate input                              -> 400 / 413
    2. resolve the alias, check the caller's plan  -> 404 / 403
    3. fit the conversation into the context window; the caller's rate limits
    4. response cache (non-streaming, opted in)    -> answer, no upstream cost
    5. route: the alias, then its fallbacks (routing.py)
    6. settle: exactly one usage record (settlement.py)

    result = await achat(user=user, model="chat-default", messages=[...])
    async for event in astream_chat(user=user, model=..., messages=[...]):
        ...   # Delta(text) or ToolCallDelta ..., then one Done(usage, cost_usd, ...)

``Gateway(clock=FakeClock())`` gives tests deterministic time, waits and windows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync

from ... import exceptions as exc
from ...adapters import ChatRequest, Completion, Embeddings, StreamChunk, ToolCallDelta
from ...adapters.thinking import ThinkingDelta
from ...models import ModelAlias, UsageRecord
from ...text.tokens import estimate_text_tokens, truncate_to_tokens
from ..accounting import quotas
from ..accounting.writer import writer
from ..clock import SYSTEM_CLOCK, Clock
from ..db import run_db
from ..limits.queue import Queue
from ..limits.ratelimit import RateLimiter
from ..memory import caching
from ..policy.keys import KeyGrant
from ..policy.rules import NO_LABELS, Labels, request_text
from .admission import Ask, admit, admit_cached, prepare, refusal
from .deadline import StreamDeadline
from .embedding import EmbeddingResult, check_inputs, prepare_embedding
from .ids import new_request_id
from .metering import metered, metered_completion
from .reservation import reserve_quotas, unavailable
from .retries import retry_policy
from .routing import Preparer, caller_limits, route
from .settlement import Call, error_type, status_for
from .tool_arguments import not_json, not_json_pieces
from .types import ChatResult, ChatStream, Delta, Done, Prepared, Taken
from .validation import validate
from .waiting import take_rate_limits

logger = logging.getLogger("llm_integration.services.chat")


class Gateway:
    """The chat service. ``clock`` drives time, waits, windows and budget periods."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.limiter = RateLimiter(clock=clock)
        self._queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.retrying = retry_policy(clock)

    @property
    def queue(self) -> Queue:
        """The lines of requests waiting at the limits on this event loop (each loop
        its own: their waiters are woken by the loop's events; the sync face runs each
        call on a loop of its own)."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = Queue(self.clock)
        return queue

    def call(
        self,
        user: Any,
        request_id: str | None,
        *,
        streamed: bool = False,
        key: KeyGrant | None = None,
        dropped: Sequence[str] = (),
        conversation: str = "",
    ) -> Call:
        return Call(
            self,
            request_id or new_request_id(),
            user,
            streamed=streamed,
            started=self.clock.monotonic(),
            key=key,
            dropped=tuple(dropped),
            conversation=conversation,
        )

    async def admit(self, call: Call, *, ask: Ask, preparer: Preparer) -> Prepared:
        """Steps 2–3: the admission (routing rules applied), the request prepared for
        the first candidate (``preparer``), the caller's rate limits counted."""
        if not writer.healthy():  # the database failed a write moments ago: fail fast
            raise unavailable("failed a write moments ago")
        adm = admit_cached(call.user, ask)  # no I/O when the snapshot is warm
        call.admission = adm = adm or await run_db(admit, call.user, ask)
        if (refused := refusal(adm)) is not None:
            raise refused
        first = preparer(adm.candidates[0])
        call.serving = None
        counts = await take_rate_limits(call, caller_limits(call), tokens=first.worst_tokens)
        call.taken.append(Taken(counts, first.worst_tokens))
        if quotas.quotas_of(adm.entitlement):
            call.quota_holds = await reserve_quotas(call, first)
        return first

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
        options: Mapping[str, Any] | None = None,
        json_tool_arguments: bool = False,
        labels: Labels = NO_LABELS,
        key: KeyGrant | None = None,
        dropped: Sequence[str] = (),
        conversation: str = "",
    ) -> ChatResult:
        """One answer. ``json_tool_arguments``: the caller passes tool calls on as
        objects (Anthropic's ``tool_use``), so arguments that are not a JSON object are
        an upstream failure (502, what it charged kept aside), not an answer; unless
        the answer was cut at ``max_tokens``, when arguments are unfinished."""
        call = self.call(user, request_id, key=key, dropped=dropped, conversation=conversation)
        cache_key = None
        try:
            request = validate(
                messages,
                system_prompt=system_prompt,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=stop,
                options=options,
            )
            preparer = functools.partial(prepare, request=request)
            text = functools.cache(functools.partial(request_text, request))
            ask = Ask(model, labels, text, key=call.key)
            first = await self.admit(call, ask=ask, preparer=preparer)
            if caching.cacheable(first.alias, first.request):
                cache_key = caching.cache_key(first.alias, first.request)
                hit = await caching.lookup(cache_key, now=self.clock.time())
                if hit is not None:
                    return await self.cached_answer(call, first, hit)

            async def complete(adapter, prepared: Prepared) -> Completion:
                return await adapter.complete(prepared.request)

            try:
                prepared, completion = await route(call, first, complete, preparer)
            except exc.LLMError as error:
                if (stale := await self.stale_answer(call, cache_key, error)) is None:
                    raise
                return await self.cached_answer(call, first, stale, degraded=True)
        except (asyncio.CancelledError, Exception) as error:
            await call.fail(error)
            raise
        try:
            completion = metered_completion(completion, prepared)
            if json_tool_arguments and completion.finish_reason != "length":
                if (bad := not_json(completion.tool_calls)) is not None:
                    raise bad
        except (asyncio.CancelledError, Exception) as error:
            # An answer the client cannot have: what the upstream charged is kept aside.
            status = (
                UsageRecord.Status.CANCELLED
                if isinstance(error, asyncio.CancelledError)
                else status_for(error)
            )
            await call.finish(status, usage=completion.usage, error=error, withheld=True)
            raise
        cost = await call.finish(
            UsageRecord.Status.OK, usage=completion.usage, finish_reason=completion.finish_reason
        )
        if cache_key is not None and prepared.alias.pk == first.alias.pk:
            await caching.store(
                cache_key,
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
            tool_calls=completion.tool_calls,
            thinking=completion.thinking,
        )

    async def cached_answer(
        self, call: Call, first: Prepared, hit: caching.CachedAnswer, *, degraded: bool = False
    ) -> ChatResult:
        """An answer from the response cache: recorded, no upstream cost."""
        call.serving = first
        await call.finish(
            UsageRecord.Status.OK, usage=hit.usage, finish_reason=hit.finish_reason, cached=True
        )
        return ChatResult(
            hit.text,
            first.alias.slug,
            call.request_id,
            hit.usage,
            Decimal(0),
            hit.finish_reason,
            cached=True,
            degraded=degraded,
        )

    async def stale_answer(
        self, call: Call, cache_key: str | None, error: exc.LLMError
    ) -> caching.CachedAnswer | None:
        """When every upstream failed: a stale cached answer to serve, degraded (None:
        none, the error stands)."""
        if cache_key is None:
            return None
        stale = await caching.lookup(cache_key, now=self.clock.time(), stale=True)
        if stale is not None:
            logger.warning(
                "llm.degraded",
                extra={"request_id": call.request_id, "error_type": error_type(error)},
            )
        return stale

    async def cached_events(
        self, call: Call, first: Prepared, hit: caching.CachedAnswer, *, degraded: bool = False
    ) -> AsyncIterator[Delta | Done]:
        """A stream's answer from the response cache: its text in one piece, its end."""
        result = await self.cached_answer(call, first, hit, degraded=degraded)
        if result.answer:
            yield Delta(result.answer)
        yield Done(
            result.model,
            call.request_id,
            result.usage,
            Decimal(0),
            result.finish_reason,
            cached=True,
            degraded=degraded,
        )

    # -- embeddings --------------------------------------------------------------------
    async def embed(
        self,
        *,
        user: Any = None,
        model: str | None = None,
        inputs: Any,
        dimensions: int | None = None,
        end_user: str | None = None,
        encoding_format: str = "float",
        request_id: str | None = None,
        labels: Labels = NO_LABELS,
        key: KeyGrant | None = None,
    ) -> EmbeddingResult:
        """Vectors of ``inputs`` from an embedding alias; one usage record, as for chat.
        ``encoding_format``: as the adapter's (base64 vectors may come back as text)."""
        call = self.call(user, request_id, key=key)
        try:
            texts = check_inputs(inputs)
            preparer = functools.partial(prepare_embedding, inputs=texts)
            text = functools.cache(functools.partial("\n".join, texts))
            ask = Ask(model, labels, text, ModelAlias.Mode.EMBEDDING, key=call.key)
            first = await self.admit(call, ask=ask, preparer=preparer)

            async def embed(adapter, prepared: Prepared) -> Embeddings:
                return await adapter.embed(
                    texts, dimensions=dimensions, user=end_user, encoding_format=encoding_format
                )

            prepared, result = await route(call, first, embed, preparer)
        except (asyncio.CancelledError, Exception) as error:
            await call.fail(error)
            raise
        usage = metered(result.usage, prepared, delivered=0, provider=prepared.alias.provider.name)
        cost = await call.finish(UsageRecord.Status.OK, usage=usage, finish_reason="stop")
        return EmbeddingResult(result.vectors, prepared.alias.slug, call.request_id, usage, cost)

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
        options: Mapping[str, Any] | None = None,
        json_tool_arguments: bool = False,
        labels: Labels = NO_LABELS,
        key: KeyGrant | None = None,
        dropped: Sequence[str] = (),
        conversation: str = "",
    ) -> ChatStream:
        """Deltas (text) and ToolCallDeltas (pieces of tool calls), then one Done.
        Closing the iterator early records ``cancelled``.

        Retries and fallbacks happen only until the first chunk has arrived: after a
        token has gone to the client, a failure ends the stream with that error. A
        stream with no content for ``STREAM_IDLE_TIMEOUT`` seconds, or running past
        ``MAX_STREAM_SECONDS``, ends with ``UpstreamTimeout``. ``json_tool_arguments``:
        as for ``chat``, checked when the stream ends.
        """
        call = self.call(
            user, request_id, streamed=True, key=key, dropped=dropped, conversation=conversation
        )
        checked = functools.partial(
            validate,
            messages,
            system_prompt=system_prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            options=options,
        )
        events = self.events(call, model, labels, checked, json_tool_arguments)
        return ChatStream(events, call)

    async def events(
        self,
        call: Call,
        model: str | None,
        labels: Labels,
        checked: Callable[[], ChatRequest],
        json_tool_arguments: bool,
    ) -> AsyncIterator[Delta | ToolCallDelta | ThinkingDelta | Done]:
        """``stream``'s events; ``checked()`` validates the request (inside, so that a
        refusal is recorded like any other end)."""
        parts: list[str] = []
        answer: list[str] = []  # the text alone, for the response cache
        chunks = None
        deadline = StreamDeadline()
        arguments: dict[int, list[str]] = {}  # tool call index -> [name, *argument pieces]
        try:
            request = checked()
            preparer = functools.partial(prepare, request=request)
            text = functools.cache(functools.partial(request_text, request))
            ask = Ask(model, labels, text, key=call.key)
            first = await self.admit(call, ask=ask, preparer=preparer)
            cache_key = None
            if caching.cacheable(first.alias, first.request):
                cache_key = caching.cache_key(first.alias, first.request)
                hit = await caching.lookup(cache_key, now=self.clock.time())
                if hit is not None:
                    async for event in self.cached_events(call, first, hit):
                        yield event
                    return

            async def open_stream(adapter, prepared: Prepared):
                iterator = adapter.complete_stream(prepared.request)
                try:
                    head = await deadline.next(
                        iterator,
                        prepared.alias.provider.name,
                        idle=max(deadline.idle, float(adapter.timeout)),
                    )
                except BaseException:
                    await iterator.aclose()
                    raise
                return iterator, head

            try:
                prepared, (chunks, head) = await route(call, first, open_stream, preparer)
            except exc.LLMError as error:
                if (stale := await self.stale_answer(call, cache_key, error)) is None:
                    raise
                async for event in self.cached_events(call, first, stale, degraded=True):
                    yield event
                return
            model, limit = prepared.alias.upstream_model, prepared.request.max_tokens
            provider = prepared.alias.provider.name
            written = 0  # completion tokens delivered, counted as they come
            chunk: StreamChunk | None = head
            while chunk is not None:
                if chunk.thinking is not None:  # reasoning: billed as output, not counted
                    parts.append(chunk.thinking.thinking)  # against what it delivers
                    yield chunk.thinking
                if chunk.tool_call is not None:
                    cache_key = None  # the cache keeps text
                    piece = chunk.tool_call
                    tokens = estimate_text_tokens((piece.name or "") + piece.arguments, model=model)
                    if limit and written + tokens > limit:  # written past max_tokens
                        arguments = truncate_to_tokens(
                            piece.arguments, limit - written, model=model
                        )
                        piece = dataclasses.replace(piece, arguments=arguments)
                        parts.append((piece.name or "") + arguments)
                        yield piece
                        usage = call.consumed("".join(parts))
                        cost = await call.finish(
                            UsageRecord.Status.OK, usage=usage, finish_reason="length"
                        )
                        yield Done(prepared.alias.slug, call.request_id, usage, cost, "length")
                        return
                    written += tokens
                    parts.append((piece.name or "") + piece.arguments)
                    if json_tool_arguments:
                        named = arguments.setdefault(piece.index, [piece.name or ""])
                        named.append(piece.arguments)
                    yield piece
                if chunk.text:
                    text, tokens = chunk.text, estimate_text_tokens(chunk.text, model=model)
                    if limit and written + tokens > limit:  # the upstream writes past max_tokens
                        text = truncate_to_tokens(text, limit - written, model=model)
                        if text:
                            parts.append(text)
                            yield Delta(text)
                        usage = call.consumed("".join(parts))
                        cost = await call.finish(
                            UsageRecord.Status.OK, usage=usage, finish_reason="length"
                        )
                        yield Done(prepared.alias.slug, call.request_id, usage, cost, "length")
                        return
                    written += tokens
                    parts.append(text)
                    answer.append(text)
                    yield Delta(text)
                if chunk.usage is not None:
                    finish = chunk.finish_reason or "stop"
                    usage = metered(
                        chunk.usage,
                        prepared,
                        delivered=written,
                        provider=provider,
                        text=lambda: "".join(parts),
                    )
                    if json_tool_arguments and finish != "length":
                        if (bad := not_json_pieces(arguments)) is not None:
                            await call.finish(
                                UsageRecord.Status.ERROR, usage=usage, error=bad, withheld=True
                            )
                            raise bad
                    cost = await call.finish(
                        UsageRecord.Status.OK, usage=usage, finish_reason=finish
                    )
                    if cache_key is not None and prepared.alias.pk == first.alias.pk:
                        await caching.store(
                            cache_key,
                            text="".join(answer),
                            finish_reason=finish,
                            usage=usage,
                            now=self.clock.time(),
                        )
                    yield Done(prepared.alias.slug, call.request_id, usage, cost, finish)
                    return
                chunk = await deadline.next(chunks, provider, None)
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


async def aembed(**kwargs: Any) -> EmbeddingResult:
    """Embeddings through the same path (see ``Gateway.embed``)."""
    return await default_gateway.embed(**kwargs)


def astream_chat(**kwargs: Any) -> ChatStream:
    """The streaming chat path (see ``Gateway.stream``)."""
    return default_gateway.stream(**kwargs)


def chat(**kwargs: Any) -> ChatResult:
    """The chat path, sync face, for views, commands and scripts without an event loop."""
    return async_to_sync(default_gateway.chat)(**kwargs)
