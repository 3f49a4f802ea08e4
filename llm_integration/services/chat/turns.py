"""A conversation's turn made ready on the chat path: the turns its context leaves out
are summarized by ``SUMMARY_MODEL`` (its own call and usage record) before it is sent.

A summary that cannot be had (the alias refuses, fails, or is over budget) leaves the
turn as it was: the removed turns are left out without one, and the turn goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from ... import exceptions as exc
from ..memory.conversations import Turn, may_summarize, summary_request
from ..policy.rules import Labels
from .gateway import achat

logger = logging.getLogger("llm_integration.conversations")

#: The longest summary asked for, and its share of the context's limit.
SUMMARY_TOKENS = 1024
SUMMARY_SHARE = 10


async def summarized(turn: Turn, *, user: Any, key: Any, labels: Labels) -> Turn:
    """``turn`` with a new summary standing for what it removes (and the summary it
    had), when ``SUMMARY_MODEL`` may take them."""
    alias = may_summarize(turn)
    if alias is None:
        return turn
    limit = max(64, min(SUMMARY_TOKENS, turn.context.limit // SUMMARY_SHARE))
    try:
        result = await achat(
            user=user,
            model=alias,
            messages=summary_request(turn),
            max_tokens=limit,
            labels=labels,
            key=key,
            conversation=turn.conversation.id,
        )
    except exc.LLMError as error:
        logger.warning(
            "llm.summary_failed",
            extra={"conversation": turn.conversation.id, "alias": alias, "error": error.code},
        )
        return turn
    text = result.answer.strip()
    return turn.summarized(text) if text else turn
