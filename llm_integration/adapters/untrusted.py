"""An upstream's answer is untrusted input: the checks every adapter applies where
what it sends enters the gateway.

- **Token counts** are integers from 0 to ``MAX_TOKEN_COUNT`` (what every database's
  integer column holds); a negative, fractional, infinite or non-numeric count is not a
  count, and the adapter estimates instead (flagged, logged).
- **finish_reason** is one of ``FINISH_REASONS``; other values are mapped to the nearest
  one (``stop`` when nothing fits, the raw value logged), and a word for a failed
  generation (``error``, ``abort``) is the upstream's failure, not an answer.
- **Text** never holds a lone UTF-16 surrogate (JSON's ``"\\ud800"``): no surface could
  encode it, so it becomes U+FFFD where it enters (``text.unicode``: ``clean``, ``loads``).
"""

from __future__ import annotations

import logging
from typing import Any

from .. import exceptions as exc
from ..redaction import scrub

logger = logging.getLogger("llm_integration.adapters")

#: The largest token count taken from an upstream (a signed 32-bit integer).
MAX_TOKEN_COUNT = 2**31 - 1

#: The finish reasons clients are told (OpenAI's; ``cancelled`` is the gateway's own).
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})
#: Other providers' words for them.
FINISH_SYNONYMS = {
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "eos": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "refusal": "content_filter",
    "safety": "content_filter",
    "model_context_window_exceeded": "length",
    "pause_turn": "stop",
}
#: What some servers say when the generation failed (OpenRouter's ``error``, vLLM's
#: ``abort``): not an answer to bill as one.
FINISH_FAILURES = frozenset({"error", "abort", "aborted", "failed"})


def token_count(value: Any) -> int | None:
    """``value`` as a token count, or None if it is not one."""
    if type(value) is int:  # not bool
        return value if 0 <= value <= MAX_TOKEN_COUNT else None
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_TOKEN_COUNT:
        return int(value)
    return None


def log_bad_count(provider: str, field: str, value: Any) -> None:
    logger.warning(
        "llm.upstream_usage_invalid",
        extra={"provider": provider, "field": field, "value": scrub(repr(value)[:64])},
    )


def finish_reason(value: Any, provider: str) -> str:
    """One of ``FINISH_REASONS`` for what the upstream said (None or empty: ``stop``);
    ``UpstreamServerError`` when it says the generation failed."""
    if not isinstance(value, str):
        value = None if value is None else repr(value)
    if value in FINISH_REASONS:
        return value
    if not value:
        return "stop"
    if value in FINISH_FAILURES:
        raise exc.UpstreamServerError(
            f"{provider} reported that the generation failed ({value}).", provider=provider
        )
    mapped = FINISH_SYNONYMS.get(value)
    if mapped is None:
        logger.warning(
            "llm.upstream_finish_reason",
            extra={"provider": provider, "finish_reason": scrub(repr(value)[:64])},
        )
        return "stop"
    return mapped
