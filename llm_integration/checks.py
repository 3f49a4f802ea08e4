"""System checks (``manage.py check``) for the settings and the rows that drive the gateway.

Messages, hints and ids are constants so that tests can compare whole check objects.
Row checks skip quietly while the tables do not exist yet (before ``migrate``).
"""

from __future__ import annotations

from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError

from .conf import llm_settings

E001 = "llm_integration.E001"
E001_MSG = "Provider {name!r} has unknown adapter kind {kind!r}."
E001_HINT = "Use one of: {kinds}; or add the kind to LLM_INTEGRATION['ADAPTERS']."

W002 = "llm_integration.W002"
W002_MSG = "Provider {name!r} reads its API key from {var}, which is not set."
W002_HINT = "Set the environment variable {var} in the environment of every process."

E003 = "llm_integration.E003"
E003_MSG = "Model alias {slug!r} points at disabled provider {name!r}."
E003_HINT = "Enable the provider, point the alias at another one, or disable the alias."

E010 = "llm_integration.E010"
E010_MSG = (
    "Model alias {slug!r} of paid provider {name!r} has no price, but budget {budget!r} "
    "counts spending in USD: its requests would count $0 and never reach the limit."
)
E010_HINT = (
    "Set its input and output prices (USD per million tokens), in admin or with "
    "LLM_INPUT_PRICE_PER_MTOK / LLM_OUTPUT_PRICE_PER_MTOK and llm_bootstrap."
)

W004 = "llm_integration.W004"
W004_MSG = "Model alias {slug!r} of paid provider {name!r} has no price."
W004_HINT = "Set its input and output prices (USD per million tokens) so costs and budgets count."

E005 = "llm_integration.E005"
E005_MSG = "Model alias fallbacks form a cycle: {cycle}."
E005_HINT = "Remove one of the fallbacks in the cycle."

E006 = "llm_integration.E006"
E006_MSG = "Unknown LLM_INTEGRATION setting {key!r}."
E006_HINT = "Known settings: see llm_integration/conf.py (DEFAULTS)."

W008 = "llm_integration.W008"
W008_MSG = "Hard budget {name!r} has a limit of 0: every request in its scope is refused."
W008_HINT = "Give it a limit, make it soft (alerts only), or disable it."

W009 = "llm_integration.W009"
W009_MSG = (
    "{n} processes are expected (LLM_INTEGRATION['EXPECTED_PROCESSES']) but the cache is "
    "process-local: rate limits, circuit breakers and the response cache are not shared."
)
W009_HINT = "Set REDIS_URL (a Redis cache and channel layer) in every process."

W007 = "llm_integration.W007"
W007_MSG = "Provider {name!r} needs an API key but names no environment variable."
W007_HINT = "Fill in 'API key environment variable' with the variable's name, e.g. OPENAI_API_KEY."

W011 = "llm_integration.W011"
W011_MSG = (
    "No class in REST_FRAMEWORK['DEFAULT_AUTHENTICATION_CLASSES'] accepts the gateway's API "
    "keys: keys made at /api/v1/keys would answer 401 everywhere."
)
W011_HINT = (
    "Add 'llm_integration.api.authentication.ApiKeyAuthentication' (or use its "
    "BearerOrTokenAuthentication) to DEFAULT_AUTHENTICATION_CLASSES."
)


def _keys_accepted() -> bool:
    from django.utils.module_loading import import_string
    from rest_framework.settings import api_settings

    from .api.authentication import ApiKeyAuthentication, BearerOrTokenAuthentication

    for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES:
        cls = import_string(cls) if isinstance(cls, str) else cls
        if issubclass(cls, ApiKeyAuthentication | BearerOrTokenAuthentication):
            return True
    return False


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs):
    from django.conf import settings

    errors = [
        Error(E006_MSG.format(key=key), hint=E006_HINT, id=E006)
        for key in llm_settings.unknown_keys()
    ]
    processes = int(llm_settings.EXPECTED_PROCESSES or 1)
    backend = settings.CACHES.get(llm_settings.CACHE_BACKEND, {}).get("BACKEND", "")
    if processes > 1 and backend.endswith(("LocMemCache", "DummyCache")):
        errors.append(Warning(W009_MSG.format(n=processes), hint=W009_HINT, id=W009))
    if not _keys_accepted():
        errors.append(Warning(W011_MSG, hint=W011_HINT, id=W011))
    return errors


@register(Tags.database)
def check_rows(app_configs=None, databases=None, **kwargs):
    try:
        return [*_provider_errors(), *_alias_errors(), *_fallback_cycles(), *_budget_errors()]
    except DatabaseError:  # tables not migrated yet
        return []


def _provider_errors():
    from .adapters import adapter_class, adapter_paths, known_kinds
    from .models import Provider
    from .secrets import resolve_secret

    paths = adapter_paths()
    for p in Provider.objects.filter(enabled=True):
        if p.kind not in paths:
            yield Error(
                E001_MSG.format(name=p.name, kind=p.kind),
                hint=E001_HINT.format(kinds=", ".join(known_kinds())),
                obj=p,
                id=E001,
            )
            continue
        needs_key = adapter_class(p.kind).requires_api_key
        if p.api_key_env and not resolve_secret(p.api_key_env):
            yield Warning(
                W002_MSG.format(name=p.name, var=p.api_key_env),
                hint=W002_HINT.format(var=p.api_key_env),
                obj=p,
                id=W002,
            )
        elif needs_key and not p.api_key_env:
            yield Warning(W007_MSG.format(name=p.name), hint=W007_HINT, obj=p, id=W007)


def _budget_over(alias, budgets):
    """The first enabled budget that counts this alias's spending, if any."""
    for budget in budgets:
        if budget.scope == budget.Scope.PROVIDER and budget.provider_id != alias.provider_id:
            continue
        if budget.scope == budget.Scope.ALIAS and budget.alias_id != alias.pk:
            continue
        return budget  # global, plan and user budgets count every alias their users call
    return None


def _alias_errors():
    from .models import Budget, ModelAlias, Provider

    budgets = list(Budget.objects.filter(enabled=True).order_by("name"))
    for a in ModelAlias.objects.filter(enabled=True).select_related("provider"):
        if not a.provider.enabled:
            yield Error(
                E003_MSG.format(slug=a.slug, name=a.provider.name), hint=E003_HINT, obj=a, id=E003
            )
        if (
            a.provider.kind != Provider.Kind.DUMMY
            and not a.input_price_per_mtok
            and not a.output_price_per_mtok
        ):
            budget = _budget_over(a, budgets)
            if budget is not None:
                message = E010_MSG.format(slug=a.slug, name=a.provider.name, budget=budget.name)
                yield Error(message, hint=E010_HINT, obj=a, id=E010)
            else:
                yield Warning(
                    W004_MSG.format(slug=a.slug, name=a.provider.name),
                    hint=W004_HINT,
                    obj=a,
                    id=W004,
                )


def _budget_errors():
    from .models import Budget

    for budget in Budget.objects.filter(enabled=True, hard=True, limit_usd__lte=0):
        yield Warning(W008_MSG.format(name=budget.name), hint=W008_HINT, obj=budget, id=W008)


def _fallback_cycles():
    from .models import AliasFallback

    graph: dict[str, list[str]] = {}
    for alias, fallback in AliasFallback.objects.values_list("alias__slug", "fallback__slug"):
        graph.setdefault(alias, []).append(fallback)
    reported: set[frozenset[str]] = set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    key = frozenset(path)
                    if key not in reported:
                        reported.add(key)
                        yield Error(
                            E005_MSG.format(cycle=" → ".join([*path, start])),
                            hint=E005_HINT,
                            id=E005,
                        )
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))
