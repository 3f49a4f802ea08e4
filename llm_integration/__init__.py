"""llm_integration: a Django reusable app that turns a project into a budget-aware LLM gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .services.config.providers import AliasAdapter


def get_llm_adapter(alias: str | None = None) -> AliasAdapter:
    """The adapter behind ``alias`` (the default alias when None).

    ``await get_llm_adapter().complete("Hi")`` or ``async for chunk in
    get_llm_adapter("chat-default").complete_stream(messages)``.
    """
    from .services.config.providers import get_llm_adapter as factory

    return factory(alias)
