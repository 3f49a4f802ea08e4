"""ASGI pieces a host project may add to its ``asgi.py``.

``lifespan`` answers the ASGI lifespan protocol (Uvicorn, Hypercorn): at shutdown the
accounting writer commits what is queued, gives unused budget allowances back and sends
waiting rate-limit corrections. Servers without it (Daphne) do the same at exit.

    application = ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": ...,
        "lifespan": lifespan,
    })

``get_asgi_application()`` is Django's, with a handler a host opts into: it keeps the
threads its requests' synchronous code runs in (``ThreadReusingASGIHandler``) and runs
the project's ``MIDDLEWARE`` in that thread in one hand-off, as WSGI runs it
(``ThreadedMiddlewareASGIHandler``). Nothing here changes how HTTP requests are routed:
every request goes through Django's handler, the project's ``MIDDLEWARE`` and URLconf.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler


async def lifespan(scope, receive, send) -> None:
    """The ASGI lifespan protocol: ``"lifespan": lifespan`` in the ``ProtocolTypeRouter``."""
    from .services.accounting.writer import writer
    from .services.limits.ratelimit import deferred

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

    Opt in from your ``asgi.py``:
    ``"http": llm_integration.asgi.get_asgi_application(ThreadReusingASGIHandler)``
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


class ThreadedMiddlewareASGIHandler(ThreadReusingASGIHandler):
    """``ThreadReusingASGIHandler`` that runs the project's ``MIDDLEWARE`` in the
    request's thread in one hand-off, as Django's WSGI handler runs it; async views
    still run on the event loop (Django's ``async_to_sync``, as under WSGI).

    Django's built-in middleware (``MiddlewareMixin``) is synchronous: under Django's
    own ASGI handler each of its ``process_request``/``process_view``/``process_response``
    hooks is a separate ``sync_to_async`` hand-off to the request's thread and back, a
    dozen for the standard stack, and each costs CPU and GIL hand-overs. Here the whole
    chain runs in that thread at once: the same middleware, in the same order and the
    same thread, with the same hooks; a middleware that is async-only is adapted by
    Django (``async_to_sync``). A client that disconnects still cancels the async view
    (asgiref carries the cancellation into it).

    For a project whose ``MIDDLEWARE`` is all async-native, ``ThreadReusingASGIHandler``
    (or Django's own) saves the two hand-offs this one makes.
    ``tests/api/test_handler_parity.py`` and ``tests/api/test_host_pipeline.py`` hold it
    to Django's handler.
    """

    def __init__(self) -> None:
        super().__init__()
        # Built once: the wrapper holds no state of a call.
        self.get_response_in_thread = sync_to_async(self.get_response, thread_sensitive=True)

    def load_middleware(self, is_async=False):
        """Build the chain in Django's synchronous mode, whatever the caller asks."""
        super().load_middleware(is_async=False)

    async def get_response_async(self, request):
        """Django's ``get_response`` (the synchronous chain) in the request's thread."""
        return await self.get_response_in_thread(request)


def get_asgi_application(
    handler_class: type[ASGIHandler] = ThreadedMiddlewareASGIHandler,
) -> ASGIHandler:
    """``django.core.asgi.get_asgi_application``, with one of this module's handlers."""
    django.setup(set_prefix=False)
    return handler_class()
