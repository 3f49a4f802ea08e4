"""The channel layer down or stalled (Redis refusing, or accepting and never answering):
WebSocket chat works as HTTP does, and only the notices of the user's group stop.

The layer is ``channels_redis`` pointed at a loopback port nothing listens on, or at a
loopback server that accepts connections and never answers: no Redis server needed.
Overriding ``CHANNEL_LAYERS`` makes Channels drop the layers it built (it listens for
``setting_changed``), so each test gets a layer of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings as django_settings

from llm_integration.consumers import user_group
from llm_integration.models import BudgetAlert, UsageRecord
from tests.api.test_rest_api import client_for, post_chat
from tests.factories import BudgetFactory, ModelAliasFactory, ProviderFactory, UserFactory
from tests.test_cache_outage import StallingServer
from tests.test_consumers import communicator, token_for

pytestmark = pytest.mark.django_db(transaction=True)

EVENT = "llm.channel_layer_unavailable"


def redis_layer(port: int) -> dict:
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}/0"]},
        }
    }


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dummy_alias(db):
    return ModelAliasFactory(slug="default", provider=ProviderFactory(kind="dummy"))


@pytest.fixture
def layer_down(settings, caplog):
    settings.CHANNEL_LAYERS = redis_layer(closed_port())
    caplog.set_level(logging.WARNING, logger="llm_integration.consumers")


@pytest.fixture
def layer_stalled(settings, caplog):
    server = StallingServer()
    settings.CHANNEL_LAYERS = redis_layer(server.port)
    settings.LLM_INTEGRATION = {"CHANNEL_LAYER_TIMEOUT": 0.2}
    caplog.set_level(logging.WARNING, logger="llm_integration.consumers")
    yield server
    server.close()


def outages(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == EVENT]


async def chat_to_the_end(ws, content: str = "ping") -> tuple[dict, list[str], dict]:
    """Send a chat; its start frame, its tokens and its done frame."""
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": content}]})
    start = await ws.receive_json_from(timeout=5)
    assert start["type"] == "start", start
    tokens = []
    while (frame := await ws.receive_json_from(timeout=5))["type"] == "token":
        tokens.append(frame["content"])
    return start, tokens, frame


async def assert_chat_streams_and_is_recorded(ws, user) -> None:
    start, tokens, done = await chat_to_the_end(ws)
    assert "".join(tokens) == "This is the dummy model (echo). You said: ping"
    assert (done["type"], done["finish_reason"]) == ("done", "stop")
    record = await UsageRecord.objects.aget(request_id=start["request_id"])
    assert (record.status, record.streamed, record.user_id) == ("ok", True, user.pk)
    assert done["usage"]["completion_tokens"] == record.completion_tokens > 0


async def session_socket(client, user):
    await sync_to_async(client.force_login)(user)
    name = django_settings.SESSION_COOKIE_NAME
    cookie = f"{name}={client.cookies[name].value}"
    return communicator([(b"cookie", cookie.encode())])


async def test_token_socket_chats_with_the_layer_down(layer_down, dummy_alias, caplog):
    user = await sync_to_async(UserFactory)()
    ws = communicator()
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await assert_chat_streams_and_is_recorded(ws, user)
    [outage] = outages(caplog)  # the group join, once; the chat never touched the layer
    assert (outage.operation, outage.error_type) == ("group_add", "ConnectionError")
    await ws.disconnect()
    assert len(outages(caplog)) == 1  # nothing to leave: the socket never joined


async def test_session_socket_connects_and_chats_with_the_layer_down(
    layer_down, dummy_alias, client, caplog
):
    user = await sync_to_async(UserFactory)()
    ws = await session_socket(client, user)
    assert (await ws.connect())[0]  # joins the group at connect: fails, stays open
    await assert_chat_streams_and_is_recorded(ws, user)
    await assert_chat_streams_and_is_recorded(ws, user)  # and keeps working
    assert len(outages(caplog)) == 1
    await ws.disconnect()


async def test_session_socket_connects_and_chats_with_the_layer_stalled(
    layer_stalled, dummy_alias, client, caplog
):
    user = await sync_to_async(UserFactory)()
    ws = await session_socket(client, user)
    assert (await ws.connect(timeout=5))[0]
    await assert_chat_streams_and_is_recorded(ws, user)
    [outage] = outages(caplog)
    assert (outage.operation, outage.error_type) == ("group_add", "TimeoutError")
    await ws.disconnect()


async def spend_past_threshold(user) -> None:
    await sync_to_async(BudgetFactory)(
        scope="user", user=user, name="mine", limit_usd=Decimal("0.0001"), alert_thresholds=[10]
    )


async def test_a_budget_alert_with_the_layer_down_does_not_fail_the_socket_chat(
    layer_down, dummy_alias, caplog
):
    user = await sync_to_async(UserFactory)()
    await spend_past_threshold(user)
    ws = communicator()
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to(
        {"type": "chat", "max_tokens": 20, "messages": [{"role": "user", "content": "spend"}]}
    )
    frames = [await ws.receive_json_from(timeout=5)]
    while frames[-1]["type"] != "done":
        frames.append(await ws.receive_json_from(timeout=5))
    assert frames[-1]["finish_reason"] == "stop"
    assert "notice" not in {f["type"] for f in frames}
    assert await UsageRecord.objects.filter(status="ok").acount() == 1
    assert await BudgetAlert.objects.filter(threshold=10).aexists()  # fired, mailed
    await ws.disconnect()


async def test_an_http_chat_that_fires_a_budget_alert_answers_with_the_layer_down(
    layer_down, dummy_alias, caplog
):
    from rest_framework.authtoken.models import Token

    user = await sync_to_async(UserFactory)()
    await spend_past_threshold(user)
    token = (await Token.objects.aget_or_create(user=user))[0].key
    response = await post_chat(client_for(token), {"message": "spend", "max_tokens": 20})
    assert response.status_code == 200
    assert await BudgetAlert.objects.filter(threshold=10).aexists()
    [outage] = outages(caplog)
    assert outage.operation == "group_send"


class FlakyLayer(InMemoryChannelLayer):
    """The in-memory layer, refusing a socket's calls while ``down`` (a Redis
    restarting); the test's own ``group_send`` always goes through."""

    down = False
    receive_refused: asyncio.Event

    async def group_add(self, group, channel):
        self.refuse()
        await super().group_add(group, channel)

    async def group_discard(self, group, channel):
        self.refuse()
        await super().group_discard(group, channel)

    async def receive(self, channel):
        if FlakyLayer.down:
            FlakyLayer.receive_refused.set()
        self.refuse()
        return await super().receive(channel)

    def refuse(self) -> None:
        if FlakyLayer.down:
            raise ConnectionError("Connection refused")


@pytest.fixture
def flaky_layer(settings, caplog):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}.FlakyLayer"}}
    settings.LLM_INTEGRATION = {"CHANNEL_LAYER_RETRY_INTERVAL": 0.05}
    caplog.set_level(logging.WARNING, logger="llm_integration.consumers")
    FlakyLayer.receive_refused = asyncio.Event()
    yield FlakyLayer
    FlakyLayer.down = False


async def authenticated_socket(user):
    ws = communicator()
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "auth", "token": await token_for(user)})
    await ws.send_json_to({"type": "dance"})  # its error proves auth was processed
    assert (await ws.receive_json_from())["type"] == "error"
    return ws


async def notice_gets_through(ws, user, payload: dict) -> None:
    """Send the notice to the user's group until the socket relays one (it may be
    joining again: what is sent before that is not delivered to it)."""
    layer = get_channel_layer()
    for _ in range(200):
        await layer.group_send(user_group(user.pk), {"type": "llm.notice", "payload": payload})
        if not await ws.receive_nothing(timeout=0.05):
            break
    assert await ws.receive_json_from() == {"type": "notice", **payload}


async def test_notices_resume_once_a_layer_down_at_connect_is_back(
    flaky_layer, dummy_alias, caplog
):
    flaky_layer.down = True
    user = await sync_to_async(UserFactory)()
    ws = await authenticated_socket(user)
    assert outages(caplog)[0].operation == "group_add"
    await assert_chat_streams_and_is_recorded(ws, user)
    flaky_layer.down = False
    await notice_gets_through(ws, user, {"text": "back"})
    await ws.disconnect()


async def test_a_layer_failing_under_a_listening_socket_costs_notices_only(
    flaky_layer, dummy_alias, caplog
):
    user = await sync_to_async(UserFactory)()
    ws = await authenticated_socket(user)
    await notice_gets_through(ws, user, {"text": "one"})
    assert not outages(caplog)
    flaky_layer.down = True  # the socket's next receive is refused
    await notice_gets_through(ws, user, {"text": "two"})  # received before going down
    await asyncio.wait_for(flaky_layer.receive_refused.wait(), timeout=5)
    assert outages(caplog)[0].operation == "receive"
    await assert_chat_streams_and_is_recorded(ws, user)
    flaky_layer.down = False
    await notice_gets_through(ws, user, {"text": "three"})
    await ws.disconnect()


async def test_leaving_the_group_with_the_layer_down_ends_the_socket_cleanly(
    flaky_layer, dummy_alias, caplog
):
    user = await sync_to_async(UserFactory)()
    ws = await authenticated_socket(user)
    flaky_layer.down = True
    await ws.disconnect()  # would raise if the consumer had failed
    assert [r.operation for r in outages(caplog)] == ["group_discard"]


async def test_an_unauthenticated_socket_never_touches_the_layer(layer_down, dummy_alias, caplog):
    ws = communicator()
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}
    assert not outages(caplog)
