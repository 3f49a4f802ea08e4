"""Conversations with managed context (CONTRACT §10) over HTTP, against a loopback
OpenAI upstream: what each turn sends, the context's status turn by turn, compression
by importance and age, streams, ownership, and two messages posted at once."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from rest_framework.authtoken.models import Token

from llm_integration.models import Conversation, ConversationMessage, UsageRecord
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def upstream(alias_on):
    return alias_on("openai", "chat", context_window=100_000)


def client_of(live_server_url: str, user=None) -> httpx.Client:
    token, _ = Token.objects.get_or_create(user=user or UserFactory())
    return httpx.Client(
        base_url=f"{live_server_url}/api/v1",
        headers={"Authorization": f"Token {token.key}"},
        timeout=30,
    )


@pytest.fixture
def api(live_server_url):
    with client_of(live_server_url) as client:
        yield client


def sent_messages(fake) -> list[dict]:
    return [r for r in fake.requests if r.method == "POST"][-1].body["messages"]


def words(n: int) -> str:
    """A message of exactly ``n`` tokens (cl100k: "word" and " word" are one each)."""
    return " ".join(["word"] * n)


def start(api, **fields) -> str:
    made = api.post("/conversations", json={"model": "chat", **fields})
    assert made.status_code == 201, made.text
    return made.json()["id"]


def test_each_turn_sends_the_system_prompt_and_the_turns_before_it(api, upstream):
    conversation = start(api, system_prompt="Be brief.", title="Names")
    upstream.push(text="Hello, Ann.")
    first = api.post(f"/conversations/{conversation}/messages", json={"message": "I am Ann."})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["answer"] == "Hello, Ann." and body["model"] == "chat"
    assert body["context"]["status"] == "ok" and body["context"]["limit"] == 8000
    assert body["context"]["dropped"] == 0 and body["context"]["summarized"] == 0
    assert sent_messages(upstream) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I am Ann."},
    ]

    upstream.push(text="Ann.")
    second = api.post(f"/conversations/{conversation}/messages", json={"message": "My name?"})
    assert second.json()["answer"] == "Ann."
    assert sent_messages(upstream) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I am Ann."},
        {"role": "assistant", "content": "Hello, Ann."},
        {"role": "user", "content": "My name?"},
    ]
    assert second.json()["context"]["tokens"] > first.json()["context"]["tokens"]

    read = api.get(f"/conversations/{conversation}").json()
    assert read["title"] == "Names" and read["system_prompt"] == "Be brief."
    assert [(m["role"], m["content"], m["in_context"]) for m in read["messages"]] == [
        ("user", "I am Ann.", True),
        ("assistant", "Hello, Ann.", True),
        ("user", "My name?", True),
        ("assistant", "Ann.", True),
    ]
    assert read["context"]["tokens"] == second.json()["context"]["tokens"]
    rows = UsageRecord.objects.order_by("id")
    assert [row.conversation for row in rows] == [conversation, conversation]
    assert [row.request_id for row in rows] == [
        first.json()["request_id"],
        second.json()["request_id"],
    ]
    assert [c["id"] for c in api.get("/conversations").json()] == [conversation]


@override_settings(LLM_INTEGRATION={"CONTEXT_TOKENS": 400})
def test_the_context_warns_then_drops_less_important_and_older_turns(api, upstream):
    """Messages of 61 + 3 tokens and answers of 1 + 3 (68 a turn), against a limit of
    400: 80 % warns; a turn that would pass 90 % drops turns down to 60 % (240), the
    least important first, then the oldest; the newest turn and the new message stay."""
    conversation = start(api)
    asked = ["one", "two", "three", "four", "five", "six", "seven"]
    answers = ["yes", "no", "ok", "sure", "fine", "good", "right"]
    importance = [0.9, 0.1, 0.2, 0.5, 0.5, 0.5]

    def turn(n: int, text: str) -> dict:
        upstream.push(text=answers[n])
        answer = api.post(
            f"/conversations/{conversation}/messages",
            json={"message": text, "importance": importance[min(n, 5)]},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["context"]

    statuses = [turn(n, f"{asked[n]} {words(60)}") for n in range(5)]
    assert [(c["tokens"], c["status"]) for c in statuses] == [
        (64, "ok"),
        (132, "ok"),
        (200, "ok"),
        (268, "ok"),
        (336, "warning"),
    ]
    assert statuses[-1]["percent"] == 84.0

    assert turn(5, f"six {words(60)}") == {
        "tokens": 200,
        "limit": 400,
        "percent": 50.0,
        "status": "compressed",
        "dropped": 6,
        "summarized": 0,
    }
    # two (0.1), three (0.2) and four (older than five) went; one (0.9) stayed.
    sent = [m["content"].split()[0] for m in sent_messages(upstream)]
    assert sent == ["one", "yes", "five", "fine", "six"]
    stored = ConversationMessage.objects.filter(conversation_id=conversation)
    assert sorted(m.content.split()[0] for m in stored.filter(in_context=False)) == sorted(
        ["two", "no", "three", "ok", "four", "sure"]
    )
    read = api.get(f"/conversations/{conversation}").json()
    assert len(read["messages"]) == 12 and read["context"]["status"] == "compressed"

    assert turn(6, "seven")["status"] == "ok"
    sent = [m["content"].split()[0] for m in sent_messages(upstream)]
    assert sent == ["one", "yes", "five", "fine", "six", "good", "seven"]


def test_a_streamed_turn_ends_with_its_context_and_is_kept(api, upstream):
    conversation = start(api)
    upstream.push(text="Hello there.")
    with api.stream(
        "POST", f"/conversations/{conversation}/messages", json={"message": "Hi", "stream": True}
    ) as answer:
        assert answer.status_code == 200
        events = [
            json.loads(line[len("data: ") :])
            for line in answer.iter_lines()
            if line.startswith("data: ")
        ]
    assert "".join(e.get("delta", "") for e in events) == "Hello there."
    done = events[-1]
    assert done["done"] is True and done["context"]["status"] == "ok"
    assert done["context"]["tokens"] > 0
    read = api.get(f"/conversations/{conversation}").json()
    assert [m["content"] for m in read["messages"]] == ["Hi", "Hello there."]
    assert UsageRecord.objects.get().streamed


def test_conversations_are_their_owner_s_alone(api, upstream, live_server_url):
    conversation = start(api)
    with client_of(live_server_url) as other:
        for method, path, body in [
            ("GET", f"/conversations/{conversation}", None),
            ("DELETE", f"/conversations/{conversation}", None),
            ("POST", f"/conversations/{conversation}/messages", {"message": "Hi"}),
        ]:
            answer = other.request(method, path, json=body)
            assert answer.status_code == 404, (method, answer.text)
            assert answer.json()["error"]["code"] == "conversation_not_found"
        assert other.get("/conversations").json() == []
    for malformed in ("nope", "conv_" + "0" * 32, "conv_%00", "x" * 5000):
        assert api.get(f"/conversations/{malformed}").status_code == 404
        turn = api.post(f"/conversations/{malformed}/messages", json={"message": "Hi"})
        assert turn.status_code == 404, turn.text
    assert not upstream.requests and not UsageRecord.objects.exists()


def test_what_a_new_conversation_or_turn_cannot_be(api, upstream):
    unknown = api.post("/conversations", json={"model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    odd = api.post("/conversations", json={"model": "chat", "colour": "red"})
    assert odd.status_code == 400 and "colour" in odd.text
    conversation = start(api)
    for body, field in [
        ({}, "message"),
        ({"message": "Hi", "importance": 2}, "importance"),
        ({"message": "Hi", "messages": []}, "messages"),
        ({"message": "Hi", "system_prompt": "x"}, "system_prompt"),
    ]:
        answer = api.post(f"/conversations/{conversation}/messages", json=body)
        assert answer.status_code == 400 and field in answer.text, (body, answer.text)
    assert not upstream.requests and not ConversationMessage.objects.exists()


def test_deleting_a_conversation_keeps_its_usage_rows(api, upstream):
    conversation = start(api)
    upstream.push(text="Hi.")
    api.post(f"/conversations/{conversation}/messages", json={"message": "Hi"})
    assert api.delete(f"/conversations/{conversation}").status_code == 204
    assert not Conversation.objects.exists() and not ConversationMessage.objects.exists()
    assert UsageRecord.objects.get().conversation == conversation
    assert api.get(f"/conversations/{conversation}").status_code == 404


def reached(fake) -> None:
    """Wait until ``fake`` has received a request."""
    deadline = time.monotonic() + 10
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)


def test_two_messages_posted_at_once_are_answered_in_order(live_server_url, upstream):
    user = UserFactory()
    token = Token.objects.create(user=user).key
    with client_of(live_server_url, user) as api:
        conversation = start(api)
    upstream.push(text="first answer", delay=0.3)  # the first holds the conversation
    upstream.push(text="second answer")

    async def post_both():
        async with httpx.AsyncClient(
            base_url=f"{live_server_url}/api/v1",
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        ) as client:
            path = f"/conversations/{conversation}/messages"
            first = asyncio.ensure_future(client.post(path, json={"message": "one"}))
            await asyncio.to_thread(reached, upstream)  # the first turn holds the conversation
            second = await client.post(path, json={"message": "two"})
            return await first, second

    first, second = asyncio.run(post_both())
    assert first.json()["answer"] == "first answer"
    assert second.json()["answer"] == "second answer"
    later = [r for r in upstream.requests if r.method == "POST"][-1].body["messages"]
    assert [m["content"] for m in later] == ["one", "first answer", "two"]
    stored = ConversationMessage.objects.filter(conversation_id=conversation)
    assert [(m.position, m.content) for m in stored.order_by("position")] == [
        (0, "one"),
        (1, "first answer"),
        (2, "two"),
        (3, "second answer"),
    ]


def test_text_a_column_cannot_hold_is_refused_or_replaced(api, upstream):
    """A client's NUL or lone surrogate is refused by name; an upstream's answer with a
    NUL is kept with U+FFFD in its place (PostgreSQL's text cannot hold one)."""
    conversation = start(api)
    refused = api.post(f"/conversations/{conversation}/messages", json={"message": "a\u0000b"})
    assert refused.status_code == 400 and "message" in refused.text
    upstream.push(text="x\x00y")
    answer = api.post(f"/conversations/{conversation}/messages", json={"message": "Hi"})
    assert answer.status_code == 200, answer.text
    stored = ConversationMessage.objects.get(conversation_id=conversation, role="assistant")
    assert stored.content == "x\ufffdy"
    lone = api.post(
        f"/conversations/{conversation}/messages",
        content=b'{"message": "a\\ud800b"}',
        headers={"Content-Type": "application/json"},
    )
    assert lone.status_code == 400 and "lone surrogate" in lone.text


SIX = "six " + " ".join(["word"] * 60)


def five_turns(api, upstream, conversation: str) -> None:
    """The five turns of the compression test (68 tokens each, importance 0.9, 0.1,
    0.2, 0.5, 0.5): the next 64-token message passes 90 % of 400."""
    for n, (word, weight) in enumerate(
        zip(["one", "two", "three", "four", "five"], [0.9, 0.1, 0.2, 0.5, 0.5], strict=True)
    ):
        upstream.push(text=["yes", "no", "ok", "sure", "fine"][n])
        answer = api.post(
            f"/conversations/{conversation}/messages",
            json={"message": f"{word} {words(60)}", "importance": weight},
        )
        assert answer.status_code == 200, answer.text


@override_settings(LLM_INTEGRATION={"CONTEXT_TOKENS": 400, "SUMMARY_MODEL": "summarizer"})
def test_removed_turns_are_summarized_by_the_summary_model(api, upstream, alias_on):
    alias_on("openai_compatible", "summarizer")  # the same loopback upstream
    conversation = start(api, system_prompt="Be brief.")
    five_turns(api, upstream, conversation)
    upstream.push(text="Ann asked two to four.")  # the summary, asked for first
    upstream.push(text="good")
    turn = api.post(f"/conversations/{conversation}/messages", json={"message": SIX}).json()
    assert turn["answer"] == "good"
    assert turn["context"]["status"] == "compressed"
    assert turn["context"]["dropped"] == 6 and turn["context"]["summarized"] == 6

    summary_call, turn_call = [r.body for r in upstream.requests if r.method == "POST"][-2:]
    assert summary_call["model"] == "gpt-4o-mini" and summary_call["max_tokens"] == 64
    asked = summary_call["messages"][-1]["content"]
    assert all(f"{word} word" in asked for word in ("two", "three", "four"))
    assert "one word" not in asked and "five word" not in asked
    system = turn_call["messages"][0]
    assert system == {
        "role": "system",
        "content": "Be brief.\n\nSummary of the conversation so far:\nAnn asked two to four.",
    }
    assert [m["content"].split()[0] for m in turn_call["messages"][1:]] == [
        "one",
        "yes",
        "five",
        "fine",
        "six",
    ]
    rows = UsageRecord.objects.filter(conversation=conversation)
    assert rows.count() == 7 and rows.filter(alias="summarizer").count() == 1

    upstream.push(text="right")
    api.post(f"/conversations/{conversation}/messages", json={"message": "seven"})
    assert sent_messages(upstream)[0] == system  # kept, not asked for again
    assert api.get(f"/conversations/{conversation}").json()["summary"] == "Ann asked two to four."


@override_settings(LLM_INTEGRATION={"CONTEXT_TOKENS": 400, "SUMMARY_MODEL": "summarizer"})
def test_no_external_summary_while_a_rule_keeps_requests_local(api, upstream, alias_on):
    """A summary carries the conversation's text out: never to an external alias while
    a routing rule may keep this conversation local."""
    from llm_integration.models import RoutingRule

    alias_on("openai_compatible", "summarizer")
    rule = RoutingRule(name="secrets", pattern="password", locality="local")
    rule.full_clean()
    rule.save()
    conversation = start(api)
    five_turns(api, upstream, conversation)
    upstream.push(text="good")
    turn = api.post(f"/conversations/{conversation}/messages", json={"message": SIX}).json()
    assert turn["context"]["status"] == "compressed" and turn["context"]["summarized"] == 0
    assert not UsageRecord.objects.filter(alias="summarizer").exists()


@override_settings(LLM_INTEGRATION={"CONTEXT_TOKENS": 400, "SUMMARY_MODEL": "summarizer"})
def test_a_failed_summary_leaves_the_turns_out_and_the_turn_goes_on(api, upstream, alias_on):
    alias_on("openai_compatible", "summarizer")
    conversation = start(api)
    five_turns(api, upstream, conversation)
    upstream.push(mode="error", status=400)  # the summary refused
    upstream.push(text="good")
    turn = api.post(f"/conversations/{conversation}/messages", json={"message": SIX})
    assert turn.status_code == 200 and turn.json()["answer"] == "good"
    assert turn.json()["context"]["summarized"] == 0
    assert UsageRecord.objects.get(alias="summarizer").status == "error"


@pytest.mark.skipif(
    connection.vendor != "postgresql"
    or "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
    reason="needs PostgreSQL and Redis: set DATABASE_URL=postgres://… and REDIS_URL "
    "(CI's second pass does)",
)
def test_two_messages_at_once_through_two_processes_are_answered_in_order(tmp_path, upstream):
    """The second turn, sent to another server process while the first is held
    upstream, waits in the conversation's line in Redis and sees the first."""
    import redis

    from llm_integration.services.memory import conversations
    from tests.processes import ServerProcesses

    user = UserFactory()
    token = Token.objects.create(user=user).key
    made = conversations.create(user, model="chat", system_prompt="", title="")
    upstream.push(mode="held", text="first answer")
    upstream.push(text="second answer")
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    waiters = f"{prefix}:llm:cc:conversation:{made['id']}:waiters".lstrip(":")
    line = redis.Redis.from_url(settings.REDIS_URL)
    with ServerProcesses(2, tmp_path, REDIS_URL=settings.REDIS_URL) as servers:

        async def scenario():
            async with httpx.AsyncClient(
                timeout=60, headers={"Authorization": f"Token {token}"}
            ) as client:

                def turn(server: str, message: str):
                    url = f"{server}/api/v1/conversations/{made['id']}/messages"
                    return asyncio.ensure_future(client.post(url, json={"message": message}))

                first = turn(servers[0], "one")
                await asyncio.to_thread(reached, upstream)
                second = turn(servers[1], "two")
                for _ in range(3000):  # until the second waits in line (a state)
                    if await asyncio.to_thread(line.zcard, waiters) == 1:
                        break
                    await asyncio.sleep(0.01)
                assert len(upstream.requests) == 1  # the second has not gone upstream
                upstream.gate.set()
                return await first, await second

        first, second = asyncio.run(scenario())
    assert first.json()["answer"] == "first answer", first.text
    assert second.json()["answer"] == "second answer", second.text
    later = [r for r in upstream.requests if r.method == "POST"][-1].body["messages"]
    assert [m["content"] for m in later] == ["one", "first answer", "two"]


async def test_a_turn_waits_for_the_one_before_at_most_the_request_deadline(settings):
    """Turns of one conversation run one at a time; one that cannot start within
    REQUEST_DEADLINE is ConversationBusy (409), and the slot it waited for is intact."""
    from llm_integration import exceptions as exc
    from llm_integration.services.memory import conversations

    settings.LLM_INTEGRATION = {"REQUEST_DEADLINE": 0.05}
    conversation = "conv_" + "ab" * 16
    holder = conversations.turn_slot(conversation)
    await holder.acquire()
    waiter = conversations.turn_slot(conversation)
    with pytest.raises(exc.ConversationBusy) as refused:
        await waiter.acquire()
    assert refused.value.status_code == 409 and refused.value.code == "conversation_busy"
    await holder.release()
    await waiter.acquire()  # free again: the next turn starts at once
    await waiter.release()
