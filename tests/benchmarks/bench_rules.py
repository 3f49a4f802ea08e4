"""What routing rules cost (run on demand; prints figures).

    python tests/benchmarks/bench_rules.py                  # 2,000 requests per series

1. The service path (as ``bench_gateway.py``: a zero-latency fake OpenAI upstream) with
   no rules, then with 50 rules that do not match — 25 whose only condition is a
   pattern (so every request's text is searched) and 25 naming a task — then with none
   again: the p50 the rules add.
2. A 100 kB request (a long conversation) against the same 50 patterns: the time to
   gather its text and decide, on the configuration snapshot's compiled rules.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_gateway import pct, row, setup_django, timed  # noqa: E402

RULES = 50


def patterns() -> list[str]:
    """Fifty patterns of the kinds operators write: identifiers, keywords, e-mail."""
    return [
        rf"(?i)\bpatient[-_ ]?id[:# ]*\d{{4}}-{i:04d}\b"
        if i % 3 == 0
        else rf"(?i)\b(confidential|internal only|secret)-{i}\b"
        if i % 3 == 1
        else rf"[A-Za-z0-9._%+-]+@customer-{i}\.example\b"
        for i in range(RULES)
    ]


async def run(n: int) -> None:
    from decimal import Decimal

    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model

    from llm_integration.adapters import ChatRequest
    from llm_integration.adapters.base import Message
    from llm_integration.models import ModelAlias, Plan, Provider, RoutingRule
    from llm_integration.services.chat import Gateway
    from llm_integration.services.config.snapshot import config
    from llm_integration.services.policy.rules import request_text, rule_book
    from tests.fakes.openai import OpenAIFake

    fake = OpenAIFake().start()

    def rows():
        provider = Provider.objects.create(
            name="bench",
            kind="openai",
            base_url=fake.base_url,
            api_key_env="BENCH_TEST_KEY",
            max_retries=0,
        )
        ModelAlias.objects.create(
            slug="chat",
            provider=provider,
            upstream_model="gpt-4o-mini",
            input_price_per_mtok=Decimal("0.15"),
            output_price_per_mtok=Decimal("0.60"),
        )
        Plan.objects.create(slug="free", name="Free", rpm_limit=1_000_000)
        return get_user_model().objects.create_user("bench", password="x")

    def add_rules():
        chat = ModelAlias.objects.get(slug="chat")
        for i, pattern in enumerate(patterns()):
            fields = {"pattern": pattern} if i % 2 else {"tasks": [f"task-{i}"]}
            RoutingRule.objects.create(name=f"rule-{i}", position=i, serve_with=chat, **fields)

    def drop_rules():
        RoutingRule.objects.all().delete()

    user = await sync_to_async(rows)()
    gateway = Gateway()
    messages = [{"role": "user", "content": "Say hello in five words."}]

    async def through():
        await gateway.chat(user=user, model="chat", messages=messages)

    results = {}
    for label, change in (
        ("no rules", None),
        (f"{RULES} rules, none matching", add_rules),
        ("no rules, again", drop_rules),
    ):
        if change is not None:
            await sync_to_async(change)()
        await sync_to_async(config.current)()  # the new snapshot, loaded before timing
        await timed(through, 50)  # warm up
        results[label] = await timed(through, n)
        print(row(f"through the gateway, {label}", results[label]))
    base = (pct(results["no rules"], 0.5) + pct(results["no rules, again"], 0.5)) / 2
    added = pct(results[f"{RULES} rules, none matching"], 0.5) - base
    print(f"added by {RULES} rules at p50: {added:6.3f} ms")

    await sync_to_async(add_rules)()
    snapshot = await sync_to_async(config.current)()
    book = rule_book(snapshot)
    turn = "Here is the customer's ticket history, summarise the open issues. " * 14
    conversation = tuple(
        Message(role="user" if i % 2 == 0 else "assistant", content=turn)
        for i in range(round(100_000 / len(turn)))
    )
    request = ChatRequest(messages=conversation)
    size = len(request_text(request).encode())
    samples = []
    for _ in range(max(200, n // 10)):
        start = time.perf_counter()
        route = book.route(task="", plan="free", model="chat", text=lambda: request_text(request))
        samples.append(time.perf_counter() - start)
    assert route.rule == ""
    print(row(f"{size / 1000:.0f} kB request, {RULES} patterns", samples))
    fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    setup_django()
    import django.db

    print(f"database: {django.db.connection.vendor}; requests per series: {args.requests}")
    asyncio.run(run(args.requests))


if __name__ == "__main__":
    main()
