"""The Responses API's stream: ``response.created`` and ``response.in_progress``, then
each output item in turn (added, its deltas, done; an item is done before the next is
added, as OpenAI streams them), then ``response.completed`` (``response.incomplete``
when the answer was cut short, ``response.failed`` after a failure), every event with
its ``sequence_number``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..adapters.thinking import ThinkingBlock
from ..services.chat import ChatStream, Delta, Done, ThinkingDelta, ToolCallDelta
from . import response_items as items
from .responses import Answer, failure_error, usage
from .streams import StreamFormat


@dataclass(slots=True)
class StreamedItem:
    """An output item as it streams: its place, kind and what has come of it so far."""

    index: int
    kind: str  # message | function_call | reasoning
    id: str
    pieces: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    signature: list[str] = field(default_factory=list)
    redacted: str = ""
    #: Its final form, once done.
    done: dict[str, Any] | None = None

    def finished(self, status: str) -> dict[str, Any]:
        text = "".join(self.pieces)
        if self.kind == "function_call":
            return items.call_item(self.id, self.call_id, self.name, text, status=status)
        if self.kind == "reasoning":
            block = ThinkingBlock(text, "".join(self.signature), self.redacted)
            return items.reasoning_item(self.id, block, status=status)
        return items.message_item(self.id, text, status=status)


class ResponsesStream(StreamFormat):
    """Writes a chat stream as the Responses API's events. ``save`` keeps the final
    response before ``response.completed`` is sent, so the next request can continue
    it."""

    def __init__(
        self,
        answer: Answer,
        *,
        save: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.answer, self.save = answer, save
        self.sequence = 0
        self.model = answer.ask.model
        self.items: list[StreamedItem] = []
        self.open: StreamedItem | None = None
        self.calls: dict[int, StreamedItem] = {}
        self.thoughts: dict[int, StreamedItem] = {}
        self.final: dict[str, Any] = {}
        self.tail = b""  # what ``ending`` prepared for the last event

    def sse(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def opening(self, stream: ChatStream) -> bytes:
        body = self.answer.body(status="in_progress", model=self.model, output=[])
        return self.sse("response.created", response=body) + self.sse(
            "response.in_progress", response=body
        )

    # -- items -----------------------------------------------------------------------
    def start(self, kind: str, **fields: Any) -> tuple[StreamedItem, bytes]:
        """A new item: the open one is done first."""
        head = self.close()
        index = len(self.items)
        item = StreamedItem(index, kind, self.answer.item_id(kind, index), **fields)
        self.items.append(item)
        self.open = item
        added = item.finished("in_progress")
        if kind != "function_call":
            added["content"] = []
        head += self.sse("response.output_item.added", output_index=index, item=added)
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            head += self.sse(
                "response.content_part.added",
                item_id=item.id,
                output_index=index,
                content_index=0,
                part=part,
            )
        return item, head

    def close(self, status: str = "completed") -> bytes:
        """The open item's done events (b"": none open)."""
        item, self.open = self.open, None
        if item is None:
            return b""
        item.done = item.finished(status)
        where = {"item_id": item.id, "output_index": item.index}
        out = b""
        if item.kind == "function_call":
            out += self.sse(
                "response.function_call_arguments.done",
                **where,
                name=item.name,
                arguments=item.done["arguments"],
            )
        elif item.kind == "message":
            part = item.done["content"][0]
            out += self.sse(
                "response.output_text.done",
                **where,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
            out += self.sse("response.content_part.done", **where, content_index=0, part=part)
        elif item.done["content"]:
            text = item.done["content"][0]["text"]
            out += self.sse("response.reasoning_text.done", **where, content_index=0, text=text)
        return out + self.sse("response.output_item.done", output_index=item.index, item=item.done)

    # -- events ----------------------------------------------------------------------
    def event(self, event: Delta | ToolCallDelta | ThinkingDelta | Done) -> bytes:
        if isinstance(event, Delta):
            head = b""
            if self.open is None or self.open.kind != "message":
                _item, head = self.start("message")
            self.open.pieces.append(event.text)
            return head + self.sse(
                "response.output_text.delta",
                item_id=self.open.id,
                output_index=self.open.index,
                content_index=0,
                delta=event.text,
                logprobs=[],
            )
        if isinstance(event, ToolCallDelta):
            return self.call_piece(event)
        if isinstance(event, ThinkingDelta):
            return self.thought_piece(event)
        return self.tail

    def call_piece(self, piece: ToolCallDelta) -> bytes:
        head = b""
        call = self.calls.get(piece.index)
        if call is None:
            call, head = self.start("function_call", call_id=piece.id or "", name=piece.name or "")
            self.calls[piece.index] = call
        if not piece.arguments:
            return head
        call.pieces.append(piece.arguments)
        return head + self.sse(
            "response.function_call_arguments.delta",
            item_id=call.id,
            output_index=call.index,
            delta=piece.arguments,
        )

    def thought_piece(self, piece: ThinkingDelta) -> bytes:
        head = b""
        thought = self.thoughts.get(piece.index)
        if thought is None:
            thought, head = self.start("reasoning")
            self.thoughts[piece.index] = thought
        thought.signature.append(piece.signature)
        thought.redacted += piece.redacted
        if not piece.thinking:
            return head
        thought.pieces.append(piece.thinking)
        return head + self.sse(
            "response.reasoning_text.delta",
            item_id=thought.id,
            output_index=thought.index,
            content_index=0,
            delta=piece.thinking,
        )

    async def ending(self, done: Done) -> None:
        """The last events, prepared, and the final response kept (when asked) before
        any of them is sent."""
        self.model = done.model
        mark = self.sequence  # the events below are sent only if the response is kept
        status, incomplete = self.answer.status(done.finish_reason)
        head = b"" if self.items else self.start("message")[1]  # an empty answer: one message
        head += self.close("incomplete" if incomplete else "completed")
        self.final = self.answer.body(
            status=status,
            model=done.model,
            # A call is made again from every piece: an upstream that interleaves its
            # calls may send a piece of one after the next has begun.
            output=[
                item.finished(item.done["status"]) if item.kind == "function_call" else item.done
                for item in self.items
            ],
            usage=usage(done.usage),
            incomplete=incomplete,
        )
        if self.save is not None:
            try:
                await self.save(self.final)
            except BaseException:
                self.sequence = mark
                raise
        self.tail = head + self.sse(f"response.{status}", response=self.final)

    def failure(self, error: Exception) -> bytes:
        body = self.answer.body(
            status="failed",
            model=self.model,
            output=[],
            error=failure_error(error),
        )
        body["output"] = [item.done or item.finished("incomplete") for item in self.items]
        return self.sse("response.failed", response=body)
