"""``POST /v1/embeddings`` with the official openai SDK against OpenAI-protocol and
Ollama upstreams on loopback fakes: vectors in order, ``dimensions``, base64, one usage
record per request, budgets, entitlements, and chat/embedding aliases kept apart."""

from __future__ import annotations

import base64
import struct
from decimal import Decimal

import openai
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import Budget, UsageRecord
from tests.factories import (
    ModelAliasFactory,
    PlanEntitlementFactory,
    PlanFactory,
    ProviderFactory,
    UserFactory,
)
from tests.fakes.openai import fake_vector

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["openai", "openai_compatible", "ollama"])
def upstream(request, alias_on):
    kind = request.param
    model = "nomic-embed-text" if kind == "ollama" else "text-embedding-3-small"
    prices = {"input_price_per_mtok": Decimal("0.02"), "output_price_per_mtok": Decimal("0")}
    return kind, alias_on(kind, "embed", mode="embedding", upstream_model=model, **prices)


@pytest.fixture
def client(live_server_url):
    token = Token.objects.create(user=UserFactory()).key
    return openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)


def test_a_list_of_inputs_gets_vectors_in_order_and_one_usage_record(client, upstream):
    _kind, fake = upstream
    fake.push(prompt_tokens=3)
    inputs = ["a", "bb", "ccc"]
    result = client.embeddings.create(model="embed", input=inputs, dimensions=3)
    assert [d.index for d in result.data] == [0, 1, 2]
    for d, text in zip(result.data, inputs, strict=True):  # float32 through base64
        assert d.embedding == pytest.approx(fake_vector(text, 3))
    assert result.model == "embed" and result.usage.prompt_tokens == 3
    body = [r for r in fake.requests if r.method == "POST"][-1].body
    assert body["input"] == inputs and body["dimensions"] == 3
    record = UsageRecord.objects.get()
    assert (record.status, record.prompt_tokens, record.completion_tokens) == ("ok", 3, 0)
    assert record.cost_usd == Decimal("0.00000006")  # 3 tokens at $0.02 / Mtok


def test_a_string_input_and_base64_vectors(client, upstream):
    result = client.embeddings.create(model="embed", input="hello", encoding_format="base64")
    raw = base64.b64decode(result.data[0].embedding)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(fake_vector("hello", 4))


def test_the_sdk_default_base64_decodes_to_the_floats(client, upstream):
    """The openai SDK asks for base64 when the caller gives no format, and decodes it."""
    result = client.embeddings.create(model="embed", input=["hello"])
    assert result.data[0].embedding == pytest.approx(fake_vector("hello", 4))


def test_embedding_and_chat_aliases_are_kept_apart(client, upstream):
    ModelAliasFactory(slug="chat", provider__kind="dummy")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="chat", input="x")
    assert info.value.body["code"] == "unsupported_content"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "unsupported_content" and info.value.body["param"] == "model"
    assert {m.id for m in client.models.list().data} == {"chat", "embed"}


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"input": []}, "input"),
        ({"input": [[1, 2, 3]]}, "input[0]"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": "x", "extra_body": {"truncate": True}}, "truncate"),
    ],
)
def test_bad_input_is_refused_by_name_and_unbilled(client, upstream, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="embed", **kwargs)
    assert info.value.body["param"] == param
    assert not UsageRecord.objects.filter(status="ok").exists()


def test_a_full_budget_refuses_embeddings_before_the_upstream(client, upstream):
    _kind, fake = upstream
    Budget.objects.create(scope="global", period="month", limit_usd=Decimal("0.000001"))
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model="embed", input=["word " * 200])
    assert info.value.body["code"] == "budget_exceeded"
    assert not [r for r in fake.requests if r.method == "POST"]


def test_an_embedding_alias_outside_the_plan_is_refused(client, upstream):
    from llm_integration.models import ModelAlias

    PlanEntitlementFactory(plan=PlanFactory(slug="pro"), alias=ModelAlias.objects.get(slug="embed"))
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="embed", input="x")


def test_an_upstream_failure_is_recorded(client, upstream):
    _kind, fake = upstream
    fake.push(mode="error", status=500)
    with pytest.raises(openai.APIStatusError):
        client.embeddings.create(model="embed", input="x")
    assert UsageRecord.objects.get().status == "error"


def test_the_aliases_rate_limit_counts_embedding_requests(client, upstream):
    from llm_integration.models import ModelAlias

    ModelAlias.objects.filter(slug="embed").update(rpm_limit=1)
    client.embeddings.create(model="embed", input="x")
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model="embed", input="y")
    assert info.value.body["code"] == "rate_limited"
    assert UsageRecord.objects.order_by("id").first().status == "ok"


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_the_upstream_is_asked_base64_and_one_that_answers_floats_is_understood(
    client, openai_fake, api_key_env, fmt
):
    provider = ProviderFactory(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    ModelAliasFactory(slug="e3", provider=provider, mode="embedding", upstream_model="e3")
    for behaviour in ("ok", "floats"):
        openai_fake.push(mode=behaviour)
        result = client.embeddings.create(model="e3", input="hello", encoding_format=fmt)
        assert openai_fake.requests[-1].body["encoding_format"] == "base64"
        vector = result.data[0].embedding
        if fmt == "base64":
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert vector == pytest.approx(fake_vector("hello", 4))


def test_a_malformed_base64_vector_from_the_upstream_is_a_recorded_upstream_error(
    client, openai_fake, api_key_env
):
    provider = ProviderFactory(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    ModelAliasFactory(slug="e3", provider=provider, mode="embedding", upstream_model="e3")
    openai_fake.push(mode="malformed")
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(model="e3", input="hello", encoding_format="float")
    assert info.value.status_code == 502
    assert UsageRecord.objects.get().status == "error"
