"""Adapters by provider kind. ``LLM_INTEGRATION["ADAPTERS"]`` adds or replaces kinds."""

from __future__ import annotations

from django.utils.module_loading import import_string

from ..exceptions import UnknownAdapterKind
from .base import (
    BaseLLMAdapter,
    ChatRequest,
    Completion,
    Embeddings,
    Message,
    StreamChunk,
    Usage,
)
from .tools import ResponseFormat, Tool, ToolCall, ToolCallDelta, ToolChoice

BUILTIN_ADAPTERS = {
    "openai": "llm_integration.adapters.openai.OpenAIAdapter",
    "openai_compatible": "llm_integration.adapters.openai.OpenAICompatibleAdapter",
    "anthropic": "llm_integration.adapters.anthropic.AnthropicAdapter",
    "ollama": "llm_integration.adapters.ollama.OllamaAdapter",
    "dummy": "llm_integration.adapters.dummy.DummyAdapter",
}


def adapter_paths() -> dict[str, str]:
    from ..conf import llm_settings

    return {**BUILTIN_ADAPTERS, **(llm_settings.ADAPTERS or {})}


def known_kinds() -> list[str]:
    return sorted(adapter_paths())


def adapter_class(kind: str) -> type[BaseLLMAdapter]:
    path = adapter_paths().get(kind)
    if path is None:
        raise UnknownAdapterKind(
            f"Unknown adapter kind {kind!r}; known kinds: {', '.join(known_kinds())}."
        )
    return import_string(path)


__all__ = [
    "BaseLLMAdapter",
    "ChatRequest",
    "Completion",
    "Embeddings",
    "Message",
    "ResponseFormat",
    "StreamChunk",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "Usage",
    "adapter_class",
    "known_kinds",
]
