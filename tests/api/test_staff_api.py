"""The staff API (CONTRACT §9): the configuration rows over JSON for staff users with
Django's model permissions, every change in the admin log, every bad field a 400 naming
it, no key ever shown; costs equal to the usage records' sums; provider health."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.authtoken.models import Token

from llm_integration.models import (
    AliasFallback,
    Budget,
    HealthCheck,
    ModelAlias,
    Plan,
    Provider,
    RoutingRule,
    UsageRecord,
)
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

# The async views (costs, health, chat) read through the gateway's own database threads.
pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/api/v1/admin"


class Caller:
    """A client with a DRF token: ``caller.get(path)`` → (status, JSON body)."""

    def __init__(self, user=None) -> None:
        self.client = Client()
        self.headers = {}
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            self.headers["Authorization"] = f"Token {token.key}"

    def call(self, method: str, path: str, body=None) -> tuple[int, object]:
        kwargs = {"headers": self.headers}
        if body is not None:
            kwargs |= {"data": json.dumps(body), "content_type": "application/json"}
        response = getattr(self.client, method)(f"{BASE}{path}", **kwargs)
        content = response.content
        return response.status_code, json.loads(content) if content else None

    def get(self, path):
        return self.call("get", path)

    def post(self, path, body):
        return self.call("post", path, body)

    def patch(self, path, body):
        return self.call("patch", path, body)

    def delete(self, path):
        return self.call("delete", path)


@pytest.fixture
def staff() -> Caller:
    return Caller(UserFactory(is_staff=True, is_superuser=True))


@pytest.fixture
def dummy():
    provider = ProviderFactory(name="dummy", kind="dummy")
    return ModelAliasFactory(slug="default", provider=provider, upstream_model="echo")


def test_who_may_call(dummy):
    assert Caller().get("/providers")[0] == 401
    assert Caller(UserFactory()).get("/providers")[0] == 403  # not staff
    clerk = UserFactory(is_staff=True)
    assert Caller(clerk).get("/providers")[0] == 403  # staff without the permission
    clerk.user_permissions.add(Permission.objects.get(codename="view_provider"))
    reader = Caller(clerk)
    assert reader.get("/providers")[0] == 200
    status, body = reader.post("/providers", {"name": "x", "kind": "dummy"})
    assert status == 403 and body["error"]["code"] == "permission_denied"
    assert reader.get("/costs")[0] == 403  # another model's permission


def test_providers_crud_logged_and_no_key_shown(staff, monkeypatch):
    monkeypatch.setenv("OPENAI_KEY_FOR_STAFF", "sk-secret-value-1234567890")
    status, body = staff.post(
        "/providers",
        {"name": "openai", "kind": "openai", "api_key_env": "OPENAI_KEY_FOR_STAFF"},
    )
    assert status == 201, body
    assert body["api_key_env"] == "OPENAI_KEY_FOR_STAFF"
    status, body = staff.get("/providers/openai")
    assert status == 200 and "sk-secret" not in json.dumps(body)
    assert staff.patch("/providers/openai", {"rpm_limit": 60})[1]["rpm_limit"] == 60
    assert staff.delete("/providers/openai")[0] == 204
    assert not Provider.objects.filter(name="openai").exists()
    flags = list(LogEntry.objects.order_by("id").values_list("action_flag", "object_repr"))
    assert flags == [(ADDITION, "openai"), (CHANGE, "openai"), (DELETION, "openai")]
    change = LogEntry.objects.get(action_flag=CHANGE)
    assert change.get_change_message() == "Changed rpm_limit."


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/providers", {"name": "p", "kind": "nope"}, "kind"),
        ("/providers", {"name": "p", "kind": "dummy", "extra_headers": {}}, "extra_headers"),
        ("/providers", {"name": "p", "kind": "dummy", "timeout_seconds": 0}, "timeout_seconds"),
        ("/providers", {"name": "dummy", "kind": "dummy"}, "name"),  # taken
        ("/aliases", {"id": "default", "provider": "dummy", "upstream_model": "m"}, "id"),
        ("/aliases", {"id": "a", "provider": "nope", "upstream_model": "m"}, "provider"),
        (
            "/aliases",
            {"id": "a", "provider": "dummy", "upstream_model": "m", "fallbacks": ["ghost"]},
            "fallbacks",
        ),
        (
            "/aliases",
            {"id": "a", "provider": "dummy", "upstream_model": "m", "locality": "moon"},
            "locality",
        ),
        ("/plans", {"slug": "pro", "name": "Pro", "models": ["ghost"]}, "models"),
        (
            "/budgets",
            {"name": "b", "scope": "provider", "limit_usd": "5"},
            "Set exactly the target",
        ),
        ("/budgets", {"name": "b", "limit_usd": "-1"}, "limit_usd"),
        (
            "/routing-rules",
            {"name": "r", "match": {"pattern": "(a)\\1"}, "action": {"refuse": "x"}},
            "match.pattern",
        ),
        (
            "/routing-rules",
            {"name": "r", "match": {"colour": "red"}, "action": {"refuse": "x"}},
            "match.colour",
        ),
        ("/routing-rules", {"name": "r", "action": {"model": "ghost"}}, "action.model"),
        ("/routing-rules", {"name": "r", "action": {}}, "action"),
    ],
)
def test_every_bad_field_is_a_400_naming_it(staff, dummy, path, body, field):
    status, answer = staff.post(path, body)
    assert status == 400, answer
    assert field in answer["error"]["message"], answer


def test_aliases_with_fallbacks_and_locality(staff, dummy):
    ProviderFactory(name="cloud", kind="openai")
    status, body = staff.post(
        "/aliases",
        {
            "id": "gpt",
            "provider": "cloud",
            "upstream_model": "gpt-4o-mini",
            "fallbacks": ["default"],
        },
    )
    assert status == 201, body
    assert (body["locality"], body["fallbacks"]) == ("external", ["default"])
    assert staff.get("/aliases/default")[1]["locality"] == "local"  # by the dummy's kind
    status, body = staff.patch("/aliases/gpt", {"locality": "local", "fallbacks": []})
    assert status == 200 and body["locality"] == "local" and body["fallbacks"] == []
    assert not AliasFallback.objects.exists()
    assert ModelAlias.objects.get(slug="gpt").locality == "local"


def test_plans_subscriptions_and_budgets(staff, dummy):
    status, body = staff.post("/plans", {"slug": "pro", "name": "Pro", "models": ["default"]})
    assert status == 201 and body["models"] == ["default"]
    user = UserFactory(username="alice")
    status, body = staff.post("/subscriptions", {"user": "alice", "plan": "pro"})
    assert status == 201 and body["user"] == "alice"
    assert user.llm_subscription.plan.slug == "pro" if hasattr(user, "llm_subscription") else True
    status, body = staff.post(
        "/budgets", {"name": "pro-monthly", "scope": "plan", "plan": "pro", "limit_usd": "25.5"}
    )
    assert status == 201 and body["plan"] == "pro"
    assert Budget.objects.get(name="pro-monthly").limit_usd == Decimal("25.5")
    assert staff.patch("/plans/pro", {"models": []})[1]["models"] == []
    assert Plan.objects.get(slug="pro").entitlements.count() == 0


def test_routing_rules_in_the_contracts_shape_apply_to_requests(staff, dummy):
    status, body = staff.post(
        "/routing-rules",
        {
            "name": "no-secrets",
            "position": 5,
            "match": {"tasks": ["private"], "pattern": "(?i)secret"},
            "action": {"refuse": "Not here."},
        },
    )
    assert status == 201, body
    assert body["match"] == {"tasks": ["private"], "pattern": "(?i)secret"}
    assert body["action"] == {"refuse": "Not here."}
    chat = Client().post(
        "/api/v1/chat",
        json.dumps({"message": "a SECRET", "task": "private"}),
        content_type="application/json",
        headers=staff.headers,
    )
    assert chat.status_code == 403 and chat.json()["error"]["code"] == "policy_refused"
    status, body = staff.patch(
        "/routing-rules/no-secrets", {"action": {"model": "default", "locality": "local"}}
    )
    assert status == 200 and body["action"] == {"model": "default", "locality": "local"}
    assert RoutingRule.objects.get(name="no-secrets").serve_with == dummy
    assert staff.delete("/routing-rules/no-secrets")[0] == 204


def test_costs_equal_the_usage_records_sums(staff):
    for provider, tags, cost in [
        ("openai", ",crm,", "0.25"),
        ("openai", ",crm,beta,", "0.50"),
        ("anthropic", "", "1.00"),
    ]:
        UsageRecord.objects.create(
            request_id=f"r-{provider}-{cost}",
            provider=provider,
            tags=tags,
            status="ok",
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=Decimal(cost),
        )
    status, body = staff.get("/costs?period=day&by=provider")
    assert status == 200 and body["period"] == "day" and body["by"] == "provider"
    assert body["items"] == [
        {
            "key": "anthropic",
            "requests": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cost_usd": "1",
        },
        {
            "key": "openai",
            "requests": 2,
            "prompt_tokens": 20,
            "completion_tokens": 10,
            "cost_usd": "0.75",
        },
    ]
    tags = {item["key"]: item["cost_usd"] for item in staff.get("/costs?by=tag")[1]["items"]}
    assert tags == {"crm": "0.75", "beta": "0.5"}
    status, body = staff.get("/costs?by=colour")
    assert status == 400 and "by" in body["error"]["message"]


def test_health_shows_the_last_check_and_the_circuit(staff, dummy):
    HealthCheck.objects.create(provider=dummy.provider, status="down", error="old")
    status, body = staff.get("/health")
    assert status == 200
    assert body[0]["provider"] == "dummy" and body[0]["status"] == "down"
    assert body[0]["circuit"] == "closed"
    status, body = staff.get("/health?check=1")
    assert status == 200 and body[0]["status"] == "connected"


def test_the_staff_api_is_in_the_openapi_schema(staff):
    schema = Client().get("/api/schema/", headers={"Accept": "application/json"})
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/admin/providers" in text and "/api/v1/admin/routing-rules/{name}" in text


# -- what an attacker or a hurried operator sends ----------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"name": "r", "match": {"pattern": ["secret"]}, "action": {"refuse": "no"}},
            "match.pattern",
        ),
        ({"name": "r", "match": {"pattern": None}, "action": {"refuse": "no"}}, "match.pattern"),
        ({"name": "r", "match": {"tasks": "summarize"}, "action": {"refuse": "no"}}, "match.tasks"),
        ({"name": "r", "match": [], "action": {"refuse": "no"}}, "match"),
        ({"name": "r", "action": {"refuse": True}}, "action.refuse"),
        ({"name": "r", "action": {"locality": "moon"}}, "action.locality"),
    ],
)
def test_rule_parts_are_typed_and_nothing_is_stored_but_what_was_sent(staff, dummy, body, field):
    status, answer = staff.post("/routing-rules", body)
    assert status == 400 and field in answer["error"]["message"], answer
    assert not RoutingRule.objects.exists()


def test_keys_cannot_change_and_fallbacks_are_checked(staff, dummy):
    ModelAliasFactory(slug="other", provider=dummy.provider)
    status, body = staff.patch("/aliases/default", {"id": "renamed"})
    assert status == 400 and "id cannot change" in body["error"]["message"]
    status, body = staff.patch("/aliases/default", {"fallbacks": ["other", "other"]})
    assert status == 400 and "fallbacks" in body["error"]["message"]
    status, body = staff.patch("/aliases/default", {"fallbacks": ["default"]})
    assert status == 400 and "itself" in body["error"]["message"]
    status, body = staff.post("/plans", {"slug": "pro", "name": "Pro"})
    assert staff.patch("/plans/pro", {"slug": "pro2"})[0] == 400


def test_a_delete_that_would_take_other_rows_along_is_refused_and_not_logged(staff, dummy):
    Budget.objects.create(name="cap", scope="alias", alias=dummy, limit_usd=Decimal("5"))
    status, body = staff.delete("/aliases/default")
    assert status == 400 and "budget cap" in body["error"]["message"]
    plan = Plan.objects.create(slug="pro", name="Pro")
    RoutingRule.objects.create(name="pro-only", plans=["pro"], refuse_message="x")
    status, body = staff.delete("/plans/pro")
    assert status == 400 and "routing rule pro-only" in body["error"]["message"]
    status, body = staff.delete("/providers/dummy")  # its alias protects it
    assert status == 400 and "default" in body["error"]["message"]
    assert ModelAlias.objects.filter(slug="default").exists() and Plan.objects.filter(pk=plan.pk)
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()


def test_only_a_superuser_decides_which_secret_goes_where(dummy):
    operator = UserFactory(is_staff=True)
    operator.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["add_provider", "change_provider", "view_provider"]
        )
    )
    caller = Caller(operator)
    status, body = caller.post(
        "/providers",
        {
            "name": "evil",
            "kind": "openai",
            "base_url": "https://attacker.example/v1",
            "api_key_env": "DATABASE_URL",
        },
    )
    assert status == 403 and "superuser" in body["error"]["message"]
    assert caller.patch("/providers/dummy", {"api_key_env": "SECRET_KEY"})[0] == 403
    assert caller.patch("/providers/dummy", {"rpm_limit": 10})[0] == 200  # the rest is theirs


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/budgets",
            {"name": "b", "limit_usd": "5", "alert_thresholds": "abc"},
            "alert_thresholds",
        ),
        ("/budgets", {"name": "b", "limit_usd": "5", "scope": "plan"}, "scope"),
        (
            "/subscriptions",
            {
                "user": "bob",
                "plan": "free",
                "started_at": "2026-06-01T00:00:00Z",
                "expires_at": "2026-01-01T00:00:00Z",
            },
            "expires_at",
        ),
    ],
)
def test_values_the_gateway_could_not_use_are_refused(staff, path, body, field):
    UserFactory(username="bob")
    Plan.objects.create(slug="free", name="Free")
    status, answer = staff.post(path, body)
    assert status == 400 and field in answer["error"]["message"], answer


def test_the_log_names_the_fields_that_changed(staff, dummy):
    staff.patch("/aliases/default", {"label": "Echo", "enabled": True})
    entry = LogEntry.objects.get(action_flag=CHANGE)
    assert entry.get_change_message() == "Changed label."
