"""Provider health checks, for ``manage.py llm_healthcheck`` (cron) and admin.

Every provider is probed concurrently through its adapter (OpenAI-compatible: the model
list; Anthropic: the Models API; Ollama: ``/api/tags``; dummy: always up), classified by
latency and stored as a ``HealthCheck`` row.

A check must not cause an outage: only an endpoint that fails to answer (refused, no
answer in time, 5xx) opens its circuit, and no check closes one. What the checking
process cannot judge is reported and changes nothing: a key missing from its own
environment (``unknown``), a model the upstream's list omits or a 429 or 4xx answer (a
warning; the endpoint answered), a refused key (``down``: this process's key may not be
the servers'). A provider that names no key variable at all is ``down``.
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
    #: The endpoint failed to answer: its circuit opens (see the module's docstring).
    unreachable: bool = False

    def as_dict(self) -> dict:
        return {
            "provider": self.provider.name,
            "kind": self.provider.kind,
            "base_url": self.base_url,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


#: Failures to answer: the only outcomes that open a circuit.
UNREACHABLE = (exc.UpstreamConnectionError, exc.UpstreamTimeout, exc.UpstreamServerError)


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
    down = HealthCheck.Status.DOWN
    try:
        probe_alias = aliases[0] if aliases else ModelAlias(provider=provider, upstream_model="")
        probe_alias.provider = provider
        adapter = build_adapter(probe_alias)
    except exc.MissingAPIKey as error:
        if not provider.api_key_env:  # no process can call it: a row to fix
            return HealthResult(provider, down, None, error.message, base_url)
        return HealthResult(
            provider,
            HealthCheck.Status.UNKNOWN,
            None,
            f"not checked: {error.message} (in this process's environment)",
            base_url,
        )
    except exc.ConfigurationError as error:
        return HealthResult(provider, down, None, error.message, base_url)
    adapter.timeout = min(adapter.timeout, probe_timeout)
    base_url = adapter.base_url
    started = time.monotonic()
    warning = ""
    try:
        async with asyncio.timeout(probe_timeout):
            missing = await adapter.probe(sorted({a.upstream_model for a in aliases}))
        if missing:
            warning = f"warning: its model list lacks {', '.join(missing)}"
    except TimeoutError:
        message = f"no answer within {probe_timeout:g} s"
        return HealthResult(provider, down, None, message, base_url, unreachable=True)
    except (exc.UpstreamRateLimited, exc.UpstreamBadRequest) as error:
        # It answered (busy, or no model list where asked): up, with what it said.
        warning = f"warning: {error.message}"
    except exc.LLMError as error:
        unreachable = isinstance(error, UNREACHABLE)
        return HealthResult(provider, down, None, error.message, base_url, unreachable)
    finally:
        await adapter.aclose()
    latency = int((time.monotonic() - started) * 1000)
    status, error = classify(latency)
    return HealthResult(provider, status, latency, error or warning, base_url)


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
    """An endpoint that failed to answer opens its circuit. Nothing closes one here: the
    servers' own requests may have opened it for what this check cannot see (their key
    refused), and its cool-down's probe closes it when the endpoint serves again."""
    for r in results:
        if r.unreachable:
            await CircuitBreaker.of(r.provider).force_open()


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
