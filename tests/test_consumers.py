"""The WebSocket chat consumer over the project's ASGI application."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from project.asgi import application
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://testserver")


@pytest.fixture
def dummy_alias(db):
    return ModelAliasFactory(slug="default", provider=ProviderFactory(kind="dummy"))


def communicator(headers=()):
    return WebsocketCommunicator(application, "/ws/llm/chat/", headers=[ORIGIN, *headers])


async def token_for(user) -> str:
    return (await Token.objects.aget_or_create(user=user))[0].key


async def test_unauthenticated_socket_is_closed_with_4401(dummy_alias):
    ws = communicator()
    connected, _ = await ws.connect()
    assert connected
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_bad_token_is_closed_with_4401(dummy_alias):
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": "not-a-token"})
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_token_auth_then_streamed_chat_with_usage(dummy_alias):
    user = await sync_to_async(UserFactory)()
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to(
        {"type": "chat", "model": "default", "messages": [{"role": "user", "content": "ping"}]}
    )
    start = await ws.receive_json_from()
    assert start["type"] == "start" and start["request_id"].startswith("req_")
    tokens = []
    while (frame := await ws.receive_json_from())["type"] == "token":
        tokens.append(frame["content"])
    assert "".join(tokens) == "This is the dummy model (echo). You said: ping"
    assert len(tokens) == 9
    assert frame["type"] == "done" and frame["finish_reason"] == "stop"
    assert frame["request_id"] == start["request_id"]
    record = await UsageRecord.objects.aget(request_id=start["request_id"])
    assert (record.status, record.streamed, record.user_id) == ("ok", True, user.pk)
    assert frame["usage"]["completion_tokens"] == record.completion_tokens > 0
    await ws.disconnect()


async def test_session_cookie_auth(dummy_alias, client):
    user = await sync_to_async(UserFactory)()
    await sync_to_async(client.force_login)(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    ws = communicator([(b"cookie", cookie.encode())])
    await ws.connect()
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "hey"}]})
    assert (await ws.receive_json_from())["type"] == "start"
    await ws.disconnect()


async def test_malformed_frames_get_errors_and_the_socket_stays_usable(dummy_alias):
    user = await sync_to_async(UserFactory)()
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_to(text_data="{not json")
    assert (await ws.receive_json_from())["code"] == "invalid_request"
    await ws.send_json_to({"type": "dance"})
    assert (await ws.receive_json_from())["code"] == "invalid_request"
    await ws.send_json_to({"type": "chat", "messages": "nope"})
    assert (await ws.receive_json_from())["code"] == "invalid_request"
    await ws.send_json_to(
        {"type": "chat", "model": "missing", "messages": [{"role": "user", "content": "x"}]}
    )
    assert (await ws.receive_json_from())["type"] == "start"
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["code"] == "model_not_found"
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "ok"}]})
    assert (await ws.receive_json_from())["type"] == "start"
    await ws.disconnect()


@pytest.fixture
def slow_dummy_alias(db):
    provider = ProviderFactory(kind="dummy", options={"delay": 0.2})
    return ModelAliasFactory(slug="default", provider=provider)


async def test_cancel_stops_the_stream_and_records_usage(slow_dummy_alias):
    user = await sync_to_async(UserFactory)()
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "long"}]})
    start = await ws.receive_json_from()
    first = await ws.receive_json_from(timeout=5)
    assert first["type"] == "token"
    await ws.send_json_to({"type": "cancel"})
    while (frame := await ws.receive_json_from(timeout=5))["type"] == "token":
        pass
    assert frame["type"] == "done" and frame["finish_reason"] == "cancelled"
    record = await UsageRecord.objects.aget(request_id=start["request_id"])
    assert record.status == "cancelled" and record.completion_tokens >= 1
    assert record.prompt_tokens > 0 and record.tokens_estimated
    assert frame["usage"]["completion_tokens"] == record.completion_tokens
    assert frame["usage"]["prompt_tokens"] == record.prompt_tokens
    # The socket stays usable after a cancel.
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "again"}]})
    assert (await ws.receive_json_from(timeout=5))["type"] == "start"
    await ws.disconnect()


async def test_one_chat_at_a_time(slow_dummy_alias):
    user = await sync_to_async(UserFactory)()
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    chat = {"type": "chat", "messages": [{"role": "user", "content": "one"}]}
    await ws.send_json_to(chat)
    assert (await ws.receive_json_from())["type"] == "start"
    await ws.send_json_to(chat)
    frame = await ws.receive_json_from(timeout=5)
    while frame["type"] == "token":
        frame = await ws.receive_json_from(timeout=5)
    assert frame == {
        "type": "error",
        "code": "invalid_request",
        "message": "A chat is already running on this socket.",
    }
    await ws.disconnect()


async def test_group_notices_reach_the_users_sockets(dummy_alias):
    from channels.layers import get_channel_layer

    from llm_integration.consumers import user_group

    user = await sync_to_async(UserFactory)()
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to({"type": "dance"})  # its error frame proves auth was processed
    assert (await ws.receive_json_from())["type"] == "error"
    await get_channel_layer().group_send(
        user_group(user.pk), {"type": "llm.notice", "payload": {"text": "budget at 90%"}}
    )
    assert await ws.receive_json_from(timeout=5) == {"type": "notice", "text": "budget at 90%"}
    await ws.disconnect()


async def test_disconnect_mid_chat_records_cancelled(slow_dummy_alias):
    user = await sync_to_async(UserFactory)()
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "bye"}]})
    start = await ws.receive_json_from()
    await ws.receive_json_from(timeout=5)  # one token
    await ws.disconnect()
    record = await UsageRecord.objects.aget(request_id=start["request_id"])
    assert record.status == "cancelled"


async def test_budget_alert_reaches_the_users_socket(dummy_alias):
    from decimal import Decimal

    from tests.factories import BudgetFactory

    user = await sync_to_async(UserFactory)()
    await sync_to_async(BudgetFactory)(
        scope="user", user=user, name="mine", limit_usd=Decimal("0.0001"), alert_thresholds=[10]
    )
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    # max_tokens keeps the worst case (reserved first) under the limit; the real cost
    # then passes 10 % of it.
    await ws.send_json_to(
        {"type": "chat", "max_tokens": 20, "messages": [{"role": "user", "content": "spend"}]}
    )
    frames = []
    while not ({"done", "notice"} <= {f["type"] for f in frames}):
        frames.append(await ws.receive_json_from(timeout=5))
    notice = next(f for f in frames if f["type"] == "notice")
    assert (notice["kind"], notice["budget"], notice["threshold"]) == ("budget_alert", "mine", 10)
    assert "reached 10%" in notice["text"]
    await ws.disconnect()


async def test_a_socket_that_never_authenticates_is_closed(dummy_alias, settings):
    settings.LLM_INTEGRATION = {"WEBSOCKET_AUTH_TIMEOUT": 0.05}
    ws = communicator()
    assert (await ws.connect())[0]
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_an_authenticated_socket_outlives_the_auth_timeout(dummy_alias, settings):
    settings.LLM_INTEGRATION = {"WEBSOCKET_AUTH_TIMEOUT": 0.05}
    user = await sync_to_async(UserFactory)()
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to({"type": "dance"})  # its error proves the socket lives on
    assert (await ws.receive_json_from(timeout=5))["type"] == "error"
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()


async def test_a_revoked_token_cannot_start_a_chat_on_an_open_socket(dummy_alias):
    user = await sync_to_async(UserFactory)()
    token = await token_for(user)
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": token})
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "one"}]})
    while (await ws.receive_json_from())["type"] != "done":
        pass
    await Token.objects.filter(key=token).adelete()
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "two"}]})
    frame = await ws.receive_json_from()
    assert (frame["type"], frame["code"]) == ("error", "authentication_failed")
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}
    assert await UsageRecord.objects.acount() == 1


async def test_a_deactivated_user_cannot_start_a_chat(dummy_alias, client):
    user = await sync_to_async(UserFactory)()
    await sync_to_async(client.force_login)(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    ws = communicator([(b"cookie", cookie.encode())])
    await ws.connect()
    user.is_active = False
    await user.asave()
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "hey"}]})
    assert (await ws.receive_json_from())["code"] == "authentication_failed"


async def test_clients_without_an_origin_authenticate_with_the_token_frame(dummy_alias):
    user = await sync_to_async(UserFactory)()
    ws = WebsocketCommunicator(application, "/ws/llm/chat/")  # no Origin: not a browser
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert (await ws.receive_json_from())["type"] == "start"
    await ws.disconnect()
    foreign = WebsocketCommunicator(
        application, "/ws/llm/chat/", headers=[(b"origin", b"https://evil.example")]
    )
    assert not (await foreign.connect())[0]  # an Origin that is sent is still checked


async def turn_over_the_socket(ws, frame: dict) -> tuple[list[dict], dict]:
    await ws.send_json_to({"type": "chat", **frame})
    frames = [await ws.receive_json_from()]
    while frames[-1]["type"] not in ("done", "error"):
        frames.append(await ws.receive_json_from())
    return frames[:-1], frames[-1]


async def test_a_conversation_continues_over_the_socket(dummy_alias):
    from llm_integration.models import ConversationMessage
    from llm_integration.services.memory import conversations

    user, other = await sync_to_async(UserFactory)(), await sync_to_async(UserFactory)()
    made = await sync_to_async(conversations.create)(
        user, model="default", system_prompt="", title="Socket"
    )
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    frames, done = await turn_over_the_socket(
        ws, {"conversation": made["id"], "message": "first", "importance": 0.7}
    )
    assert frames[0]["type"] == "start" and done["type"] == "done"
    assert done["context"]["status"] == "ok" and done["context"]["tokens"] > 0
    _frames, second = await turn_over_the_socket(
        ws, {"conversation": made["id"], "message": "second"}
    )
    assert second["context"]["tokens"] > done["context"]["tokens"]  # the first turn went too
    stored = [
        (m.role, m.importance)
        async for m in ConversationMessage.objects.filter(conversation_id=made["id"])
    ]
    assert stored == [("user", 0.7), ("assistant", 0.7), ("user", 0.5), ("assistant", 0.5)]
    record = await UsageRecord.objects.aget(request_id=second["request_id"])
    assert record.conversation == made["id"]

    _frames, refused = await turn_over_the_socket(
        ws, {"conversation": made["id"], "message": "x", "messages": []}
    )
    assert refused["type"] == "error" and refused["param"] == "messages"
    _frames, refused = await turn_over_the_socket(
        ws, {"conversation": made["id"], "message": "x", "importance": 3}
    )
    assert refused["type"] == "error" and refused["param"] == "importance"
    await ws.disconnect()

    theirs = communicator()
    await theirs.connect()
    await theirs.send_json_to({"type": "auth", "token": await token_for(other)})
    _frames, refused = await turn_over_the_socket(
        theirs, {"conversation": made["id"], "message": "hello"}
    )
    assert refused["code"] == "conversation_not_found"
    await theirs.disconnect()
