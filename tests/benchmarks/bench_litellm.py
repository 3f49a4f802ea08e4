"""Side by side with LiteLLM proxy: same config, same upstream, same load generator.

    python tests/benchmarks/bench_litellm.py [--server daphne|uvicorn] [--seconds 15]

Installs LiteLLM proxy into its own virtual environment (``/tmp/litellm-venv``, once):
``litellm[proxy]==1.106.2`` (later 1.106.x need a certifi release PyPI here lacks; never
1.107). One LiteLLM-style ``config.yaml`` is imported into the gateway with
``llm_bootstrap --config`` and given to LiteLLM as is. Both proxy the same zero-latency
fake OpenAI upstream (asyncio, own process); wrk (one thread, 20 connections) drives
``POST /v1/chat/completions`` on each, plain and streaming, and the upstream directly.
Prints requests/s and p50/p99 latency, and the latency each proxy adds to the direct
call. One process each; LiteLLM without a database.

The gateway's server also serves the floor (``floor.py``, benchmark settings only): a
bare async view of the same project, middleware and server that forwards the body to
the upstream with aiohttp and nothing else. What the gateway adds is reported beside
what the floor adds, as a ratio. ``--without-litellm`` skips LiteLLM (no install).

``--responses`` adds the gateway's ``POST /v1/responses`` with the same question, with
``store: false`` and stored (a row written before each answer), beside its chat
completion.
"""

from __future__ import annotations

import argparse
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
    parse_wrk,
    run_django,
    server_command,
    start,
)

VENV = Path("/tmp/litellm-venv")
LITELLM = "litellm[proxy]==1.106.2"
CONFIG = """model_list:
  - model_name: bench
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}
      api_key: os.environ/BENCH_UPSTREAM_KEY
      input_cost_per_token: 0.00000015
      output_cost_per_token: 0.0000006
"""
WRK = """wrk.method = "POST"
wrk.body = '{{"model": "{model}", "stream": {stream}, {body}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def ensure_litellm() -> Path:
    exe = VENV / "bin" / "litellm"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", LITELLM], check=True)
    return exe


def wait_http(url: str, seconds: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} never answered")


#: Each request's own fields, by the API it calls.
BODIES = {
    "chat": '"messages": [{"role": "user", "content": "Say hello."}]',
    "responses": '"input": "Say hello.", "store": false',
    "responses stored": '"input": "Say hello."',
}


def wrk(
    url: str,
    *,
    model: str,
    key: str,
    stream: bool,
    seconds: int,
    clients: int,
    workdir: Path,
    body: str = "chat",
) -> dict:
    script = workdir / f"wrk-{abs(hash((url, stream, body)))}.lua"
    script.write_text(
        WRK.format(model=model, stream="true" if stream else "false", key=key, body=BODIES[body])
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def bench_env(workdir: Path) -> dict[str, str]:
    """The gateway's environment in the benchmarks: production profile, own database."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_UPSTREAM_KEY": "sk-upstream",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "False",
        "SECRET_KEY": "benchmark-only-secret-key-not-for-production-0123456789",
        "SECURE_SSL_REDIRECT": "False",
        "LLM_LOG_LEVEL": "WARNING",
        "DATABASE_URL": f"sqlite:///{workdir / 'gateway.sqlite3'}",
    }


def bootstrap(env: dict[str, str], config: Path) -> str:
    """Migrate the database, import ``config`` with ``llm_bootstrap``; a user's token."""
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    subprocess.run(
        [*manage, "llm_bootstrap", "--config", str(config)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return run_django(env, TOKEN_CODE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--without-litellm", action="store_true")
    parser.add_argument("--responses", action="store_true", help="also the gateway's /v1/responses")
    args = parser.parse_args()
    litellm = None if args.without_litellm else ensure_litellm()
    workdir = Path(tempfile.mkdtemp())
    env = {
        **bench_env(workdir),
        "LITELLM_MASTER_KEY": "sk-litellm-bench",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    procs = []
    try:
        fake = start([sys.executable, "-m", "tests.fakes.fast_openai"], env, ready="READY")
        procs.append(fake)
        upstream = fake.ready_line.split()[1]
        config = workdir / "config.yaml"
        config.write_text(CONFIG.format(upstream=upstream))

        token = bootstrap(env, config)

        gw_port, ll_port = free_port(), free_port()
        cmd = server_command(args.server, gw_port)
        floor_env = {
            **env,
            "DJANGO_SETTINGS_MODULE": "tests.benchmarks.settings_floor",
            "BENCH_FLOOR_UPSTREAM": upstream,
        }
        procs.append(start(cmd, floor_env, log=workdir / "gateway.log"))
        if litellm is not None:
            litellm_proc = start(
                [
                    str(litellm),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ll_port),
                    "--num_workers",
                    "1",
                ],
                {k: v for k, v in env.items() if k != "DATABASE_URL"},  # LiteLLM: no DB
                log=workdir / "litellm.log",
            )
            procs.append(litellm_proc)
        wait_http(f"http://127.0.0.1:{gw_port}/api/schema/")
        if litellm is not None:
            wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness")

        targets = {
            "direct (fake upstream)": (f"{upstream}/chat/completions", "gpt-4o-mini", "sk-x"),
            f"llm_integration ({args.server})": (
                f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                "bench",
                token,
            ),
            "bare Django view (floor)": (
                f"http://127.0.0.1:{gw_port}/bench-floor/v1/chat/completions",
                "gpt-4o-mini",
                "none",
            ),
        }
        gateway_url = f"http://127.0.0.1:{gw_port}/v1"
        if args.responses:
            for body in ("responses", "responses stored"):
                targets[f"llm_integration /v1/{body}"] = (
                    f"{gateway_url}/responses",
                    "bench",
                    token,
                    body,
                )
        if litellm is not None:
            targets["LiteLLM proxy 1.106.2"] = (
                f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                "bench",
                "sk-litellm-bench",
            )
        print(
            f"{args.clients} connections, {args.seconds} s per series, one process each, "
            f"zero-latency upstream; machine: {os.cpu_count()} cores"
        )
        for stream in (False, True):
            results = {}
            for name, (url, model, key, *body) in targets.items():
                kind = body[0] if body else "chat"
                wrk(
                    url,
                    model=model,
                    key=key,
                    stream=stream,
                    seconds=2,
                    clients=args.clients,
                    workdir=workdir,
                    body=kind,
                )  # warm-up
                results[name] = wrk(
                    url,
                    model=model,
                    key=key,
                    stream=stream,
                    seconds=args.seconds,
                    clients=args.clients,
                    workdir=workdir,
                    body=kind,
                )
            direct = results["direct (fake upstream)"]
            floor = results["bare Django view (floor)"]["p50"] - direct["p50"]
            gateway = results[f"llm_integration ({args.server})"]["p50"] - direct["p50"]
            ratio = f"{gateway / floor:.1f}x" if floor > 0 else "n/a"
            print(
                f"{'streaming' if stream else 'non-streaming'} (the gateway adds {ratio} "
                "what the floor adds)"
            )
            for name, r in results.items():
                added = (
                    ""
                    if name.startswith("direct")
                    else (f"  added p50 {r['p50'] - direct['p50']:6.2f} ms")
                )
                print(
                    f"  {name:<32} {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                    f"p99 {r['p99']:7.2f} ms  errors {r['errors']}{added}"
                )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


if __name__ == "__main__":
    main()
