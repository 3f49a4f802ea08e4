"""What API keys cost a request (run on demand; prints figures).

    python tests/benchmarks/bench_keys.py                 # 20,000 authentications, 2,000 calls

1. Authentication, cached (the common case: each process reads a key at most every
   5 s): DRF's ``initial`` runs the authentication class on a request with the header;
   a DRF token through ``BearerOrTokenAuthentication`` against an API key through
   ``ApiKeyAuthentication`` and through ``BearerOrTokenAuthentication``.
2. The service path (as ``bench_gateway.py``: a zero-latency fake OpenAI upstream) for
   the same user without a key, then with a key that has no limits of its own, then
   with one that has a model list, an RPM limit and a budget (one more rate counter
   and one more budget row per request).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_gateway import bench_alias, pct, row, setup_django, timed  # noqa: E402


def authentication(n: int) -> None:
    from django.contrib.auth import get_user_model
    from django.test import RequestFactory
    from rest_framework.authtoken.models import Token
    from rest_framework.request import Request

    from llm_integration.api.authentication import (
        ApiKeyAuthentication,
        BearerOrTokenAuthentication,
    )
    from llm_integration.services.policy import keys

    user = get_user_model().objects.create(username="bench-auth")
    token = Token.objects.create(user=user).key
    _, secret = keys.issue(user, name="bench")
    factory = RequestFactory()

    def samples(auth, credential: str) -> list[float]:
        request = Request(factory.get("/", HTTP_AUTHORIZATION=f"Bearer {credential}"))
        auth.authenticate(request)  # read once: cached from here on
        out = []
        for _ in range(n):
            start = time.perf_counter()
            auth.authenticate(request)
            out.append(time.perf_counter() - start)
        return out

    print(f"authentication, cached ({n} calls each)")
    for name, auth, credential in (
        ("DRF token (BearerOrToken)", BearerOrTokenAuthentication(), token),
        ("API key (ApiKeyAuthentication)", ApiKeyAuthentication(), secret),
        ("API key (BearerOrToken)", BearerOrTokenAuthentication(), secret),
    ):
        got = samples(auth, credential)
        print(
            f"  {name:<34} p50 {pct(got, 0.5) * 1000:6.2f} µs   p99 {pct(got, 0.99) * 1000:6.2f} µs"
        )


async def service_path(n: int) -> None:
    from decimal import Decimal

    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model

    from llm_integration.services.chat import Gateway
    from llm_integration.services.policy import keys
    from tests.fakes.openai import OpenAIFake

    fake = OpenAIFake().start()

    def rows():
        alias = bench_alias(fake)
        user = get_user_model().objects.create(username="bench-path")
        plain, _ = keys.issue(user, name="plain")
        limited, _ = keys.issue(
            user,
            name="limited",
            models=[alias],
            rpm_limit=10**9,
            budget_usd=Decimal(10**6),
        )
        return user, keys.grant_of(plain), keys.grant_of(limited)

    user, plain, limited = await sync_to_async(rows)()
    gateway = Gateway()
    messages = [{"role": "user", "content": "Hello"}]

    def call(key):
        async def one():
            await gateway.chat(user=user, model="chat", messages=messages, key=key)

        return one

    for key in (None, plain, limited):  # warm: snapshot, adapter, budget rows
        await timed(call(key), 50)
    print(f"\nservice path ({n} requests each, alternating rounds of {n // 4})")
    results: dict[str, list[float]] = {"no key": [], "key": [], "key with limits": []}
    for _ in range(4):
        for name, key in (("no key", None), ("key", plain), ("key with limits", limited)):
            results[name] += await timed(call(key), n // 4)
    for name, got in results.items():
        print("  " + row(name, got))
    base = pct(results["no key"], 0.5)
    for name in ("key", "key with limits"):
        print(f"  {name}: adds {pct(results[name], 0.5) - base:+.3f} ms at p50")
    fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auth-calls", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    setup_django()
    authentication(args.auth_calls)
    asyncio.run(service_path(args.requests))


if __name__ == "__main__":
    main()
