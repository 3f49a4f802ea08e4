"""The chat service seam: one usage record per request, whatever happens."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from llm_integration import exceptions as exc
from llm_integration.models import UsageRecord
from llm_integration.services.chat import Delta, Done, achat, astream_chat
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def priced_alias(openai_fake, api_key_env):
    provider = ProviderFactory(
        name="oa", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    return ModelAliasFactory(
        slug="chat",
        provider=provider,
        upstream_model="gpt-4o-mini",
        input_price_per_mtok=Decimal("2.50"),
        output_price_per_mtok=Decimal("10.00"),
    )


async def test_ok_request_is_recorded_with_provider_tokens_and_decimal_cost(
    priced_alias, openai_fake
):
    user = await sync_to_async(UserFactory)()
    openai_fake.push(text="Fine.", prompt_tokens=1000, completion_tokens=200)
    result = await achat(user=user, model="chat", messages="How are you?")
    assert result.answer == "Fine."
    # 1000 * 2.50 / 1M + 200 * 10 / 1M = 0.0025 + 0.002
    assert result.cost_usd == Decimal("0.0045")
    record = await UsageRecord.objects.aget(request_id=result.request_id)
    assert (record.user_id, record.alias, record.provider, record.upstream_model) == (
        user.pk,
        "chat",
        "oa",
        "gpt-4o-mini",
    )
    assert (record.prompt_tokens, record.completion_tokens, record.cost_usd) == (
        1000,
        200,
        Decimal("0.0045"),
    )
    assert (record.status, record.streamed, record.tokens_estimated) == ("ok", False, False)


async def test_upstream_error_is_recorded_and_raised(priced_alias, openai_fake):
    openai_fake.push(mode="error", status=500)
    with pytest.raises(exc.UpstreamServerError):
        await achat(model="chat", messages="Hi", request_id="req_err")
    record = await UsageRecord.objects.aget(request_id="req_err")
    assert (record.status, record.error_type, record.cost_usd) == (
        "error",
        "upstream_unavailable",
        Decimal(0),
    )


async def test_unknown_model_is_recorded(priced_alias):
    with pytest.raises(exc.ModelNotFound):
        await achat(model="nope", messages="Hi", request_id="req_404")
    record = await UsageRecord.objects.aget(request_id="req_404")
    assert (record.status, record.error_type, record.alias) == ("error", "model_not_found", "")


async def test_stream_ends_with_done_carrying_usage_and_cost(priced_alias, openai_fake):
    openai_fake.push(text="a b", prompt_tokens=100, completion_tokens=50)
    events = [e async for e in astream_chat(model="chat", messages="Hi")]
    assert [e.text for e in events if isinstance(e, Delta)] == ["a", " b"]
    done = events[-1]
    assert isinstance(done, Done) and done.cost_usd == Decimal("0.00075")
    record = await UsageRecord.objects.aget(request_id=done.request_id)
    assert (record.status, record.streamed, record.completion_tokens) == ("ok", True, 50)


async def test_stream_cut_records_partial_usage(priced_alias, openai_fake):
    openai_fake.push(mode="cut", text="one two three four", cut_after=2)
    with pytest.raises(exc.StreamInterrupted):
        async for _ in astream_chat(model="chat", messages="Hi", request_id="req_cut"):
            pass
    record = await UsageRecord.objects.aget(request_id="req_cut")
    assert (record.status, record.error_type, record.completion_tokens) == (
        "error",
        "stream_interrupted",
        2,
    )
    assert record.tokens_estimated and record.cost_usd > 0


async def test_client_closing_the_stream_records_cancelled(priced_alias, openai_fake):
    openai_fake.push(text="one two three four five")
    stream = astream_chat(model="chat", messages="Hi", request_id="req_gone")
    assert isinstance(await anext(stream), Delta)
    await stream.aclose()
    records = [r async for r in UsageRecord.objects.filter(request_id="req_gone")]
    assert len(records) == 1
    assert (records[0].status, records[0].completion_tokens) == ("cancelled", 1)


async def test_closing_after_done_does_not_record_twice(priced_alias, openai_fake):
    stream = astream_chat(model="chat", messages="Hi", request_id="req_once")
    async for event in stream:
        if isinstance(event, Done):
            break
    await stream.aclose()
    assert await UsageRecord.objects.filter(request_id="req_once").acount() == 1
