"""The REST API through Django's async test client: auth, envelope, statuses, SSE."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from tests.factories import (
    BudgetFactory,
    ModelAliasFactory,
    PlanEntitlementFactory,
    PlanFactory,
    ProviderFactory,
    SubscriptionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def rows(db):
    dummy = ProviderFactory(name="dummy", kind="dummy")
    ModelAliasFactory(slug="default", label="Echo", provider=dummy, context_window=4096)
    premium = ModelAliasFactory(slug="premium", label="Premium", provider=dummy)
    PlanFactory(slug="free")
    PlanEntitlementFactory(plan=PlanFactory(slug="pro"), alias=premium)
    user = UserFactory(username="alice")
    return {"user": user, "token": Token.objects.create(user=user).key}


class HeaderClient(AsyncClient):
    """AsyncClient sending fixed headers with every request (AsyncClient(headers=...)
    mangles them into 'http-...' names in this Django release)."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.fixed_headers = headers or {}

    def generic(self, method, path, *args, headers=None, **kwargs):
        headers = {**self.fixed_headers, **(headers or {})}
        return super().generic(method, path, *args, headers=headers, **kwargs)


def client_for(token: str | None, scheme: str = "Token") -> AsyncClient:
    return HeaderClient({"Authorization": f"{scheme} {token}"} if token else {})


async def post_chat(client: AsyncClient, body, **extra):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return await client.post("/api/v1/chat", data, content_type="application/json", **extra)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"type", "code", "message", "request_id"} <= set(error)
    assert response["X-Request-ID"] == error["request_id"]
    return error


async def test_unauthenticated_is_401_envelope(rows):
    response = await post_chat(client_for(None), {"message": "hi"})
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    bad = await client_for("nope").get("/api/v1/models")
    assert bad.status_code == 401 and error_of(bad)["code"] == "authentication_failed"


@pytest.mark.parametrize("scheme", ["Token", "Bearer"])
async def test_chat_with_token_or_bearer(rows, scheme):
    response = await post_chat(client_for(rows["token"], scheme), {"message": "hello"})
    assert response.status_code == 200
    body = response.json()
    assert body["answer"] == "This is the dummy model (echo). You said: hello"
    assert (body["model"], body["cached"], body["finish_reason"]) == ("default", False, "stop")
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert isinstance(body["usage"]["cost_usd"], str)
    assert response["X-Request-ID"] == body["request_id"]
    record = await UsageRecord.objects.aget(request_id=body["request_id"])
    assert record.user_id == rows["user"].pk


async def test_session_auth(rows):
    client = AsyncClient()
    await sync_to_async(client.force_login)(rows["user"])
    response = await client.get("/api/v1/models")
    assert response.status_code == 200


async def test_models_per_plan_with_locked_behind_a_setting(rows, settings):
    settings.LLM_INTEGRATION = {"SHOW_LOCKED_MODELS": False}  # the app's default
    client = client_for(rows["token"])
    models = (await client.get("/api/v1/models")).json()
    assert models == [
        {
            "id": "default",
            "label": "Echo",
            "provider": "dummy",
            "context_window": 4096,
            "mode": "chat",
            "locked": False,
        }
    ]
    settings.LLM_INTEGRATION = {"SHOW_LOCKED_MODELS": True}
    models = (await client.get("/api/v1/models")).json()
    assert [(m["id"], m["locked"]) for m in models] == [("default", False), ("premium", True)]
    await sync_to_async(SubscriptionFactory)(user=rows["user"], plan__slug="pro")
    models = (await client.get("/api/v1/models")).json()
    assert [(m["id"], m["locked"]) for m in models] == [("default", False), ("premium", False)]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, "invalid_request"),
        ("[1, 2]", 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"message": "x", "messages": [{"role": "user", "content": "y"}]}, 400, "invalid_request"),
        ({"messages": [{"role": "wizard", "content": "y"}]}, 400, "invalid_request"),
        ({"message": "x", "temperature": 9}, 400, "invalid_request"),
        ({"message": "x", "max_tokens": -1}, 400, "invalid_request"),
        ({"message": "   "}, 400, "invalid_request"),
        ({"message": "x", "model": "nope"}, 404, "model_not_found"),
        ({"message": "x", "model": "premium"}, 403, "model_not_allowed"),
    ],
)
async def test_bad_input_gets_the_envelope_never_a_500(rows, body, status, code):
    response = await post_chat(client_for(rows["token"]), body)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code and error["message"]


async def test_validation_messages_name_the_field(rows):
    response = await post_chat(
        client_for(rows["token"]), {"messages": [{"role": "wizard", "content": "y"}]}
    )
    assert "messages[0].role" in error_of(response)["message"]


async def test_prompt_too_large_is_413(rows, settings):
    settings.LLM_INTEGRATION = {"MAX_PROMPT_TOKENS": 20}
    response = await post_chat(client_for(rows["token"]), {"message": "word " * 100})
    assert response.status_code == 413 and error_of(response)["code"] == "prompt_too_large"


async def test_rate_limited_is_429_with_retry_after(rows, settings, fresh_minute):
    settings.LLM_INTEGRATION = {"RATE_LIMIT_RPM": 1}
    client = client_for(rows["token"])
    assert (await post_chat(client, {"message": "1"})).status_code == 200
    response = await post_chat(client, {"message": "2"})
    assert response.status_code == 429 and error_of(response)["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60


async def test_budget_exhausted_is_429(rows):
    await sync_to_async(ModelAliasFactory)(
        slug="paid", provider__kind="dummy", input_price_per_mtok=Decimal(100)
    )
    await sync_to_async(BudgetFactory)(limit_usd=Decimal("0.0001"))
    response = await post_chat(client_for(rows["token"]), {"message": "x", "model": "paid"})
    assert response.status_code == 429 and error_of(response)["code"] == "budget_exceeded"
    assert await UsageRecord.objects.filter(status="refused").acount() == 1


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"mode": "error", "status": 401}, 502, "upstream_auth"),
        ({"mode": "malformed"}, 502, "bad_upstream_response"),
        ({"mode": "error", "status": 500}, 503, "no_upstream"),
        ({"mode": "slow", "delay": 5}, 504, "upstream_timeout"),
    ],
)
async def test_upstream_failures_map_to_502_503_504(
    rows, openai_fake, api_key_env, fault, status, code
):
    provider = await sync_to_async(ProviderFactory)(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env, timeout_seconds=0.3
    )
    await sync_to_async(ModelAliasFactory)(slug="up", provider=provider)
    openai_fake.push(**fault)
    response = await post_chat(client_for(rows["token"]), {"message": "x", "model": "up"})
    assert response.status_code == status and error_of(response)["code"] == code
    assert "sk-test" not in response.content.decode()


async def read_sse(response) -> list[dict]:
    raw = b"".join([part async for part in response.streaming_content]).decode()
    assert raw.endswith("\n\n")
    return [json.loads(line.removeprefix("data: ")) for line in raw.split("\n\n") if line]


async def test_chat_stream_is_sse_deltas_then_done(rows):
    response = await post_chat(client_for(rows["token"]), {"message": "hi there", "stream": True})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = await read_sse(response)
    deltas = [e["delta"] for e in events[:-1]]
    assert "".join(deltas) == "This is the dummy model (echo). You said: hi there"
    done = events[-1]
    assert done["done"] is True and done["request_id"] == response["X-Request-ID"]
    assert set(done["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"}
    record = await UsageRecord.objects.aget(request_id=done["request_id"])
    assert record.streamed and record.status == "ok"


async def test_a_stream_is_answered_from_the_response_cache(rows, settings):
    settings.LLM_INTEGRATION = {**settings.LLM_INTEGRATION, "CACHE_ENABLED": True}
    body = {"message": "cache me", "stream": True, "temperature": 0}
    first = await read_sse(await post_chat(client_for(rows["token"]), body))
    second = await read_sse(await post_chat(client_for(rows["token"]), body))
    assert "cached" not in first[-1]  # the contract's shape for an ordinary answer
    assert second[-1]["cached"] is True and second[-1]["usage"]["cost_usd"] == "0"
    assert "".join(e["delta"] for e in second[:-1]) == "".join(e["delta"] for e in first[:-1])
    assert [r.cached async for r in UsageRecord.objects.order_by("id")] == [False, True]


async def test_stream_errors_before_the_first_token_keep_their_status(rows):
    response = await post_chat(
        client_for(rows["token"]), {"message": "x", "model": "nope", "stream": True}
    )
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"


async def test_stream_cut_mid_way_ends_with_an_error_event(rows, openai_fake, api_key_env):
    provider = await sync_to_async(ProviderFactory)(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    await sync_to_async(ModelAliasFactory)(slug="up", provider=provider)
    openai_fake.push(mode="cut", text="a b c d", cut_after=2)
    response = await post_chat(
        client_for(rows["token"]), {"message": "x", "model": "up", "stream": True}
    )
    events = await read_sse(response)
    assert [e.get("delta") for e in events[:2]] == ["a", " b"]
    assert events[-1]["error"]["code"] == "stream_interrupted"


async def test_usage_own_and_staff_only_for_others(rows):
    client = client_for(rows["token"])
    await post_chat(client, {"message": "one"})
    await post_chat(client, {"message": "x", "model": "nope"})
    await sync_to_async(BudgetFactory)(name="global", limit_usd=Decimal("10"))
    report = (await client.get("/api/v1/usage")).json()
    for period in ("day", "month"):
        assert report[period]["requests"] == 2
        assert report[period]["by_status"] == {"ok": 1, "error": 1}
        assert report[period]["by_model"]["default"]["requests"] == 1
    assert report["budgets"] == [
        {
            "scope": "global",
            "name": "global",
            "period": "month",
            "limit_usd": "10",
            "spent_usd": "0",
            "reserved_usd": "0",
            "remaining_usd": "10",
        }
    ]

    bob = await sync_to_async(UserFactory)(username="bob")
    forbidden = await client.get(f"/api/v1/usage?user={bob.pk}")
    assert forbidden.status_code == 403 and error_of(forbidden)["code"] == "permission_denied"
    staff = await sync_to_async(UserFactory)(username="root", is_staff=True)
    staff_client = client_for((await Token.objects.acreate(user=staff)).key)
    other = (await staff_client.get(f"/api/v1/usage?user={rows['user'].pk}")).json()
    assert other["month"]["requests"] == 2
    assert (await staff_client.get("/api/v1/usage?user=999999")).status_code == 404


async def test_schema_is_openapi_3(rows):
    response = await client_for(rows["token"]).get("/api/schema/")
    text = response.content.decode()
    assert response.status_code == 200 and text.startswith("openapi: 3")
    for path in ("/api/v1/chat", "/api/v1/models", "/api/v1/usage", "/v1/chat/completions"):
        assert f"{path}:" in text


async def test_metrics_are_restricted(rows, settings):
    anonymous = await AsyncClient().get("/metrics")
    assert anonymous.status_code == 403
    staff = await sync_to_async(UserFactory)(username="ops", is_staff=True)
    client = AsyncClient()
    await sync_to_async(client.force_login)(staff)
    await post_chat(client_for(rows["token"]), {"message": "count me"})
    page = (await client.get("/metrics")).content.decode()
    assert "llm_requests_total{" in page and "llm_request_duration_seconds_bucket" in page
    settings.LLM_INTEGRATION = {"METRICS_ACCESS": "token", "METRICS_TOKEN": "scrape-me"}
    assert (await AsyncClient().get("/metrics")).status_code == 403
    scraper = HeaderClient({"Authorization": "Bearer scrape-me"})
    assert (await scraper.get("/metrics")).status_code == 200
    settings.LLM_INTEGRATION = {"METRICS_ACCESS": "ip", "METRICS_ALLOWED_IPS": ["127.0.0.1"]}
    assert (await AsyncClient().get("/metrics")).status_code == 200


async def test_usage_csv_export_is_staff_only_and_streamed(rows):
    import csv
    import io

    client = client_for(rows["token"])
    await post_chat(client, {"message": "one"})
    await post_chat(client, {"message": "two"})
    refused = await client.get("/api/v1/usage?format=csv")
    assert refused.status_code == 403
    staff = await sync_to_async(UserFactory)(username="auditor", is_staff=True)
    staff_client = client_for((await Token.objects.acreate(user=staff)).key)
    response = await staff_client.get(
        f"/api/v1/usage?format=csv&user={rows['user'].pk}&since=2000-01-01"
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    text = b"".join([part async for part in response.streaming_content]).decode()
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 2 and {r["status"] for r in table} == {"ok"}
    assert table[0]["alias"] == "default" and table[0]["user_id"] == str(rows["user"].pk)
    bad = await staff_client.get("/api/v1/usage?format=csv&since=yesterday-ish")
    assert bad.status_code == 400


async def test_oversized_body_is_413_not_500(rows, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = await post_chat(client_for(rows["token"]), {"message": "x" * 5000})
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": {"nested": 1}}]},
        {"messages": [1, 2]},
        {"message": "x", "temperature": "hot"},
        {"message": "x", "max_tokens": 10**9},
        {"message": "x", "model": 42},
        {"message": None},
        {"messages": [{"role": "user"}]},
    ],
)
async def test_odd_bodies_are_400s(rows, body):
    response = await post_chat(client_for(rows["token"]), body)
    assert response.status_code == 400, response.content
    assert error_of(response)["code"] == "invalid_request"
