"""The adapters' HTTP clients.

The OpenAI-protocol and Ollama adapters talk to their upstreams through ``aiohttp``:
its C-accelerated HTTP parser and lean connection pool cost a fraction of httpx's CPU
per request (``tests/benchmarks/bench_http_clients.py``: a tenth), and in one gateway
process that CPU decides how many requests a second it can carry.
The Anthropic adapter uses the official SDK, which runs on ``httpx2`` (the maintained
fork of httpx), exported here as ``httpx``.

All adapters share one session (one connection pool) per event loop, and send their
own headers and timeouts with each request. A server has one loop for its whole life;
commands, tests and ``async_to_sync`` make short-lived ones. A session is closed when
its loop shuts down (``asyncio.run``, asgiref and the ASGI servers all finalise the
loop's async generators then, and the session rides on one); a loop closed without that
has its session dropped when a new one is made, and at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import threading
import urllib.request
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import httpx2 as httpx

__all__ = [
    "CONNECT_TIMEOUTS",
    "IDENTITY",
    "TRANSPORT_ERRORS",
    "CompressedAnswer",
    "HTTPResult",
    "PooledRequest",
    "ResponseTooLarge",
    "ReuseAwareConnector",
    "env_proxy",
    "httpx",
    "iter_lines",
    "read_body",
    "read_error_body",
    "refuse_compressed",
    "request_timeout",
    "sessions",
]

#: What a failed exchange with an upstream raises (timeouts are TimeoutError).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    aiohttp.http_exceptions.HttpProcessingError,
    TimeoutError,
)

#: No connection within the connect timeout: the endpoint is unreachable, not slow to
#: answer (its circuit, not one model's, counts it).
CONNECT_TIMEOUTS: tuple[type[BaseException], ...] = (
    aiohttp.ConnectionTimeoutError,
    httpx.ConnectTimeout,
)

#: Concurrent upstream connections per process (all upstreams together).
MAX_CONNECTIONS = 1024
#: The part of an error body that is read (its message is all the gateway uses).
MAX_ERROR_BODY = 64 * 1024


class ResponseTooLarge(Exception):
    """An upstream sent a body, a line or a stream event over ``limit`` bytes
    (``MAX_UPSTREAM_BYTES``): nothing more of it is read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class CompressedAnswer(Exception):
    """An upstream answered compressed though asked for no content coding: what would
    be counted against ``MAX_UPSTREAM_BYTES`` would not be what is kept (a bomb)."""


#: Asked of every upstream, so that the bytes counted are the bytes kept.
IDENTITY = {"Accept-Encoding": "identity"}


def refuse_compressed(headers: Mapping[str, str]) -> None:
    """``CompressedAnswer`` if ``headers`` say the body is compressed."""
    coding = headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise CompressedAnswer(coding)


class HTTPResult:
    """A read upstream response: status, headers, body."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(self, status: int, reason: str, headers: Mapping[str, str], body: bytes):
        self.status_code = status
        self.reason_phrase = reason
        self.headers = headers
        self.content = body

    @classmethod
    def of(cls, response: aiohttp.ClientResponse, body: bytes) -> HTTPResult:
        return cls(response.status, response.reason or "", response.headers, body)

    def json(self) -> Any:
        return json.loads(self.content)


class SessionPool:
    """One ``aiohttp.ClientSession`` per event loop, made on first use."""

    def __init__(self, factory: Callable[[], aiohttp.ClientSession]) -> None:
        self._factory = factory
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._closers: dict[asyncio.AbstractEventLoop, Any] = {}
        self._lock = threading.Lock()

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None:
            with self._lock:
                self._drop_closed_loops()
                session = self._sessions[loop] = self._factory()
                self._closers[loop] = self._close_at_shutdown(loop, session)
        return session

    def _close_at_shutdown(self, loop: asyncio.AbstractEventLoop, session) -> Any:
        async def closer():
            try:
                yield
            finally:  # loop.shutdown_asyncgens(): the loop is ending
                if self._sessions.get(loop) is session:
                    del self._sessions[loop]
                    self._closers.pop(loop, None)
                await session.close()

        gen = closer()
        step = gen.__anext__()  # the loop's first-iteration hook registers gen here
        try:
            step.send(None)  # run it to its yield (nothing in between awaits)
        except StopIteration:
            pass
        return gen  # kept here: the loop only holds its async generators weakly

    def _drop_closed_loops(self) -> None:
        for loop in [loop for loop in self._sessions if loop.is_closed()]:
            self._closers.pop(loop, None)
            _abandon(self._sessions.pop(loop), loop)

    async def aclose(self) -> None:
        """Close this loop's session (others are dropped as their loops close)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        self._closers.pop(loop, None)
        if session is not None:
            await session.close()

    def abandon_all(self) -> None:
        with self._lock:
            self._closers.clear()
            while self._sessions:
                _abandon(*reversed(self._sessions.popitem()))


def _abandon(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
    """Let go of a session whose loop will never run again (its sockets go with the
    garbage collector). ``detach()`` marks the session closed; on a closed loop the
    connector's ``close()`` marks it closed at once and returns an awaitable with nothing
    to wait for, run to its end here: no "Unclosed ..." complaints later."""
    connector = session.connector
    session.detach()
    if connector is not None and loop.is_closed():
        steps = connector.close().__await__()
        try:
            steps.send(None)
        except StopIteration:
            pass


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=ReuseAwareConnector(limit=MAX_CONNECTIONS, limit_per_host=0),
        # Not trust_env: aiohttp would then read the environment and ~/.netrc in a
        # worker thread on every request. Adapters look their proxy up once (env_proxy).
        trust_env=False,
        raise_for_status=False,
        # Answers are asked uncompressed (IDENTITY) and read as they come: a compressed
        # one is refused, never inflated (refuse_compressed).
        auto_decompress=False,
    )


def env_proxy(base_url: str) -> dict:
    """``proxy``/``proxy_auth`` request arguments from HTTP(S)_PROXY / NO_PROXY for the
    upstream at ``base_url`` (as httpx honours them), looked up once per adapter with
    the standard library's ``getproxies`` and ``proxy_bypass``."""
    from yarl import URL

    try:
        url = URL(base_url)
        if not url.host or urllib.request.proxy_bypass(url.host):
            return {}
        proxy = urllib.request.getproxies().get(url.scheme)
        if not proxy:
            return {}
        proxy_url = URL(proxy)
    except ValueError:
        return {}
    auth = None
    if proxy_url.user:
        auth = aiohttp.BasicAuth(proxy_url.user, proxy_url.password or "")
        proxy_url = proxy_url.with_user(None)
    return {"proxy": proxy_url, "proxy_auth": auth}


class PooledRequest:
    """``async with PooledRequest(session.request, ...) as response``: one aiohttp request, sent
    again once on a new connection when the kept-alive connection the pool handed out turned
    out to be closed by the upstream before any answer came back.

    An upstream (or a proxy in front of it) may close a kept-alive connection right after
    an answer, or when its keep-alive limit or idle timeout is up: aiohttp checks a pooled
    connection when it hands it out, but the close can land just after that. Depending on
    the timing the write fails ("Cannot write to closing transport") or the connection
    ends with no response at all (``ServerDisconnectedError``) — the keep-alive race of
    RFC 9112 §9.3.1, which HTTP clients answer by sending again on a new connection. Only
    a reused connection (``ReuseAwareConnector``) is sent again, once, and it is not one of
    the provider's retries: no backoff, no circuit breaker failure.
    """

    __slots__ = ("_args", "_kwargs", "_response", "_send", "reused")

    def __init__(self, send: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._send, self._args, self._kwargs = send, args, kwargs
        self._response: aiohttp.ClientResponse | None = None
        self.reused = False

    async def __aenter__(self) -> aiohttp.ClientResponse:
        token = _sending.set(self)
        try:
            self._response = await self._send(*self._args, **self._kwargs)
        except aiohttp.ServerDisconnectedError:
            if not self.reused:
                raise
            self._response = await self._send(*self._args, **self._kwargs)
        except aiohttp.ClientOSError as error:
            if not isinstance(error.__cause__, aiohttp.ClientConnectionResetError):
                raise
            self._response = await self._send(*self._args, **self._kwargs)
        finally:
            _sending.reset(token)
        return self._response

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._response is not None
        await self._response.__aexit__(*exc_info)


#: The ``PooledRequest`` this task is sending, told by the connector whether its
#: connection came from the pool.
_sending: contextvars.ContextVar[PooledRequest | None] = contextvars.ContextVar(
    "llm_integration_pooled_request", default=None
)


class ReuseAwareConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector, noting on the ``PooledRequest`` being sent whether the
    connection it hands out has carried a request before: a set lookup per request, where
    aiohttp's request tracing (``on_connection_reuseconn``) added 0.1–0.25 ms of CPU to
    an adapter call of about 0.8 ms."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.used_protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect(
        self,
        req: Any,
        traces: Any,
        timeout: Any,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> aiohttp.connector.Connection:
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        if protocol is not None:
            request = _sending.get()
            if request is not None:
                request.reused = protocol in self.used_protocols
            self.used_protocols.add(protocol)
        return connection


def request_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """httpx's sense of a timeout: ``seconds`` for each read, at most 10 s to connect."""
    return aiohttp.ClientTimeout(total=None, sock_connect=min(seconds, 10.0), sock_read=seconds)


#: The upstream session of each event loop, shared by the aiohttp adapters.
sessions = SessionPool(new_session)
atexit.register(sessions.abandon_all)


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or ``ResponseTooLarge`` once it passes ``limit`` bytes (a
    ``Content-Length`` over it is refused before anything is read); a compressed one
    is refused unread."""
    refuse_compressed(response.headers)
    length = response.content_length
    if length is not None:
        if length > limit:
            raise ResponseTooLarge(limit)
        return await response.read()
    pieces, size = [], 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(limit)
        pieces.append(chunk)
    return b"".join(pieces)


async def read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """The first ``MAX_ERROR_BODY`` bytes of an error answer; the rest is not read
    (the connection is closed instead). A compressed one is not read at all."""
    try:
        refuse_compressed(response.headers)
    except CompressedAnswer:
        response.close()
        return b""
    length = response.content_length
    if length is not None and length <= MAX_ERROR_BODY:
        return await response.read()
    pieces, size = [], 0
    while size < MAX_ERROR_BODY and (chunk := await response.content.readany()):
        pieces.append(chunk)
        size += len(chunk)
    if not response.content.at_eof():
        response.close()
    return b"".join(pieces)[:MAX_ERROR_BODY]


async def iter_lines(response: aiohttp.ClientResponse, limit: int) -> AsyncIterator[str]:
    """The body's lines, without their ``\n`` / ``\r\n``; ``ResponseTooLarge`` for a
    line over ``limit`` bytes.

    Reads whatever has arrived and splits it here: one wait per network read rather
    than per line. An unfinished line is kept as pieces, joined once its end arrives.
    A compressed body is refused unread.
    """
    refuse_compressed(response.headers)
    content = response.content
    pending: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        if b"\n" not in chunk:
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(limit)
            pending.append(chunk)
            continue
        if pending:
            pending.append(chunk)
            chunk = b"".join(pending)
            pending.clear()
        *lines, rest = chunk.split(b"\n")
        for line in lines:
            if len(line) > limit:
                raise ResponseTooLarge(limit)
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
        size = len(rest)
        if size > limit:
            raise ResponseTooLarge(limit)
        if rest:
            pending.append(rest)
    if pending:
        yield b"".join(pending).removesuffix(b"\r").decode("utf-8", "replace")
