"""A deterministic model for development and tests: no network, no key.

It answers with a fixed sentence that quotes the last user message, streamed word by
word (``delay`` seconds between words, from the provider's options). ``max_tokens``
caps the answer in tokens, with ``finish_reason: "length"``. Asked to call a tool
(``tool_choice`` required or naming one) it calls it with ``{}``; asked for JSON
(``response_format``) it answers ``{"answer": "<the sentence>"}``. Its embeddings are
derived from each input's hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..text.tokens import count_message_tokens, count_text_tokens
from .base import BaseLLMAdapter, ChatRequest, Completion, Embeddings, StreamChunk, Usage
from .tools import ToolCall, ToolCallDelta


class DummyAdapter(BaseLLMAdapter):
    kinds = ("dummy",)
    requires_api_key = False
    options = ("delay",)

    def __init__(self, *, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = float(delay)

    def answer_words(self, request: ChatRequest) -> tuple[list[str], str]:
        """The answer's words, as many as fit in ``max_tokens`` tokens."""
        last = next(m.content for m in reversed(request.messages) if m.role == "user")
        sentence = f"This is the dummy model ({self.model}). You said: {last.strip()}"
        if request.response_format is not None:
            sentence = json.dumps({"answer": sentence})
        words = sentence.split()
        limit = request.max_tokens or self.default_max_tokens
        if not limit or count_text_tokens(" ".join(words), model=self.model) <= limit:
            return words, "stop"
        kept: list[str] = []
        for word in words:
            if count_text_tokens(" ".join([*kept, word]), model=self.model) > limit:
                break
            kept.append(word)
        return kept, "length"

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        dimensions: int | None = None,
        user: str | None = None,
        encoding_format: str = "float",
    ) -> Embeddings:
        """Deterministic unit-free vectors (``dimensions`` long, 8 by default) from each
        input's SHA-256: equal texts, equal vectors."""
        size = dimensions or 8
        vectors = []
        for text in inputs:
            digest = b""
            while len(digest) < size:
                digest += hashlib.sha256(digest + text.encode()).digest()
            vectors.append([round(b / 127.5 - 1, 6) for b in digest[:size]])
        tokens = sum(count_text_tokens(t, model=self.model) for t in inputs)
        return Embeddings(vectors, Usage(prompt_tokens=tokens), self.model)

    def tool_call(self, request: ChatRequest) -> ToolCall | None:
        """The call the request asks for (``tool_choice`` required or a named tool)."""
        choice = request.tool_choice
        if choice is None or choice.mode not in ("required", "tool"):
            return None
        name = choice.name if choice.mode == "tool" else request.tools[0].name
        return ToolCall(f"call_dummy_{len(request.messages)}", name, "{}")

    def _usage(self, request: ChatRequest, text: str) -> Usage:
        return Usage(
            prompt_tokens=count_message_tokens(
                request.messages, model=self.model, tools=request.tools
            ),
            completion_tokens=count_text_tokens(text, model=self.model),
        )

    async def _complete(self, request: ChatRequest) -> Completion:
        if call := self.tool_call(request):
            return Completion(
                usage=self._usage(request, call.name + call.arguments),
                finish_reason="tool_calls",
                model=self.model,
                tool_calls=(call,),
            )
        words, finish = self.answer_words(request)
        text = " ".join(words)
        return Completion(
            text=text, usage=self._usage(request, text), finish_reason=finish, model=self.model
        )

    async def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        if call := self.tool_call(request):
            yield StreamChunk(tool_call=ToolCallDelta(0, call.arguments, call.id, call.name))
            yield StreamChunk(
                finish_reason="tool_calls", usage=self._usage(request, call.name + call.arguments)
            )
            return
        words, finish = self.answer_words(request)
        for i, word in enumerate(words):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield StreamChunk(text=word if i == 0 else f" {word}")
        yield StreamChunk(finish_reason=finish, usage=self._usage(request, " ".join(words)))
