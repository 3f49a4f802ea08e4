"""ASGI pieces a host project may add to its ``asgi.py``.

``lifespan`` answers the ASGI lifespan protocol (Uvicorn, Hypercorn): at shutdown the
accounting writer commits what is queued, gives unused budget allowances back and sends
waiting rate-limit corrections. Servers without it (Daphne) do the same at exit.

    application = ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": ...,
        "lifespan": lifespan,
    })

Nothing here changes how HTTP requests are routed: every request goes through Django's
handler, the project's ``MIDDLEWARE`` and URLconf.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async


async def lifespan(scope, receive, send) -> None:
    """The ASGI lifespan protocol: ``"lifespan": lifespan`` in the ``ProtocolTypeRouter``."""
    from .services.ratelimit import deferred
    from .services.writer import writer

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await sync_to_async(writer.stop, thread_sensitive=False)()
            await deferred.aflush()
            await send({"type": "lifespan.shutdown.complete"})
            return
