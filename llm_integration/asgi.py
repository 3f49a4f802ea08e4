"""ASGI pieces a host project may add to its ``asgi.py``.

``lifespan`` answers the ASGI lifespan protocol (Uvicorn, Hypercorn): at shutdown the
accounting writer commits what is queued, gives unused budget allowances back and sends
waiting rate-limit corrections. Servers without it (Daphne) do the same at exit.

    application = ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": ...,
        "lifespan": lifespan,
    })

``get_asgi_application()`` is Django's, with a handler that keeps the threads its
requests' synchronous code runs in (``ThreadReusingASGIHandler``), for hosts that opt
in. Nothing here changes how HTTP requests are routed: every request goes through
Django's handler, the project's ``MIDDLEWARE`` and URLconf.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler


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


class ThreadPool:
    """Single-thread executors lent to one request at a time, kept for the next."""

    def __init__(self, *, max_idle: int) -> None:
        self.max_idle = max_idle
        self.idle: list[ThreadPoolExecutor] = []
        self.made = 0
        self.lock = threading.Lock()

    def acquire(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.idle:
                return self.idle.pop()
            self.made += 1
            name = f"django-request-{self.made}"
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def release(self, executor: ThreadPoolExecutor) -> None:
        with self.lock:
            if len(self.idle) < self.max_idle:
                self.idle.append(executor)
                return
        executor.shutdown(wait=False)


class ThreadReusingASGIHandler(ASGIHandler):
    """Django's ``ASGIHandler`` whose requests run their synchronous code (sync
    middleware hooks, ``request_started``/``request_finished`` receivers, sync views) in
    threads kept from one request to the next, instead of a thread started, and joined
    by yet another thread, for every request.

    Everything a request goes through is Django's own ``handle()``: the project's
    ``MIDDLEWARE``, URLconf, signals and response handling, unchanged. Each request
    still has its own thread for as long as it runs (asgiref's ``ThreadSensitiveContext``
    with an executor of one thread), and Django's request signals tidy that thread's
    database connections as they do under WSGI, where threads also serve one request
    after another. One difference: a task that a view leaves running after its
    response, and that later calls thread-sensitive ``sync_to_async`` code, gets
    asgiref's ``RuntimeError`` (under Django's handler it would get a new thread).

    Opt in from your ``asgi.py``: ``"http": llm_integration.asgi.get_asgi_application()``
    instead of Django's. ``tests/api/test_handler_parity.py`` holds it to Django's.
    """

    #: Threads kept waiting for requests; more are made under load, and let go after.
    max_idle_threads = 256

    def __init__(self) -> None:
        super().__init__()
        self.threads = ThreadPool(max_idle=self.max_idle_threads)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)  # Django's refusal
        executor = self.threads.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.release(executor)


def get_asgi_application() -> ThreadReusingASGIHandler:
    """``django.core.asgi.get_asgi_application``, with the thread-reusing handler."""
    django.setup(set_prefix=False)
    return ThreadReusingASGIHandler()
