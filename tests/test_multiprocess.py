"""Two server processes sharing PostgreSQL and Redis keep every guarantee.

Runs only where the suite itself runs on PostgreSQL with a Redis cache (CI's second
pass): two uvicorn processes serve the project on the test database; requests are split
between them.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
from django.conf import settings
from django.db import connection
from rest_framework.authtoken.models import Token

from llm_integration.models import BudgetPeriod, UsageRecord
from tests.factories import (
    BudgetFactory,
    ModelAliasFactory,
    PlanFactory,
    ProviderFactory,
    UserFactory,
)
from tests.processes import ServerProcesses

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql"
        or "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
        reason="needs PostgreSQL and Redis: set DATABASE_URL=postgres://… and REDIS_URL "
        "(CI's second pass does)",
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def servers(tmp_path, api_key_env):
    """Two uvicorn processes on the test database and the test Redis (and the test key)."""
    with ServerProcesses(2, tmp_path, REDIS_URL=settings.REDIS_URL) as urls:
        yield urls


def token_for(user) -> str:
    return Token.objects.create(user=user).key


async def fire(urls: list[str], token: str, bodies: list[dict]) -> list[int]:
    """Send all requests at once, alternating between the servers; their statuses."""
    limits = httpx.Limits(max_connections=400)
    async with httpx.AsyncClient(
        timeout=60, limits=limits, headers={"Authorization": f"Token {token}"}
    ) as client:

        async def one(i: int, body: dict) -> int:
            response = await client.post(f"{urls[i % len(urls)]}/api/v1/chat", json=body)
            return response.status_code

        return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


def test_hard_budget_holds_for_200_requests_across_two_processes(servers, openai_fake, api_key_env):
    provider = ProviderFactory(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    ModelAliasFactory(
        slug="chat",
        provider=provider,
        upstream_model="gpt-4o-mini",
        input_price_per_mtok=Decimal(1),
        output_price_per_mtok=Decimal(1),
        default_max_tokens=100,
    )
    budget = BudgetFactory(limit_usd=Decimal("0.005"))  # 50 answers of 100 tokens at most
    for _ in range(200):
        openai_fake.push(mode="slow", delay=0.05, prompt_tokens=10, completion_tokens=90)
    token = token_for(UserFactory())
    statuses = asyncio.run(fire(servers, token, [{"message": "Hi", "model": "chat"}] * 200))
    ok = statuses.count(200)
    assert set(statuses) <= {200, 429}
    period = BudgetPeriod.objects.get(budget=budget)
    assert period.spent_usd <= budget.limit_usd
    assert period.spent_units + period.reserved_units <= 500_000
    assert period.spent_usd == Decimal("0.0001") * ok
    # Worst case 109 tokens reserved: 45 fit at once; the other process's unused
    # allowance (at most 1/8 of the room, ~5 worst cases) may refuse a few of them.
    assert ok >= 45 - 6, ok
    servers.stop()  # at exit each process gives its unused allowance back
    period.refresh_from_db()
    assert period.reserved_units == 0
    assert UsageRecord.objects.count() == 200
    assert UsageRecord.objects.filter(status="refused").count() == 200 - ok


def test_per_user_rpm_holds_across_two_processes(servers, fresh_minute):
    PlanFactory(slug="free", rpm_limit=10)
    ModelAliasFactory(slug="default", provider__kind="dummy")
    token = token_for(UserFactory())
    statuses = asyncio.run(fire(servers, token, [{"message": "Hi"}] * 30))
    assert sorted(statuses) == [200] * 10 + [429] * 20


def test_a_circuit_opened_by_one_process_is_seen_by_the_other(servers, openai_fake, api_key_env):
    failing = ProviderFactory(
        name="failing",
        kind="openai",
        base_url=openai_fake.base_url,
        api_key_env=api_key_env,
        max_retries=0,
    )
    ModelAliasFactory(slug="chat", provider=failing)
    token = token_for(UserFactory())
    headers = {"Authorization": f"Token {token}"}
    for _ in range(5):  # CIRCUIT_BREAKER_THRESHOLD
        openai_fake.push(mode="error", status=500)
        response = httpx.post(
            f"{servers[0]}/api/v1/chat", json={"message": "x"}, headers=headers, timeout=30
        )
        assert response.status_code == 503
    calls = len(openai_fake.requests)
    response = httpx.post(
        f"{servers[1]}/api/v1/chat", json={"message": "x"}, headers=headers, timeout=30
    )
    assert response.status_code == 503 and "circuit open" in response.json()["error"]["message"]
    assert len(openai_fake.requests) == calls  # the other process did not call upstream


def test_a_budget_alert_raised_by_one_process_reaches_a_socket_on_the_other(servers):
    import websockets

    ModelAliasFactory(slug="default", provider__kind="dummy")  # priced by the factory
    user = UserFactory()
    token = token_for(user)
    BudgetFactory(
        scope="user", user=user, name="mine", limit_usd=Decimal("0.0001"), alert_thresholds=[10]
    )

    async def scenario() -> dict:
        ws_url = servers[1].replace("http://", "ws://") + "/ws/llm/chat/"
        async with websockets.connect(ws_url, origin="http://127.0.0.1") as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            await ws.send(json.dumps({"type": "dance"}))  # its error proves auth is done
            assert json.loads(await ws.recv())["type"] == "error"
            async with httpx.AsyncClient(timeout=30) as client:  # spend on the *other* server
                response = await client.post(
                    f"{servers[0]}/api/v1/chat",
                    json={"message": "spend", "max_tokens": 20},
                    headers={"Authorization": f"Token {token}"},
                )
                assert response.status_code == 200
            return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))

    notice = asyncio.run(scenario())
    assert (notice["type"], notice["kind"], notice["threshold"]) == ("notice", "budget_alert", 10)


def test_a_websocket_on_one_process_gets_a_group_message_from_another(servers):
    import websockets
    from channels.layers import get_channel_layer

    from llm_integration.consumers import user_group

    ModelAliasFactory(slug="default", provider__kind="dummy")
    user = UserFactory()
    token = token_for(user)

    async def scenario() -> dict:
        ws_url = servers[1].replace("http://", "ws://") + "/ws/llm/chat/"
        async with websockets.connect(ws_url, origin="http://127.0.0.1") as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            await ws.send(json.dumps({"type": "dance"}))  # its error proves auth is done
            assert json.loads(await ws.recv())["type"] == "error"
            # This test process (not the one serving the socket) sends through Redis.
            await get_channel_layer().group_send(
                user_group(user.pk), {"type": "llm.notice", "payload": {"text": "hello"}}
            )
            return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))

    assert asyncio.run(scenario()) == {"type": "notice", "text": "hello"}
