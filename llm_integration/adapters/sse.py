"""Server-sent events, as the WHATWG spec parses them, from an iterator of lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .http import ResponseTooLarge


@dataclass(slots=True)
class ServerSentEvent:
    event: str
    data: str


async def iter_sse(lines: AsyncIterator[str], limit: int) -> AsyncIterator[ServerSentEvent]:
    """Events from SSE lines: ``event:``/``data:`` fields, dispatched on a blank line;
    ``ResponseTooLarge`` for an event whose data passes ``limit`` characters."""
    event, data, size = "", [], 0
    async for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data))
            event, data, size = "", [], 0
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            size += len(value) + 1
            if size > limit:
                raise ResponseTooLarge(limit)
            data.append(value)
        elif name == "event":
            event = value
    if data:  # a server that closes without the final blank line
        yield ServerSentEvent(event or "message", "\n".join(data))
