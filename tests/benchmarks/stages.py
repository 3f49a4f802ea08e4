"""Where one request's time goes, stage by stage, against the floor (run on demand).

    python tests/benchmarks/stages.py [--stream] [--requests 1500]
    taskset -c 1 python tests/benchmarks/stages.py     # one core: no cross-core hand-offs

The set-up of ``bench_litellm.py`` (its config imported with ``llm_bootstrap``, the
zero-latency fake upstream in its own process), but no HTTP server: the project's ASGI
application is called in this process, one request at a time, for
``/v1/chat/completions`` and for the floor view (``floor.py``). Stage boundaries are
marked by wrapping public methods (DRF's ``initial`` and ``finalize_response``, adrf's
``async_dispatch``) and the gateway's own steps; marks made in other threads (DRF's
``initial`` in the request's thread, the transaction in the writer's) show what the
hand-offs between threads cost. Prints each stage's median over the requests after a
warm-up quarter. Wall time, so the figures are higher than a sampling profile's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_concurrency import start
from bench_litellm import CONFIG, bench_env, bootstrap
from inprocess import post_json

marks: dict[str, float] = {}


def mark(name: str) -> None:
    marks.setdefault(name, time.perf_counter())  # a retried step keeps its first mark


def timed(owner, attribute: str, before: str, after: str) -> None:
    """Mark ``before`` and ``after`` around ``owner.attribute`` (sync or async)."""
    original = getattr(owner, attribute)
    if asyncio.iscoroutinefunction(original):

        @functools.wraps(original)
        async def wrapper(*args, **kwargs):
            mark(before)
            try:
                return await original(*args, **kwargs)
            finally:
                mark(after)

    else:

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            mark(before)
            try:
                return original(*args, **kwargs)
            finally:
                mark(after)

    setattr(owner, attribute, wrapper)


def instrument() -> None:
    from adrf.views import APIView as AsyncAPIView
    from rest_framework.views import APIView

    import tests.benchmarks.floor as floor
    from llm_integration.adapters.openai import OpenAIAdapter
    from llm_integration.api.openai_views import ChatCompletionsView
    from llm_integration.formats import openai
    from llm_integration.services.accounting import writer
    from llm_integration.services.chat import settlement
    from llm_integration.services.chat.gateway import Gateway

    timed(floor, "forward", "view", "view returned")  # before the URLconf imports it
    timed(AsyncAPIView, "async_dispatch", "view", "view returned")
    timed(APIView, "initial", "DRF initial (thread)", "DRF initial done")
    timed(ChatCompletionsView, "post", "post()", "post() returned")
    timed(openai, "parse_completion", "parse body", "parsed")
    timed(Gateway, "admit", "admission", "admitted")
    timed(OpenAIAdapter, "_complete", "upstream call", "upstream answered")
    timed(settlement.Call, "finish", "settle", "settled")
    timed(writer.GroupWriter, "_commit", "transaction (writer)", "committed (writer)")
    timed(settlement, "accounted", "record queued", "commit seen")
    timed(APIView, "finalize_response", "finalize", "finalized")


async def call(application, path: str, body: bytes, token: str) -> dict[str, float]:
    marks.clear()
    mark("request in")
    await post_json(application, path, body, token, observe=mark)
    mark("handler returned")
    return dict(marks)


def report(path: str, runs: list[dict[str, float]]) -> None:
    middle = runs[len(runs) // 2]
    order = sorted(middle, key=middle.get)
    total = statistics.median((r["handler returned"] - r["request in"]) * 1e6 for r in runs)
    print(f"{path}: {total:.0f} us (median of {len(runs)})")
    for a, b in itertools.pairwise(order):
        gaps = [(r[b] - r[a]) * 1e6 for r in runs if a in r and b in r]
        print(f"  {a:>22} -> {b:<22} {statistics.median(gaps):7.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp())
    env = bench_env(workdir)
    fake = start([sys.executable, "-m", "tests.fakes.fast_openai"], env, ready="READY")
    try:
        upstream = fake.ready_line.split()[1]
        config = workdir / "config.yaml"
        config.write_text(CONFIG.format(upstream=upstream))
        token = bootstrap(env, config).strip()
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.benchmarks.settings_floor"
        os.environ["BENCH_FLOOR_UPSTREAM"] = upstream
        from project.asgi import application

        instrument()
        body = {"model": "bench", "messages": [{"role": "user", "content": "hello"}]}
        if args.stream:
            body["stream"] = True
        payload = json.dumps(body).encode()

        async def run() -> None:
            for path in ("/v1/chat/completions", "/bench-floor/v1/chat/completions"):
                runs = [await call(application, path, payload, token) for _ in range(args.requests)]
                report(path, runs[len(runs) // 4 :])

        print(f"{'streaming' if args.stream else 'plain'}, one request at a time, in process")
        asyncio.run(run())
    finally:
        fake.terminate()


if __name__ == "__main__":
    main()
