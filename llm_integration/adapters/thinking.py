"""Extended thinking (Anthropic's ``thinking``): the request's setting, the reasoning
blocks an answer carries, and their pieces in a stream.

A model that thinks returns ``thinking`` blocks (text and a signature) or
``redacted_thinking`` blocks (opaque data) before its answer; a client that continues
the conversation sends them back unchanged in the assistant's turn, where Anthropic
checks the signature. They travel in the gateway's OpenAI-shaped messages as an
assistant's ``thinking_blocks`` (LiteLLM's field) and reach Anthropic upstreams only:
their signatures mean nothing to any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import exceptions as exc
from ..text.fields import refuse_unknown

THINKING_TYPES = ("enabled", "disabled", "adaptive")
#: The smallest budget Anthropic takes.
MIN_BUDGET = 1024


@dataclass(frozen=True, slots=True)
class ThinkingBlock:
    """A block of reasoning: ``thinking`` with its ``signature``, or ``redacted`` data."""

    thinking: str = ""
    signature: str = ""
    redacted: str = ""

    def as_anthropic(self) -> dict[str, Any]:
        if self.redacted:
            return {"type": "redacted_thinking", "data": self.redacted}
        return {"type": "thinking", "thinking": self.thinking, "signature": self.signature}


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    """A piece of a streamed reasoning block (``index``: which one, 0, 1, …): text,
    the signature that closes it, or a redacted block whole."""

    index: int
    thinking: str = ""
    signature: str = ""
    redacted: str = ""


def thinking_effort(thinking: Any) -> str | None:
    """Anthropic's ``thinking`` as OpenAI's ``reasoning_effort``: a budget under 2,048
    tokens is ``low``, under 4,096 ``medium``, more ``high``; ``adaptive`` and
    ``disabled`` leave the upstream's default (None)."""
    if not thinking or thinking.get("type") != "enabled":
        return None
    budget = thinking["budget_tokens"]
    return "low" if budget < 2048 else ("medium" if budget < 4096 else "high")


def parse_thinking(value: Any) -> dict[str, Any] | None:
    """The request's ``thinking``: ``{"type": "enabled", "budget_tokens": n}`` (n at least
    1024), ``{"type": "adaptive"}`` or ``{"type": "disabled"}``; None is none."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in THINKING_TYPES:
        raise exc.InvalidRequest(
            'thinking must be {"type": "enabled", "budget_tokens": n}, '
            '{"type": "adaptive"} or {"type": "disabled"}.',
            param="thinking",
        )
    refuse_unknown(value, {"type", "budget_tokens"}, prefix="thinking.")
    budget = value.get("budget_tokens")
    if kind == "enabled" and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < MIN_BUDGET
    ):
        raise exc.InvalidRequest(
            f"thinking.budget_tokens must be a whole number of at least {MIN_BUDGET}.",
            param="thinking.budget_tokens",
        )
    return dict(value)


def parse_thinking_blocks(value: Any, where: str) -> tuple[ThinkingBlock, ...]:
    """An assistant's ``thinking_blocks``, as the model returned them."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise exc.InvalidRequest(f"{where} must be a list.", param=where)
    blocks = []
    for i, block in enumerate(value):
        at = f"{where}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking":
            refuse_unknown(block, {"type", "thinking", "signature"}, prefix=f"{at}.")
            text, signature = block.get("thinking"), block.get("signature")
            if not isinstance(text, str) or not isinstance(signature, str):
                raise exc.InvalidRequest(f"{at} needs thinking and signature (text).", param=at)
            blocks.append(ThinkingBlock(text, signature))
        elif kind == "redacted_thinking":
            refuse_unknown(block, {"type", "data"}, prefix=f"{at}.")
            if not isinstance(block.get("data"), str):
                raise exc.InvalidRequest(f"{at}.data must be text.", param=f"{at}.data")
            blocks.append(ThinkingBlock(redacted=block["data"]))
        else:
            raise exc.InvalidRequest(
                f"{at} must be a thinking or redacted_thinking block.", param=at
            )
    return tuple(blocks)
