"""A concurrency cap holds across two server processes sharing Redis (CONTRACT §8), and
what waits there is served once slots free, whichever process it came to; over HTTP a
request that waited past its plan's patience is a 429 with ``Retry-After``, and the
usage export carries each wait (``queued_ms``)."""

from __future__ import annotations

import asyncio
import csv
import io
import re

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from tests.factories import (
    PlanFactory,
    SubscriptionFactory,
    UserFactory,
)
from tests.processes import ServerProcesses

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def capped(capped_alias):
    return capped_alias(2)


def token_on(plan_slug: str, wait: int) -> str:
    plan = PlanFactory(slug=plan_slug, queue_timeout_seconds=wait)
    return Token.objects.create(user=SubscriptionFactory(plan=plan).user).key


def waiting_in(urls: list[str], cookie: str) -> int:
    """Requests in line at the cap, summed over the servers' /metrics."""
    total = 0
    for url in urls:
        text = httpx.get(f"{url}/metrics", headers={"Cookie": cookie}, timeout=10).text
        found = re.search(r'^llm_queue_depth\{limit="concurrency"\} (\S+)$', text, re.M)
        total += int(float(found.group(1))) if found else 0
    return total


def staff_cookie() -> str:
    client = Client()
    client.force_login(UserFactory(username="ops", is_staff=True))
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@pytest.mark.skipif(
    connection.vendor != "postgresql"
    or "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
    reason="needs PostgreSQL and Redis: set DATABASE_URL=postgres://… and REDIS_URL "
    "(CI's second pass does)",
)
def test_a_cap_of_two_holds_across_two_processes_and_the_line_drains(tmp_path, capped):
    token = token_on("patient", 60)
    cookie = staff_cookie()
    with ServerProcesses(2, tmp_path, REDIS_URL=settings.REDIS_URL) as servers:

        async def fire() -> list[int]:
            headers = {"Authorization": f"Token {token}"}
            async with httpx.AsyncClient(timeout=90, headers=headers) as client:

                async def one(i: int) -> int:
                    body = {"model": "capped", "message": f"request {i}"}
                    response = await client.post(f"{servers[i % 2]}/api/v1/chat", json=body)
                    return response.status_code

                return await asyncio.gather(*(one(i) for i in range(6)))

        async def scenario() -> list[int]:
            requests = asyncio.ensure_future(fire())
            for _ in range(3000):  # until four wait in line (a state, not a time)
                if await asyncio.to_thread(waiting_in, servers, cookie) == 4:
                    break
                await asyncio.sleep(0.01)
            assert len(capped.requests) == 2  # the cap holds across both processes
            capped.gate.set()
            return await requests

        assert asyncio.run(scenario()) == [200] * 6
    assert len(capped.requests) == 6
    queued = sorted(r.queued_ms > 0 for r in UsageRecord.objects.all())
    assert queued == [False, False, True, True, True, True]


def test_over_http_a_wait_past_patience_is_429_with_retry_after(capped, live_server_url):
    holder, hasty = token_on("holder", 60), token_on("hasty", 1)

    def chat(token: str, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            f"{live_server_url}/api/v1/chat",
            json={"model": "capped", "message": "hi"},
            headers={"Authorization": f"Token {token}"},
            timeout=timeout,
        )

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        held = [asyncio.ensure_future(asyncio.to_thread(chat, holder)) for _ in range(2)]
        for _ in range(3000):  # until both slots are taken (a state, not a time)
            if len(capped.requests) == 2:
                break
            await asyncio.sleep(0.01)
        refused = await asyncio.to_thread(chat, hasty)
        capped.gate.set()
        return await asyncio.gather(*held), refused

    served, refused = asyncio.run(scenario())
    assert [r.status_code for r in served] == [200, 200]
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "x-should-retry" not in refused.headers  # a later retry may well succeed

    staff = Token.objects.create(user=UserFactory(username="auditor", is_staff=True)).key
    exported = httpx.get(
        f"{live_server_url}/api/v1/usage?format=csv",
        headers={"Authorization": f"Token {staff}"},
    )
    table = list(csv.DictReader(io.StringIO(exported.text)))
    waits = sorted(int(row["queued_ms"]) for row in table)
    assert waits[:2] == [0, 0] and waits[2] >= 1000
