"""Embeddings on the chat path: inputs checked, the request made ready for an embedding
alias (tokens counted, worst cost for the budgets), and what callers get back.

An embedding request travels the path as its inputs (one user message holding them, no
completion), so admission, rate limits, quotas, budgets, fallbacks and the usage record
are the chat path's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ... import exceptions as exc
from ...adapters import ChatRequest, Message, Usage
from ...conf import llm_settings
from ...models import ModelAlias
from ...text.tokens import count_text_tokens, is_exact
from ..accounting.pricing import worst_cost_of
from .types import Prepared

#: OpenAI's limit on inputs per request.
MAX_INPUTS = 2048


@dataclass(slots=True)
class EmbeddingResult:
    #: Lists of floats, or base64 text where the upstream sent it (see ``Embeddings``).
    vectors: list[list[float]] | list[str]
    model: str
    request_id: str
    usage: Usage
    cost_usd: Decimal


def check_inputs(value: Any) -> list[str]:
    """``input``: a string or a non-empty list of strings (token arrays are refused)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise exc.InvalidRequest(
            "input must be a string or a non-empty list of strings.", param="input"
        )
    if len(value) > MAX_INPUTS:
        raise exc.InvalidRequest(f"At most {MAX_INPUTS} inputs per request.", param="input")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise exc.UnsupportedContent(
                f"input[{i}] must be text (token arrays are not supported).", param=f"input[{i}]"
            )
        if not text:
            raise exc.InvalidRequest(f"input[{i}] is empty.", param=f"input[{i}]")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise exc.InvalidRequest(
                f"input[{i}] is not valid Unicode.", param=f"input[{i}]"
            ) from None
    return value


def prepare_embedding(alias: ModelAlias, inputs: list[str]) -> Prepared:
    """``inputs`` made ready for ``alias``: 400 if it is not an embedding model, 413 if
    an input is longer than its context window."""
    if alias.mode != ModelAlias.Mode.EMBEDDING:
        raise exc.UnsupportedContent(
            f"Model {alias.slug!r} is not an embedding model.", param="model"
        )
    model = alias.upstream_model
    counts = [count_text_tokens(text, model=model) for text in inputs]
    for i, count in enumerate(counts):
        if count > alias.context_window:
            raise exc.PromptTooLarge(
                f"input[{i}] has about {count} tokens; {alias.slug!r} takes "
                f"{alias.context_window} per input."
            )
    tokens = sum(counts)
    upper = tokens if is_exact(model) else int(tokens * llm_settings.ESTIMATE_SAFETY_FACTOR) + 16
    worst = worst_cost_of(alias, upper)
    request = ChatRequest(messages=(Message("user", "\n".join(inputs)),))
    return Prepared(alias, request, tokens, worst)
