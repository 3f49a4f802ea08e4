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

For models the gateway counts by estimate (anything but OpenAI's), "half its count" is
half the count of the most economical packaged encoding (``o200k_base``), checked only
when the first count says the report is low: other tokenizers need far fewer tokens
than ``cl100k_base`` for many scripts (a fifth, for some Indian ones), and an honest
count must never be re-billed.

A count outside its range is replaced by the gateway's count, the usage flagged
estimated and a warning logged naming the upstream. Costs stay capped at what the
request reserved (``settlement``), whatever the counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...adapters import Completion, Usage
from ..tokens import (
    ECONOMICAL_MODEL,
    TOKENS_PER_IMAGE,
    count_message_tokens,
    estimate_text_tokens,
    is_exact,
)
from .types import Prepared

logger = logging.getLogger("llm_integration.services.chat")

#: Tokens an image may cost at most (no provider's largest image comes near).
IMAGE_CEILING = 20_000
#: Tokens an upstream may add or save beyond what the gateway counts.
SLACK = 8192
#: Counts this close to the gateway's are never replaced (framing differs by provider).
CLOSE = 8


def metered(
    reported: Usage,
    prepared: Prepared,
    *,
    delivered: int,
    provider: str,
    text: Callable[[], str] = str,
) -> Usage:
    """``reported`` with each implausible count replaced by the gateway's. ``delivered``
    counts the completion's text, which ``text()`` gives (asked for only when the
    report looks low for a model counted by estimate)."""
    counted = prepared.prompt_tokens
    prompt, completion = reported.prompt_tokens, reported.completion_tokens
    images = sum(len(m.images) for m in prepared.request.messages)
    prompt_ceiling = 4 * counted + IMAGE_CEILING * images + SLACK
    prompt_text = counted - TOKENS_PER_IMAGE * images
    completion_ceiling = 2 * max(prepared.request.max_tokens or 0, delivered) + SLACK
    estimated = not is_exact(prepared.alias.upstream_model)
    replaced = []
    if under(prompt, prompt_text) and estimated:
        request = prepared.request
        prompt_text = count_message_tokens(
            request.messages, model=ECONOMICAL_MODEL, tools=request.tools
        )
        prompt_text -= TOKENS_PER_IMAGE * images
    if prompt > prompt_ceiling or under(prompt, prompt_text):
        replaced.append(("prompt", prompt, counted))
        prompt = counted
    floor = delivered
    if under(completion, floor) and estimated:
        floor = min(floor, estimate_text_tokens(text(), model=ECONOMICAL_MODEL))
    if completion > completion_ceiling or under(completion, floor):
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
    written = estimate_text_tokens(completion.text, model=model) + sum(
        estimate_text_tokens(call.name + call.arguments, model=model)
        for call in completion.tool_calls
    )
    usage = metered(
        completion.usage,
        prepared,
        delivered=written,
        provider=prepared.alias.provider.name,
        text=lambda: completion.text + "".join(c.name + c.arguments for c in completion.tool_calls),
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
