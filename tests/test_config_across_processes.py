"""A change to the rows applies in every serving process, with no shared cache.

Two uvicorn processes serve the project on the test database (SQLite's file, or
PostgreSQL) with the local-memory cache: nothing but the database connects them. A
change made here, in a third process (as ``llm_bootstrap`` or admin would), must reach
both within the contract's bound (5 s; each process checks the version row once per
``CONFIG_CHECK_INTERVAL``).
"""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import Subscription
from tests.factories import (
    BudgetFactory,
    ModelAliasFactory,
    PlanEntitlementFactory,
    PlanFactory,
    ProviderFactory,
    UserFactory,
)
from tests.processes import ServerProcesses

pytestmark = pytest.mark.django_db(transaction=True)

BOUND = 5.0  # seconds: CONTRACT §6


@pytest.fixture
def servers(tmp_path):
    with ServerProcesses(2, tmp_path, REDIS_URL="") as urls:
        yield urls


def chat(url: str, token: str, **body) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/chat",
        json={"message": "Hi", **body},
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )


def statuses_within_bound(servers, token: str, wanted: int, **body) -> list[int]:
    """Each server's status once it answers ``wanted``, or its last one after BOUND s."""
    deadline = time.monotonic() + BOUND
    seen = []
    for url in servers:
        status = chat(url, token, **body).status_code
        while status != wanted and time.monotonic() < deadline:
            time.sleep(0.1)
            status = chat(url, token, **body).status_code
        seen.append(status)
    return seen


def test_a_budget_created_elsewhere_holds_in_every_process(servers):
    ModelAliasFactory(slug="default", provider=ProviderFactory(kind="dummy"))
    token = Token.objects.create(user=UserFactory()).key
    assert [chat(url, token).status_code for url in servers] == [200, 200]  # rows loaded

    BudgetFactory(name="tiny", limit_usd=Decimal("0.00000001"))  # no request fits

    assert statuses_within_bound(servers, token, 429) == [429, 429]
    refusal = chat(servers[1], token).json()["error"]
    assert refusal["code"] == "budget_exceeded" and "tiny" in refusal["message"]


def test_a_plan_change_applies_in_every_process_without_a_restart(servers):
    PlanFactory(slug="free")
    pro = PlanFactory(slug="pro")
    PlanEntitlementFactory(plan=pro, alias=ModelAliasFactory(slug="premium"))
    user = UserFactory()
    token = Token.objects.create(user=user).key
    assert [chat(url, token, model="premium").status_code for url in servers] == [403, 403]

    Subscription.objects.create(user=user, plan=pro)

    assert statuses_within_bound(servers, token, 200, model="premium") == [200, 200]


def test_a_rule_made_through_the_staff_api_applies_in_every_process(servers):
    ModelAliasFactory(slug="default", provider=ProviderFactory(kind="dummy"))
    token = Token.objects.create(user=UserFactory(is_staff=True, is_superuser=True)).key
    assert [chat(url, token, task="private").status_code for url in servers] == [200, 200]

    made = httpx.post(
        f"{servers[0]}/api/v1/admin/routing-rules",
        json={"name": "no-private", "match": {"tasks": ["private"]}, "action": {"refuse": "No."}},
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert made.status_code == 201, made.text

    assert statuses_within_bound(servers, token, 403, task="private") == [403, 403]
    assert chat(servers[1], token).status_code == 200  # other tasks pass
