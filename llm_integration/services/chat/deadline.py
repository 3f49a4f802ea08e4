"""How long a stream may take: no content for ``STREAM_IDLE_TIMEOUT`` seconds, or more
than ``MAX_STREAM_SECONDS`` in all, ends it with ``UpstreamTimeout`` (an upstream that
sends only keep-alives would otherwise hold the request, and its budget reservation,
until the client gives up)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ... import exceptions as exc
from ...adapters import StreamChunk
from ...conf import llm_settings


class StreamDeadline:
    """A stream's clock: each wait for its next chunk ends after
    ``STREAM_IDLE_TIMEOUT`` seconds (the first's after the provider's timeout, if that
    is longer), and none goes past ``MAX_STREAM_SECONDS`` from the stream's start
    (adapters yield content only: keep-alives and empty deltas do not reset it)."""

    def __init__(self) -> None:
        self.idle = float(llm_settings.STREAM_IDLE_TIMEOUT)
        self.ends = asyncio.get_running_loop().time() + float(llm_settings.MAX_STREAM_SECONDS)

    async def next(
        self,
        chunks: AsyncIterator[StreamChunk],
        provider: str,
        *default: Any,
        idle: float | None = None,
    ) -> Any:
        """``anext(chunks, *default)``, or ``UpstreamTimeout`` when it takes too long.
        ``idle``: this wait's own idle limit (the first token may take as long as the
        provider's timeout: a reasoning model thinks before it writes)."""
        idle = self.idle if idle is None else idle
        left = self.ends - asyncio.get_running_loop().time()
        wait, why = (idle, "sent no content for") if idle < left else (left, "")
        try:
            async with asyncio.timeout(max(0.0, wait)):
                return await anext(chunks, *default)
        except TimeoutError:
            if why:
                message = f"{provider} {why} {idle:g} s (STREAM_IDLE_TIMEOUT)."
            else:
                message = f"{provider}'s stream ran past MAX_STREAM_SECONDS."
            raise exc.UpstreamTimeout(message, provider=provider) from None
