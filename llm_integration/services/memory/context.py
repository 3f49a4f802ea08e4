"""Step 3: fit a conversation into the alias's context window.

When history plus ``max_tokens`` exceeds the window, the oldest turns that are neither
system messages nor the latest user turn are dropped, oldest first. An assistant's tool
calls go with the tool results that answer them (an upstream refuses one without the
other), and the tool calls after the latest user turn (an agent's current task) stay. If
even the system prompt and the latest user turn cannot fit, the request is refused
(413).
"""

from __future__ import annotations

from ...adapters.base import Message
from ...exceptions import ContextTooLong, InvalidRequest
from ...text.tokens import count_message_tokens, message_tokens


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
            f"The longest answer asked for ({max_tokens} tokens) must be shorter than the "
            f"model's context window ({context_window} tokens).",
            param="max_tokens",  # each format names its own (max_output_tokens, say)
        )
    budget = context_window - max_tokens
    total = (
        prompt_tokens if prompt_tokens is not None else count_message_tokens(messages, model=model)
    )
    if total <= budget:
        return messages, total
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    dropped: set[int] = set()
    for turn in droppable_turns(messages, last_user):
        if total <= budget:
            break
        total -= sum(message_tokens(messages[i], model=model) for i in turn)
        dropped.update(turn)
    if total > budget:
        raise ContextTooLong(
            f"The system prompt and latest message need about {total} tokens, more than the "
            f"{budget} left in the model's context window after max_tokens."
        )
    return tuple(m for i, m in enumerate(messages) if i not in dropped), total


def droppable_turns(messages: tuple[Message, ...], last_user: int) -> list[list[int]]:
    """Indices that may be dropped, oldest first, grouped into turns: an assistant
    message with tool calls and the tool results after it are one turn."""
    turns: list[list[int]] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        turn = [i]
        if m.tool_calls:
            while turn[-1] + 1 < len(messages) and messages[turn[-1] + 1].role == "tool":
                turn.append(turn[-1] + 1)
        keep = (
            m.role == "system"
            or i == last_user
            or m.role == "tool"  # a result travels with its call
            or (i > last_user and bool(m.tool_calls))  # the current task's tool loop
        )
        if not keep:
            turns.append(turn)
        i = turn[-1] + 1
    return turns
