"""Provider health checks, for ``manage.py llm_healthcheck`` (cron) and admin.

Every provider is probed concurrently through its adapter (OpenAI-compatible: the model
list and that the aliased models are on it; Anthropic: the Models API; Ollama:
``/api/tags`` and that the models are pulled; dummy: always up), classified by latency,
stored as a ``HealthCheck`` row, and fed to the circuit breaker: a provider found down
has its circuit opened, one found up has it closed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async

from ... import exceptions as exc
from ...models import HealthCheck, ModelAlias, Provider
from ..config.providers import build_adapter
from ..limits.circuit import CircuitBreaker

SLOW_MS = 500
DOWN_MS = 2000


@dataclass
class HealthResult:
    provider: Provider
    status: str
    latency_ms: int | None
    error: str
    base_url: str

    def as_dict(self) -> dict:
        return {
            "provider": self.provider.name,
            "kind": self.provider.kind,
            "base_url": self.base_url,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


def classify(latency_ms: int) -> tuple[str, str]:
    if latency_ms < SLOW_MS:
        return HealthCheck.Status.CONNECTED, ""
    if latency_ms <= DOWN_MS:
        return HealthCheck.Status.SLOW, ""
    return HealthCheck.Status.DOWN, f"answered after {latency_ms} ms (over {DOWN_MS} ms)"


async def check_provider(
    provider: Provider, aliases: list[ModelAlias], *, probe_timeout: float
) -> HealthResult:
    base_url = provider.base_url
    try:
        probe_alias = aliases[0] if aliases else ModelAlias(provider=provider, upstream_model="")
        probe_alias.provider = provider
        adapter = build_adapter(probe_alias)
        adapter.timeout = min(adapter.timeout, probe_timeout)
        base_url = adapter.base_url
        started = time.monotonic()
        async with asyncio.timeout(probe_timeout):
            await adapter.probe(sorted({a.upstream_model for a in aliases}))
        latency = int((time.monotonic() - started) * 1000)
        await adapter.aclose()
    except TimeoutError:
        return HealthResult(
            provider,
            HealthCheck.Status.DOWN,
            None,
            f"no answer within {probe_timeout:g} s",
            base_url,
        )
    except exc.LLMError as error:
        return HealthResult(provider, HealthCheck.Status.DOWN, None, error.message, base_url)
    status, error = classify(latency)
    return HealthResult(provider, status, latency, error, base_url)


def _targets(names: list[str] | None) -> list[tuple[Provider, list[ModelAlias]]]:
    providers = Provider.objects.all() if names else Provider.objects.filter(enabled=True)
    if names:
        providers = providers.filter(name__in=names)
    result = []
    for provider in providers.order_by("name"):
        aliases = list(provider.aliases.filter(enabled=True).select_related("provider"))
        result.append((provider, aliases))
    return result


def _store(results: list[HealthResult]) -> None:
    HealthCheck.objects.bulk_create(
        [
            HealthCheck(
                provider=r.provider, status=r.status, latency_ms=r.latency_ms, error=r.error[:2000]
            )
            for r in results
        ]
    )


async def _feed_circuits(results: list[HealthResult]) -> None:
    """A provider found down opens its circuit; one that answers closes it."""
    for r in results:
        breaker = CircuitBreaker.of(r.provider)
        if r.status == HealthCheck.Status.DOWN:
            await breaker.force_open()
        else:
            await breaker.reset()


async def check_providers(
    names: list[str] | None = None, *, probe_timeout: float = 5.0
) -> list[HealthResult]:
    """Probe the providers (all enabled ones, or those named) concurrently; store rows."""
    targets = await sync_to_async(_targets)(names)
    results = await asyncio.gather(
        *(check_provider(p, aliases, probe_timeout=probe_timeout) for p, aliases in targets)
    )
    await sync_to_async(_store)(list(results))
    await _feed_circuits(list(results))
    return list(results)
