"""A deterministic model for development and tests: no network, no key.

It answers with a fixed sentence that quotes the last user message, streamed word by
word (``delay`` seconds between words, from the provider's options). ``max_tokens``
caps the answer in tokens, with ``finish_reason: "length"``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ..services.tokens import count_message_tokens, count_text_tokens
from .base import BaseLLMAdapter, ChatRequest, Completion, StreamChunk, Usage


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
        words = f"This is the dummy model ({self.model}). You said: {last.strip()}".split()
        limit = request.max_tokens or self.default_max_tokens
        if not limit or count_text_tokens(" ".join(words), model=self.model) <= limit:
            return words, "stop"
        kept: list[str] = []
        for word in words:
            if count_text_tokens(" ".join([*kept, word]), model=self.model) > limit:
                break
            kept.append(word)
        return kept, "length"

    def _usage(self, request: ChatRequest, text: str) -> Usage:
        return Usage(
            prompt_tokens=count_message_tokens(request.messages, model=self.model),
            completion_tokens=count_text_tokens(text, model=self.model),
        )

    async def _complete(self, request: ChatRequest) -> Completion:
        words, finish = self.answer_words(request)
        text = " ".join(words)
        return Completion(
            text=text, usage=self._usage(request, text), finish_reason=finish, model=self.model
        )

    async def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        words, finish = self.answer_words(request)
        for i, word in enumerate(words):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield StreamChunk(text=word if i == 0 else f" {word}")
        yield StreamChunk(finish_reason=finish, usage=self._usage(request, " ".join(words)))
