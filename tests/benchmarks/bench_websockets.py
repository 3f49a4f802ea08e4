"""Many concurrent WebSocket streams on one server process.

    python tests/benchmarks/bench_websockets.py --sockets 1000 [--server daphne|uvicorn]

Opens N sockets to ``ws/llm/chat/`` at once, authenticates each with a DRF token, asks
each for a streamed answer from the dummy provider (20 words, 50 ms apart: every
stream stays open about a second, all at the same time), and counts the streams that
end with a ``done`` frame. Reports completions, wall time, and the server process's
peak memory (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_concurrency import (
    ROOT,
    TOKEN_CODE,
    free_port,
    run_django,
    server_command,
    start,
)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(url: str, token: str) -> tuple[bool, int]:
    import websockets

    async with websockets.connect(url, origin="http://127.0.0.1", open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(
            json.dumps(
                {"type": "chat", "messages": [{"role": "user", "content": " ".join(["word"] * 12)}]}
            )
        )
        tokens = 0
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            if frame["type"] == "token":
                tokens += 1
            elif frame["type"] in ("done", "error"):
                return frame["type"] == "done", tokens


async def run(url: str, token: str, sockets: int) -> list:
    return await asyncio.gather(*(one(url, token) for _ in range(sockets)), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp())
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "False",
        "SECRET_KEY": "benchmark-only-secret-key-not-for-production-0123456789",
        "SECURE_SSL_REDIRECT": "False",
        "LLM_LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": f"sqlite:///{workdir / 'ws.sqlite3'}",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    token = run_django(
        env,
        """
from llm_integration.models import ModelAlias, Provider
p = Provider.objects.create(name="dummy", kind="dummy", options={"delay": 0.05})
ModelAlias.objects.create(slug="default", provider=p, upstream_model="echo")
"""
        + TOKEN_CODE,
    )
    port = free_port()
    cmd = server_command(args.server, port)
    server = start(cmd, env, log=workdir / "server.log")
    try:
        time.sleep(3)
        began = time.monotonic()
        results = asyncio.run(run(f"ws://127.0.0.1:{port}/ws/llm/chat/", token, args.sockets))
        elapsed = time.monotonic() - began
        done = sum(1 for r in results if isinstance(r, tuple) and r[0])
        failed = [r for r in results if not (isinstance(r, tuple) and r[0])]
        tokens = sum(r[1] for r in results if isinstance(r, tuple))
        print(
            f"{args.server}, one process: {done}/{args.sockets} streams completed "
            f"({tokens} token frames) in {elapsed:.1f} s; server peak memory "
            f"{peak_rss_mb(server.pid):.0f} MB; failures {len(failed)}"
            + (f" (first: {failed[0]!r})" if failed else "")
        )
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
