"""What tool calls and embeddings cost on the server, through the whole HTTP stack.

    python tests/benchmarks/bench_surfaces.py                     # 10 s per series
    python tests/benchmarks/bench_surfaces.py --seconds 20 --dimensions 1536 --rounds 5

One Uvicorn process serving the demo project (its full middleware, or
``--middleware async-only``), a zero-latency
fast fake OpenAI upstream in its own process, wrk as the client:

- streamed chat on ``/v1/chat/completions``: a text answer, then a tool call whose
  argument pieces match the text's chunks in number and length (``--repeat`` × 5
  chunks), alternating for ``--rounds`` rounds; the server's CPU time per request of
  each, and the tool call's extra cost per round and its median (on a shared virtual
  machine one series may differ from the next by 20 %);
- ``/v1/embeddings`` with 100 inputs per request (``--dimensions`` per vector), as
  floats and as base64 (the openai SDK's default): requests/s and CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_concurrency import (  # noqa: E402
    cpu_seconds,
    free_port,
    parse_wrk,
    prepare,
    server_command,
    server_env,
    start,
    wait_for_port,
)

WRK = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def series(
    url: str,
    path: str,
    token: str,
    body: dict,
    *,
    clients: int,
    seconds: int,
    pid: int,
    workdir: Path,
) -> dict:
    script = workdir / "body.lua"
    script.write_text(WRK % (json.dumps(body), token))
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script), url + path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = parse_wrk(out)
    result["cpu_ms"] = (cpu_seconds(pid) - before) / max(1, result["n"]) * 1000
    return result


def line(name: str, r: dict) -> str:
    return (
        f"{name:<36} {r['rps']:8.1f} req/s   p50 {r['p50']:7.2f} ms   "
        f"CPU {r['cpu_ms']:6.2f} ms/request   errors {r['errors']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=4, help="chunks of a stream, in fives")
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--dimensions", type=int, default=256)
    parser.add_argument(
        "--rounds", type=int, default=3, help="text and tool call series (0: embeddings only)"
    )
    parser.add_argument(
        "--middleware",
        choices=["default", "async-only"],
        default="default",
        help="the demo's full MIDDLEWARE, or only its async-native header middleware",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp())
    env = server_env(args.middleware, workdir)
    fake = start(
        [sys.executable, "-m", "tests.fakes.fast_openai", "--repeat", str(args.repeat)],
        env,
        ready="READY",
    )
    upstream = fake.ready_line.split()[1]
    token = prepare(env, upstream)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup()\n"
            "from llm_integration.models import ModelAlias, Provider\n"
            "ModelAlias.objects.update_or_create(slug='embed', defaults=dict(\n"
            "    provider=Provider.objects.get(name='fake'), mode='embedding',\n"
            "    upstream_model='text-embedding-3-small', context_window=8191))\n",
        ],
        env=env,
        cwd=ROOT,
        check=True,
    )
    port = free_port()
    server = start(server_command("uvicorn", port), env, log=workdir / "server.log")
    try:
        asyncio.run(wait_for_port(port))
        url = f"http://127.0.0.1:{port}"
        common = {
            "clients": args.clients,
            "seconds": args.seconds,
            "pid": server.pid,
            "workdir": workdir,
        }
        chat = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        print(
            f"one Uvicorn process, middleware {args.middleware}, zero-latency upstream, "
            f"{args.clients} "
            f"clients (wrk), {args.seconds} s per series, database "
            f"{env['DATABASE_URL'].split(':')[0]}; streams of {5 * args.repeat} chunks; "
            f"embeddings of {args.inputs} inputs x {args.dimensions} dimensions"
        )
        series(url, "/v1/chat/completions", token, chat, **{**common, "seconds": 2})  # warm up
        extras = []
        for _ in range(args.rounds):
            text = series(url, "/v1/chat/completions", token, chat, **common)
            tools = series(url, "/v1/chat/completions", token, {**chat, "tools": [TOOL]}, **common)
            print(line("streamed text", text))
            print(line("streamed tool call (same length)", tools))
            extras.append((tools["cpu_ms"] / text["cpu_ms"] - 1) * 100)
            print(f"tool call's extra CPU per request: {extras[-1]:+.1f} %")
        if extras:
            print(f"median of {args.rounds} rounds: {statistics.median(extras):+.1f} %")
        inputs = [f"document number {i} about gateways" for i in range(args.inputs)]
        embed = {"model": "embed", "input": inputs, "dimensions": args.dimensions}
        for fmt in ("float", "base64"):
            r = series(url, "/v1/embeddings", token, {**embed, "encoding_format": fmt}, **common)
            print(line(f"embeddings ({fmt})", r))
    finally:
        server.terminate()
        fake.terminate()
        server.wait()
        fake.wait()


if __name__ == "__main__":
    main()
