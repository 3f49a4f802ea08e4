"""Concurrency benchmark: a slow upstream must not serialize requests.

    python tests/benchmarks/bench_concurrency.py                  # Uvicorn, 50 clients
    python tests/benchmarks/bench_concurrency.py --server daphne --seconds 20
    python tests/benchmarks/bench_concurrency.py --middleware async-only --handler django
    python tests/benchmarks/bench_concurrency.py --workers 2      # one process per core

A fake OpenAI upstream answering after 200 ms (its own process, asyncio), one gateway
server process by default (Uvicorn, as the deployment docs run it; or Daphne, as
`llm_demo` serves), and 50 concurrent clients (wrk: `apt-get install wrk`) hitting
POST /api/v1/chat, first plain JSON then `stream: true` (SSE read to the end). Every
request goes through Django's handler and the demo's full middleware: Django's standard
stack plus the project's own async middleware, whose `X-Served-By` header is checked on
every answer (`--middleware async-only` keeps only that one). `--handler` chooses the
HTTP handler: `threaded` (the demo's: middleware in one hand-off to the request's
thread, threads kept), `reusing` (threads kept, each middleware hook handed over as
Django does) or `django` (Django's stock handler).
With 200 ms of upstream latency, 50 clients can at most make 250 requests/s. Prints
requests/s, latency percentiles, errors, answers missing the header and the server's
CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(env: dict[str, str], upstream: str, *, limits: bool = False) -> str:
    """Migrate the database, create (or point at the new fake) the rows, return a DRF token.

    Idempotent, so ``DATABASE_URL`` may name a PostgreSQL database used by an earlier run.
    ``limits``: the plan gets RPM and TPM limits no run reaches (their counters still count).
    """
    cap = 2 * 10**9 if limits else None
    script = f"""
import django; django.setup()
from decimal import Decimal
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from llm_integration.models import Budget, ModelAlias, Plan, Provider
p, _ = Provider.objects.update_or_create(
    name="fake",
    defaults=dict(kind="openai_compatible", base_url="{upstream}",
                  max_retries=0, timeout_seconds=30),
)
ModelAlias.objects.update_or_create(
    slug="default",
    defaults=dict(provider=p, upstream_model="gpt-4o-mini",
                  input_price_per_mtok=Decimal("0.15"), output_price_per_mtok=Decimal("0.60")),
)
Plan.objects.update_or_create(
    slug="free", defaults=dict(name="Free", rpm_limit={cap}, tpm_limit={cap})
)
Budget.objects.get_or_create(name="global", defaults=dict(limit_usd=Decimal("1000000")))
user, _ = get_user_model().objects.get_or_create(username="bench")
print(Token.objects.get_or_create(user=user)[0].key)
"""
    return run_django(env, script)


TOKEN_CODE = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
print(Token.objects.create(user=get_user_model().objects.create_user("bench")).key)
"""


def run_django(env: dict[str, str], code: str) -> str:
    """Run ``code`` with Django set up (the env's database); its last line of output."""
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


SETTINGS = {
    "default": "project.settings",
    "async-only": "tests.benchmarks.settings_async_middleware",
}


def server_env(middleware: str, workdir: Path) -> dict[str, str]:
    """The gateway server's environment: production settings on plain loopback HTTP,
    the demo's full middleware or only its async one, SQLite in ``workdir`` unless
    ``DATABASE_URL`` is set."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS[middleware],
        "DEBUG": "False",
        "SECRET_KEY": "benchmark-only-secret-key-not-for-production-0123456789",
        "SECURE_SSL_REDIRECT": "False",  # plain HTTP on loopback
        "LLM_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    env.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}")
    return env


def server_command(
    server: str, port: int, app: str = "project.asgi:application", workers: int = 1
) -> list[str]:
    """A gateway server on 127.0.0.1:port (Daphne, as llm_demo, or Uvicorn with
    ``workers`` processes)."""
    if server == "daphne":
        return [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            app,
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--workers",
        str(workers),
        app,
    ]


def start(
    cmd: list[str], env: dict[str, str], ready: str | None = None, log: Path | None = None
) -> subprocess.Popen:
    # Output goes to a file: an unread pipe fills up and blocks the server.
    out = open(log, "w") if log else subprocess.PIPE
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    if ready:
        for line in proc.stdout:
            if line.startswith(ready):
                proc.ready_line = line.strip()
                break
    return proc


async def wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a process and its live descendants, from /proc
    (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) or 0.0 for child in children)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"message": "Say hello.", "stream": %s}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Token %s"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) missing = 0 end
function response(status, headers, body)
  if (headers["X-Served-By"] or headers["x-served-by"]) ~= "llm-gateway-demo" then
    missing = missing + 1
  end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("missing") end
  io.write("missing-header " .. total .. "\\n")
end
"""


def load(
    url: str, token: str, *, clients: int, seconds: float, stream: bool, workdir: Path
) -> dict:
    """Drive POST /api/v1/chat with wrk (C, one thread: little CPU taken from the server)."""
    script = workdir / f"chat-{stream}.lua"
    script.write_text(WRK_SCRIPT % ("true" if stream else "false", token))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{int(seconds)}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            f"{url}/api/v1/chat",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    def ms(value: str) -> float:
        for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * factor
        return float(value)

    result = {"errors": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            result["p50"] = ms(parts[1])
        elif parts[:1] == ["99%"]:
            result["p99"] = ms(parts[1])
        elif "requests in" in line:
            result["n"] = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            result["errors"] += int(parts[-1])
        elif line.strip().startswith("Socket errors"):
            result["errors"] += sum(int(p.strip(",")) for p in parts[3::2])
        elif line.startswith("missing-header"):
            result["missing"] = int(parts[1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="uvicorn")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument(
        "--stream-only",
        dest="only",
        action="store_const",
        const=(True,),
        help="only the streaming series",
    )
    parser.add_argument(
        "--middleware",
        choices=["default", "async-only"],
        default="default",
        help="the demo's full MIDDLEWARE, or only its async-native header middleware",
    )
    parser.add_argument(
        "--handler",
        choices=["threaded", "reusing", "django"],
        default="threaded",
        help="the demo's handler (ThreadedMiddlewareASGIHandler), ThreadReusingASGIHandler, "
        "or Django's stock one",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Uvicorn worker processes (default 1)"
    )
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="give the plan (never reached) RPM and TPM limits: three counters per request",
    )
    args = parser.parse_args()
    if args.server == "daphne" and args.workers != 1:
        parser.error("--workers is for Uvicorn; Daphne serves one process")

    workdir = Path(tempfile.mkdtemp())
    app = "project.asgi:application"
    env = server_env(args.middleware, workdir)
    if args.handler != "threaded":
        app, env["BENCH_HANDLER"] = "tests.benchmarks.asgi_handlers:application", args.handler
    fake = start(
        [sys.executable, "-m", "tests.fakes.fast_openai", "--delay", str(args.latency)],
        env,
        ready="READY",
    )
    upstream = fake.ready_line.split()[1]
    token = prepare(env, upstream, limits=args.rate_limits)
    port = free_port()
    cmd = server_command(args.server, port, app, args.workers)
    server = start(cmd, env, log=workdir / "server.log")
    try:
        asyncio.run(wait_for_port(port))
        url = f"http://127.0.0.1:{port}"
        load(url, token, clients=args.clients, seconds=2, stream=False, workdir=workdir)  # warm
        ceiling = args.clients / args.latency
        print(
            f"server: {args.server}, {args.workers} process(es); clients: {args.clients}; "
            f"upstream latency {args.latency * 1000:.0f} ms -> ceiling {ceiling:.0f} req/s; "
            f"{args.seconds:.0f} s per series; database: {env['DATABASE_URL'].split(':')[0]}; "
            f"cache: {'redis' if env.get('REDIS_URL') else 'local memory'}; "
            f"middleware: {args.middleware}; handler: {args.handler}"
            f"{'; plan rate limits' if args.rate_limits else ''}"
        )
        for stream in args.only or (False, True):
            before = cpu_seconds(server.pid)
            r = load(
                url,
                token,
                clients=args.clients,
                seconds=args.seconds,
                stream=stream,
                workdir=workdir,
            )
            after = cpu_seconds(server.pid)
            cpu = "n/a" if None in (before, after) else f"{(after - before) * 1000 / r['n']:.2f} ms"
            kind = "streaming (SSE)" if stream else "non-streaming"
            print(
                f"{kind:<16} {r['rps']:7.1f} req/s ({r['rps'] / ceiling:5.1%} of ceiling)  "
                f"p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  "
                f"requests {r['n']}  errors {r['errors']}  missing header {r.get('missing', '?')}  "
                f"server CPU per request {cpu}"
            )
    finally:
        server.terminate()
        fake.terminate()
        server.wait(10)
        fake.wait(10)


if __name__ == "__main__":
    main()
