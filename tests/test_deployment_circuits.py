"""Circuits per deployment: one model failing at an endpoint leaves its siblings there in
service; an endpoint that cannot be reached takes all of its models out.

Through ``POST /api/v1/chat`` against one loopback OpenAI upstream that serves a
healthy model and a model that answers 500 to every request.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from llm_integration import exceptions as exc
from llm_integration.models import AliasFallback, ModelAlias, Provider, UsageRecord
from llm_integration.services.chat.routing import Circuits
from llm_integration.services.clock import FakeClock
from llm_integration.services.limits.circuit import CircuitBreaker
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory
from tests.fakes.openai import OpenAIFake
from tests.fakes.server import Behaviour, Exchange

pytestmark = pytest.mark.django_db(transaction=True)

THRESHOLD = 3
CONCURRENCY = 50


class BrokenModelFake(OpenAIFake):
    """Answers ``broken-model`` with a 500 and every other model as usual."""

    def handle(self, ex: Exchange, b: Behaviour) -> None:
        body = ex.request.body
        if isinstance(body, dict) and body.get("model") == "broken-model":
            ex.send_json(500, {"error": {"message": "model crashed", "type": "server_error"}})
            return
        super().handle(ex, b)


@pytest.fixture
def fake():
    fake = BrokenModelFake().start()
    yield fake
    fake.stop()


@dataclass
class Rows:
    endpoint: Provider
    broken: ModelAlias
    fast: ModelAlias
    token: str


@pytest.fixture
def rows(fake, api_key_env, settings):
    settings.LLM_INTEGRATION = {
        "CIRCUIT_BREAKER_THRESHOLD": THRESHOLD,
        "CIRCUIT_BREAKER_COOLDOWN": 600,
    }
    endpoint = ProviderFactory(
        name="shared",
        kind="openai",
        base_url=fake.base_url,
        api_key_env=api_key_env,
        max_retries=0,
    )
    broken = ModelAliasFactory(slug="broken", provider=endpoint, upstream_model="broken-model")
    fast = ModelAliasFactory(slug="fast", provider=endpoint, upstream_model="gpt-4o-mini")
    AliasFallback.objects.create(alias=broken, fallback=fast)
    return Rows(endpoint, broken, fast, Token.objects.create(user=UserFactory()).key)


def chat_all(token: str, models: list[str]) -> list[tuple[int, dict]]:
    async def run() -> list[tuple[int, dict]]:
        client = AsyncClient()

        async def one(model: str) -> tuple[int, dict]:
            response = await client.post(
                "/api/v1/chat",
                json.dumps({"model": model, "message": "hi"}),
                content_type="application/json",
                headers={"Authorization": f"Token {token}"},
            )
            return response.status_code, json.loads(response.content)

        return list(await asyncio.gather(*(one(model) for model in models)))

    return asyncio.run(run())


def asked(fake: OpenAIFake, model: str) -> int:
    """How many chat requests the upstream got for ``model``."""
    return sum(
        1
        for r in fake.requests
        if r.path.endswith("/chat/completions")
        and isinstance(r.body, dict)
        and r.body.get("model") == model
    )


def test_a_failing_model_falls_back_to_its_sibling_on_the_same_endpoint(rows, fake):
    results = chat_all(rows.token, ["broken"] * CONCURRENCY)
    assert [status for status, _ in results] == [200] * CONCURRENCY, results[:3]
    assert {body["model"] for _, body in results} == {"fast"}
    assert async_to_sync(CircuitBreaker.of_deployment(rows.broken).state)() == "open"
    assert async_to_sync(CircuitBreaker.of_deployment(rows.fast).state)() == "closed"
    assert async_to_sync(CircuitBreaker.of(rows.endpoint).state)() == "closed"
    # With its circuit open, the broken model is not asked again; its sibling answers.
    tried = asked(fake, "broken-model")
    again = chat_all(rows.token, ["broken", "fast"] * 10)
    assert [status for status, _ in again] == [200] * 20
    assert asked(fake, "broken-model") == tried
    assert UsageRecord.objects.filter(status="ok", alias="fast").count() == CONCURRENCY + 20


def test_an_unreachable_endpoint_opens_its_own_circuit_for_every_model(rows, fake):
    fake.stop()  # connection refused from now on
    results = chat_all(rows.token, ["fast"] * (THRESHOLD + 2))
    assert {status for status, _ in results} == {503}
    assert {body["error"]["code"] for _, body in results} <= {"upstream_unreachable", "no_upstream"}
    assert async_to_sync(CircuitBreaker.of(rows.endpoint).state)() == "open"
    # Every model there is out of service; no deployment's circuit was charged for it.
    assert async_to_sync(CircuitBreaker.of_deployment(rows.fast).state)() == "closed"
    status, body = chat_all(rows.token, ["broken"])[0]
    assert status == 503 and body["error"]["code"] == "no_upstream"


# -- probes: a half-open circuit's one probe is never lost ------------------------------
@pytest.fixture
def endpoint_rows(settings):
    settings.LLM_INTEGRATION = {
        "CIRCUIT_BREAKER_THRESHOLD": 1,
        "CIRCUIT_BREAKER_COOLDOWN": 30,
        "CIRCUIT_BREAKER_CHECK_INTERVAL": 0,
    }
    provider = Provider(name="p", kind="openai", base_url="http://127.0.0.1:9/v1")
    broken = ModelAlias(slug="broken", provider=provider, upstream_model="broken-model")
    fine = ModelAlias(slug="fine", provider=provider, upstream_model="fine-model")
    return provider, broken, fine


def server_error() -> exc.UpstreamServerError:
    return exc.UpstreamServerError("failed (HTTP 500)", provider="p", status=500)


def test_a_model_failing_its_probe_does_not_spend_the_endpoints(endpoint_rows):
    _provider, broken, fine = endpoint_rows
    clock = FakeClock()

    async def scenario() -> bool:
        await Circuits(broken, clock).endpoint.force_open()
        clock.advance(31)  # the endpoint is half-open: one probe
        probe = Circuits(broken, clock)
        assert await probe.allow()
        await probe.record_failure(server_error())  # an HTTP answer: the endpoint is up
        return await Circuits(fine, clock).allow()

    assert async_to_sync(scenario)() is True


def test_a_probe_the_endpoint_refuses_is_given_back(endpoint_rows):
    _provider, broken, _fine = endpoint_rows
    clock = FakeClock()

    async def scenario() -> list[bool]:
        first = Circuits(broken, clock)
        await first.deployment.force_open()
        await first.endpoint.force_open()
        clock.advance(31)  # both half-open
        await Circuits(broken, clock).endpoint.force_open()  # the endpoint fails again
        seen = [await Circuits(broken, clock).allow()]  # refused: nothing may be claimed
        await Circuits(broken, clock).endpoint.reset()  # the endpoint is back
        seen.append(await Circuits(broken, clock).allow())  # the deployment's probe is free
        return seen

    assert async_to_sync(scenario)() == [False, True]


def test_a_refused_model_counts_against_its_deployment_a_refused_key_against_the_endpoint(
    endpoint_rows,
):
    _provider, broken, fine = endpoint_rows
    clock = FakeClock()

    async def scenario() -> tuple[str, str, str]:
        forbidden = exc.UpstreamAuthenticationError("403", provider="p", status=403)
        circuits = Circuits(broken, clock)
        await circuits.allow()
        await circuits.record_failure(forbidden)
        states = (await circuits.deployment.state(), await circuits.endpoint.state())
        unauthorized = exc.UpstreamAuthenticationError("401", provider="p", status=401)
        circuits = Circuits(fine, clock)
        await circuits.allow()
        await circuits.record_failure(unauthorized)
        return (*states, await circuits.endpoint.state())

    assert async_to_sync(scenario)() == ("open", "closed", "open")
