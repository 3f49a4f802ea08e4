"""An upstream that writes past ``max_tokens`` is held to what the request reserved:
the reserved ``max_tokens`` always goes upstream, a stream stops there
(``finish_reason: length``), a longer answer is cut there, what the upstream reported
is recorded, and a hard budget is never exceeded."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from llm_integration.models import BudgetPeriod, UsageRecord
from llm_integration.services.chat import Delta, Done
from llm_integration.text.tokens import count_text_tokens
from tests.factories import BudgetFactory, ModelAliasFactory, ProviderFactory

pytestmark = pytest.mark.django_db(transaction=True)

LONG = " ".join(f"word{n}" for n in range(300))


@pytest.fixture
def priced(openai_fake, api_key_env):
    provider = ProviderFactory(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env, max_retries=0
    )
    return ModelAliasFactory(
        slug="chat",
        provider=provider,
        upstream_model="gpt-4o-mini",
        input_price_per_mtok=Decimal(10),
        output_price_per_mtok=Decimal(10),
        default_max_tokens=64,
    )


async def test_the_reserved_max_tokens_always_goes_upstream(gateway, priced, openai_fake):
    await gateway.chat(model="chat", messages="Hi")  # the client gave none: the alias's 64
    await gateway.chat(model="chat", messages="Hi", max_tokens=12)
    sent = [r.body["max_completion_tokens"] for r in openai_fake.requests]
    assert sent == [64, 12]


async def test_a_longer_answer_is_cut_and_charged_no_more_than_reserved(
    gateway, priced, openai_fake
):
    openai_fake.push(text=LONG, prompt_tokens=9, completion_tokens=300)
    result = await gateway.chat(model="chat", messages="Hi", max_tokens=40)
    assert result.finish_reason == "length"
    assert count_text_tokens(result.answer, model="gpt-4o-mini") == 40
    record = await UsageRecord.objects.aget()
    # More than max_tokens is no count the request could produce: billed as max_tokens.
    assert (record.prompt_tokens, record.completion_tokens) == (9, 40)
    assert record.tokens_estimated
    # Charged the reservation: "Hi" is 8 prompt tokens (exact for OpenAI models) + 40.
    assert record.cost_usd == result.cost_usd == Decimal(8 + 40) * 10 / 10**6


async def test_a_stream_stops_at_max_tokens(gateway, priced, openai_fake):
    openai_fake.push(text=LONG, prompt_tokens=9, completion_tokens=300)
    events = [e async for e in gateway.stream(model="chat", messages="Hi", max_tokens=25)]
    text = "".join(e.text for e in events if isinstance(e, Delta))
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "length"
    assert count_text_tokens(text, model="gpt-4o-mini") <= 25
    assert done.usage.completion_tokens <= 25 and done.usage.estimated
    record = await UsageRecord.objects.aget()
    assert (record.status, record.finish_reason, record.streamed) == ("ok", "length", True)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hard_budget_holds_against_an_upstream_that_ignores_max_tokens(
    gateway, priced, openai_fake, stream
):
    budget = await sync_to_async(BudgetFactory)(limit_usd=Decimal("0.01"))
    for _ in range(50):
        openai_fake.push(text=LONG, prompt_tokens=9, completion_tokens=300)

    async def one() -> str:
        try:
            if stream:
                [e async for e in gateway.stream(model="chat", messages="Hi", max_tokens=40)]
            else:
                await gateway.chat(model="chat", messages="Hi", max_tokens=40)
            return "ok"
        except Exception as error:
            return type(error).__name__

    outcomes = await asyncio.gather(*(one() for _ in range(50)))
    from llm_integration.services.accounting.writer import writer

    await sync_to_async(writer.stop)()  # allowances given back
    period = await BudgetPeriod.objects.aget(budget=budget)
    assert period.spent_usd <= budget.limit_usd
    assert set(outcomes) <= {"ok", "BudgetExceeded"} and "ok" in outcomes
