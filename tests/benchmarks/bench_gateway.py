"""Gateway overhead and growth benchmarks (run on demand; prints figures).

    python tests/benchmarks/bench_gateway.py                      # 1,000 requests each
    python tests/benchmarks/bench_gateway.py --growth 1000000     # + 1M usage records

Overhead: the same non-streaming and streaming request sent (a) straight to a
zero-latency fake OpenAI upstream through the adapter, and (b) through the whole
service path (validation, entitlements, rate limit, budget reservation, retries
wrapper, usage record, settlement, metrics). Growth: the service path's p50 with an
empty usage table and after inserting N usage records. Uses a throw-away SQLite file
(or DATABASE_URL if set) and one budget, one rate limit, one plan.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if "DATABASE_URL" not in os.environ:
        path = Path(tempfile.mkdtemp()) / "bench.sqlite3"
        os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    os.environ.setdefault("LLM_LOG_LEVEL", "WARNING")
    # The production profile, as servers run it (DEBUG logs every SQL statement).
    os.environ.setdefault("DEBUG", "False")
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-not-for-production-0123456789")
    os.environ["BENCH_TEST_KEY"] = "sk-bench"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def bench_alias(fake, slug: str = "chat", **fields):
    """An alias of ``slug`` on the benchmarks' provider (the fake OpenAI upstream ``fake``),
    priced as gpt-4o-mini; made in a database thread by the caller."""
    from decimal import Decimal

    from llm_integration.models import ModelAlias, Provider

    provider, _ = Provider.objects.get_or_create(
        name="bench",
        defaults={
            "kind": "openai",
            "base_url": fake.base_url,
            "api_key_env": "BENCH_TEST_KEY",
            "max_retries": 0,
        },
    )
    return ModelAlias.objects.create(
        slug=slug,
        provider=provider,
        upstream_model="gpt-4o-mini",
        input_price_per_mtok=Decimal("0.15"),
        output_price_per_mtok=Decimal("0.60"),
        **fields,
    )


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] * 1000


async def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - start)
    return out


def row(name: str, samples: list[float]) -> str:
    return f"{name:<34} p50 {pct(samples, 0.5):7.2f} ms   p99 {pct(samples, 0.99):7.2f} ms"


async def run(n: int, growth: int) -> None:
    from decimal import Decimal

    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model

    from llm_integration.adapters.openai import OpenAIAdapter
    from llm_integration.models import Budget, Plan, UsageRecord
    from llm_integration.services.chat import Gateway
    from tests.fakes.openai import OpenAIFake

    fake = OpenAIFake().start()

    def rows():
        bench_alias(fake)
        Plan.objects.create(slug="free", name="Free", rpm_limit=1_000_000)
        Budget.objects.create(name="global", limit_usd=Decimal("1000000"))
        return get_user_model().objects.create_user("bench", password="x")

    user = await sync_to_async(rows)()
    gateway = Gateway()
    adapter = OpenAIAdapter(model="gpt-4o-mini", base_url=fake.base_url, api_key="sk-bench")
    messages = [{"role": "user", "content": "Say hello in five words."}]

    async def direct():
        await adapter.complete(messages)

    async def direct_stream():
        async for _ in adapter.complete_stream(messages):
            pass

    async def through():
        await gateway.chat(user=user, model="chat", messages=messages)

    async def through_stream():
        async for _ in gateway.stream(user=user, model="chat", messages=messages):
            pass

    for fn in (direct, through, direct_stream, through_stream):  # warm up
        await timed(fn, 20)
    results = {}
    for name, fn in (
        ("direct (adapter only)", direct),
        ("through the gateway", through),
        ("direct, streaming", direct_stream),
        ("through the gateway, streaming", through_stream),
    ):
        results[name] = await timed(fn, n)
        print(row(name, results[name]))
    for kind, (d, t) in {
        "non-streaming": ("direct (adapter only)", "through the gateway"),
        "streaming": ("direct, streaming", "through the gateway, streaming"),
    }.items():
        p50 = pct(results[t], 0.5) - pct(results[d], 0.5)
        p99 = pct(results[t], 0.99) - pct(results[d], 0.99)
        print(f"added by the gateway, {kind:<14} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")

    if growth:
        empty = results["through the gateway"]

        def fill():
            batch = 50_000
            made = 0
            while made < growth:
                size = min(batch, growth - made)
                UsageRecord.objects.bulk_create(
                    [
                        UsageRecord(
                            request_id=f"bulk_{made + i}",
                            user=user,
                            alias="chat",
                            provider="bench",
                            upstream_model="gpt-4o-mini",
                            prompt_tokens=10,
                            completion_tokens=20,
                            cost_usd=Decimal("0.0000135"),
                            status="ok",
                        )
                        for i in range(size)
                    ],
                    batch_size=5_000,
                )
                made += size

        start = time.perf_counter()
        await sync_to_async(fill)()
        print(f"inserted {growth:,} usage records in {time.perf_counter() - start:.1f} s")
        grown = await timed(through, n)
        print(row("through the gateway, empty table", empty))
        print(row(f"through the gateway, {growth:,} rows", grown))
    fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--growth", type=int, default=0, help="usage records to add")
    args = parser.parse_args()
    setup_django()
    import django.db

    print(f"database: {django.db.connection.vendor}; requests per series: {args.requests}")
    asyncio.run(run(args.requests, args.growth))


if __name__ == "__main__":
    main()
