"""One HTTP request to an ASGI application in this process, without a server: what the
in-process benchmarks (``stages.py``, ``bench_conversations.py``) send."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def post_json(
    application,
    path: str,
    body: bytes,
    token: str,
    *,
    observe: Callable[[str], None] = lambda event: None,
) -> None:
    """POST ``body`` (JSON) to ``path`` with a Bearer ``token``, read the whole answer;
    ``observe`` hears ``"headers sent"`` and ``"body sent"``. Anything but a 200 ends
    the benchmark."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent, finished, status = False, asyncio.Event(), []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])
            observe("headers sent")
        elif not message.get("more_body"):
            observe("body sent")
            finished.set()

    await application(scope, receive, send)
    if status != [200]:
        raise SystemExit(f"{path} answered {status}")
