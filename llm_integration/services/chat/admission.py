"""Steps 1–3 of a request: which alias, for which plan, and the request made ready for
a candidate (context window, ``max_tokens``, worst-case cost)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ... import exceptions as exc
from ...adapters import ChatRequest, Usage
from ...conf import llm_settings
from ...models import ModelAlias, Plan
from ...text.tokens import is_exact
from ..accounting.pricing import cost_of
from ..config.entitlements import entitlement_for
from ..config.snapshot import Snapshot, config
from ..memory.context import fit_to_window
from .types import Admission, Prepared
from .validation import check_prompt_size


def admit(user: Any, model: str | None) -> Admission:
    """The request's admission (database I/O when the snapshot is stale: a DB thread)."""
    return admit_with(config.current(), user, model)


def admit_cached(user: Any, model: str | None) -> Admission | None:
    """``admit`` without touching the database, or None if it would have to."""
    snapshot = config.peek()
    if snapshot is None or not config.plan_known(snapshot, user):
        return None
    return admit_with(snapshot, user, model)


def admit_with(snapshot: Snapshot, user: Any, model: str | None) -> Admission:
    alias = snapshot.alias(model)
    if alias is None:
        raise exc.ModelNotFound(f"Unknown model {model or llm_settings.DEFAULT_MODEL!r}.")
    plan = config.plan_for(snapshot, user)
    entitlement = entitlement_for(alias, plan, snapshot)
    fallbacks = [f for f in snapshot.fallbacks.get(alias.pk, ()) if in_plan(snapshot, f, plan)]
    candidates = [c for c in (alias, *fallbacks) if c.provider.enabled]
    if not candidates:
        raise exc.NoUpstreamAvailable(f"No enabled provider serves model {alias.slug!r}.")
    return Admission(alias, plan, entitlement, candidates, snapshot)


def in_plan(snapshot: Snapshot, alias: ModelAlias, plan: Plan | None) -> bool:
    """Whether ``plan`` may use ``alias``: a fallback never serves a model the caller
    could not ask for by name."""
    plans = snapshot.entitlements.get(alias.pk)
    return not plans or (plan is not None and plan.pk in plans)


def prepare(alias: ModelAlias, request: ChatRequest) -> Prepared:
    """``request`` made ready for ``alias`` (413 if it cannot fit; 400
    ``unsupported_content`` if it needs what the model cannot do)."""
    if (missing := alias.missing_capability(request)) is not None:
        raise exc.UnsupportedContent(
            f"Model {alias.slug!r} does not support {missing}.",
            param="model" if missing == "chat" else missing,
        )
    model = alias.upstream_model
    max_tokens = request.max_tokens or alias.default_max_tokens
    temperature = request.temperature
    if temperature is None:
        temperature = alias.default_temperature
    prompt = check_prompt_size(request, model=model)
    messages, prompt = fit_to_window(
        request.messages,
        model=model,
        context_window=alias.context_window,
        max_tokens=max_tokens,
        prompt_tokens=prompt,
    )
    upper = prompt if is_exact(model) else int(prompt * llm_settings.ESTIMATE_SAFETY_FACTOR) + 16
    worst = cost_of(alias, Usage(prompt_tokens=upper, completion_tokens=max_tokens))
    request = dataclasses.replace(
        request, messages=messages, max_tokens=max_tokens, temperature=temperature
    )
    return Prepared(alias, request, prompt, worst)
