"""One way to stream a chat over HTTP, whatever the format.

The first event is awaited before the response starts, so that everything that can
fail before an answer (input, plan, limits, budgets, every upstream down) fails with
its own HTTP status. After the 200 has gone out, a failure is the format's error
event, and however the stream ends (done, failed, or the client gone) the chat stream
is closed: a client that went away is recorded as cancelled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse

from ..services.chat import ChatStream, Delta, Done, ThinkingDelta, ToolCallDelta

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Event = Delta | ToolCallDelta | ThinkingDelta | Done


class StreamFormat(ABC):
    """How a format writes a stream: each method returns the bytes to send."""

    def opening(self, stream: ChatStream) -> bytes:
        """Before the first event (b"": nothing)."""
        return b""

    @abstractmethod
    def event(self, event: Event) -> bytes:
        """One event; the ``Done`` one ends the answer. Reasoning (``ThinkingDelta``)
        only reaches formats that have a place for it."""

    async def ending(self, done: Done) -> None:
        """Work before the ``Done`` event is written (a failure here is the format's
        error event): the Responses format keeps the response for the next request.
        Nothing, by default."""
        return None

    @abstractmethod
    def failure(self, error: Exception) -> bytes:
        """A failure after the 200."""

    def closing(self) -> bytes:
        """After the last event or the failure (b"": nothing)."""
        return b""


async def opened(stream: ChatStream, fmt: StreamFormat) -> AsyncIterator[bytes]:
    """The stream's bytes in ``fmt``, once its first event has come (failures before it
    raise, for their own status)."""
    first = await anext(stream)
    return _written(stream, first, fmt)


async def _written(stream: ChatStream, first: Event, fmt: StreamFormat) -> AsyncIterator[bytes]:
    event: Event = first
    try:
        if head := fmt.opening(stream):
            yield head
        while True:
            if isinstance(event, Done):
                await fmt.ending(event)
            if chunk := fmt.event(event):
                yield chunk
            if isinstance(event, Done):
                break
            event = await anext(stream)
    except Exception as error:  # after the 200 has gone out: the format's error event
        yield fmt.failure(error)
    finally:
        await stream.aclose()
    if tail := fmt.closing():
        yield tail


def event_stream_response(body: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """Server-sent events, not buffered by proxies on the way."""
    return StreamingHttpResponse(body, content_type="text/event-stream", headers=SSE_HEADERS)
