"""The floor the gateway is measured against: a bare async Django view in the demo
project (the same server, ``MIDDLEWARE`` and handler) that forwards the request body to
the upstream with aiohttp and hands back its answer, plain or streamed, and does
nothing else: no authentication, validation, limits, accounting or metrics.

Served only by the benchmarks' settings (``settings_floor.py``) at
``/bench-floor/v1/chat/completions``; the upstream's address is ``BENCH_FLOOR_UPSTREAM``.
"""

from __future__ import annotations

import asyncio
import os
import weakref

import aiohttp
from django.http import HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session() -> aiohttp.ClientSession:
    """One connection pool per event loop, as the gateway's adapters keep."""
    loop = asyncio.get_running_loop()
    found = _sessions.get(loop)
    if found is None or found.closed:
        found = _sessions[loop] = aiohttp.ClientSession()
    return found


@csrf_exempt
async def forward(request):
    url = os.environ["BENCH_FLOOR_UPSTREAM"].rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-floor"}
    body = request.body
    if b'"stream": true' not in body and b'"stream":true' not in body:
        async with session().post(url, data=body, headers=headers) as answer:
            content = await answer.read()
            return HttpResponse(content, status=answer.status, content_type="application/json")

    async def chunks():
        async with session().post(url, data=body, headers=headers) as answer:
            async for chunk in answer.content.iter_any():
                yield chunk

    return StreamingHttpResponse(chunks(), content_type="text/event-stream")
