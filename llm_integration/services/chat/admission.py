"""Steps 1–3 of a request: which alias, for which plan, and the request made ready for
a candidate (context window, ``max_tokens``, worst-case cost)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import exceptions as exc
from ...adapters import ChatRequest
from ...conf import llm_settings
from ...models import ModelAlias, Plan
from ...text.tokens import is_exact
from ..accounting.pricing import worst_cost_of
from ..config.entitlements import entitlement_for
from ..config.snapshot import Snapshot, config
from ..memory.context import fit_to_window
from ..policy.keys import KeyGrant
from ..policy.rules import NO_LABELS, NO_ROUTE, Labels, rule_book
from .types import Admission, Prepared
from .validation import check_prompt_size


@dataclass(frozen=True, slots=True)
class Ask:
    """What admission needs of a request: the model asked for, the caller's labels and
    (read only if a rule's pattern must be searched; it should cache its result) the
    request's text."""

    model: str | None
    labels: Labels = NO_LABELS
    text: Callable[[], str] = str
    #: What the request needs of an alias: a rule's alias of another mode does not
    #: serve it (a chat model for embeddings).
    mode: str = ModelAlias.Mode.CHAT
    #: The API key the request came with: it may narrow the models further.
    key: KeyGrant | None = None


def admit(user: Any, ask: Ask) -> Admission:
    """The request's admission (database I/O when the snapshot is stale: a DB thread)."""
    return admit_with(config.current(), user, ask)


#: The most text the rules' patterns search on the event loop; a larger request is
#: admitted in a thread (RE2 is linear, but a megabyte still takes milliseconds).
INLINE_SEARCH = 64 * 1024


def admit_cached(user: Any, ask: Ask) -> Admission | None:
    """``admit`` without touching the database or searching a large text, or None if it
    would have to."""
    snapshot = config.peek()
    if snapshot is None or not config.plan_known(snapshot, user):
        return None
    if snapshot.rules and rule_book(snapshot).searches and len(ask.text()) > INLINE_SEARCH:
        return None
    return admit_with(snapshot, user, ask)


def admit_with(snapshot: Snapshot, user: Any, ask: Ask) -> Admission:
    """The alias, plan and candidates, after the routing rules. A rule's refusal, or a
    request kept local that no local alias can serve, is raised by the caller once the
    admission is on record (``refusal``)."""
    alias = snapshot.alias(ask.model)
    if alias is None:
        raise exc.ModelNotFound(f"Unknown model {ask.model or llm_settings.DEFAULT_MODEL!r}.")
    key = ask.key
    if key is not None and not key.allows(alias):
        raise exc.ModelNotAllowed(f"The model {alias.slug!r} is not one this API key may use.")
    plan = config.plan_for(snapshot, user)
    route = NO_ROUTE
    if snapshot.rules:
        route = rule_book(snapshot).route(
            task=ask.labels.task, plan=plan.slug if plan else "", model=alias.slug, text=ask.text
        )
        if route.model is not None:
            served = snapshot.aliases.get(route.model.slug)
            if served is None:  # disabled: refused below, naming the rule
                return Admission(alias, plan, None, [], snapshot, route, ask.labels)
            if served.mode == ask.mode:
                if key is not None and not key.allows(served):
                    raise exc.ModelNotAllowed(
                        f"Routing rule {route.rule!r} serves this request with "
                        f"{served.slug!r}, which this API key may not use."
                    )
                alias = served
    if route.refusal:
        return Admission(alias, plan, None, [], snapshot, route, ask.labels)
    entitlement = entitlement_for(alias, plan, snapshot)
    fallbacks = [
        f
        for f in snapshot.fallbacks.get(alias.pk, ())
        if in_plan(snapshot, f, plan) and (key is None or key.allows(f))
    ]
    candidates = [c for c in (alias, *fallbacks) if c.provider.enabled]
    if route.local_only:
        candidates = [c for c in candidates if c.is_local]
    return Admission(alias, plan, entitlement, candidates, snapshot, route, ask.labels)


def refusal(adm: Admission) -> exc.LLMError | None:
    """Why an admitted request goes no further: a rule refused it, or no candidate may
    serve it (none local for a request kept local)."""
    if adm.route.refusal:
        return exc.PolicyRefused(adm.route.refusal)
    if adm.candidates:
        return None
    model = adm.route.model
    if model is not None and model.slug not in adm.snapshot.aliases:
        return exc.NoUpstreamAvailable(
            f"Routing rule {adm.route.rule!r} serves with {model.slug!r}, which is disabled."
        )
    if adm.route.local_only:
        return exc.NoLocalModel(
            f"Routing rule {adm.route.rule!r} keeps this request local, and no local model "
            f"can serve {adm.alias.slug!r}. Nothing was sent."
        )
    return exc.NoUpstreamAvailable(f"No enabled provider serves model {adm.alias.slug!r}.")


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
    worst = worst_cost_of(alias, upper, max_tokens, cache_ttl=request.cache_ttl)
    request = dataclasses.replace(
        request, messages=messages, max_tokens=max_tokens, temperature=temperature
    )
    return Prepared(alias, request, prompt, worst)
