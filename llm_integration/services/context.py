"""Step 3: fit a conversation into the alias's context window.

When history plus ``max_tokens`` exceeds the window, the oldest turns that are neither
system messages nor the latest user turn are dropped, oldest first. If even the system
prompt and the latest user turn cannot fit, the request is refused (413).
"""

from __future__ import annotations

from ..adapters.base import Message
from ..exceptions import ContextTooLong, InvalidRequest
from .tokens import TOKENS_PER_MESSAGE, count_message_tokens, count_text_tokens


def fit_to_window(
    messages: tuple[Message, ...],
    *,
    model: str,
    context_window: int,
    max_tokens: int,
    prompt_tokens: int | None = None,
) -> tuple[tuple[Message, ...], int]:
    """(messages that fit, their prompt tokens)."""
    if max_tokens >= context_window:
        raise InvalidRequest(
            f"max_tokens ({max_tokens}) must be smaller than the model's context window "
            f"({context_window})."
        )
    budget = context_window - max_tokens
    total = (
        prompt_tokens if prompt_tokens is not None else count_message_tokens(messages, model=model)
    )
    if total <= budget:
        return messages, total
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    droppable = [i for i, m in enumerate(messages) if m.role != "system" and i != last_user]
    dropped: set[int] = set()
    for i in droppable:
        if total <= budget:
            break
        m = messages[i]
        total -= (
            TOKENS_PER_MESSAGE
            + count_text_tokens(m.role, model=model)
            + count_text_tokens(m.content, model=model)
        )
        dropped.add(i)
    if total > budget:
        raise ContextTooLong(
            f"The system prompt and latest message need about {total} tokens, more than the "
            f"{budget} left in the model's context window after max_tokens."
        )
    return tuple(m for i, m in enumerate(messages) if i not in dropped), total
