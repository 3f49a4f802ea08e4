"""Database access from the async hot path.

Django's ORM is synchronous. Under ASGI, Django runs sync code in a new thread for
every request (``ThreadSensitiveContext``), and a new thread means a new database
connection: a connect (and, on PostgreSQL, a login) per request. The gateway instead
runs its own queries in a small pool of long-lived threads (``DB_THREADS``), each
keeping its connection (recycled after ``CONN_MAX_AGE`` or an error).
``DB_THREADS = 0`` uses the caller's thread, as Django itself does.

SQLite allows one writer at a time, and a connection that finds the database locked
sleeps in growing steps (1, 2, 5 … 100 ms) before it tries again: under many
concurrent requests those sleeps, not the writes, set the pace. In one process a plain
lock hands the writer's turn over at once, so write transactions take it on SQLite.
(Several processes should share PostgreSQL, where row locks make this unnecessary.)
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connection, connections

from ..conf import llm_settings

P = ParamSpec("P")
T = TypeVar("T")

POOL_PREFIX = "llm-db"
_sqlite_writer = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def write_lock() -> AbstractContextManager:
    """Hold around a write transaction: serialises SQLite writers without busy sleeps."""
    return _sqlite_writer if connection.vendor == "sqlite" else nullcontext()


def _executor() -> ThreadPoolExecutor | None:
    global _pool, _pool_size
    size = int(llm_settings.DB_THREADS)
    if size <= 0:
        return None
    if _pool is None or _pool_size != size:
        with _pool_lock:
            if _pool is None or _pool_size != size:
                _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=POOL_PREFIX)
                _pool_size = size
    return _pool


def refresh_connections() -> None:
    """Pool threads keep their connection (whatever CONN_MAX_AGE says: no request ends
    in them); one that saw an error is replaced (a connection still open may still be
    what fails: SQLite's opened read-only, a server's in recovery)."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred:
            conn.close()


def _fresh(fn: Callable[P, T]) -> Callable[P, T]:
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        refresh_connections()
        return fn(*args, **kwargs)

    return run


def run_db(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
    """``await run_db(fn, ...)``: run the sync ``fn`` where the gateway does its queries."""
    executor = _executor()
    if executor is None:
        return sync_to_async(fn)(*args, **kwargs)
    return sync_to_async(_fresh(fn), thread_sensitive=False, executor=executor)(*args, **kwargs)


def call_db(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Sync code's way into the same pool: ``fn`` runs in a database thread (on its
    connection) while this thread waits. For sync code on the request path, such as DRF
    authentication running in each request's thread: concurrent requests then share the
    pool's ``DB_THREADS`` connections instead of opening one each."""
    executor = _executor()
    if executor is None or threading.current_thread().name.startswith(POOL_PREFIX):
        return fn(*args, **kwargs)  # no pool, or already in it (a nested call)
    return executor.submit(_fresh(fn), *args, **kwargs).result()


def close_db_threads() -> None:
    """Close every pool thread's database connections and stop the threads (for tests and
    graceful shutdowns; they start again on next use). Stop the accounting writer first
    (``writer.stop()``): it keeps a connection of its own."""
    global _pool, _pool_size
    with _pool_lock:
        pool, size, _pool, _pool_size = _pool, _pool_size, None, 0
    if pool is None:
        return
    barrier = threading.Barrier(size)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout=10)  # one task per thread: each waits for all the others

    for future in [pool.submit(close) for _ in range(size)]:
        future.result(timeout=15)
    pool.shutdown(wait=True)
