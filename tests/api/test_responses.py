"""The Responses API on ``/v1/responses`` (CONTRACT §12), with the official openai SDK
against loopback upstreams of every kind: text and items, instructions, function tools
and their outputs, streams as the SDK's stream helper reads them, stored responses
continued by ``previous_response_id``, ``store: false``, owner-only retrieval and
deletion, and one usage record per call."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import StoredResponse, UsageRecord
from tests.api.conftest import KINDS
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ARGUMENTS = '{"city": "Paris"}'
CALL = {"id": "call_01", "name": "get_weather", "arguments": ARGUMENTS}
PRICES = {"input_price_per_mtok": Decimal("2"), "output_price_per_mtok": Decimal("8")}


@pytest.fixture
def user():
    return UserFactory()


@pytest.fixture
def client(live_server_url, user):
    token = Token.objects.create(user=user).key
    return openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)


def sent(fake) -> dict:
    return [r for r in fake.requests if r.method == "POST"][-1].body


def upstream_messages(fake, kind: str) -> list:
    """The conversation as the upstream received it, in its own words."""
    return sent(fake)["messages"]


def create(client, *, stream: bool, **request):
    if not stream:
        return client.responses.create(**request)
    with client.responses.stream(**request) as events:
        return events.get_final_response()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_text_input_with_instructions_on_every_upstream(client, alias_on, kind, stream):
    fake = alias_on(kind, "model-a", **PRICES)
    fake.push(text="Bonjour !", prompt_tokens=20, completion_tokens=5)
    response = create(
        client,
        stream=stream,
        model="model-a",
        input="Say hello in French.",
        instructions="Answer briefly.",
        metadata={"task": "greeting", "ticket": "T-1"},
    )
    assert response.status == "completed" and response.output_text == "Bonjour !"
    assert response.id.startswith("resp_") and response.model == "model-a"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (20, 5)
    assert response.usage.total_tokens == 25
    assert response.metadata == {"task": "greeting", "ticket": "T-1"}
    assert response.instructions == "Answer briefly."
    body = sent(fake)
    if kind == "anthropic":
        assert body["system"] == "Answer briefly."
        assert body["messages"] == [{"role": "user", "content": "Say hello in French."}]
    else:
        assert body["messages"] == [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Say hello in French."},
        ]
    record = UsageRecord.objects.get()  # one usage record per call
    assert record.status == "ok" and record.streamed is stream
    assert record.cost_usd == Decimal("0.00008")  # 20 × 2 + 5 × 8 per million
    assert response.id == "resp_" + record.request_id.removeprefix("req_")
    assert record.tags == "" and record.alias == "model-a"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_function_call_then_its_output_continued_by_previous_response_id(
    client, alias_on, kind, stream
):
    fake = alias_on(kind, "model-a")
    fake.push(text="", tool_calls=[CALL])
    first = create(
        client, stream=stream, model="model-a", input="Weather in Paris?", tools=[WEATHER]
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and call.id.startswith("fc_")

    fake.push(text="It is sunny in Paris.")
    second = create(
        client,
        stream=stream,
        model="model-a",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "It is sunny in Paris."
    assert second.previous_response_id == first.id
    replayed = upstream_messages(fake, kind)
    if kind == "anthropic":
        assert replayed[0] == {"role": "user", "content": "Weather in Paris?"}
        assert replayed[1]["content"][0]["type"] == "tool_use"
        assert replayed[1]["content"][0]["id"] == call.call_id
        assert replayed[2]["content"][0]["type"] == "tool_result"
        assert replayed[2]["content"][0]["tool_use_id"] == call.call_id
    else:
        assert replayed[0] == {"role": "user", "content": "Weather in Paris?"}
        assert replayed[1]["role"] == "assistant"
        assert replayed[1]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert replayed[2]["role"] == "tool" and replayed[2]["content"] == "sunny"
    assert UsageRecord.objects.count() == 2


def test_the_stream_is_the_event_sequence_openai_sends(client, alias_on, live_server_url):
    fake = alias_on("openai", "model-a")
    fake.push(text="Hello there", tool_calls=[CALL], prompt_tokens=80)
    events = list(
        client.responses.create(model="model-a", input="Hi", tools=[WEATHER], stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert kinds.count("response.output_item.added") == 2
    assert kinds.count("response.output_item.done") == 2
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert text == "Hello there" and json.loads(arguments) == {"city": "Paris"}
    for name in (
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.function_call_arguments.done",
    ):
        assert name in kinds
    completed = events[-1].response
    assert completed.usage.total_tokens == 87
    assert [item.type for item in completed.output] == ["message", "function_call"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_kept_response_is_read_back_and_deleted_by_its_owner_only(
    client, alias_on, live_server_url, stream
):
    alias_on("ollama", "model-a").push(text="Kept.")
    response = create(client, stream=stream, model="model-a", input="Keep this.")
    again = client.responses.retrieve(response.id)
    assert again.output_text == "Kept." and again.id == response.id
    assert again.usage.total_tokens == response.usage.total_tokens

    stranger = openai.OpenAI(
        base_url=f"{live_server_url}/v1",
        api_key=Token.objects.create(user=UserFactory()).key,
        max_retries=0,
    )
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(response.id)
    with pytest.raises(openai.BadRequestError) as refused:
        stranger.responses.create(model="model-a", input="Go on.", previous_response_id=response.id)
    assert refused.value.body["code"] == "previous_response_not_found"
    assert refused.value.body["param"] == "previous_response_id"

    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert not StoredResponse.objects.exists()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_store_false_keeps_nothing(client, alias_on, stream):
    alias_on("openai", "model-a").push(text="Forgotten.")
    response = create(client, stream=stream, model="model-a", input="Hi", store=False)
    assert response.output_text == "Forgotten." and response.store is False
    assert not StoredResponse.objects.exists()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert UsageRecord.objects.count() == 1  # billed all the same


def test_a_conversation_of_several_turns_is_replayed_in_order(client, alias_on):
    fake = alias_on("openai", "model-a")
    previous = None
    for turn in range(4):
        fake.push(text=f"answer {turn}")
        response = client.responses.create(
            model="model-a", input=f"question {turn}", previous_response_id=previous
        )
        previous = response.id
    assert [m["content"] for m in sent(fake)["messages"]] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
        "question 3",
    ]
    # Each row holds its own turn; the chain names the earlier ones.
    last = StoredResponse.objects.get(pk=previous)
    assert len(last.chain) == 3 and last.input_items[0]["content"] == "question 3"


def test_a_deleted_link_in_the_chain_is_refused_by_name(client, alias_on):
    fake = alias_on("openai", "model-a")
    fake.push(text="one")
    first = client.responses.create(model="model-a", input="1")
    fake.push(text="two")
    second = client.responses.create(model="model-a", input="2", previous_response_id=first.id)
    client.responses.delete(first.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="model-a", input="3", previous_response_id=second.id)
    assert first.id in refused.value.body["message"]


def test_items_with_roles_images_and_ids_as_codex_sends_them(client, alias_on):
    fake = alias_on("openai", "model-a", supports_vision=True)
    fake.push(text="Done.")
    response = client.responses.create(
        model="model-a",
        store=False,
        input=[
            {"type": "message", "role": "developer", "content": "You are a coding agent."},
            {
                "type": "message",
                "id": "msg_client_1",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this picture?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        tools=[{**WEATHER, "name": "shell"}],
        tool_choice={"type": "function", "name": "shell"},
        parallel_tool_calls=False,
        reasoning={"summary": "auto"},
        include=["reasoning.encrypted_content"],
        prompt_cache_key="session-1",
        extra_body={"client_metadata": {"x": "y"}},
    )
    assert response.output_text == "Done."
    body = sent(fake)
    assert body["messages"][0] == {"role": "system", "content": "You are a coding agent."}
    user_parts = body["messages"][1]["content"]
    assert user_parts[0] == {"type": "text", "text": "What is in this picture?"}
    assert user_parts[1]["image_url"]["url"].startswith("data:image/png")
    assert body["messages"][2]["content"] == "Let me look."
    assert body["messages"][2]["tool_calls"][0]["id"] == "c1"
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    assert body["tools"][0]["function"]["name"] == "shell"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "shell"}}
    assert body["parallel_tool_calls"] is False
    assert body["prompt_cache_key"] == "session-1"
    assert "client_metadata" not in body and "include" not in body


def test_text_format_and_reasoning_effort_reach_the_upstream(client, alias_on):
    fake = alias_on("openai", "model-a")
    fake.push(text='{"ok": true}', reasoning_tokens=3, completion_tokens=9)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    response = client.responses.create(
        model="model-a",
        input="Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
        reasoning={"effort": "low"},
        max_output_tokens=50,
        temperature=0.2,
    )
    body = sent(fake)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema},
    }
    assert body["reasoning_effort"] == "low"
    assert body["temperature"] == 0.2
    assert (body.get("max_completion_tokens") or body.get("max_tokens")) == 50
    assert response.usage.output_tokens_details.reasoning_tokens == 3
    assert response.reasoning.effort == "low"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_answer_cut_at_max_output_tokens_is_incomplete(client, alias_on, stream):
    alias_on("anthropic", "model-a").push(text="It was a dark", finish_reason="length")
    if stream:
        events = list(
            client.responses.create(
                model="model-a", input="A story", max_output_tokens=4, stream=True
            )
        )
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    else:
        response = client.responses.create(model="model-a", input="A story", max_output_tokens=4)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "It was a dark"


def test_cached_tokens_are_shown_and_priced(client, alias_on):
    fake = alias_on(
        "anthropic",
        "model-a",
        input_price_per_mtok=Decimal("3"),
        output_price_per_mtok=Decimal("15"),
    )
    fake.push(text="Hi", prompt_tokens=1000, cache_read_tokens=800, completion_tokens=10)
    response = client.responses.create(model="model-a", input="Hi")
    assert response.usage.input_tokens == 1000
    assert response.usage.input_tokens_details.cached_tokens == 800
    record = UsageRecord.objects.get()
    # 200 uncached × 3 + 800 reads × 0.3 + 10 × 15, per million tokens
    assert record.cost_usd == Decimal("0.00099")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"truncation": "disabled"}, "truncation"),
        ({"include": ["garbage"]}, "include"),
        ({"reasoning": {"summary": 42}}, "reasoning.summary"),
        ({"reasoning": {"generate_summary": {"a": 1}}}, "reasoning.generate_summary"),
        ({"input": [{"role": "user", "content": "x", "id": "a" * 200}]}, "input[0].id"),
        ({"input": [{"role": "user", "content": "x", "status": {"evil": 1}}]}, "input[0].status"),
        (
            {"input": [{"type": "reasoning", "summary": "x", "encrypted_content": "e"}]},
            "input[0].summary",
        ),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"previous_response_id": "resp_\u0000"}, "previous_response_id"),
        ({"input": [{"type": ["message"], "content": "x"}]}, "input[0].type"),
        ({"input": [{"role": {"a": 1}, "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"type": "reasoning", "encrypted_content": "abc"}]},
            "input[0].encrypted_content",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]},
            "input[0].call_id",
        ),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": "x", "extra": 1}]}, "input[0].extra"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"metadata": {"task": 5}}, "metadata"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"background": True}, "background"),
    ],
)
def test_what_it_does_not_carry_is_refused_by_name(client, alias_on, extra, param):
    fake = alias_on("openai", "model-a")
    request = {"model": "model-a", "input": "Hi", **extra}
    with pytest.raises((openai.BadRequestError, openai.PermissionDeniedError)) as refused:
        client.responses.create(
            **{k: v for k, v in request.items() if k == "model"},
            extra_body={k: v for k, v in request.items() if k != "model"},
        )
    assert refused.value.body["param"] == param
    assert not [r for r in fake.requests if r.method == "POST"]
    assert not UsageRecord.objects.exists()


def test_an_upstream_failure_after_the_first_event_is_response_failed(client, alias_on):
    alias_on("openai", "model-a").push(mode="cut", cut_after=2)
    events = list(client.responses.create(model="model-a", input="Hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.code
    assert not StoredResponse.objects.exists()
    assert UsageRecord.objects.get().status == "error"


def test_unknown_response_and_no_credentials(client, live_server_url):
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_nope")
    assert missing.value.body["code"] == "response_not_found"
    answer = httpx.post(f"{live_server_url}/v1/responses", json={"model": "m", "input": "x"})
    assert answer.status_code == 401


def test_hosted_tools_are_left_out_when_the_setting_allows_and_the_row_says_so(
    client, alias_on, settings, live_server_url
):
    settings.LLM_INTEGRATION = {**settings.LLM_INTEGRATION, "DROP_UNSUPPORTED_TOOLS": True}
    fake = alias_on("openai", "model-a")
    fake.push(text="Searched nothing.")
    response = client.responses.create(
        model="model-a",
        input="Hi",
        tools=[WEATHER, {"type": "web_search"}],
        extra_body={"store": False},
    )
    assert response.output_text == "Searched nothing."
    assert [tool["function"]["name"] for tool in sent(fake)["tools"]] == ["get_weather"]
    assert UsageRecord.objects.get().dropped == "tool:web_search"


def test_anthropic_server_tools_are_left_out_the_same_way(
    live_server_url, alias_on, settings, user
):
    import anthropic

    settings.LLM_INTEGRATION = {**settings.LLM_INTEGRATION, "DROP_UNSUPPORTED_TOOLS": True}
    fake = alias_on("anthropic", "model-a")
    fake.push(text="Fine.")
    claude = anthropic.Anthropic(
        base_url=live_server_url, api_key=Token.objects.create(user=user).key, max_retries=0
    )
    claude.messages.create(
        model="model-a",
        max_tokens=100,
        messages=[{"role": "user", "content": "Hi"}],
        tools=[
            {"name": "read", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ],
    )
    assert [tool["name"] for tool in sent(fake)["tools"]] == ["read"]
    assert UsageRecord.objects.get().dropped == "tool:web_search_20250305"


def test_idle_conversations_are_pruned_whole_and_admin_lists_them(client, alias_on, user):
    import datetime

    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    fake = alias_on("openai", "model-a")
    ids = {}
    for name, previous in (("idle", None), ("live", None), ("live 2", "live")):
        fake.push(text=name)
        ids[name] = client.responses.create(
            model="model-a", input=name, previous_response_id=ids.get(previous)
        ).id
    long_ago = timezone.now() - datetime.timedelta(days=40)
    StoredResponse.objects.filter(pk__in=[ids["idle"], ids["live"]]).update(created_at=long_ago)

    staff = Client()
    staff.force_login(UserFactory(is_staff=True, is_superuser=True))
    listing = staff.get("/admin/llm_integration/storedresponse/")
    assert listing.status_code == 200 and ids["idle"] in listing.content.decode()

    call_command("llm_prune_responses", "--older-than", "30d", "--batch-size", "1")
    # The live conversation's first turn stays: its next request replays it.
    assert set(StoredResponse.objects.values_list("pk", flat=True)) == {ids["live"], ids["live 2"]}
    fake.push(text="on")
    client.responses.create(model="model-a", input="go on", previous_response_id=ids["live 2"])
    assert [m["content"] for m in sent(fake)["messages"]][:2] == ["live", "live"]


def test_text_with_a_nul_is_kept_and_replayed(client, alias_on, live_server_url):
    """PostgreSQL's jsonb cannot hold a NUL: the items are kept as JSON text."""
    fake = alias_on("openai", "model-a")
    fake.push(text="Seen.")

    def post(raw: bytes) -> httpx.Response:
        headers = {"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"}
        return httpx.post(f"{live_server_url}/v1/responses", content=raw, headers=headers)

    lone = post(b'{"model": "model-a", "input": "a \\ud800 c"}')
    assert lone.status_code == 400 and lone.json()["error"]["param"] == "input"
    first = post(b'{"model": "model-a", "input": "a\\u0000b"}')
    assert first.status_code == 200, first.text
    fake.push(text="Again.")
    client.responses.create(model="model-a", input="more", previous_response_id=first.json()["id"])
    assert sent(fake)["messages"][0]["content"] == "a\x00b"
    assert sent(fake)["messages"][1]["content"] == "Seen."


REASONING = [
    {"thinking": "The user greets me.", "signature": "sig-A1"},
    {"redacted": "opaque-bytes=="},
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_reasoning_items_carry_thinking_and_go_back_upstream(client, alias_on, stream):
    fake = alias_on("anthropic", "model-a")
    fake.push(text="", tool_calls=[CALL], thinking=REASONING, completion_tokens=300)
    first = create(
        client,
        stream=stream,
        model="model-a",
        input="Weather in Paris?",
        tools=[WEATHER],
        reasoning={"effort": "high"},
        max_output_tokens=8000,
    )
    assert sent(fake)["thinking"]["type"] == "enabled"  # effort as a thinking budget
    thought, redacted, call = first.output
    assert thought.type == "reasoning" and thought.content[0].text == "The user greets me."
    assert thought.encrypted_content and redacted.content == []
    assert call.type == "function_call"
    # Codex's way: store false, every item sent back (reasoning included).
    fake.push(text="Sunny.")
    replay = [item.model_dump(exclude_none=True) for item in first.output]
    create(
        client,
        stream=stream,
        model="model-a",
        store=False,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *replay,
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER],
        reasoning={"effort": "high"},
        max_output_tokens=8000,
    )
    turn = sent(fake)["messages"][1]
    assert turn["role"] == "assistant"
    assert turn["content"][:2] == [
        {"type": "thinking", "thinking": "The user greets me.", "signature": "sig-A1"},
        {"type": "redacted_thinking", "data": "opaque-bytes=="},
    ]
    assert turn["content"][2]["type"] == "tool_use"


def test_stream_items_are_done_before_the_next_is_added(client, alias_on):
    alias_on("openai", "model-a").push(text="Let me check.", tool_calls=[CALL], prompt_tokens=80)
    events = list(
        client.responses.create(model="model-a", input="Hi", tools=[WEATHER], stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta"
    )
    added = [e.item.id for e in events if e.type == "response.output_item.added"]
    done = [e.item.id for e in events if e.type == "response.output_item.done"]
    assert added == done and len(set(added)) == 2


def test_parallel_tool_calls_is_a_hint_for_ollama(client, alias_on):
    fake = alias_on("ollama", "model-a")
    fake.push(text="One call at most.")
    response = client.responses.create(
        model="model-a", input="Hi", tools=[WEATHER], parallel_tool_calls=False
    )
    assert response.output_text == "One call at most." and response.parallel_tool_calls is False
    assert "parallel_tool_calls" not in sent(fake)


def test_a_failure_mid_stream_has_openai_s_error_code(client, alias_on):
    alias_on("openai", "model-a").push(mode="cut", cut_after=2)
    events = list(client.responses.create(model="model-a", input="Hi", stream=True))
    assert events[-1].response.error.code == "server_error"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_malformed_ids_are_not_found_without_touching_the_database(client, live_server_url):
    headers = {"Authorization": f"Bearer {client.api_key}"}
    for path in ("resp_%00", "resp_" + "a" * 32 + "%00", "x" * 300):
        answer = httpx.get(f"{live_server_url}/v1/responses/{path}", headers=headers)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "response_not_found"


@pytest.mark.parametrize("responses_api", [False, True], ids=["chat", "responses"])
def test_langchain_pointed_at_the_gateway(live_server_url, alias_on, user, responses_api):
    from langchain_openai import ChatOpenAI

    alias_on("anthropic", "model-a", **PRICES).push(
        text="Hello from LangChain.", prompt_tokens=30, completion_tokens=6
    )
    llm = ChatOpenAI(
        base_url=f"{live_server_url}/v1",
        api_key=Token.objects.create(user=user).key,
        model="model-a",
        max_retries=0,
        use_responses_api=responses_api,
    )
    message = llm.invoke("Hi")
    assert message.text == "Hello from LangChain."
    assert message.usage_metadata["input_tokens"] == 30
    assert message.usage_metadata["output_tokens"] == 6
    assert UsageRecord.objects.get().cost_usd == Decimal("0.000108")  # 30 × 2 + 6 × 8


def test_reading_back_as_a_stream_is_refused_by_name(client, alias_on):
    alias_on("openai", "model-a").push(text="Kept.")
    response = client.responses.create(model="model-a", input="Hi")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.retrieve(response.id, stream=True)
    assert refused.value.body["param"] == "stream"
    assert client.responses.retrieve(response.id, include=["reasoning.encrypted_content"]).id
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.retrieve(response.id, include=["message.output_text.logprobs"])
    assert refused.value.body["param"] == "include"


def test_errors_of_the_chat_path_name_the_responses_parameters(client, alias_on):
    alias_on("ollama", "model-a")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="model-a", input="Hi", reasoning={"effort": "low"})
    assert refused.value.body["param"] == "reasoning.effort"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="model-a",
            input="Hi",
            tools=[{**WEATHER, "name": 5}],
        )
    assert refused.value.body["param"] == "tools[0].name"


@pytest.mark.parametrize("kind", ["openai_compatible", "anthropic"])
def test_a_call_cut_short_is_left_out_of_the_next_turn_unless_answered(client, alias_on, kind):
    """An answer stopped at max_output_tokens in the middle of a call: the call is
    incomplete, no tool ran it, and upstreams refuse a call without its result."""
    fake = alias_on("openai", "model-a")
    cut = {"id": "call_09", "name": "get_weather", "arguments": '{"city": "Par'}
    fake.push(text="Let me look.", tool_calls=[cut], finish_reason="length")
    first = client.responses.create(
        model="model-a", input="Weather in Paris?", tools=[WEATHER], max_output_tokens=50
    )
    assert first.status == "incomplete"
    assert [(item.type, item.status) for item in first.output] == [
        ("message", "completed"),
        ("function_call", "incomplete"),
    ]

    upstream = alias_on(kind, "model-b")
    upstream.push(text="Go on, then.")
    second = client.responses.create(
        model="model-b", previous_response_id=first.id, input="Go on", tools=[WEATHER]
    )
    assert second.output_text == "Go on, then."
    replayed = upstream_messages(upstream, kind)
    assert [m["role"] for m in replayed] == ["user", "assistant", "user"]
    assert "tool_calls" not in replayed[1] and "Let me look." in json.dumps(replayed[1])
    assert "tool_use" not in json.dumps(replayed)

    # Answered after all: it goes back, its unfinished arguments as {}.
    upstream.push(text="Sunny.")
    client.responses.create(
        model="model-b",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_09", "output": "sunny"}],
        tools=[WEATHER],
    )
    replayed = upstream_messages(upstream, kind)
    if kind == "anthropic":
        (use,) = [b for b in replayed[1]["content"] if b["type"] == "tool_use"]
        assert use["input"] == {} and use["id"] == "call_09"
    else:
        assert replayed[1]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_a_client_call_whose_arguments_are_not_an_object_is_named(client, alias_on):
    alias_on("anthropic", "model-a")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="model-a",
            input=[
                {"role": "user", "content": "Weather?"},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": "[1",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            tools=[WEATHER],
        )
    assert refused.value.body["param"] == "input[1].arguments"
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"image_url": "ftp://example.com/a.png"}, "input[0].content[1].image_url"),
        (
            {"image_url": "https://example.com/a.png", "detail": "ultra"},
            "input[0].content[1].detail",
        ),
        ({"image_url": "data:image/png;base64,!!!"}, "input[0].content[1]"),
        ({"image_url": "data:image/tiff;base64,AAAA"}, "input[0].content[1]"),
    ],
)
def test_an_image_s_errors_name_the_part_as_the_client_wrote_it(client, alias_on, part, param):
    alias_on("openai", "model-a")
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", **part}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="model-a", input=[{"role": "user", "content": content}])
    assert refused.value.body["param"] == param
    assert "messages" not in refused.value.body["message"]


def test_an_output_limit_past_the_context_window_names_max_output_tokens(client, alias_on):
    alias_on("openai", "model-a", context_window=8192)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="model-a", input="Hi", max_output_tokens=10**30)
    assert refused.value.body["param"] == "max_output_tokens"
    assert "context window (8192 tokens)" in refused.value.body["message"]


def test_client_param_translation():
    from llm_integration.formats.responses import client_param

    assert client_param("response_format.json_schema.schema") == "text.format.schema"
    assert client_param("response_format") == "text.format"
    assert client_param("tools[3].function.parameters") == "tools[3].parameters"
    assert client_param("tool_choice.function.name") == "tool_choice.name"
    assert client_param("temperature") == "temperature" and client_param(None) is None


def test_interleaved_call_pieces_end_up_in_their_own_calls(client, alias_on):
    """An upstream may send a piece of one call after the next has begun (OpenAI's
    stream allows it): each call's arguments are whole in the completed response."""

    def interleaved(exchange):
        def chunk(delta, finish=None):
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
            return f"data: {json.dumps({**body, 'choices': [choice]})}\n\n".encode()

        def call(index, arguments, **first):
            piece = {"index": index, "function": {"arguments": arguments, **first}}
            if first:
                piece = {**piece, "id": f"call_{index}", "type": "function"}
            return chunk({"tool_calls": [piece]})

        exchange.start_stream("text/event-stream")
        for part in (
            chunk({"role": "assistant", "content": None}),
            call(0, '{"city": ', name="get_weather"),
            call(1, '{"city": "Rome"}', name="get_weather"),
            call(0, '"Paris"}'),
            chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        ):
            exchange.write(part)
        exchange.end_stream()

    alias_on("openai", "model-a", supports_tools=True).push(raw=interleaved)
    with client.responses.stream(model="model-a", input="Two cities", tools=[WEATHER]) as events:
        response = events.get_final_response()
    arguments = [json.loads(item.arguments) for item in response.output]
    assert arguments == [{"city": "Paris"}, {"city": "Rome"}]


@pytest.mark.parametrize("kind", KINDS)
def test_text_verbosity_reaches_openai_compatible_upstreams_only(client, alias_on, kind):
    fake = alias_on(kind, "model-a")
    fake.push(text="Short.")
    request = {"model": "model-a", "input": "Hi", "text": {"verbosity": "low"}}
    if kind != "openai":
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(**request)
        assert refused.value.body["param"] == "text.verbosity"
        return
    assert client.responses.create(**request).output_text == "Short."
    assert sent(fake)["verbosity"] == "low"
    fake.push(text="Short.")
    client.chat.completions.create(
        model="model-a",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"verbosity": "high"},
    )
    assert sent(fake)["verbosity"] == "high"
