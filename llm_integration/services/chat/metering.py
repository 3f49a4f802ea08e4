"""What a request is billed for: the upstream's token counts when they are plausible,
the gateway's own count when they are not.

The adapters already refuse counts that are not counts (negative, fractional,
infinite). Here each count is held to what the request could have produced:

- the prompt: at least half the gateway's count of its text (images vary too much to
  count from below), never none, and at most four times the whole count plus
  ``IMAGE_CEILING`` per image and ``SLACK`` (templates and system prompts an upstream
  adds on its side);
- the completion: at least half the tokens of the text the gateway delivered (or the
  upstream wrote, for a non-streamed answer), never none for some text, and at most
  twice the larger of ``max_tokens`` and that count, plus ``SLACK``.

A count outside its range is replaced by the gateway's count, the usage flagged
estimated and a warning logged naming the upstream. Costs stay capped at what the
request reserved (``settlement``), whatever the counts.
"""

from __future__ import annotations

import logging

from ...adapters import Completion, Usage
from ..tokens import TOKENS_PER_IMAGE, count_text_tokens
from .types import Prepared

logger = logging.getLogger("llm_integration.services.chat")

#: Tokens an image may cost at most (no provider's largest image comes near).
IMAGE_CEILING = 20_000
#: Tokens an upstream may add or save beyond what the gateway counts.
SLACK = 8192
#: Counts this close to the gateway's are never replaced (framing differs by provider).
CLOSE = 8


def metered(reported: Usage, prepared: Prepared, *, delivered: int, provider: str) -> Usage:
    """``reported`` with each implausible count replaced by the gateway's."""
    counted = prepared.prompt_tokens
    prompt, completion = reported.prompt_tokens, reported.completion_tokens
    images = sum(len(m.images) for m in prepared.request.messages)
    prompt_ceiling = 4 * counted + IMAGE_CEILING * images + SLACK
    prompt_text = counted - TOKENS_PER_IMAGE * images
    completion_ceiling = 2 * max(prepared.request.max_tokens or 0, delivered) + SLACK
    replaced = []
    if prompt > prompt_ceiling or under(prompt, prompt_text):
        replaced.append(("prompt", prompt, counted))
        prompt = counted
    if completion > completion_ceiling or under(completion, delivered):
        replaced.append(("completion", completion, delivered))
        completion = delivered
    if not replaced:
        return reported
    for field, said, used in replaced:
        logger.warning(
            "llm.upstream_usage_replaced",
            extra={"provider": provider, "field": field, "reported": said, "counted": used},
        )
    return Usage(prompt_tokens=prompt, completion_tokens=completion, estimated=True)


def under(reported: int, counted: int) -> bool:
    """Whether ``reported`` is under half of ``counted`` (none at all, for any text)."""
    return reported * 2 + CLOSE < counted or (reported == 0 and counted > 0)


def metered_completion(completion: Completion, prepared: Prepared) -> Completion:
    """``completion`` with its usage ``metered`` against the text the upstream wrote."""
    model = prepared.alias.upstream_model
    written = count_text_tokens(completion.text, model=model) + sum(
        count_text_tokens(call.name + call.arguments, model=model) for call in completion.tool_calls
    )
    usage = metered(
        completion.usage, prepared, delivered=written, provider=prepared.alias.provider.name
    )
    if usage is completion.usage:
        return completion
    return Completion(
        completion.text,
        usage,
        completion.finish_reason,
        completion.model,
        completion.id,
        completion.tool_calls,
    )
