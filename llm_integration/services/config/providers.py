"""Rows -> adapters: the one function that builds them, and a cache keyed by row versions.

An adapter is rebuilt when its alias or provider row changes (``updated_at`` is part of
the cache key, so every process notices on its next lookup, signals or not). A provider
kind without an adapter is an error here and a system check, never a silent dummy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from django.db import connections

from ...adapters import BaseLLMAdapter, Completion, StreamChunk, adapter_class
from ...adapters.base import Prompt
from ...conf import llm_settings
from ...exceptions import MissingAPIKey, ModelNotFound, NoUpstreamAvailable
from ...models import ModelAlias, Provider
from ...redaction import keys
from ...secrets import resolve_secret

ENV_PREFIX = "os.environ/"

_lock = threading.Lock()
_adapters: dict[int, tuple[tuple[Any, ...], BaseLLMAdapter]] = {}


def resolve_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Header values of the form ``os.environ/NAME`` are read through the secret resolver."""
    resolved = {}
    for name, value in (headers or {}).items():
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            value = resolve_secret(value.removeprefix(ENV_PREFIX)) or ""
            keys.register([value])  # a secret: scrubbed from upstream text like a key
        resolved[str(name)] = str(value)
    return resolved


def provider_api_key(provider: Provider) -> str | None:
    return resolve_secret(provider.api_key_env) if provider.api_key_env else None


def build_adapter(alias: ModelAlias) -> BaseLLMAdapter:
    """A new adapter for ``alias`` (with its provider loaded), from the rows alone."""
    provider = alias.provider
    cls = adapter_class(provider.kind)
    api_key = provider_api_key(provider)
    if cls.requires_api_key and not api_key:
        variable = provider.api_key_env or "(no variable named on the provider)"
        raise MissingAPIKey(
            f"Provider {provider.name!r} needs an API key: set the environment variable {variable}."
        )
    options = {k: v for k, v in (provider.options or {}).items() if k in cls.options}
    return cls(
        model=alias.upstream_model,
        base_url=provider.base_url,
        api_key=api_key,
        headers=resolve_headers(provider.extra_headers),
        timeout=provider.timeout_seconds or llm_settings.DEFAULT_TIMEOUT,
        provider_name=provider.name,
        default_max_tokens=alias.default_max_tokens,
        **options,
    )


def adapter_for(alias: ModelAlias) -> BaseLLMAdapter:
    """The cached adapter of ``alias``, rebuilt when the alias or provider row changed."""
    provider = alias.provider
    version = (alias.updated_at, provider.pk, provider.updated_at, provider.kind)
    cached = _adapters.get(alias.pk)
    if cached is not None and cached[0] == version:
        return cached[1]
    adapter = build_adapter(alias)
    with _lock:
        _adapters[alias.pk] = (version, adapter)
    return adapter


def clear_adapter_cache() -> None:
    with _lock:
        _adapters.clear()


def _alias_queryset():
    return ModelAlias.objects.select_related("provider")


def _checked(alias: ModelAlias) -> ModelAlias:
    if not alias.provider.enabled:
        raise NoUpstreamAvailable(f"The provider of model {alias.slug!r} is disabled.")
    return alias


def resolve_alias(slug: str | None = None) -> ModelAlias:
    """The enabled alias ``slug`` (or the default), whether or not its provider is up."""
    qs = _alias_queryset().filter(enabled=True)
    if slug:
        alias = qs.filter(slug=slug).first()
    else:
        alias = qs.filter(slug=llm_settings.DEFAULT_MODEL).first() or qs.first()
    if alias is None:
        raise ModelNotFound(f"Unknown model {slug or llm_settings.DEFAULT_MODEL!r}.")
    return alias


def get_alias(slug: str | None = None) -> ModelAlias:
    """The enabled alias ``slug``; with no slug, ``DEFAULT_MODEL`` or else the first alias."""
    return _checked(resolve_alias(slug))


async def aget_alias(slug: str | None = None) -> ModelAlias:
    qs = _alias_queryset().filter(enabled=True)
    if slug:
        alias = await qs.filter(slug=slug).afirst()
    else:
        alias = await qs.filter(slug=llm_settings.DEFAULT_MODEL).afirst() or await qs.afirst()
    if alias is None:
        raise ModelNotFound(f"Unknown model {slug or llm_settings.DEFAULT_MODEL!r}.")
    return _checked(alias)


class AliasAdapter:
    """The adapter behind an alias, looked up when used (so it is safe to create in async
    code, and always reflects the current rows). What ``get_llm_adapter()`` returns."""

    def __init__(self, alias: str | None = None) -> None:
        self.alias = alias

    def __repr__(self) -> str:
        return f"<AliasAdapter {self.alias or llm_settings.DEFAULT_MODEL}>"

    async def resolve(self) -> BaseLLMAdapter:
        return adapter_for(await aget_alias(self.alias))

    def resolve_sync(self) -> BaseLLMAdapter:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return adapter_for(get_alias(self.alias))

        # Inside an event loop the ORM refuses sync queries: do the lookup in a thread,
        # which closes its own database connection before it ends.
        def lookup() -> BaseLLMAdapter:
            try:
                return adapter_for(get_alias(self.alias))
            finally:
                connections.close_all()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(lookup).result()

    @property
    def model_name(self) -> str:
        return self.resolve_sync().model_name

    def count_tokens(self, prompt: str | Prompt) -> int:
        return self.resolve_sync().count_tokens(prompt)

    async def complete(self, prompt: Prompt, **options: Any) -> Completion:
        return await (await self.resolve()).complete(prompt, **options)

    async def complete_stream(self, prompt: Prompt, **options: Any) -> AsyncIterator[StreamChunk]:
        adapter = await self.resolve()
        async for chunk in adapter.complete_stream(prompt, **options):
            yield chunk


def get_llm_adapter(alias: str | None = None) -> AliasAdapter:
    """The seed's factory: ``await get_llm_adapter().complete("Hi")``.

    Talks to the upstream directly, without budgets, rate limits or usage records;
    requests from users go through ``llm_integration.services.chat``.
    """
    return AliasAdapter(alias)
