"""The adapters' HTTP client, measured: aiohttp against httpx (and httpx2).

    python tests/benchmarks/bench_http_clients.py [--requests 3000] [--clients 50]

Each client library, in its own process, sends the same chat completion requests
(plain, then streamed with the usage chunk) 50 at a time to the fast fake OpenAI
upstream (its own process, no delay) and prints the CPU time its process spent per
request. In one gateway process that CPU decides how many requests a second it carries.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CLIENT = r"""
import asyncio, importlib, json, sys, time
upstream, which, mode, total, clients = sys.argv[1:6]
total, clients, stream = int(total), int(clients), mode == "stream"
body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
if stream:
    body.update(stream=True, stream_options={"include_usage": True})
url = upstream + "/chat/completions"

async def main():
    gate = asyncio.Semaphore(clients)
    if which == "aiohttp":
        import aiohttp
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
        async def one():
            async with gate, session.post(url, json=body) as r:
                if stream:
                    async for _line in r.content:
                        pass
                else:
                    json.loads(await r.read())
    else:
        hx = importlib.import_module(which)
        session = hx.AsyncClient(limits=hx.Limits(max_connections=1024))
        async def one():
            async with gate:
                if stream:
                    async with session.stream("POST", url, json=body) as r:
                        async for _line in r.aiter_lines():
                            pass
                else:
                    (await session.post(url, json=body)).json()
    await asyncio.gather(*[one() for _ in range(200)])  # warm: connections open
    cpu = time.process_time()
    await asyncio.gather(*[one() for _ in range(total)])
    print((time.process_time() - cpu) / total * 1000)
    await (session.close() if which == "aiohttp" else session.aclose())

asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fast_openai", "--delay", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        upstream = fake.stdout.readline().split()[1]
        print(f"{args.requests} requests, {args.clients} at a time; CPU ms per request")
        print(f"{'client':<10} {'plain':>8} {'stream':>8}")
        for which in ("aiohttp", "httpx", "httpx2"):
            figures = []
            for mode in ("plain", "stream"):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CLIENT,
                        upstream,
                        which,
                        mode,
                        str(args.requests),
                        str(args.clients),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures.append(float(out.stdout.strip()))
            print(f"{which:<10} {figures[0]:8.3f} {figures[1]:8.3f}")
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
