"""1,000 requests through the HTTP API while the upstream fails 30 % of the time in
every way it can: no 500 from the gateway, one usage record per request with the right
status, and requests that have a healthy fallback succeed."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from llm_integration.models import AliasFallback, UsageRecord
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory
from tests.fakes.openai import OpenAIFake

TOTAL = 1000
FAULTS = [
    {"mode": "error", "status": 429, "retry_after": "1"},
    {"mode": "error", "status": 500},
    {"mode": "error", "status": 503},
    {"mode": "slow", "delay": 5},  # beyond the provider's 0.3 s timeout
    {"mode": "reset"},
    {"mode": "malformed"},
    {"mode": "cut", "cut_after": 1},
]


@pytest.fixture
def healthy_fake():
    fake = OpenAIFake().start()
    yield fake
    fake.stop()


@pytest.mark.django_db(transaction=True)
def test_thousand_requests_with_thirty_percent_faults(
    openai_fake, healthy_fake, api_key_env, settings
):
    settings.LLM_INTEGRATION = {"RETRY_AFTER_MAX": 0}  # fall back instead of waiting
    flaky = ProviderFactory(
        name="flaky",
        kind="openai",
        base_url=openai_fake.base_url,
        api_key_env=api_key_env,
        max_retries=0,
        timeout_seconds=0.3,
    )
    healthy = ProviderFactory(
        name="healthy",
        kind="openai",
        base_url=healthy_fake.base_url,
        api_key_env=api_key_env,
        max_retries=0,
    )
    guarded = ModelAliasFactory(slug="guarded", provider=flaky)
    ModelAliasFactory(slug="solo", provider=flaky)
    backup = ModelAliasFactory(slug="backup", provider=healthy)
    AliasFallback.objects.create(alias=guarded, fallback=backup)
    token = Token.objects.create(user=UserFactory()).key

    rng = random.Random(20261122)
    plan = []
    for i in range(TOTAL):
        if rng.random() < 0.3:
            openai_fake.push(**rng.choice(FAULTS))
        else:
            openai_fake.push(mode="ok")
        plan.append({"model": "guarded" if i % 2 else "solo", "stream": i % 4 == 0})

    async def run() -> list[tuple[dict, int, str, str]]:
        client = AsyncClient()
        headers = {"Authorization": f"Token {token}"}

        async def one(body: dict) -> tuple[dict, int, str, str]:
            payload = json.dumps({"message": "hi", **body})
            response = await client.post(
                "/api/v1/chat", payload, content_type="application/json", headers=headers
            )
            text = (
                b"".join([p async for p in response.streaming_content]).decode()
                if response.streaming
                else response.content.decode()
            )
            return body, response.status_code, response["X-Request-ID"], text

        results = []
        for start in range(0, TOTAL, 50):
            results += await asyncio.gather(*(one(b) for b in plan[start : start + 50]))
        return results

    results = asyncio.run(run())
    statuses = [status for _, status, _, _ in results]
    assert 500 not in statuses
    assert set(statuses) <= {200, 429, 502, 503, 504}
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert len(records) == TOTAL == UsageRecord.objects.count()
    for body, status, request_id, text in results:
        record = records[request_id]
        failed_mid_stream = body["stream"] and '"error"' in text
        expected = "ok" if status == 200 and not failed_mid_stream else "error"
        assert record.status == expected, (body, status, text[:200])
        if body["model"] == "guarded" and not body["stream"]:
            assert status == 200, text  # the healthy fallback answers
    # Faults really happened (more fail than the 30 % once the circuit opens on "solo").
    assert any(r.status == "error" for r in records.values())
