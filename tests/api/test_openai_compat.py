"""The /v1 surface driven by the official openai SDK against a live server."""

from __future__ import annotations

import openai
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import UsageRecord
from tests.factories import (
    ModelAliasFactory,
    PlanEntitlementFactory,
    PlanFactory,
    ProviderFactory,
    UserFactory,
)


@pytest.fixture
def sdk(live_server_url):
    ProviderFactory(name="dummy", kind="dummy")
    ModelAliasFactory(slug="default", provider__kind="dummy", label="Echo")
    premium = ModelAliasFactory(slug="premium", provider__kind="dummy")
    PlanEntitlementFactory(plan=PlanFactory(slug="pro"), alias=premium)
    user = UserFactory(username="sdk-user")
    token = Token.objects.create(user=user).key
    client = openai.OpenAI(
        base_url=f"{live_server_url}/v1", api_key=token, max_retries=0, timeout=20
    )
    client.live_url = live_server_url
    return client


def test_models_list(sdk):
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["default"]  # premium is locked for this plan
    assert models.data[0].object == "model" and models.data[0].owned_by


def test_models_retrieve(sdk):
    model = sdk.models.retrieve("default")
    assert (model.id, model.object) == ("default", "model") and model.owned_by
    for hidden in ("premium", "nope"):  # locked for this plan, or no such alias
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.models.retrieve(hidden)
        assert missing.value.body["code"] == "model_not_found"


def test_chat_completion(sdk):
    completion = sdk.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        temperature=0,
        max_tokens=50,
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "This is the dummy model (echo). You said: hi"
    assert choice.finish_reason == "stop" and completion.model == "default"
    assert (
        completion.usage.total_tokens
        == (completion.usage.prompt_tokens + completion.usage.completion_tokens)
        > 0
    )
    request_id = completion.id.removeprefix("chatcmpl-")
    assert UsageRecord.objects.get(request_id=request_id).status == "ok"


def test_streaming_with_usage_chunk(sdk):
    stream = sdk.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is the dummy model (echo). You said: stream please"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    record = UsageRecord.objects.get(request_id=chunks[0].id.removeprefix("chatcmpl-"))
    assert record.streamed and record.completion_tokens == usage_chunk.usage.completion_tokens


def test_streaming_without_usage_option(sdk):
    chunks = list(
        sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


def test_errors_are_openai_shaped(sdk, live_server_url):
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found" and info.value.body["request_id"]
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="premium", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x"}], n=2
        )
    with pytest.raises(openai.NotFoundError):  # before the first token: a real status
        sdk.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}], stream=True
        )
    stranger = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_async_sdk_streams_too(sdk, live_server_url):
    import asyncio

    async def run():
        client = openai.AsyncOpenAI(base_url=sdk.base_url, api_key=sdk.api_key, max_retries=0)
        stream = await client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "async"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return [c async for c in stream]

    chunks = asyncio.run(run())
    assert chunks[-1].usage.total_tokens > 0


TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"extra_body": {"functions": [TOOL["function"]]}}, "functions"),
        ({"extra_body": {"audio": {"voice": "alloy"}}}, "audio"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"made_up": 1}}, "made_up"),
    ],
)
def test_a_parameter_the_gateway_does_not_carry_is_refused_by_name(sdk, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x"}], **extra
        )
    body = info.value.body
    assert body["code"] == "unsupported_parameter" and body["param"] == param
    assert param in body["message"]
    assert not UsageRecord.objects.exclude(status__in=["error", "rejected"]).exists()


def test_a_message_field_the_gateway_does_not_carry_is_refused_by_name(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x", "name": "alice"}]
        )
    assert info.value.body["param"] == "messages[0].name"


def test_null_and_default_valued_parameters_ask_for_nothing_and_pass(sdk):
    completion = sdk.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "hi"}],
        logprobs=False,
        extra_body={"store": False, "tools": None},
    )
    assert completion.choices[0].finish_reason == "stop"


def test_a_type_error_names_its_parameter(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x"}], extra_body={"top_p": "1"}
        )
    assert info.value.body["code"] == "invalid_request" and info.value.body["param"] == "top_p"
