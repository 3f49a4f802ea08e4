"""Fixtures: fake upstream servers on 127.0.0.1 and rows pointing at them."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.db import connections

from llm_integration.services.accounting.allowances import allowances
from llm_integration.services.accounting.writer import GroupWriter
from llm_integration.services.chat import Gateway
from llm_integration.services.clock import FakeClock
from llm_integration.services.config.providers import clear_adapter_cache
from llm_integration.services.config.snapshot import config
from llm_integration.services.limits import circuit
from llm_integration.services.limits.ratelimit import deferred
from tests.fakes.anthropic import AnthropicFake
from tests.fakes.ollama import OllamaFake
from tests.fakes.openai import OpenAIFake

TEST_KEY = "sk-test-key-0123456789"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _forget_shared_state() -> None:
    from llm_integration.services.chat.reservation import refusals_alerted

    refusals_alerted.clear()
    for alias in settings.CACHES:
        caches[alias].clear()
    circuit.forget()
    deferred.clear()
    config.forget()
    allowances.clear()


@pytest.fixture(autouse=True)
def _clear_cache():
    """Rate-limit windows, circuits and cached answers must not leak between tests."""
    _forget_shared_state()
    yield
    _forget_shared_state()


class WriterGate:
    """Holds a writer at a job that waits, so that the writes queued behind it share the
    next transaction: ``first = await gate.shut()``, queue writes, ``gate.open()``."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self._open, self._started = threading.Event(), threading.Event()

    def _hold(self, batch) -> None:
        self._started.set()
        self._open.wait(10)

    async def shut(self):
        held = self.writer.write(self._hold)
        await asyncio.to_thread(self._started.wait, 10)
        return held

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def gated():
    """A writer of its own, with its gate."""
    gate = WriterGate(GroupWriter())
    yield gate
    gate.open()
    gate.writer.stop()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def gateway(clock):
    return Gateway(clock=clock)


@pytest.fixture(autouse=True)
def _fresh_adapters():
    clear_adapter_cache()
    yield
    clear_adapter_cache()


@pytest.fixture(scope="session", autouse=True)
def _close_db_threads(django_db_setup, django_db_blocker):
    """The gateway's DB threads keep their connections; close them before the test
    database is dropped (PostgreSQL refuses to drop a database in use)."""
    yield
    from llm_integration.services.accounting.writer import writer
    from llm_integration.services.db import close_db_threads

    with django_db_blocker.unblock():
        writer.stop()
        close_db_threads()
        # Threads of the live servers (browser tests) may still hold a connection.
        connection = connections["default"]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
async def _close_async_orm_connections():
    """The async ORM runs queries in asgiref's sync thread; close its connection after
    each test so the test database can be dropped (PostgreSQL refuses while in use)."""
    yield
    await sync_to_async(connections.close_all)()


class ServedASGI:
    """An ASGI application served by uvicorn on 127.0.0.1 in a thread (a real server:
    real sockets, real HTTP parsing), on the test database."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        db = connections.settings["default"]
        self.saved_max_age = db.get("CONN_MAX_AGE", 0)
        db["CONN_MAX_AGE"] = 0  # each request closes its connection (test DB can be dropped)
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            self.thread.join(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        connections.settings["default"]["CONN_MAX_AGE"] = self.saved_max_age


@pytest.fixture
def live_server_url(transactional_db):
    """The project's ASGI application (HTTP, SSE and WebSockets), served over loopback."""
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    from project.asgi import application

    with ServedASGI(ASGIStaticFilesHandler(application)) as url:
        yield url


@pytest.fixture
def fresh_minute():
    """Rate limits count in fixed one-minute windows of the real clock (across server
    processes there is no fake clock): start well inside a window, not at its edge."""
    import time

    while time.time() % 60 > 45:
        time.sleep(0.25)


@pytest.fixture
def openai_fake():
    fake = OpenAIFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def anthropic_fake():
    fake = AnthropicFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def ollama_fake():
    fake = OllamaFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def api_key_env(monkeypatch):
    """An environment variable holding a test key; yields its name."""
    monkeypatch.setenv("LLM_TEST_API_KEY", TEST_KEY)
    return "LLM_TEST_API_KEY"


@pytest.fixture
def capped_alias(openai_fake, api_key_env):
    """``capped_alias(n)``: the alias ``capped`` on the OpenAI fake, at most ``n``
    requests in flight at once; the fake holds every answer until its ``gate`` opens.
    Returns the fake."""
    from decimal import Decimal

    from tests.factories import ModelAliasFactory, ProviderFactory

    def make(limit: int):
        provider = ProviderFactory(
            name="cloud", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
        )
        ModelAliasFactory(
            slug="capped",
            provider=provider,
            upstream_model="gpt-4o-mini",
            max_concurrency=limit,
            input_price_per_mtok=Decimal(1),
            output_price_per_mtok=Decimal(1),
        )
        openai_fake.default = type(openai_fake.default)(mode="held")
        return openai_fake

    return make
