"""A refusal that every retry would meet again says so: ``x-should-retry: false``, which
the OpenAI and Anthropic SDKs obey. One refused call is one request, not three (the
SDKs retry every 429 and 503 twice by default)."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import openai
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import RoutingRule, UsageRecord
from tests.factories import BudgetFactory, ModelAliasFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(openai_fake, api_key_env) -> str:
    provider = ProviderFactory(
        name="cloud", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    ModelAliasFactory(
        slug="gpt",
        provider=provider,
        upstream_model="gpt-4o-mini",
        input_price_per_mtok=Decimal(1),
        output_price_per_mtok=Decimal(1),
    )
    return Token.objects.create(user=UserFactory()).key


def test_a_spent_budget_is_one_request_for_the_openai_sdk(token, live_server_url):
    BudgetFactory(limit_usd=Decimal("0.00000001"))
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=2)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.body["code"] == "budget_exceeded"
    assert UsageRecord.objects.count() == 1


def test_a_request_kept_local_with_nowhere_to_go_is_one_request_for_anthropics_sdk(
    token, live_server_url
):
    RoutingRule.objects.create(name="all-local", locality="local")
    client = anthropic.Anthropic(base_url=live_server_url, api_key=token, max_retries=2)
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(
            model="gpt", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 503
    assert info.value.response.headers["x-should-retry"] == "false"
    assert UsageRecord.objects.get().error_type == "no_local_model"


def test_an_upstream_rate_limit_still_invites_a_retry(token, live_server_url, openai_fake):
    openai_fake.push(mode="error", status=429, retry_after="1")
    openai_fake.push(mode="error", status=429, retry_after="1")
    openai_fake.push(mode="error", status=429, retry_after="1")
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert "x-should-retry" not in info.value.response.headers
