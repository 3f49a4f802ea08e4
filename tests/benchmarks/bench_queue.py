"""What waiting at the limits costs (run on demand; prints figures).

    python tests/benchmarks/bench_queue.py                # 2,000 requests per series
    REDIS_URL=redis://127.0.0.1:6379/14 python tests/benchmarks/bench_queue.py

1. The service path (as ``bench_gateway.py``: a zero-latency fake OpenAI upstream) on an
   alias without a cap, then on one with a cap it never reaches: what a request that
   does not wait pays for the cap (take and give back a slot, its lease).
2. 200 requests of three priorities waiting at a cap of one (the upstream holds its
   answers until all are in line): whether they are served highest priority first,
   first come first served within a priority, and how long the line takes to drain.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_gateway import bench_alias, pct, row, setup_django, timed  # noqa: E402


async def run(n: int, waiters: int) -> None:

    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from llm_integration.models import ModelAlias, Plan, Subscription
    from llm_integration.services.chat import Gateway
    from tests.fakes.openai import OpenAIFake
    from tests.fakes.server import Behaviour

    fake = OpenAIFake().start()

    def rows():
        for slug, cap in (("open", None), ("roomy", 10**6), ("single", 1)):
            bench_alias(fake, slug, max_concurrency=cap)
        users = {}
        for priority in (0, 5, 10):
            plan = Plan.objects.create(
                slug=f"p{priority}", priority=priority, queue_timeout_seconds=600
            )
            user = get_user_model().objects.create(username=f"bench-{priority}")
            Subscription.objects.create(user=user, plan=plan)
            users[priority] = user
        return users

    users = await sync_to_async(rows)()
    gateway = Gateway()
    store = "Redis" if "redis" in settings.CACHES["default"]["BACKEND"].lower() else "local"
    messages = [{"role": "user", "content": "Hello"}]

    def call(model):
        async def one():
            await gateway.chat(user=users[0], model=model, messages=messages)

        return one

    for model in ("open", "roomy"):
        await timed(call(model), 50)
    print(f"service path ({n} requests each, alternating rounds of {n // 4}; caps in {store})")
    results: dict[str, list[float]] = {"no cap": [], "cap never reached": []}
    for i in range(4):  # alternating which goes first
        order = (("no cap", "open"), ("cap never reached", "roomy"))
        for name, model in order if i % 2 == 0 else reversed(order):
            results[name] += await timed(call(model), n // 4)
    for name, got in results.items():
        print("  " + row(name, got))
    added = pct(results["cap never reached"], 0.5) - pct(results["no cap"], 0.5)
    print(f"  the cap adds {added:+.3f} ms at p50")

    # 1b. The slot alone, without the rest of the path's noise.
    from llm_integration.services.chat.waiting import release_slot, take_slot

    roomy = await sync_to_async(ModelAlias.objects.select_related("provider").get)(slug="roomy")
    open_alias = await sync_to_async(ModelAlias.objects.select_related("provider").get)(slug="open")
    for name, alias in (("no cap", open_alias), ("cap never reached", roomy)):
        samples = []
        for _ in range(n * 5):
            call = gateway.call(users[0], None)
            start = time.perf_counter()
            slot = await take_slot(call, alias, wait=True)
            if slot is not None:
                await release_slot(call, slot)
            samples.append(time.perf_counter() - start)
        print(f"  take and give back a slot, {name:<18} p50 {pct(samples, 0.5) * 1000:6.1f} µs")

    # 2. A line of 200 at a cap of one.
    fake.default = Behaviour(mode="held")
    fake.gate.clear()
    fake.requests.clear()
    rng = random.Random(7)
    plan = [(rng.choice((0, 5, 10)), f"w{i}") for i in range(waiters)]

    def ask(priority: int, text: str):
        return asyncio.create_task(
            gateway.chat(user=users[priority], model="single", messages=text)
        )

    tasks = [ask(0, "holder")]
    await reached(lambda: len(fake.requests) == 1)
    for i, (priority, text) in enumerate(plan):
        tasks.append(ask(priority, text))
        await reached(lambda i=i: sum(map(len, gateway.queue.lines.values())) == i + 1)
    start = time.perf_counter()
    fake.gate.set()
    await asyncio.gather(*tasks)
    drained = time.perf_counter() - start
    served = [r.body["messages"][-1]["content"] for r in fake.requests][1:]
    wanted = [text for _, text in sorted(plan, key=lambda p: (-p[0], int(p[1][1:])))]
    print(f"\n{waiters} waiters of priorities 0, 5 and 10 at a cap of one ({store})")
    print(f"  served in priority, then arrival, order: {served == wanted}")
    print(f"  line drained in {drained * 1000:.0f} ms ({drained / waiters * 1000:.2f} ms each)")
    fake.stop()


async def reached(condition) -> None:
    """Until ``condition()`` holds (the event loop runs the requests meanwhile)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise RuntimeError("the benchmark's requests never reached the state it waits for")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--waiters", type=int, default=200)
    args = parser.parse_args()
    setup_django()
    asyncio.run(run(args.requests, args.waiters))


if __name__ == "__main__":
    main()
