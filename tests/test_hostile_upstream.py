"""An upstream that misbehaves as broken, overloaded or compromised servers do, driven
through every surface (REST, /v1, /v1/messages, each plain and streamed, and the
WebSocket) and every upstream protocol.

After each bad answer: the client got an answer or the contract's error (never a 500),
exactly one usage record was written and it is sane (counts within range, a documented
finish reason), the budget's reservation is back to nothing, the accounting is still
healthy and a bystander's request is served.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from llm_integration.adapters import ToolCall
from llm_integration.adapters.untrusted import FINISH_REASONS, MAX_TOKEN_COUNT
from llm_integration.models import BudgetPeriod, Provider, UsageRecord
from llm_integration.services.accounting.writer import writer
from llm_integration.services.chat.tool_arguments import not_json
from llm_integration.services.config.snapshot import invalidate
from llm_integration.text.tokens import count_text_tokens
from project.asgi import application
from tests.factories import BudgetFactory, ModelAliasFactory, ProviderFactory, UserFactory
from tests.fakes import hostile

pytestmark = pytest.mark.django_db(transaction=True)

KINDS = ("openai", "anthropic", "ollama")
PLAIN = ("rest", "v1", "messages")
STREAMED = ("rest-stream", "v1-stream", "messages-stream", "ws")
SURFACES = PLAIN + STREAMED
KEY = "sk-Q7pX2vL9mR4tW8yB3nK6jH1gF5dS0aZ2cV7xE4uI9oP3"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-fake", "ollama": "llama3.2"}
#: What an honest upstream reports for the hostile answers' text.
WRITTEN = str(count_text_tokens(hostile.WORDS))
SANE_FINISH = FINISH_REASONS | {"", "cancelled"}


@dataclass
class Reply:
    status: int
    text: str

    @property
    def failed(self) -> bool:
        return self.status >= 400 or '"error"' in self.text or "event: error" in self.text


@pytest.fixture
def setup(openai_fake, anthropic_fake, ollama_fake, monkeypatch, settings):
    monkeypatch.setenv("HOSTILE_KEY", KEY)
    settings.LLM_INTEGRATION = {
        "BUDGET_ALLOWANCE_SHARE": 0,  # every reservation written: "released" is exact
        "MAX_UPSTREAM_BYTES": 256 * 1024,
        # Each attack runs on every surface in turn: the circuit must not open midway.
        "CIRCUIT_BREAKER_THRESHOLD": 1000,
    }
    fakes = {"openai": openai_fake, "anthropic": anthropic_fake, "ollama": ollama_fake}
    for kind, fake in fakes.items():
        provider = ProviderFactory(
            name=f"{kind}-hostile",
            kind=kind,
            base_url=fake.base_url,
            api_key_env="HOSTILE_KEY",
            max_retries=0,
        )
        ModelAliasFactory(
            slug=kind,
            provider=provider,
            upstream_model=MODELS[kind],
            input_price_per_mtok=Decimal("3"),
            output_price_per_mtok=Decimal("15"),
            supports_tools=True,
        )
    ModelAliasFactory(slug="calm", provider=ProviderFactory(name="calm", kind="dummy"))
    BudgetFactory(name="all", limit_usd=Decimal("50"))
    user = UserFactory(username="caller")
    return {"fakes": fakes, "token": Token.objects.create(user=user).key}


async def ask(surface: str, token: str, model: str) -> Reply:
    """One request on ``surface``; a stream is read to its end."""
    if surface == "ws":
        return await ask_socket(token, model)
    streamed = surface.endswith("-stream")
    client = AsyncClient()
    headers = {"Authorization": f"Bearer {token}"}
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    if surface.startswith("rest"):
        path, body = "/api/v1/chat", {"message": "Weather in Paris?", "model": model}
    elif surface.startswith("v1"):
        path, body = "/v1/chat/completions", {"model": model, "messages": messages}
    else:
        path, body = "/v1/messages", {"model": model, "max_tokens": 500, "messages": messages}
        headers = {"x-api-key": token}
    body["stream"] = streamed
    response = await client.post(
        path, json.dumps(body), content_type="application/json", headers=headers
    )
    if response.streaming:
        text = b"".join([piece async for piece in response.streaming_content]).decode()
    else:
        text = response.content.decode()
    return Reply(response.status_code, text)


async def ask_socket(token: str, model: str) -> Reply:
    ws = WebsocketCommunicator(
        application, "/ws/llm/chat/", headers=[(b"origin", b"http://testserver")]
    )
    await ws.connect()
    await ws.send_json_to({"type": "auth", "token": token})
    await ws.send_json_to(
        {"type": "chat", "model": model, "messages": [{"role": "user", "content": "hi"}]}
    )
    frames = []
    while True:
        frame = await ws.receive_json_from(timeout=10)
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            break
    await ws.disconnect()
    return Reply(200, json.dumps(frames))


async def attack(setup, kind: str, surfaces, script) -> list[tuple[str, Reply, UsageRecord]]:
    """``script(surface)`` pushed before each surface's request; the aftermath checked."""
    fake, token = setup["fakes"][kind], setup["token"]
    outcomes = []
    for surface in surfaces:
        before = await UsageRecord.objects.acount()
        fake.push(raw=script(surface))
        reply = await ask(surface, token, kind)
        assert reply.status != 500 and "internal_error" not in reply.text, (surface, reply)
        records = [r async for r in UsageRecord.objects.order_by("id")[before:]]
        assert len(records) == 1, (surface, records)
        record = records[0]
        assert 0 <= record.prompt_tokens <= MAX_TOKEN_COUNT
        assert 0 <= record.completion_tokens <= MAX_TOKEN_COUNT
        assert record.finish_reason in SANE_FINISH and record.cost_usd >= 0
        periods = [p async for p in BudgetPeriod.objects.all()]
        assert all(p.reserved_units == 0 for p in periods), (surface, periods)
        assert writer.healthy()
        bystander = await ask("rest", token, "calm")
        assert bystander.status == 200, bystander
        await UsageRecord.objects.filter(alias="calm").adelete()
        outcomes.append((surface, reply, record))
    return outcomes


# -- usage that is not a count, or not the truth ------------------------------------------

BAD_COUNTS = {
    "negative": ("-5", "-7"),
    "beyond a database integer": ("3000000000", "3000000000"),
    "beyond 2**63": ("9223372036854775808", "18446744073709551616"),
    "infinite": ("1e999", "-1e999"),
    "not a number": ('"12"', "null"),
    "fractional": ("11.5", "7.25"),
    "a boolean": ("true", "false"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(BAD_COUNTS))
async def test_usage_that_is_not_a_count_is_estimated(setup, kind, case):
    prompt, completion = BAD_COUNTS[case]
    outcomes = await attack(
        setup,
        kind,
        SURFACES,
        lambda _s: hostile.answer(kind, prompt=prompt, completion=completion),
    )
    for surface, reply, record in outcomes:
        assert not reply.failed and "word39" in reply.text, (surface, reply)
        assert record.status == "ok" and record.tokens_estimated, (surface, record)
        assert 0 < record.prompt_tokens < 100 and 20 < record.completion_tokens < 1000
        assert record.cost_usd > 0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_count_under_half_of_the_text_delivered_is_replaced(setup, kind):
    outcomes = await attack(
        setup, kind, SURFACES, lambda _s: hostile.answer(kind, prompt="0", completion="0")
    )
    for surface, _reply, record in outcomes:
        assert record.tokens_estimated, surface
        assert record.completion_tokens >= int(WRITTEN) // 2 and record.prompt_tokens > 0
        assert record.cost_usd > 0


async def test_an_anthropic_stream_without_message_delta_is_estimated(setup):
    outcomes = await attack(
        setup,
        "anthropic",
        STREAMED,
        lambda _s: hostile.answer("anthropic", completion=WRITTEN, usage_event=False),
    )
    for surface, reply, record in outcomes:
        assert not reply.failed, (surface, reply)
        assert record.tokens_estimated and record.completion_tokens > 20, (surface, record)


@pytest.mark.parametrize("kind", KINDS)
async def test_honest_counts_are_billed_as_reported(setup, kind):
    outcomes = await attack(
        setup, kind, SURFACES, lambda _s: hostile.answer(kind, prompt="14", completion=WRITTEN)
    )
    for surface, _reply, record in outcomes:
        assert (record.prompt_tokens, record.completion_tokens) == (14, int(WRITTEN)), surface
        assert not record.tokens_estimated


# -- finish reasons, text and tool calls the gateway cannot pass on as they are -------------

FINISHES = {
    "a formula": json.dumps('=HYPERLINK("http://evil/","x")'),
    "longer than its column": json.dumps("x" * 40),
    "not a string": "[1, 2]",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(FINISHES))
async def test_finish_reasons_are_the_documented_ones(setup, kind, case):
    outcomes = await attack(
        setup,
        kind,
        SURFACES,
        lambda _s: hostile.answer(kind, finish=FINISHES[case], completion=WRITTEN),
    )
    for surface, reply, record in outcomes:
        assert not reply.failed, (surface, reply)
        assert record.status == "ok" and record.finish_reason == "stop"
        assert "HYPERLINK" not in reply.text and "xxxxxxxx" not in reply.text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("word", ["error", "abort"])
async def test_a_finish_reason_that_says_the_generation_failed_is_an_error(setup, kind, word):
    outcomes = await attack(
        setup,
        kind,
        SURFACES,
        lambda _s: hostile.answer(kind, finish=json.dumps(word), completion=WRITTEN),
    )
    for surface, reply, record in outcomes:
        assert reply.failed and "generation failed" in reply.text, (surface, reply)
        assert record.status == "error", surface


@pytest.mark.parametrize("kind", KINDS)
async def test_a_lone_surrogate_from_the_upstream_becomes_u_fffd(setup, kind):
    text = '"caf\\ud800 au lait \\udfff"'
    outcomes = await attack(
        setup, kind, SURFACES, lambda _s: hostile.answer(kind, text=text, completion="9")
    )
    for surface, reply, record in outcomes:
        assert not reply.failed, (surface, reply)
        assert "au lait" in reply.text and ("\\ufffd" in reply.text or "\ufffd" in reply.text)
        assert record.status == "ok"


async def test_tool_arguments_that_are_not_json(setup):
    outcomes = await attack(
        setup,
        "openai",
        SURFACES,
        lambda _s: hostile.answer("openai", text='""', arguments='"{not json"', completion="9"),
    )
    for surface, reply, record in outcomes:
        if surface.startswith("messages"):  # a tool_use block's input must be an object
            assert reply.failed and "not a JSON object" in reply.text, (surface, reply)
            assert (record.status, record.error_type) == ("error", "bad_upstream_response")
            # The client got no answer: what the provider charged is kept aside.
            assert record.cost_usd == 0 and record.unbilled_cost_usd > 0
        else:  # OpenAI's own shape carries arguments as text, whatever they hold
            assert not reply.failed and "not json" in reply.text, (surface, reply)
            assert record.status == "ok"


async def test_tool_arguments_nested_past_the_recursion_limit(setup):
    """Arguments Python cannot parse (nested 50,000 deep) are no JSON object, never a
    500; this answer is also far past max_tokens, so it ends cut there."""
    deep = "[" * 50_000 + "]" * 50_000
    assert not_json([ToolCall("call_1", "get_weather", deep)]) is not None
    await attack(
        setup,
        "openai",
        ("messages", "messages-stream"),
        lambda _s: hostile.answer("openai", text='""', arguments=json.dumps(deep), completion="9"),
    )


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_tool_call_cut_at_max_tokens_is_an_answer(setup, kind):
    """An honest upstream that stops inside a call's arguments at ``max_tokens``: its
    client gets the cut answer (``stop_reason: max_tokens``), not a 502."""
    length = '"length"' if kind == "openai" else '"max_tokens"'
    arguments = json.dumps('{"city": "Par') if kind == "openai" else '{"city": "Par"}'
    outcomes = await attack(
        setup,
        kind,
        ("messages", "messages-stream"),
        lambda _s: hostile.answer(
            kind, text='""', arguments=arguments, finish=length, completion="9"
        ),
    )
    for surface, reply, record in outcomes:
        assert not reply.failed and "max_tokens" in reply.text, (surface, reply)
        assert (record.status, record.finish_reason) == ("ok", "length")


async def test_streamed_anthropic_tool_input_that_is_not_json(setup):
    outcomes = await attack(
        setup,
        "anthropic",
        ("messages-stream",),
        lambda _s: hostile.answer("anthropic", text='""', arguments="{not json", completion="9"),
    )
    ((_surface, reply, record),) = outcomes
    assert "event: error" in reply.text and "not a JSON object" in reply.text
    assert (record.status, record.error_type) == ("error", "bad_upstream_response")


# -- key pieces in error text ----------------------------------------------------------------


def pieces_of(key: str, size: int = 8) -> set[str]:
    return {key[i : i + size] for i in range(len(key) - size + 1)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [400, 422, 500])
async def test_no_piece_of_the_key_reaches_a_client(setup, kind, status, caplog):
    quotes = [
        f"invalid key fragment {KEY[11:19]} for this org",
        f"key ...{KEY[20:31]}... revoked",
        f"partial {KEY[-9:]}",
        f"{KEY[3:15].upper()} / {KEY[30:42]}",
    ]
    for quote in quotes:
        outcomes = await attack(
            setup, kind, SURFACES, lambda _s, q=quote: hostile.error(kind, status, q)
        )
        for surface, reply, _record in outcomes:
            assert reply.failed, (surface, reply)
            leaked = [p for p in pieces_of(KEY) if p in reply.text]
            assert not leaked, (surface, reply.text)
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert not [p for p in pieces_of(KEY) if p in logged]


# -- answers and events without end ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ["body", "chunked"])
async def test_an_answer_over_max_upstream_bytes_is_a_502(setup, kind, shape):
    outcomes = await attack(
        setup, kind, PLAIN, lambda _s: hostile.flood(kind, size=2 * 1024 * 1024, shape=shape)
    )
    for surface, reply, record in outcomes:
        assert reply.status == 502, (surface, reply)
        assert (record.status, record.error_type) == ("error", "bad_upstream_response")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ["line", "event", "lines"])
async def test_a_stream_event_over_max_upstream_bytes_is_a_502(setup, kind, shape):
    outcomes = await attack(
        setup, kind, STREAMED, lambda _s: hostile.flood(kind, size=2 * 1024 * 1024, shape=shape)
    )
    for surface, reply, record in outcomes:
        assert reply.failed, (surface, reply)
        assert "bad_upstream_response" in reply.text or reply.status == 502, (surface, reply)
        assert (record.status, record.error_type) == ("error", "bad_upstream_response")


@pytest.fixture
def deadlines(setup, settings):
    """Streams that never end are cut short here: 0.3 s without content, 2 s in all
    (the first token may take the provider's timeout, made 0.3 s too)."""
    settings.LLM_INTEGRATION = {
        **settings.LLM_INTEGRATION,
        "STREAM_IDLE_TIMEOUT": 0.3,
        "MAX_STREAM_SECONDS": 2.0,
    }
    Provider.objects.filter(name__endswith="-hostile").update(timeout_seconds=0.3)
    invalidate()
    return setup


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_of_keep_alives_ends_with_upstream_timeout(deadlines, kind):
    setup = deadlines
    outcomes = await attack(setup, kind, STREAMED, lambda _s: hostile.idle(kind))
    for surface, reply, record in outcomes:
        assert reply.failed and "STREAM_IDLE_TIMEOUT" in reply.text, (surface, reply)
        assert (record.status, record.error_type) == ("error", "upstream_timeout")


async def test_a_stream_of_empty_deltas_ends_with_upstream_timeout(deadlines):
    setup = deadlines
    outcomes = await attack(
        setup, "openai", STREAMED, lambda _s: hostile.idle("openai", keepalive=hostile.EMPTY_DELTA)
    )
    for surface, reply, record in outcomes:
        assert reply.failed and "STREAM_IDLE_TIMEOUT" in reply.text, (surface, reply)
        assert record.error_type == "upstream_timeout"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_without_end_stops_at_max_stream_seconds(deadlines, kind):
    setup = deadlines
    outcomes = await attack(
        setup, kind, STREAMED, lambda _s: hostile.idle(kind, keepalive=hostile.CONTENT[kind])
    )
    for surface, reply, record in outcomes:
        assert "more" in reply.text, (surface, reply)  # it delivered until the end
        assert reply.failed and "MAX_STREAM_SECONDS" in reply.text, (surface, reply)
        assert (record.status, record.error_type) == ("error", "upstream_timeout")
        assert record.completion_tokens > 0 and record.cost_usd > 0  # what it delivered


# -- a fallback stays within the caller's plan --------------------------------------------------


async def test_a_fallback_outside_the_plan_is_skipped(setup):
    from llm_integration.models import AliasFallback, ModelAlias, Plan, PlanEntitlement

    @sync_to_async
    def arrange():
        pro = Plan.objects.create(slug="pro", name="Pro")
        Plan.objects.get_or_create(slug="free", defaults={"name": "Free"})
        open_alias = ModelAlias.objects.get(slug="openai")
        locked = ModelAlias.objects.get(slug="anthropic")
        PlanEntitlement.objects.create(plan=pro, alias=locked)
        AliasFallback.objects.create(alias=open_alias, fallback=locked, position=1)

    await arrange()
    fakes = setup["fakes"]
    fakes["openai"].push(mode="error", status=500)
    reply = await ask("rest", setup["token"], "openai")
    assert reply.status == 503 and "no_upstream" in reply.text, reply
    assert not [r for r in fakes["anthropic"].requests if r.path.endswith("/messages")]
    direct = await ask("rest", setup["token"], "anthropic")
    assert direct.status == 403


# -- memory ----------------------------------------------------------------------------------

STATUS = Path("/proc/self/status")


def peak_rss() -> int:
    """This process's peak resident memory since ``reset_peak()`` (bytes)."""
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak starts again
    except OSError:
        return False
    return True


@pytest.mark.skipif(not STATUS.exists(), reason="Linux's /proc")
@pytest.mark.parametrize("kind", KINDS)
async def test_memory_stays_bounded_whatever_the_upstream_sends(setup, kind):
    """64 MiB answers of every shape, MAX_UPSTREAM_BYTES of 256 KiB: the process's peak
    memory grows by a few MiB, not by what the upstream sent."""
    fake, token = setup["fakes"][kind], setup["token"]
    for surface in ("rest", "rest-stream"):  # what any first request loads (encodings…)
        fake.push(raw=hostile.answer(kind, completion=WRITTEN))
        assert not (await ask(surface, token, kind)).failed
    if not reset_peak():
        pytest.skip("the peak resident memory cannot be reset here")
    before = peak_rss()
    for surface, shape in [
        ("rest", "body"),
        ("rest", "chunked"),
        ("rest-stream", "line"),
        ("rest-stream", "event"),
        ("rest-stream", "lines"),
    ]:
        fake.push(raw=hostile.flood(kind, size=64 * 1024 * 1024, shape=shape))
        reply = await ask(surface, token, kind)
        assert reply.failed and "bad_upstream_response" in reply.text, (shape, reply)
    grown = peak_rss() - before
    assert grown < 24 * 1024 * 1024, f"peak memory grew by {grown / 2**20:.1f} MiB"


@pytest.mark.parametrize("kind", KINDS)
async def test_an_answer_compressed_though_asked_for_none_is_a_502(setup, kind):
    """Answers are asked uncompressed, so what is counted against MAX_UPSTREAM_BYTES is
    what is kept: a compressed one (a bomb: 64 MiB of zeros in 64 KiB) is refused
    unread, streamed or not."""
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)

    def compressed(ex):
        streamed = isinstance(ex.request.body, dict) and ex.request.body.get("stream")
        kind_of = "text/event-stream" if streamed else "application/json"
        ex.send(200, bomb, content_type=kind_of, headers={"Content-Encoding": "gzip"})

    outcomes = await attack(setup, kind, SURFACES, lambda _s: compressed)
    for surface, reply, record in outcomes:
        assert reply.failed and "compressed" in reply.text, (surface, reply)
        assert record.error_type == "bad_upstream_response"
    sent = [r for r in setup["fakes"][kind].requests if r.method == "POST"][-1]
    assert sent.headers.get("accept-encoding") == "identity"


@pytest.mark.parametrize("kind", ["anthropic", "ollama"])
async def test_an_honest_count_in_a_script_cl100k_spends_many_tokens_on(setup, kind):
    """Models counted by estimate: a provider whose tokenizer needs a fifth of
    cl100k_base's tokens for Gujarati is billed its own count, not re-billed."""
    text = "ગુજરાતી ભાષા ભારતની એક મુખ્ય ભાષા છે અને ગુજરાત રાજ્યમાં બોલાય છે. " * 6
    honest = count_text_tokens(text, model="gpt-4o")
    assert honest * 2 < count_text_tokens(text)  # what the first count would say
    outcomes = await attack(
        setup,
        kind,
        ("rest", "rest-stream"),
        lambda _s: hostile.answer(kind, text=json.dumps(text), completion=str(honest)),
    )
    for surface, reply, record in outcomes:
        assert not reply.failed, (surface, reply)
        assert (record.completion_tokens, record.tokens_estimated) == (honest, False), surface


async def test_empty_tool_call_pieces_are_no_content(deadlines):
    setup = deadlines
    empty = (
        b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", '
        b'"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}, '
        b'"finish_reason": null}]}\n\n'
    )
    outcomes = await attack(
        setup, "openai", STREAMED, lambda _s: hostile.idle("openai", keepalive=empty)
    )
    for surface, reply, record in outcomes:
        assert reply.failed and "STREAM_IDLE_TIMEOUT" in reply.text, (surface, reply)
        assert record.error_type == "upstream_timeout"


@pytest.mark.parametrize("kind", ["openai", "ollama"])
@pytest.mark.parametrize("count", ["-3", "1e999", "3000000000", '"2"'])
async def test_embeddings_usage_that_is_not_plausible_is_estimated(setup, kind, count):
    """An embeddings answer's count goes through the same checks as a chat's."""
    from llm_integration.models import ModelAlias

    await ModelAlias.objects.filter(slug=kind).aupdate(mode="embedding")
    if kind == "openai":
        body = (
            '{"object": "list", "data": [{"object": "embedding", "index": 0, '
            f'"embedding": [0.5, 0.25]}}], "model": "m", "usage": {{"prompt_tokens": {count}}}}}'
        )
    else:
        body = f'{{"model": "m", "embeddings": [[0.5, 0.25]], "prompt_eval_count": {count}}}'
    setup["fakes"][kind].push(raw=lambda ex: ex.send(200, body.encode()))
    response = await AsyncClient().post(
        "/v1/embeddings",
        json.dumps({"model": kind, "input": "a few words to embed"}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {setup['token']}"},
    )
    assert response.status_code == 200, response.content
    record = await UsageRecord.objects.aget(alias=kind)
    assert record.status == "ok" and record.tokens_estimated
    assert 0 < record.prompt_tokens < 100
    assert (await BudgetPeriod.objects.aget()).reserved_units == 0


# -- what else an upstream can send ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_redirect_is_not_followed(setup, kind, status):
    """A redirect would carry the prompt and the keys to another origin: a 502."""
    elsewhere = setup["fakes"]["ollama" if kind != "ollama" else "openai"]
    before = len(elsewhere.requests)

    def redirect(ex):
        ex.send(status, b"", headers={"Location": f"{elsewhere.origin}/v1/chat/completions"})

    outcomes = await attack(setup, kind, PLAIN, lambda _s: redirect)
    for surface, reply, record in outcomes:
        assert reply.status == 502 and "redirect" in reply.text, (surface, reply)
        assert record.status == "error"
    assert len(elsewhere.requests) == before


@pytest.mark.parametrize("value", ["inf", "1e400", "99999999999999999999999", "-5", "nan"])
async def test_a_retry_after_of_any_value_is_no_500(setup, value):
    def limited(ex):
        body = b'{"error": {"message": "slow down", "type": "rate_limit_exceeded"}}'
        ex.send(429, body, headers={"Retry-After": value})

    outcomes = await attack(setup, "openai", SURFACES, lambda _s: limited)
    for surface, reply, _record in outcomes:
        assert reply.failed and "Infinity" not in reply.text, (surface, reply)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_million_spaces_are_counted_not_a_crash(setup, kind, settings):
    """tiktoken's regex overflows its stack on a million spaces in one piece."""
    settings.LLM_INTEGRATION = {**settings.LLM_INTEGRATION, "MAX_UPSTREAM_BYTES": 4 * 2**20}
    spaces = json.dumps(" " * 1_000_000 + "a")
    outcomes = await attack(
        setup, kind, ("rest", "rest-stream"), lambda _s: hostile.answer(kind, text=spaces)
    )
    for surface, reply, record in outcomes:
        assert not reply.failed, (surface, reply)
        assert record.status == "ok"
    reply = await ask("rest", setup["token"], "calm")  # and from a client, on the dummy
    assert reply.status == 200


async def test_anthropic_tool_calls_without_a_name_are_no_content(deadlines):
    setup = deadlines
    nameless = (
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 1, '
        b'"content_block": {"type": "tool_use", "id": "", "name": "", "input": {}}}\n\n'
    )
    outcomes = await attack(
        setup, "anthropic", STREAMED, lambda _s: hostile.idle("anthropic", keepalive=nameless)
    )
    for surface, reply, _record in outcomes:
        assert reply.failed and "STREAM_IDLE_TIMEOUT" in reply.text, (surface, reply)
        assert '"tool_call"' not in reply.text and "tool_use" not in reply.text


async def test_streamed_tool_call_indices_are_ours(setup):
    """An upstream's index (a billion) becomes 0; a later piece cannot rename the call."""

    def odd(ex):
        chunk = hostile.OpenAIAnswer('""', "11", "9", None, None, True).chunk
        ex.start_stream("text/event-stream")
        for delta in (
            '{"tool_calls": [{"index": 1000000000, "id": "call_a", "type": "function", '
            '"function": {"name": "get_weather", "arguments": "{\\"ci"}}]}',
            '{"tool_calls": [{"index": 1000000000, "id": "call_b", '
            '"function": {"name": "other", "arguments": "ty\\": 1}"}}]}',
        ):
            ex.write(chunk(delta))
        ex.write(chunk("{}", '"tool_calls"'))
        ex.write(b'data: {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9}}')
        ex.write(b"\n\ndata: [DONE]\n\n")
        ex.end_stream()

    outcomes = await attack(setup, "openai", ("v1-stream", "messages-stream"), lambda _s: odd)
    for surface, reply, record in outcomes:
        assert not reply.failed and "1000000000" not in reply.text, (surface, reply)
        assert "call_b" not in reply.text and '"other"' not in reply.text
        assert '"index":-1' not in reply.text.replace(" ", "")
        assert record.status == "ok"


async def test_tool_arguments_sent_as_an_object_are_json_text(setup):
    outcomes = await attack(
        setup,
        "openai",
        ("v1", "rest"),
        lambda _s: hostile.answer("openai", text='""', arguments='{"city": "Paris"}'),
    )
    for surface, reply, _record in outcomes:
        assert "{'city'" not in reply.text and "Paris" in reply.text, (surface, reply)


async def test_tool_calls_past_max_tokens_are_cut(setup):
    """2,000 calls in one answer: whole calls are kept while they fit max_tokens."""
    calls = ", ".join(
        f'{{"id": "call_{i}", "type": "function", "function": {{"name": "get_weather", '
        f'"arguments": "{{}}"}}}}'
        for i in range(2_000)
    )

    def many(ex):
        ex.send(
            200,
            (
                '{"id": "c", "object": "chat.completion", "created": 1, "model": "m", '
                '"choices": [{"index": 0, "message": {"role": "assistant", "content": null, '
                f'"tool_calls": [{calls}]}}, "finish_reason": "tool_calls"}}], '
                '"usage": {"prompt_tokens": 11, "completion_tokens": 120000}}'
            ).encode(),
        )

    outcomes = await attack(setup, "openai", ("v1",), lambda _s: many)
    ((_surface, reply, record),) = outcomes
    answer = json.loads(reply.text)
    kept = answer["choices"][0]["message"]["tool_calls"]
    assert answer["choices"][0]["finish_reason"] == "length"
    assert 0 < len(kept) < 2_000
    assert record.completion_tokens <= 1024 and record.tokens_estimated


async def test_an_embedding_of_absurd_dimensions_is_refused(setup):
    response = await AsyncClient().post(
        "/v1/embeddings",
        json.dumps({"model": "calm", "input": "a", "dimensions": 1_000_000_000}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {setup['token']}"},
    )
    assert response.status_code == 400 and "dimensions" in response.content.decode()


async def test_an_unknown_post_path_is_a_404_in_the_envelope(setup):
    for path in ("/api/v1/nope", "/v1/nope", "/v1/completions"):
        response = await AsyncClient().post(
            path,
            "{}",
            content_type="application/json",
            headers={"Authorization": f"Bearer {setup['token']}"},
        )
        assert response.status_code == 404, (path, response.content[:200])
        assert json.loads(response.content)["error"]["code"] == "not_found"


async def test_a_model_list_quoting_the_key_is_scrubbed(setup, openai_fake):
    from llm_integration.adapters.openai import OpenAIAdapter

    openai_fake.models = (KEY, f"gpt-{KEY[5:20]}")
    adapter = OpenAIAdapter(model="m", base_url=openai_fake.base_url, api_key=KEY)
    listed = await adapter.list_models()
    assert not [p for p in pieces_of(KEY) if any(p in model for model in listed)]
