"""Routing rules and data locality (CONTRACT §7), through every surface.

An external alias ``gpt`` (a loopback OpenAI upstream) and a local alias ``local`` (the
dummy provider: local by kind). Rules route by task, plan, requested model and pattern;
keep requests local (never an external upstream: not as the alias, not by a fallback,
not through the response cache); or refuse them. The usage row names the rule and the
caller's tags.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import dataclass

import anthropic
import openai
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.exceptions import ValidationError
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from llm_integration.models import (
    AliasFallback,
    ModelAlias,
    Plan,
    PlanEntitlement,
    Provider,
    RoutingRule,
    Subscription,
    UsageRecord,
)
from llm_integration.services.policy.rules import RuleBook
from project.asgi import application
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory
from tests.fakes.openai import OpenAIFake
from tests.fakes.server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "Patient ID 4711-0815 was admitted"
SENSITIVE = r"(?i)patient\s+id\s+\d{4}-\d{4}"


@dataclass
class Setup:
    cloud: Provider
    gpt: ModelAlias
    local: ModelAlias
    token: str
    fake: OpenAIFake


@pytest.fixture
def setup(openai_fake, api_key_env) -> Setup:
    cloud = ProviderFactory(
        name="cloud", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    onprem = ProviderFactory(name="onprem", kind="dummy")
    gpt = ModelAliasFactory(slug="gpt", provider=cloud, upstream_model="gpt-4o-mini")
    local = ModelAliasFactory(slug="local", provider=onprem, upstream_model="echo")
    token = Token.objects.create(user=UserFactory()).key
    return Setup(cloud, gpt, local, token, openai_fake)


def rule(name: str, position: int = 0, **fields) -> RoutingRule:
    row = RoutingRule(name=name, position=position, **fields)
    row.full_clean()
    row.save()
    return row


def chats(fake: OpenAIFake) -> int:
    """Chat requests the external upstream received."""
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


def rest(setup: Setup, body: dict, **headers) -> tuple[int, dict | str]:
    """``POST /api/v1/chat``: the status and the JSON body (a stream's text)."""

    async def post() -> tuple[int, dict | str]:
        response = await AsyncClient().post(
            "/api/v1/chat",
            json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Token {setup.token}", **headers},
        )
        if response.streaming:
            return response.status_code, b"".join(
                [part async for part in response.streaming_content]
            ).decode()
        return response.status_code, response.json()

    return asyncio.run(post())


def record(request_id: str) -> UsageRecord:
    return UsageRecord.objects.get(request_id=request_id)


# -- the rules ---------------------------------------------------------------------------
def test_a_task_label_routes_to_the_rules_alias_and_the_row_names_rule_and_tags(setup):
    rule("summaries-local", tasks=["summarize"], serve_with=setup.local)
    status, body = rest(setup, {"message": "hi", "task": "summarize", "tags": ["crm", "beta"]})
    assert status == 200 and body["model"] == "local"
    row = record(body["request_id"])
    assert (row.route, row.alias, row.tag_list) == ("summaries-local", "local", ["crm", "beta"])
    status, body = rest(setup, {"message": "hi", "task": "translate"})
    assert status == 200 and body["model"] == "gpt"
    assert record(body["request_id"]).route == ""
    assert chats(setup.fake) == 1


def test_headers_carry_task_and_tags_and_the_body_wins(setup):
    rule("by-header", tasks=["summarize"], serve_with=setup.local)
    status, body = rest(
        setup, {"message": "hi"}, **{"X-LLM-Task": "summarize", "X-LLM-Tags": "a, b"}
    )
    assert status == 200 and body["model"] == "local"
    assert record(body["request_id"]).tags == ",a,b,"
    status, body = rest(
        setup, {"message": "hi", "task": "other", "tags": ["c"]}, **{"X-LLM-Task": "summarize"}
    )
    assert body["model"] == "gpt" and record(body["request_id"]).tag_list == ["c"]


def test_plans_models_and_patterns_must_all_hold(setup):
    free = Plan.objects.create(slug="free", name="Free")
    user = UserFactory()
    Subscription.objects.create(user=user, plan=free)
    setup.token = Token.objects.create(user=user).key
    rule("free-gpt-secret", plans=["free"], model_ids=["gpt"], pattern=SENSITIVE, locality="local")
    assert rest(setup, {"message": "hello", "model": "gpt"})[1]["model"] == "gpt"  # no pattern
    assert rest(setup, {"message": SECRET, "model": "local"})[1]["model"] == "local"
    status, body = rest(setup, {"message": SECRET, "model": "gpt"})
    assert status == 503 and body["error"]["code"] == "no_local_model"  # gpt has no local fallback
    assert record(body["error"]["request_id"]).route == "free-gpt-secret"


def test_the_first_matching_rule_in_position_order_applies(setup):
    rule("second", position=2, tasks=["t"], refuse_message="Not this.")
    rule("first", position=1, tasks=["t"], serve_with=setup.local)
    status, body = rest(setup, {"message": "hi", "task": "t"})
    assert status == 200 and record(body["request_id"]).route == "first"


def test_a_refusal_is_403_policy_refused_and_not_charged(setup):
    rule("no-secrets", pattern=SENSITIVE, refuse_message="Patient data stays out of chat.")
    status, body = rest(setup, {"message": f"Summarize: {SECRET}"})
    assert status == 403
    assert body["error"]["code"] == "policy_refused"
    assert body["error"]["message"] == "Patient data stays out of chat."
    row = record(body["error"]["request_id"])
    assert (row.status, row.route, row.cost_usd) == ("refused", "no-secrets", 0)
    assert chats(setup.fake) == 0


# -- locality ----------------------------------------------------------------------------
def test_local_only_goes_to_the_first_local_fallback_and_nothing_leaves(setup):
    AliasFallback.objects.create(alias=setup.gpt, fallback=setup.local)
    rule("sensitive-local", pattern=SENSITIVE, locality="local")
    for stream in (False, True):
        status, body = rest(setup, {"message": SECRET, "model": "gpt", "stream": stream})
        assert status == 200
        if stream:
            assert '"model":"local"' in body and '"done":true' in body
        else:
            assert body["model"] == "local"
    assert chats(setup.fake) == 0
    assert set(UsageRecord.objects.values_list("alias", "route")) == {("local", "sensitive-local")}


def test_a_local_request_never_falls_back_to_an_external_model(setup, settings):
    broken = OpenAIFake()
    broken.default = Behaviour(mode="error", status=500)
    broken.start()
    try:
        onsite = ProviderFactory(
            name="onsite-vllm", kind="openai_compatible", base_url=broken.base_url, max_retries=0
        )
        vllm = ModelAliasFactory(
            slug="vllm", provider=onsite, upstream_model="fake-model", locality="local"
        )
        AliasFallback.objects.create(alias=vllm, fallback=setup.gpt)
        rule("keep-local", tasks=["private"], locality="local")
        status, body = rest(setup, {"message": "hi", "model": "vllm", "task": "private"})
        assert status == 503 and body["error"]["code"] == "no_upstream"
        assert chats(setup.fake) == 0  # the external fallback was never tried
        status, body = rest(setup, {"message": "hi", "model": "vllm"})  # no rule: falls back
        assert status == 200 and body["model"] == "gpt"
    finally:
        broken.stop()


def test_a_local_request_is_not_answered_from_an_external_models_cache(setup, settings):
    settings.LLM_INTEGRATION = {"CACHE_ENABLED": True}
    ModelAlias.objects.filter(pk=setup.gpt.pk).update(cache_responses=True)
    AliasFallback.objects.create(alias=setup.gpt, fallback=setup.local)
    body = {"message": "hi", "model": "gpt", "temperature": 0}
    first = rest(setup, body)[1]
    assert rest(setup, body)[1]["cached"] is True  # gpt's answer is in the cache
    rule("private-local", tasks=["private"], locality="local")
    status, answer = rest(setup, {**body, "task": "private"})
    assert status == 200 and answer["model"] == "local" and answer["cached"] is False
    assert answer["answer"] != first["answer"]
    assert chats(setup.fake) == 1


def test_locality_follows_the_kind_unless_set(setup):
    assert setup.local.is_local and not setup.gpt.is_local
    setup.gpt.locality = "local"
    assert setup.gpt.is_local
    rule_row = RoutingRule(name="x", locality="local", serve_with=setup.local)
    rule_row.full_clean()  # a local alias may serve a local rule
    setup.gpt.locality = ""
    setup.gpt.save()
    with pytest.raises(ValidationError) as info:
        RoutingRule(name="y", locality="local", serve_with=setup.gpt).full_clean()
    assert "serve_with" in info.value.message_dict


# -- every surface -----------------------------------------------------------------------
def test_openai_sdk_metadata_and_headers(setup, live_server_url):
    rule("sdk-task", tasks=["summarize"], serve_with=setup.local)
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=setup.token, max_retries=0)
    reply = client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": "hi"}],
        metadata={"task": "summarize", "tags": "crm,beta"},
    )
    assert reply.model == "local"
    row = UsageRecord.objects.get(request_id=reply.id.removeprefix("chatcmpl-"))
    assert (row.route, row.tag_list) == ("sdk-task", ["crm", "beta"])
    streamed = client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"X-LLM-Task": "summarize"},
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert chats(setup.fake) == 0
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "hi"}], metadata={"team": "x"}
        )
    assert info.value.body["param"] == "metadata.team"


def test_anthropic_sdk_by_header(setup, live_server_url):
    rule("messages-local", tasks=["private"], locality="local")
    AliasFallback.objects.create(alias=setup.gpt, fallback=setup.local)
    client = anthropic.Anthropic(base_url=live_server_url, api_key=setup.token, max_retries=0)
    message = client.messages.create(
        model="gpt",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-LLM-Task": "private", "X-LLM-Tags": "support"},
    )
    assert message.model == "local"
    assert UsageRecord.objects.get(route="messages-local").tag_list == ["support"]
    assert chats(setup.fake) == 0


def test_embeddings_follow_the_rules_by_header(setup, live_server_url):
    rule("no-embeddings", tasks=["forbidden"], refuse_message="No embeddings for this task.")
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=setup.token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.embeddings.create(model="gpt", input="hi", extra_headers={"X-LLM-Task": "forbidden"})
    assert info.value.body["code"] == "policy_refused"


async def test_websocket_frames_carry_task_and_tags(setup):
    await sync_to_async(rule)("ws-local", tasks=["summarize"], serve_with=setup.local)
    ws = WebsocketCommunicator(
        application, "/ws/llm/chat/", headers=[(b"origin", b"http://localhost")]
    )
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": setup.token})
    await ws.send_json_to(
        {"type": "chat", "message": "hi", "model": "gpt", "task": "summarize", "tags": ["ws"]}
    )
    start = await ws.receive_json_from()
    while (frame := await ws.receive_json_from())["type"] == "token":
        pass
    assert frame["type"] == "done"
    row = await UsageRecord.objects.aget(request_id=start["request_id"])
    assert (row.alias, row.route, row.tag_list) == ("local", "ws-local", ["ws"])
    await ws.send_json_to({"type": "chat", "message": "hi", "tags": "not a list!"})
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["param"] == "tags"
    await ws.disconnect()


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        ({"task": "has space"}, {}, "task"),
        ({"tags": ["ok", "no,comma"]}, {}, "tags"),
        ({"tags": [f"t{i}" for i in range(17)]}, {}, "tags"),
        ({}, {"X-LLM-Tags": "=HYPERLINK(1)"}, "X-LLM-Tags"),
        ({}, {"X-LLM-Task": "x" * 65}, "X-LLM-Task"),
    ],
)
def test_bad_labels_are_a_400_naming_the_field(setup, body, headers, param):
    status, answer = rest(setup, {"message": "hi", **body}, **headers)
    assert status == 400 and param in answer["error"]["message"], answer
    assert chats(setup.fake) == 0


# -- rows, reports, exports --------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"pattern": r"(a)\1", "refuse_message": "x"}, "pattern"),  # backreference
        ({"pattern": r"(?=secret)", "refuse_message": "x"}, "pattern"),  # lookahead
        ({"pattern": "(unclosed", "refuse_message": "x"}, "pattern"),
        ({"pattern": "x" * 2001, "refuse_message": "x"}, "pattern"),
        ({"tasks": ["a b"], "refuse_message": "x"}, "tasks"),
        ({"plans": ["no-such-plan"], "refuse_message": "x"}, "plans"),
        ({"model_ids": ["no-such-alias"], "refuse_message": "x"}, "model_ids"),
        ({"tasks": ["t"]}, "__all__"),  # no action
        ({"refuse_message": "x", "locality": "local"}, "refuse_message"),
    ],
)
def test_rules_that_cannot_work_are_refused_when_saved(setup, fields, field):
    with pytest.raises(ValidationError) as info:
        RoutingRule(name="bad", **fields).full_clean()
    assert field in info.value.message_dict, info.value.message_dict


def test_fifty_patterns_over_a_hundred_kilobytes_match_in_one_pass(setup):
    rows = [
        RoutingRule(pk=i, name=f"r{i}", pattern=rf"(?i)needle-{i}\b|(x+x+)+y", refuse_message="x")
        for i in range(50)
    ]
    book = RuleBook(rows)
    haystack = ("x" * 99_000) + " needle-37 "  # (x+x+)+y backtracks forever in Python's re
    route = book.route(task="", plan="", model="gpt", text=lambda: haystack)
    assert route.rule == "r37"
    assert book.route(task="", plan="", model="gpt", text=lambda: "x" * 100_000).rule == ""


def test_csv_export_and_dashboard_show_rules_and_tags(setup, admin_client):
    rule("summaries-local", tasks=["summarize"], serve_with=setup.local)
    rest(setup, {"message": "hi", "task": "summarize", "tags": ["crm", "beta"]})
    rest(setup, {"message": "hi", "tags": ["crm"]})
    staff = admin_client.get("/admin/llm_integration/usagerecord/dashboard/")
    assert staff.status_code == 200
    content = staff.content.decode()
    assert "summaries-local" in content and "<td>crm</td><td>2</td>" in content
    user = UserFactory(is_staff=True)
    token = Token.objects.create(user=user).key

    async def download() -> str:
        export = await AsyncClient().get(
            "/api/v1/usage?format=csv", headers={"Authorization": f"Token {token}"}
        )
        return b"".join([part async for part in export.streaming_content]).decode()

    rows = list(csv.DictReader(io.StringIO(asyncio.run(download()))))
    assert sorted((r["route"], r["tags"]) for r in rows) == [
        ("", "crm"),
        ("summaries-local", "crm,beta"),
    ]


def test_a_rules_alias_must_be_open_to_the_callers_plan(setup):
    pro = Plan.objects.create(slug="pro", name="Pro")
    PlanEntitlement.objects.create(plan=pro, alias=setup.local)  # local: pro only
    rule("to-local", tasks=["summarize"], serve_with=setup.local)
    status, body = rest(setup, {"message": "hi", "task": "summarize"})
    assert status == 403 and body["error"]["code"] == "model_not_allowed"


# -- rows saved past clean(), aliases that cannot serve, large texts ---------------------
def test_a_rule_saved_past_its_checks_fails_closed_naming_itself(setup):
    RoutingRule.objects.create(name="hand-made", pattern=r"(\w+) \1", locality="local")
    RoutingRule.objects.create(name="one-task", position=1, tasks="summarize", refuse_message="No.")
    status, body = rest(setup, {"message": "hi"})
    assert status == 503 and body["error"]["code"] == "configuration_error"
    assert "hand-made" in body["error"]["message"]
    assert chats(setup.fake) == 0
    RoutingRule.objects.filter(name="hand-made").delete()
    assert rest(setup, {"message": "hi", "task": "sum"})[0] == 200  # a label, not a substring
    assert rest(setup, {"message": "hi", "task": "summarize"})[0] == 403


def test_a_rules_alias_serves_only_its_own_mode_and_a_disabled_one_is_named(setup, live_server_url):
    ModelAliasFactory(
        slug="embed",
        provider=setup.cloud,
        upstream_model="text-embedding-3-small",
        mode="embedding",
    )
    rule("summaries", tasks=["summarize"], serve_with=setup.local)
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=setup.token, max_retries=0)
    vectors = client.embeddings.create(
        model="embed", input="hi", extra_headers={"X-LLM-Task": "summarize"}
    )
    assert vectors.model == "embed"  # the rule's chat alias does not serve embeddings
    setup.local.enabled = False
    setup.local.save()
    status, body = rest(setup, {"message": "hi", "task": "summarize"})
    assert status == 503 and "summaries" in body["error"]["message"]
    assert record(body["error"]["request_id"]).route == "summaries"
    assert chats(setup.fake) == 0


def test_a_large_request_is_searched_off_the_event_loop_and_still_routed(setup, settings):
    settings.LLM_INTEGRATION = {"MAX_PROMPT_TOKENS": 1_000_000}
    ModelAlias.objects.update(context_window=1_000_000)
    AliasFallback.objects.create(alias=setup.gpt, fallback=setup.local)
    rule("sensitive-local", pattern=SENSITIVE, locality="local")
    filler = "Nothing to see in this line of the ticket history. " * 1400  # over 64 KiB
    status, body = rest(setup, {"message": f"{filler}\n{SECRET}", "model": "gpt"})
    assert status == 200 and body["model"] == "local"
    assert chats(setup.fake) == 0


async def test_a_lone_surrogate_in_tool_arguments_is_refused_on_the_websocket(setup):
    await sync_to_async(rule)("sensitive", pattern=SENSITIVE, refuse_message="No.")
    ws = WebsocketCommunicator(
        application, "/ws/llm/chat/", headers=[(b"origin", b"http://localhost")]
    )
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": setup.token})
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "\ud800"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    await ws.send_to(text_data=json.dumps({"type": "chat", "messages": messages}))
    await ws.receive_json_from()  # start
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["code"] == "invalid_request"
    assert "messages[1].tool_calls[0].function.arguments" in error["message"]
    await ws.disconnect()
