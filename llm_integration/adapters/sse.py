"""Server-sent events, as the WHATWG spec parses them, from an iterator of lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .http import ResponseTooLarge

#: What each ``data:`` line of an event costs against the limit besides its characters:
#: a line is a string of its own in memory (tens of bytes), so an event of millions of
#: two-character lines is held to the limit as one long line is.
LINE_COST = 64


@dataclass(slots=True)
class ServerSentEvent:
    event: str
    data: str


async def iter_sse(lines: AsyncIterator[str], limit: int) -> AsyncIterator[ServerSentEvent]:
    """Events from SSE lines: ``event:``/``data:`` fields, dispatched on a blank line;
    ``ResponseTooLarge`` for an event whose data passes ``limit`` (characters, and
    ``LINE_COST`` per line)."""
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
            size += len(value) + LINE_COST
            if size > limit:
                raise ResponseTooLarge(limit)
            data.append(value)
        elif name == "event":
            event = value
    if data:  # a server that closes without the final blank line
        yield ServerSentEvent(event or "message", "\n".join(data))
