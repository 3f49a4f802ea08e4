"""Follow the README's "Installing the app in your own project" literally, then use it.

Builds the wheel, installs it alone into a fresh virtualenv, creates a project with
``django-admin startproject``, applies the README's own code blocks (``settings.py``,
``urls.py``, ``asgi.py``: read from README.md, so the README and this check cannot
drift apart), migrates, adds a priced alias with ``llm_bootstrap`` pointed at a loopback
OpenAI-compatible upstream, serves the project with Uvicorn, and makes one chat call
with the ``openai`` SDK, one with the ``anthropic`` SDK, one SSE stream, one WebSocket
chat and one ``?format=csv`` export. Any failure exits non-zero. Run from the checkout:
``python .ci/own_project.py``.
"""

from __future__ import annotations

import asyncio
import csv as csv_module
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import websockets
from anthropic import Anthropic
from openai import OpenAI

CHECKOUT = Path(__file__).resolve().parent.parent
PROJECT = "hostproj"


def readme_blocks() -> dict[str, str]:
    """The code blocks of the README's own-project section, by the file they are for."""
    text = (CHECKOUT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Installing the app in your own project", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, str] = {}
    for match in re.finditer(
        r"`(settings\.py|urls\.py|asgi\.py)`[^\n]*\n(?:[^\n]*\n)*?```python\n(.*?)```",
        section,
        re.S,
    ):
        blocks[match.group(1)] = match.group(2).replace("yourproject", PROJECT)
    missing = {"settings.py", "urls.py", "asgi.py"} - blocks.keys()
    if missing:
        sys.exit(f"README's own-project section has no block for {sorted(missing)}")
    return blocks


def list_entries(block: str, name: str) -> tuple[list[str], str]:
    """The entries of ``name = [...]`` in a README block (its ``...`` line is the
    project's own list) and the block without that assignment."""
    match = re.search(rf"^{name} = \[\n(.*?)^\]\n", block, re.S | re.M)
    if match is None:
        sys.exit(f"README block has no {name} = [...]")
    entries = [line for line in match.group(1).splitlines() if not line.strip().startswith("...")]
    return entries, block[: match.start()] + block[match.end() :]


def apply_readme(host: Path, blocks: dict[str, str]) -> None:
    pkg = host / PROJECT
    apps, rest = list_entries(blocks["settings.py"], "INSTALLED_APPS")
    with open(pkg / "settings.py", "a", encoding="utf-8") as fh:
        fh.write("\n# From the README\nINSTALLED_APPS += [\n" + "\n".join(apps) + "\n]\n" + rest)
    patterns, imports = list_entries(blocks["urls.py"], "urlpatterns")
    with open(pkg / "urls.py", "a", encoding="utf-8") as fh:
        fh.write(
            "\n# From the README\n" + imports + "urlpatterns += [\n" + "\n".join(patterns) + "\n]\n"
        )
    (pkg / "asgi.py").write_text(blocks["asgi.py"], encoding="utf-8")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    print("$", " ".join(args), flush=True)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"nothing listens on {port} after {seconds} s")


async def websocket_chat(url: str, token: str) -> str:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(json.dumps({"type": "chat", "messages": [{"role": "user", "content": "Hi"}]}))
        text = ""
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame["type"] == "token":
                text += frame["content"]
            elif frame["type"] == "done":
                return text
            elif frame["type"] == "error":
                sys.exit(f"WebSocket chat failed: {frame}")


def use(base: str, token: str) -> None:
    client = OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hello."}]
    )
    assert reply.choices[0].message.content, reply
    assert reply.usage.total_tokens > 0, reply
    print("openai SDK:", reply.choices[0].message.content, reply.usage)

    message = Anthropic(base_url=base, api_key=token, max_retries=0).messages.create(
        model="default", max_tokens=50, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert message.content[0].text and message.usage.output_tokens > 0, message
    print("anthropic SDK:", message.content[0].text, message.usage.input_tokens, "in")

    headers = {"Authorization": f"Bearer {token}"}
    events = []
    with httpx.stream(
        "POST",
        f"{base}/api/v1/chat",
        headers=headers,
        timeout=10,
        json={"messages": [{"role": "user", "content": "Stream it"}], "stream": True},
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert any("delta" in e for e in events) and events[-1].get("done"), events
    print("SSE:", "".join(e.get("delta", "") for e in events))

    ws_base = base.replace("http://", "ws://")
    print("WebSocket:", asyncio.run(websocket_chat(f"{ws_base}/ws/llm/chat/", token)))

    csv = httpx.get(f"{base}/api/v1/usage?format=csv", headers=headers, timeout=10)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv"), csv.text
    rows = list(csv_module.DictReader(io.StringIO(csv.text)))
    assert len(rows) == 4, rows  # the four requests above
    assert all(r["status"] == "ok" and Decimal(r["cost_usd"]) > 0 for r in rows), rows
    print("CSV:", len(rows), "usage records, $", sum(Decimal(r["cost_usd"]) for r in rows))


def main() -> None:
    blocks = readme_blocks()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(work / "dist"),
            ".",
            cwd=CHECKOUT,
        )
        run(sys.executable, "-m", "venv", str(work / "venv"), cwd=work)
        bin_ = work / "venv" / "bin"
        wheel = next((work / "dist").glob("*.whl"))
        run(str(bin_ / "pip"), "install", "-q", str(wheel), "uvicorn[standard]", cwd=work)
        host = work / "host"
        host.mkdir()
        versions = run(
            str(bin_ / "python"),
            "-c",
            "import django, platform; print(platform.python_version(), django.__version__)",
            cwd=work,
        )
        python_version, django_version = versions.split()
        print(f"own project on Python {python_version}, Django {django_version}", flush=True)
        run(str(bin_ / "django-admin"), "startproject", PROJECT, ".", cwd=host)
        apply_readme(host, blocks)
        python = str(bin_ / "python")
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
        }
        run(python, "manage.py", "check", "--fail-level", "WARNING", cwd=host, env=env)
        run(python, "manage.py", "migrate", "-v0", cwd=host, env=env)
        run(
            python,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            "alice",
            "--email",
            "alice@example.com",
            cwd=host,
            env={**env, "DJANGO_SUPERUSER_PASSWORD": "pw-alice-1"},
        )
        token = run(python, "manage.py", "drf_create_token", "alice", cwd=host, env=env).split()[2]

        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes", "openai"],
            cwd=CHECKOUT,
            stdout=subprocess.PIPE,
            text=True,
        )
        port = free_port()
        server = None
        try:
            ready = upstream.stdout.readline().split()
            assert ready and ready[0] == "READY", ready
            run(
                python,
                "manage.py",
                "llm_bootstrap",
                cwd=host,
                env={
                    **env,
                    "LLM_BACKEND": "custom",
                    "CUSTOM_LLM_URL": f"{ready[1]}/chat/completions",
                    "CUSTOM_LLM_MODEL": "local-model",
                    "LLM_INPUT_PRICE_PER_MTOK": "0.15",
                    "LLM_OUTPUT_PRICE_PER_MTOK": "0.60",
                    "BUDGET_LIMIT": "5",
                },
            )
            server = subprocess.Popen(
                [str(bin_ / "uvicorn"), f"{PROJECT}.asgi:application", "--port", str(port)],
                cwd=host,
                env=env,
            )
            wait_for(port, server)
            use(f"http://127.0.0.1:{port}", token)
        finally:
            for proc in (server, upstream):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    print("own project: the README's steps install, serve and answer")


if __name__ == "__main__":
    main()
