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
  ``max_tokens`` (the upstream is held to it: what it claims past it is billed as
  ``max_tokens``, the answer cut there).

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

import dataclasses
import logging
from collections.abc import Callable

from ...adapters import Completion, Usage
from ...text.tokens import (
    ECONOMICAL_MODEL,
    TOKENS_PER_IMAGE,
    count_message_tokens,
    estimate_text_tokens,
    is_exact,
    truncate_to_tokens,
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
    limit = prepared.request.max_tokens
    completion_ceiling = limit if limit else 2 * delivered + SLACK
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
    if completion > completion_ceiling:
        replaced.append(("completion", completion, completion_ceiling))
        completion = completion_ceiling
    elif under(completion, floor):
        used = min(delivered, completion_ceiling)
        replaced.append(("completion", completion, used))
        completion = used
    if not replaced:
        return reported
    for field, said, used in replaced:
        logger.warning(
            "llm.upstream_usage_replaced",
            extra={"provider": provider, "field": field, "reported": said, "counted": used},
        )
    if prompt == reported.prompt_tokens:  # the cache counts are parts of it: kept
        return dataclasses.replace(reported, completion_tokens=completion, estimated=True)
    # A prompt count replaced: what it said of the cache is not trusted either.
    return Usage(prompt_tokens=prompt, completion_tokens=completion, estimated=True)


def under(reported: int, counted: int) -> bool:
    """Whether ``reported`` is under half of ``counted`` (none at all, for any text)."""
    return reported * 2 + CLOSE < counted or (reported == 0 and counted > 0)


def metered_completion(completion: Completion, prepared: Prepared) -> Completion:
    """``completion`` held to the request's ``max_tokens`` (an upstream that wrote past
    it, or claims it did, has its text cut there and whole tool calls kept while they
    fit, ``finish_reason: length``) and its usage ``metered`` against what it wrote."""
    model, limit = prepared.alias.upstream_model, prepared.request.max_tokens
    text_tokens = estimate_text_tokens(completion.text, model=model)
    call_tokens = [
        estimate_text_tokens(call.name + call.arguments, model=model)
        for call in completion.tool_calls
    ]
    usage = metered(
        completion.usage,
        prepared,
        delivered=text_tokens + sum(call_tokens),
        provider=prepared.alias.provider.name,
        text=lambda: completion.text + "".join(c.name + c.arguments for c in completion.tool_calls),
    )
    over = bool(limit) and (
        text_tokens + sum(call_tokens) > limit or completion.usage.completion_tokens > limit
    )
    if not over:
        if usage is completion.usage:
            return completion
        return Completion(
            completion.text,
            usage,
            completion.finish_reason,
            completion.model,
            completion.id,
            completion.tool_calls,
            completion.thinking,
        )
    text = completion.text
    if text_tokens > limit:
        text = truncate_to_tokens(text, limit, model=model)
    room, kept = limit - min(text_tokens, limit), []
    for call, tokens in zip(completion.tool_calls, call_tokens, strict=True):
        if tokens > room:
            break
        kept.append(call)
        room -= tokens
    return Completion(
        text, usage, "length", completion.model, completion.id, tuple(kept), completion.thinking
    )
