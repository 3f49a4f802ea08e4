"""API keys (CONTRACT §14): made by their owner or staff, shown once and stored hashed,
accepted wherever a DRF token is (Bearer, ``x-api-key``, the WebSocket auth frame, the
official SDKs), limited to their models, their own hard budget and rate, stopped when
revoked or expired, and named on usage rows, the CSV and the usage report."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from llm_integration.models import ApiKey, Budget, ModelAlias, UsageRecord
from llm_integration.services.clock import FakeClock
from llm_integration.services.policy import keys
from project.asgi import application
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
HI = [{"role": "user", "content": "hi"}]


class Caller:
    """A client sending one credential: ``caller.call(method, path, body)`` → (status,
    JSON body, response)."""

    def __init__(self, **headers: str) -> None:
        self.client = Client()
        self.headers = headers

    @classmethod
    def token(cls, user) -> Caller:
        token, _ = Token.objects.get_or_create(user=user)
        return cls(Authorization=f"Token {token.key}")

    @classmethod
    def key(cls, secret: str, header: str = "bearer") -> Caller:
        if header == "x-api-key":
            return cls(**{"x-api-key": secret})
        return cls(Authorization=f"Bearer {secret}")

    def call(self, method: str, path: str, body=None):
        kwargs = {"headers": self.headers}
        if body is not None:
            kwargs |= {"data": json.dumps(body), "content_type": "application/json"}
        response = getattr(self.client, method)(path, **kwargs)
        content = response.content
        return response.status_code, json.loads(content) if content else None, response

    def chat(self, model: str = "gpt", **body):
        return self.call("post", "/api/v1/chat", {"model": model, "messages": HI, **body})


@pytest.fixture
def rows(openai_fake, api_key_env):
    provider = ProviderFactory(
        name="cloud", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    for slug in ("gpt", "other"):
        ModelAliasFactory(
            slug=slug,
            provider=provider,
            upstream_model="gpt-4o-mini",
            input_price_per_mtok=Decimal(1000),
            output_price_per_mtok=Decimal(1000),
        )
    return openai_fake


@pytest.fixture
def alice(rows):
    return UserFactory(username="alice")


def make_key(owner, **body) -> dict:
    status, created, _ = Caller.token(owner).call("post", "/api/v1/keys", {"name": "ci", **body})
    assert status == 201, created
    return created


# -- making, listing, storing --------------------------------------------------------------
def test_a_new_key_is_shown_once_and_stored_only_as_a_keyed_hash(alice):
    created = make_key(alice, name="ci job", models=["gpt"], rpm_limit=5)
    secret = created["key"]
    assert secret.startswith("llm_") and secret.startswith(created["prefix"] + "_")
    assert created["name"] == "ci job" and created["models"] == ["gpt"]
    assert created["state"] == "active" and created["rpm_limit"] == 5
    row = ApiKey.objects.get()
    stored = json.dumps(list(ApiKey.objects.values().get().values()), default=str)
    assert secret not in stored and secret.split("_", 2)[2] not in stored
    assert row.digest == keys.digest(secret) and len(row.digest) == 64

    status, listed, _ = Caller.token(alice).call("get", "/api/v1/keys")
    assert status == 200 and [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and secret not in json.dumps(listed)
    status, one, _ = Caller.token(alice).call("get", f"/api/v1/keys/{created['id']}")
    assert status == 200 and "key" not in one and one["prefix"] == created["prefix"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"models": ["nope"]}, "models"),
        ({"expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ({"budget_usd": "-1"}, "budget_usd"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"rpm_limit": "5"}, "rpm_limit"),
        ({"budget_period": "day"}, "budget_period"),
        ({"budget_period": "fortnight", "budget_usd": "1"}, "budget_period"),
        ({"name": ""}, "name"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(alice, body, field):
    status, error, _ = Caller.token(alice).call("post", "/api/v1/keys", {"name": "k", **body})
    assert status == 400 and error["error"]["message"].startswith(field), error
    assert not ApiKey.objects.exists()


def test_an_unknown_field_is_refused_by_name(alice):
    status, error, _ = Caller.token(alice).call(
        "post", "/api/v1/keys", {"name": "k", "scopes": ["all"]}
    )
    assert (status, error["error"]["code"]) == (400, "unsupported_parameter")
    assert "scopes" in error["error"]["message"]


def test_a_key_cannot_manage_keys(alice):
    secret = make_key(alice)["key"]
    status, error, _ = Caller.key(secret).call("post", "/api/v1/keys", {"name": "wider"})
    assert status == 403 and "API keys cannot manage" in error["error"]["message"]
    assert Caller.key(secret).call("get", "/api/v1/keys")[0] == 403
    assert ApiKey.objects.count() == 1


def test_nobody_sees_or_revokes_anothers_key(alice):
    created = make_key(alice)
    bob = Caller.token(UserFactory(username="bob"))
    assert bob.call("get", f"/api/v1/keys/{created['id']}")[0] == 404
    assert bob.call("delete", f"/api/v1/keys/{created['id']}")[0] == 404
    assert bob.call("get", "/api/v1/keys")[1] == []
    assert Caller.key(created["key"]).chat()[0] == 200


# -- authenticating ---------------------------------------------------------------------------
@pytest.mark.parametrize("header", ["bearer", "x-api-key"])
def test_a_key_authenticates_the_rest_api_and_its_usage_names_it(alice, header):
    created = make_key(alice, name="staging")
    status, body, _ = Caller.key(created["key"], header).chat()
    assert status == 200, body
    record = UsageRecord.objects.get()
    assert (record.user_id, record.api_key_id) == (alice.pk, created["id"])
    assert ApiKey.objects.get().last_used_at is not None


def test_the_openai_and_anthropic_sdks_call_with_a_key(rows, alice, live_server_url):
    secret = make_key(alice)["key"]
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=secret, max_retries=0)
    answer = client.chat.completions.create(model="gpt", messages=HI)
    assert answer.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["gpt", "other"]
    claude = anthropic.Anthropic(base_url=live_server_url, api_key=secret, max_retries=0)
    message = claude.messages.create(model="gpt", max_tokens=20, messages=HI)
    assert message.content[0].text
    assert UsageRecord.objects.filter(api_key__isnull=False).count() == 2

    narrow = make_key(alice, name="narrow", models=["gpt"])["key"]
    claude = anthropic.Anthropic(base_url=live_server_url, api_key=narrow, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        claude.messages.count_tokens(model="other", messages=HI)
    assert claude.messages.count_tokens(model="gpt", messages=HI).input_tokens > 0
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=narrow, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="other", messages=HI)


async def test_a_key_authenticates_the_websocket_and_a_revoked_one_stops_it(alice):
    created = await sync_to_async(make_key)(alice)
    ws = WebsocketCommunicator(application, "/ws/llm/chat/")
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": created["key"]})
    await ws.send_json_to({"type": "chat", "model": "gpt", "messages": HI})
    while (frame := await ws.receive_json_from())["type"] != "done":
        assert frame["type"] in ("start", "token")
    record = await UsageRecord.objects.aget()
    assert (record.api_key_id, record.streamed) == (created["id"], True)

    path = f"/api/v1/keys/{created['id']}"
    await sync_to_async(lambda: Caller.token(alice).call("delete", path))()
    await ws.send_json_to({"type": "chat", "model": "gpt", "messages": HI})
    assert (await ws.receive_json_from())["code"] == "authentication_failed"
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_an_unknown_key_closes_the_websocket(alice):
    ws = WebsocketCommunicator(application, "/ws/llm/chat/")
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": "llm_000000000000_notakey"})
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}


@pytest.mark.parametrize(
    "secret", ["llm_", "llm_x", "llm__y", "llm_abc_", "llm_" + "a" * 40 + "_b", "llm_abc_def"]
)
def test_malformed_or_unknown_keys_are_401(alice, secret):
    status, error, response = Caller.key(secret).chat()
    assert status == 401 and error["error"]["code"] == "authentication_failed"
    assert response["WWW-Authenticate"]
    assert not UsageRecord.objects.exists()


def test_a_guess_with_the_right_prefix_is_401(alice):
    created = make_key(alice)
    assert Caller.key(created["prefix"] + "_" + "x" * 40).chat()[0] == 401


def test_drf_tokens_keep_working_beside_keys(alice):
    make_key(alice)
    assert Caller.token(alice).chat()[0] == 200
    assert UsageRecord.objects.get().api_key_id is None


def test_keys_survive_a_rotated_secret_key(alice, settings):
    secret = make_key(alice)["key"]
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-for-this-test-only-0123456789"
    keys.key_ring.clear()
    assert Caller.key(secret).chat()[0] == 200


# -- what a key may do ------------------------------------------------------------------------
def test_a_key_outside_its_models_is_403_and_lists_only_its_own(alice):
    secret = make_key(alice, models=["gpt"])["key"]
    caller = Caller.key(secret)
    status, error, _ = caller.chat("other")
    assert status == 403 and error["error"]["code"] == "model_not_allowed"
    assert caller.chat("gpt")[0] == 200
    _, listed, _ = caller.call("get", "/api/v1/models")
    assert {m["id"]: m["locked"] for m in listed} == {"gpt": False, "other": True}
    _, openai_list, _ = caller.call("get", "/v1/models")
    assert [m["id"] for m in openai_list["data"]] == ["gpt"]


def test_a_fallback_outside_the_keys_models_does_not_serve(rows, alice):
    from llm_integration.models import AliasFallback

    AliasFallback.objects.create(
        alias=ModelAlias.objects.get(slug="gpt"), fallback=ModelAlias.objects.get(slug="other")
    )
    rows.push(mode="error", status=500)
    rows.push(mode="error", status=500)
    rows.push(mode="error", status=500)
    secret = make_key(alice, models=["gpt"])["key"]
    status, _body, _ = Caller.key(secret).chat()
    assert status in (502, 503)
    assert UsageRecord.objects.get().alias == "gpt"


def test_a_keys_budget_is_its_own_and_hard(alice):
    capped = make_key(alice, name="capped", budget_usd="0.05", budget_period="day")
    free = make_key(alice, name="free")
    assert capped["budget_usd"] == "0.05" and capped["budget_period"] == "day"
    caller = Caller.key(capped["key"])
    served = 0
    for _ in range(20):
        status, body, response = caller.chat(max_tokens=10)
        if status != 200:
            break
        served += 1
    assert status == 429 and body["error"]["code"] == "budget_exceeded"
    assert response["x-should-retry"] == "false"
    assert served >= 1
    spent = sum(
        r.cost_usd for r in UsageRecord.objects.filter(api_key_id=capped["id"], status="ok")
    )
    assert spent <= Decimal("0.05")
    assert Caller.key(free["key"]).chat(max_tokens=10)[0] == 200
    assert Caller.token(alice).chat(max_tokens=10)[0] == 200


def test_a_keys_rate_limit_is_its_own(alice, fresh_minute):
    limited = make_key(alice, name="slow", rpm_limit=2)["key"]
    other = make_key(alice, name="fast")["key"]
    assert [Caller.key(limited).chat()[0] for _ in range(3)] == [200, 200, 429]
    assert Caller.key(other).chat()[0] == 200


def test_a_revoked_key_is_401_at_once_and_its_usage_stays(alice):
    created = make_key(alice)
    caller = Caller.key(created["key"])
    assert caller.chat()[0] == 200
    status, revoked, _ = Caller.token(alice).call("delete", f"/api/v1/keys/{created['id']}")
    assert status == 200 and revoked["state"] == "revoked" and revoked["revoked_at"]
    status, error, _ = caller.chat()
    assert status == 401 and "revoked" in error["error"]["message"]
    assert UsageRecord.objects.get().api_key_id == created["id"]


def test_a_key_expires_by_the_injected_clock(alice, monkeypatch):
    clock = FakeClock(dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC))
    monkeypatch.setattr(keys.key_ring, "clock", clock)
    created = make_key(alice, expires_at="2030-01-01T12:10:00Z")
    caller = Caller.key(created["key"])
    assert caller.chat()[0] == 200  # read and cached
    clock.advance(599)
    assert caller.chat()[0] == 200
    clock.advance(1)  # cached, and expired now
    status, error, _ = caller.chat()
    assert status == 401 and "expired" in error["error"]["message"]
    keys.key_ring.clear()  # and read afresh
    assert caller.chat()[0] == 401
    _, listed, _ = Caller.token(alice).call("get", "/api/v1/keys")
    assert listed[0]["state"] == "expired"


def test_a_deactivated_owner_stops_their_keys(alice):
    secret = make_key(alice)["key"]
    alice.is_active = False
    alice.save()
    assert Caller.key(secret).chat()[0] == 401


# -- usage ------------------------------------------------------------------------------------
def test_usage_report_and_csv_break_spend_down_by_key(alice, live_server_url):
    ci = make_key(alice, name="=ci", budget_usd="1")
    staging = make_key(alice, name="staging")
    for secret in (ci["key"], ci["key"], staging["key"]):
        assert Caller.key(secret).chat(max_tokens=5)[0] == 200
    assert Caller.token(alice).chat(max_tokens=5)[0] == 200
    _, report, _ = Caller.token(alice).call("get", "/api/v1/usage")
    by_name = {k["name"]: k for k in report["keys"]}
    assert by_name["=ci"]["month"]["requests"] == 2 and by_name["staging"]["day"]["requests"] == 1
    ci_cost = sum(r.cost_usd for r in UsageRecord.objects.filter(api_key_id=ci["id"]))
    assert Decimal(by_name["=ci"]["month"]["cost_usd"]) == ci_cost
    assert by_name["=ci"]["budget"]["limit_usd"] == "1"
    assert Decimal(by_name["=ci"]["budget"]["spent_usd"]) == ci_cost
    assert by_name["staging"]["budget"] is None
    assert report["month"]["requests"] == 4

    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(root)
    page = browser.get(reverse("admin:llm_integration_usage_dashboard")).content.decode()
    table = page.split("Per API key")[1].split("</table>")[0]
    assert "staging" in table and "=ci" in table and ci["prefix"] in table

    staff = UserFactory(username="auditor", is_staff=True)
    token = Token.objects.create(user=staff).key
    exported = httpx.get(
        f"{live_server_url}/api/v1/usage?format=csv", headers={"Authorization": f"Token {token}"}
    )
    table = list(csv.reader(io.StringIO(exported.text)))
    column = table[0].index("api_key")
    assert sorted(row[column] for row in table[1:]) == ["", "'=ci", "'=ci", "staging"]


# -- staff --------------------------------------------------------------------------------------
def staff_with(*codenames: str, superuser: bool = False):
    user = UserFactory(username="ops", is_staff=True, is_superuser=superuser)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="llm_integration", codename__in=codenames)
    )
    return user


def test_staff_make_list_change_and_revoke_anyones_keys(alice):
    ops = Caller.token(staff_with("add_apikey", "view_apikey", "change_apikey", "delete_apikey"))
    status, created, _ = ops.call(
        "post", "/api/v1/admin/keys", {"user": "alice", "name": "contractor", "models": ["gpt"]}
    )
    assert status == 201 and created["key"].startswith("llm_") and created["user"] == "alice"
    assert Caller.key(created["key"]).chat()[0] == 200
    make_key(alice, name="own")
    _, listed, _ = ops.call("get", "/api/v1/admin/keys?user=alice")
    assert sorted(k["name"] for k in listed) == ["contractor", "own"]
    assert all("key" not in k for k in listed)

    status, changed, _ = ops.call(
        "patch",
        f"/api/v1/admin/keys/{created['id']}",
        {"budget_usd": "0.00000001", "models": ["gpt", "other"]},
    )
    assert status == 200 and changed["budget_usd"] == "0.00000001", changed
    assert changed["models"] == ["gpt", "other"]
    assert Budget.objects.get(api_key_id=created["id"]).scope == Budget.Scope.KEY
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    _, budgets, _ = Caller.token(root).call("get", "/api/v1/admin/budgets")
    assert [(b["scope"], b["api_key"]) for b in budgets] == [("key", created["prefix"])]
    keys.key_ring.clear()  # another process: within the cache's 5 s
    assert Caller.key(created["key"]).chat("other")[1]["error"]["code"] == "budget_exceeded"

    status, _, _ = ops.call("patch", f"/api/v1/admin/keys/{created['id']}", {"budget_usd": None})
    assert status == 200 and not Budget.objects.filter(api_key_id=created["id"]).exists()
    status, revoked, _ = ops.call("delete", f"/api/v1/admin/keys/{created['id']}")
    assert status == 200 and revoked["state"] == "revoked"
    assert ApiKey.objects.filter(pk=created["id"]).exists()
    assert Caller.key(created["key"]).chat()[0] == 401


def test_staff_without_permission_or_with_a_key_are_refused(alice):
    created = make_key(alice)
    assert Caller.token(staff_with()).call("get", "/api/v1/admin/keys")[0] == 403
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    root_key = make_key(root)["key"]
    status, error, _ = Caller.key(root_key).call("get", "/api/v1/admin/keys")
    assert status == 403 and "API keys cannot" in error["error"]["message"]
    assert Caller.key(root_key).call("get", "/api/v1/admin/providers")[0] == 403
    assert Caller.token(alice).call("get", f"/api/v1/admin/keys/{created['id']}")[0] == 403


def test_only_a_superuser_makes_a_key_that_acts_as_staff(alice):
    UserFactory(username="boss", is_staff=True, is_superuser=True)
    ops = Caller.token(staff_with("add_apikey", "view_apikey"))
    status, error, _ = ops.call("post", "/api/v1/admin/keys", {"user": "boss", "name": "x"})
    assert status == 403 and "superuser" in error["error"]["message"]
    assert ops.call("post", "/api/v1/admin/keys", {"user": "alice", "name": "x"})[0] == 201
    assert ops.call("post", "/api/v1/admin/keys", {"user": "ops", "name": "mine"})[0] == 201


def test_an_alias_a_key_names_cannot_be_deleted(alice):
    make_key(alice, models=["gpt"])
    ops = Caller.token(staff_with(superuser=True))
    status, error, _ = ops.call("delete", "/api/v1/admin/aliases/gpt")
    assert status == 400 and "API key" in json.dumps(error)
    assert ModelAlias.objects.filter(slug="gpt").exists()


# -- Django admin -----------------------------------------------------------------------------
def test_admin_adds_a_key_shows_its_secret_once_and_revokes_it(alice, client):
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(root)
    gpt = ModelAlias.objects.get(slug="gpt")
    response = client.post(
        "/admin/llm_integration/apikey/add/",
        {
            "user": alice.pk,
            "name": "from admin",
            "models": [gpt.pk],
            "budget_usd": "2.5",
            "budget_period": "week",
        },
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    secret = response.context["secret"]
    assert secret in response.content.decode()
    key = ApiKey.objects.get()
    assert key.digest == keys.digest(secret) and key.user == alice
    assert [a.slug for a in key.allowed_models.all()] == ["gpt"]
    budget = Budget.objects.get(api_key=key)
    assert (budget.limit_usd, budget.period, budget.scope) == (Decimal("2.5"), "week", "key")
    change = client.get(f"/admin/llm_integration/apikey/{key.pk}/change/").content.decode()
    assert secret not in change and key.prefix in change
    assert Caller.key(secret).chat()[0] == 200

    response = client.post(
        "/admin/llm_integration/apikey/",
        {"action": "revoke", "_selected_action": [key.pk]},
    )
    assert response.status_code == 302
    assert Caller.key(secret).chat()[0] == 401
    assert client.get("/admin/llm_integration/apikey/").status_code == 200


def test_admin_staff_cannot_make_a_key_for_a_superuser(alice, client):
    boss = UserFactory(username="boss", is_staff=True, is_superuser=True)
    ops = staff_with("add_apikey", "view_apikey", "change_apikey")
    client.force_login(ops)
    response = client.post(
        "/admin/llm_integration/apikey/add/",
        {"user": boss.pk, "name": "x", "budget_period": "month"},
    )
    assert response.status_code == 200 and "superuser" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_a_routing_rule_cannot_serve_a_key_with_a_model_outside_its_list(alice):
    from llm_integration.models import RoutingRule

    RoutingRule.objects.create(
        name="code-to-other", tasks=["code"], serve_with=ModelAlias.objects.get(slug="other")
    )
    secret = make_key(alice, models=["gpt"])["key"]
    caller = Caller.key(secret)
    status, error, _ = caller.chat(task="code")
    assert status == 403 and error["error"]["code"] == "model_not_allowed"
    assert "code-to-other" in error["error"]["message"]
    assert caller.chat()[0] == 200  # no rule applies: its own model
    assert UsageRecord.objects.filter(status="ok", alias="other").count() == 0


def test_a_staff_users_key_has_no_staff_rights_on_usage(alice):
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    secret = make_key(root)["key"]
    assert Caller.key(secret).call("get", "/api/v1/usage")[0] == 200
    assert Caller.key(secret).call("get", "/api/v1/usage?format=csv")[0] == 403
    assert Caller.key(secret).call("get", f"/api/v1/usage?user={alice.pk}")[0] == 403
    assert Caller.token(root).call("get", f"/api/v1/usage?user={alice.pk}")[0] == 200
