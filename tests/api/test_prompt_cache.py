"""Prompt caching's tokens and costs (CONTRACT §12): what upstreams report as read from
and written to their prompt cache reaches the client in its own format, the usage row,
the cost (each kind of token at its price), the CSV and the metrics — plain and
streamed alike, through the official SDKs, against loopback fakes of each protocol."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from rest_framework.authtoken.models import Token

from llm_integration.models import ModelAlias, UsageRecord
from tests.factories import BudgetFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

#: A prompt the gateway counts at about 2,000 tokens: the fakes' reports of 1,000 are
#: plausible for it, and under what the request reserves.
LONG = "word " * 2000
PRICES = {"input_price_per_mtok": Decimal("3"), "output_price_per_mtok": Decimal("15")}


@pytest.fixture
def token(db):
    return Token.objects.create(user=UserFactory()).key


@pytest.fixture
def claude(live_server_url, token):
    return anthropic.Anthropic(base_url=live_server_url, api_key=token, max_retries=0)


@pytest.fixture
def gpt(live_server_url, token):
    return openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=token, max_retries=0)


def ask_claude(client, *, stream: bool):
    request = {
        "model": "cached",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": LONG}],
    }
    if not stream:
        return client.messages.create(**request).usage
    with client.messages.stream(**request) as events:
        return events.get_final_message().usage


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_anthropic_cache_write_then_read_at_anthropic_prices(claude, alias_on, stream):
    fake = alias_on("anthropic", "cached", **PRICES)
    # Write: 900 of 1,000 prompt tokens go to the cache (1.25× the input price).
    fake.push(prompt_tokens=1000, cache_write_tokens=900, completion_tokens=10)
    usage = ask_claude(claude, stream=stream)
    assert (usage.input_tokens, usage.cache_creation_input_tokens) == (100, 900)
    assert (usage.cache_read_input_tokens, usage.output_tokens) == (0, 10)
    # Read: the same 900 come back from the cache (0.1×).
    fake.push(prompt_tokens=1000, cache_read_tokens=900, completion_tokens=10)
    usage = ask_claude(claude, stream=stream)
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (100, 900)
    assert usage.cache_creation_input_tokens == 0
    write, read = UsageRecord.objects.order_by("id")
    assert (write.cache_write_tokens, write.cache_read_tokens, write.prompt_tokens) == (
        900,
        0,
        1000,
    )
    assert (read.cache_write_tokens, read.cache_read_tokens, read.prompt_tokens) == (0, 900, 1000)
    # 100 × 3 + 900 × 3.75 + 10 × 15, and 100 × 3 + 900 × 0.3 + 10 × 15, per million.
    assert write.cost_usd == Decimal("0.003825")
    assert read.cost_usd == Decimal("0.00072")


def test_streamed_and_plain_calls_of_the_same_tokens_cost_the_same(claude, alias_on):
    fake = alias_on("anthropic", "cached", **PRICES)
    for stream in (False, True):
        fake.push(
            prompt_tokens=1000, cache_write_tokens=300, cache_read_tokens=600, completion_tokens=9
        )
        ask_claude(claude, stream=stream)
    plain, streamed = UsageRecord.objects.order_by("id")
    assert plain.streamed is False and streamed.streamed is True
    for field in ("prompt_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd"):
        assert getattr(plain, field) == getattr(streamed, field)
    # 100 × 3 + 600 × 0.3 + 300 × 3.75 + 9 × 15
    assert plain.cost_usd == Decimal("0.00174")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_hour_long_writes_cost_twice_the_input_by_default(claude, alias_on, stream):
    fake = alias_on("anthropic", "cached", **PRICES)
    fake.push(prompt_tokens=1000, cache_write_tokens=900, cache_write_1h_tokens=400)
    ask_claude(claude, stream=stream)
    record = UsageRecord.objects.get()
    assert (record.cache_write_tokens, record.cache_write_1h_tokens) == (900, 400)
    # 100 × 3 + 500 × 3.75 + 400 × 6 + 7 × 15 (the fake's 7 output tokens)
    assert record.cost_usd == Decimal("0.00468")


def test_the_alias_cache_prices_win_over_the_defaults(claude, alias_on):
    fake = alias_on("anthropic", "cached", **PRICES)
    alias = ModelAlias.objects.get(slug="cached")
    alias.cache_read_price_per_mtok = Decimal("0.5")
    alias.cache_write_price_per_mtok = Decimal("4")
    alias.cache_write_1h_price_per_mtok = Decimal("5")
    alias.save()
    fake.push(prompt_tokens=1000, cache_write_tokens=900, cache_write_1h_tokens=400)
    fake.push(prompt_tokens=1000, cache_read_tokens=900)
    ask_claude(claude, stream=False)
    ask_claude(claude, stream=True)
    written, read = UsageRecord.objects.order_by("id")
    # The alias's own prices: 100 × 3 + 500 × 4 + 400 × 5 + 7 × 15;
    # then 100 × 3 + 900 × 0.5 + 7 × 15.
    assert written.cost_usd == Decimal("0.004405")
    assert read.cost_usd == Decimal("0.000855")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_openai_cached_tokens_are_reads_at_the_alias_read_price(gpt, alias_on, stream):
    fake = alias_on("openai", "cached", cache_read_price_per_mtok=Decimal("1.5"), **PRICES)
    fake.push(prompt_tokens=1000, cache_read_tokens=768, completion_tokens=10)
    request = {"model": "cached", "messages": [{"role": "user", "content": LONG}]}
    if stream:
        chunks = list(
            gpt.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = chunks[-1].usage
    else:
        usage = gpt.chat.completions.create(**request).usage
    assert usage.prompt_tokens == 1000 and usage.prompt_tokens_details.cached_tokens == 768
    record = UsageRecord.objects.get()
    assert (record.cache_read_tokens, record.cache_write_tokens) == (768, 0)
    # 232 × 3 + 768 × 1.5 + 10 × 15
    assert record.cost_usd == Decimal("0.001998")


def test_other_kinds_price_cache_reads_as_input_when_the_alias_says_nothing(gpt, alias_on):
    fake = alias_on("openai", "cached", **PRICES)
    fake.push(prompt_tokens=1000, cache_read_tokens=768, completion_tokens=10)
    gpt.chat.completions.create(model="cached", messages=[{"role": "user", "content": LONG}])
    assert UsageRecord.objects.get().cost_usd == Decimal("0.00315")  # 1000 × 3 + 10 × 15


def token_counts(live_server_url: str) -> dict[str, float]:
    """``llm_tokens_used_total`` of the alias ``cached`` by type, as scraped."""
    scrape = {"Authorization": "Bearer scrape-me"}
    page = httpx.get(f"{live_server_url}/metrics", headers=scrape).text
    prefix = 'llm_tokens_used_total{alias="cached",provider="anthropic",type="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith(prefix)
    }


def test_rest_usage_csv_and_metrics_count_cache_tokens(live_server_url, token, alias_on, settings):
    settings.LLM_INTEGRATION = {"METRICS_ACCESS": "token", "METRICS_TOKEN": "scrape-me"}
    before = token_counts(live_server_url)
    fake = alias_on("anthropic", "cached", **PRICES)
    fake.push(prompt_tokens=1000, cache_write_tokens=200, cache_read_tokens=700)
    client = httpx.Client(base_url=live_server_url, headers={"Authorization": f"Token {token}"})
    answer = client.post("/api/v1/chat", json={"model": "cached", "message": LONG}).json()
    assert answer["usage"]["cache_read_tokens"] == 700
    assert answer["usage"]["cache_write_tokens"] == 200
    month = client.get("/api/v1/usage").json()["month"]
    assert (month["cache_read_tokens"], month["cache_write_tokens"]) == (700, 200)
    finance = Token.objects.create(user=UserFactory(username="finance", is_staff=True)).key
    staff = httpx.Client(base_url=live_server_url, headers={"Authorization": f"Token {finance}"})
    rows = list(csv.DictReader(io.StringIO(staff.get("/api/v1/usage?format=csv").text)))
    assert (rows[0]["cache_read_tokens"], rows[0]["cache_write_tokens"]) == ("700", "200")
    after = token_counts(live_server_url)
    added = {kind: after[kind] - before.get(kind, 0) for kind in after}
    # The types add up to the tokens used: 100 + 700 + 200 in, 7 out.
    assert added == {"prompt": 100, "cache_read": 700, "cache_write": 200, "completion": 7}


EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}
TOOL = {"name": "lookup", "description": "Look it up.", "input_schema": {"type": "object"}}


def marked_request() -> dict:
    """A Messages request with a mark on each kind of block an agent marks."""
    return {
        "model": "cached",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Project notes: " + LONG, "cache_control": EPHEMERAL},
        ],
        "tools": [{**TOOL, "cache_control": EPHEMERAL}],
        "messages": [
            {"role": "user", "content": "Look up the weather."},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "Sunny.",
                        "cache_control": HOUR,
                    },
                    {"type": "text", "text": "And tomorrow?", "cache_control": EPHEMERAL},
                ],
            },
        ],
    }


def test_cache_control_reaches_anthropic_upstreams_on_the_blocks_it_marked(claude, alias_on):
    fake = alias_on("anthropic", "cached", **PRICES)
    fake.push(text="Rain.")
    message = claude.messages.create(**marked_request())
    assert message.content[0].text == "Rain."
    body = [r for r in fake.requests if r.method == "POST"][-1].body
    assert body["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Project notes: " + LONG, "cache_control": EPHEMERAL},
    ]
    assert body["tools"][0]["cache_control"] == EPHEMERAL
    last = body["messages"][-1]["content"]
    assert last[0]["type"] == "tool_result" and last[0]["cache_control"] == HOUR
    assert last[1] == {"type": "text", "text": "And tomorrow?", "cache_control": EPHEMERAL}
    assistant = body["messages"][1]["content"]
    assert all("cache_control" not in block for block in assistant)


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_other_upstreams_get_the_same_request_without_the_marks(claude, alias_on, kind):
    fake = alias_on(kind, "cached", **PRICES)
    fake.push(text="Rain.")
    assert claude.messages.create(**marked_request()).content[0].text == "Rain."
    body = [r for r in fake.requests if r.method == "POST"][-1].body
    assert "cache_control" not in json.dumps(body)
    assert body["messages"][0]["content"] == "You are terse.Project notes: " + LONG


def test_openai_content_parts_carry_cache_control_to_anthropic(gpt, alias_on):
    fake = alias_on("anthropic", "cached", **PRICES)
    fake.push(text="Rain.")
    gpt.chat.completions.create(
        model="cached",
        messages=[
            {
                "role": "system",
                "content": [{"type": "text", "text": LONG, "cache_control": EPHEMERAL}],
            },
            {"role": "user", "content": "Weather?"},
        ],
    )
    body = [r for r in fake.requests if r.method == "POST"][-1].body
    assert body["system"] == [{"type": "text", "text": LONG, "cache_control": EPHEMERAL}]


def test_a_malformed_mark_is_refused_naming_it(claude, alias_on):
    alias_on("anthropic", "cached", **PRICES)
    request = marked_request()
    request["messages"][0] = {
        "role": "user",
        "content": [{"type": "text", "text": "hi", "cache_control": {"type": "forever"}}],
    }
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(**request)
    assert "messages[0].content[0].cache_control" in refused.value.message


def test_budgets_reserve_what_the_marks_could_write(claude, alias_on):
    """Worst cases here (about 3,000 prompt tokens reserved at $3 per million, 64 output
    at $15): without marks about $0.010, with 5-minute marks $0.012, with an hour's
    $0.019: a $0.015 budget takes the first two and refuses the third before any call."""
    BudgetFactory(limit_usd=Decimal("0.015"))
    fake = alias_on("anthropic", "cached", **PRICES)
    request = {
        "model": "cached",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": LONG}]}],
    }
    hour = {**request["messages"][0]["content"][0], "cache_control": HOUR}
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude.messages.create(**{**request, "messages": [{"role": "user", "content": [hour]}]})
    assert "budget" in refused.value.message.lower()
    assert not [r for r in fake.requests if r.method == "POST"]
    five = {**hour, "cache_control": EPHEMERAL}
    fake.push(text="ok", prompt_tokens=1000, completion_tokens=2)
    claude.messages.create(**{**request, "messages": [{"role": "user", "content": [five]}]})
    fake.push(text="ok", prompt_tokens=1000, completion_tokens=2)
    claude.messages.create(**request)
    assert UsageRecord.objects.filter(status="ok").count() == 2


def test_a_stream_cut_short_keeps_what_the_cache_read(claude, alias_on):
    fake = alias_on("anthropic", "cached", **PRICES)
    fake.push(mode="cut", text=LONG, cut_after=3, prompt_tokens=1000, cache_read_tokens=900)
    with pytest.raises(anthropic.APIError):
        ask_claude(claude, stream=True)
    record = UsageRecord.objects.get()
    assert record.status != "ok" and record.tokens_estimated
    assert (record.prompt_tokens, record.cache_read_tokens) == (1000, 900)
