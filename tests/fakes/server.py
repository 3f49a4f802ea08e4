"""A real HTTP/1.1 server on 127.0.0.1, in a thread, for fake upstream providers.

Protocol fakes (OpenAI, Anthropic, Ollama) subclass ``FakeUpstream`` and implement
``handle``; tests queue how the next requests go wrong with ``push(...)``:

    fake.push(mode="error", status=429, retry_after="3")
    fake.push(mode="cut", cut_after=2)       # stream cut after two chunks
    fake.push(mode="slow", delay=5)          # headers only after 5 s (or stop())
    fake.push(mode="malformed")              # a body that is not the protocol's JSON
    fake.push(mode="reset")                  # connection reset, no answer at all
    fake.push(raw=answer)                    # answer(exchange) writes whatever it likes

Responses are written byte for byte: Content-Length bodies, chunked streams, and an
abrupt close for cuts, so the client library sees what it would see in production.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    #: ok | error | slow | reset | cut | malformed | no_usage | error_event | held (answers
    #: once the fake's ``gate`` is open)
    mode: str = "ok"
    text: str = "Hello from the fake upstream!"
    status: int = 500
    retry_after: str | None = None
    error_type: str = ""
    message: str = "Something went wrong upstream."
    delay: float = 0.0
    cut_after: int = 2
    prompt_tokens: int = 11
    completion_tokens: int = 7
    #: Of the prompt tokens, those the upstream read from and wrote to its prompt cache
    #: (``cache_write_1h_tokens`` of the writes kept an hour); each fake reports them in
    #: its own words.
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    #: Of the completion tokens, those spent reasoning (OpenAI's fake reports them).
    reasoning_tokens: int = 0
    finish_reason: str = "stop"
    #: Tool calls the model makes: [{"id", "name", "arguments": JSON text}]; each fake
    #: sends them in its own wire format (streamed arguments in ``pieces``).
    tool_calls: list[dict] | None = None
    #: Reasoning blocks before the answer (Anthropic's fake): ``{"thinking", "signature"}``
    #: or ``{"redacted": data}``.
    thinking: list[dict] | None = None
    #: Writes the whole answer itself, byte for byte (a hostile upstream's).
    raw: Any = None

    def __post_init__(self) -> None:
        if self.tool_calls and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"

    def anthropic_usage(self, output_tokens: int) -> dict:
        """Anthropic's usage: ``input_tokens`` leave out what the cache read and wrote."""
        usage = {
            "input_tokens": self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens,
            "output_tokens": output_tokens,
        }
        if self.cache_read_tokens or self.cache_write_tokens:
            usage["cache_creation_input_tokens"] = self.cache_write_tokens
            usage["cache_read_input_tokens"] = self.cache_read_tokens
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": self.cache_write_tokens - self.cache_write_1h_tokens,
                "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
            }
        return usage

    def anthropic_delta_usage(self) -> dict:
        """A stream's ``message_delta`` usage: the output so far and, when the cache was
        used, the input counts again (as Anthropic sends them now) without the
        ``cache_creation`` breakdown, which only ``message_start`` has."""
        usage = {"output_tokens": self.completion_tokens}
        if self.cache_read_tokens or self.cache_write_tokens:
            usage.update(self.anthropic_usage(self.completion_tokens))
            del usage["cache_creation"]
        return usage

    def openai_usage(self) -> dict:
        """OpenAI's usage: the prompt's tokens include those read from the cache."""
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cache_read_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage

    def words(self) -> list[str]:
        if not self.text:
            return []
        words = self.text.split(" ")
        return [w if i == 0 else f" {w}" for i, w in enumerate(words)]

    @staticmethod
    def pieces(arguments: str) -> list[str]:
        """A tool call's arguments cut as upstreams stream them (a few characters)."""
        return [arguments[i : i + 5] for i in range(0, len(arguments), 5)]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    #: The client's (host, port): the same for requests on one kept-alive connection.
    peer: tuple[str, int] | None = None


class Exchange:
    """The request being answered, with writers that speak raw HTTP/1.1."""

    def __init__(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        self.handler = handler
        self.request = request
        self.stream_open = False

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(data).encode(), headers=headers)

    def start_stream(self, content_type: str, headers: dict[str, str] | None = None) -> None:
        h = self.handler
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache")
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        self.stream_open = True

    def write(self, data: bytes) -> None:
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.handler.wfile.flush()

    def end_stream(self) -> None:
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()

    #: Seconds between what a cut stream sent and the break. A real upstream's tokens
    #: come tens of milliseconds apart; bytes that arrive in the same read as the break
    #: are dropped by aiohttp's public API (tests/test_adapters_openai.py covers that).
    CUT_PAUSE = 0.05

    def cut(self, partial: bytes = b"") -> None:
        """Close the connection abruptly (no terminating chunk, no full body)."""
        h = self.handler
        if partial:
            h.wfile.write(partial)
        h.wfile.flush()
        time.sleep(self.CUT_PAUSE)
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small writes go out at once, as real servers do
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        request = Recorded(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            peer=self.client_address,
        )
        fake = self.server.fake
        fake.requests.append(request)
        behaviour = fake.next_behaviour() if fake.scripted(request) else fake.default
        self._answer(fake, request, behaviour)

    def _answer(self, fake: FakeUpstream, request: Recorded, behaviour: Behaviour) -> None:
        exchange = Exchange(self, request)
        if behaviour.mode == "held":
            fake.gate.wait()
            behaviour = dataclasses.replace(behaviour, mode="ok")
        if behaviour.mode == "slow" and fake.stopping.wait(behaviour.delay):
            exchange.cut()
            return
        if behaviour.mode == "reset":  # TCP reset before any byte of the answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        try:
            if behaviour.raw is not None:
                behaviour.raw(exchange)
            else:
                fake.handle(exchange, behaviour)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # listen backlog: concurrent tests connect all at once
    allow_reuse_address = True
    fake: FakeUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that hung up (timeouts, cancelled streams): expected here
        super().handle_error(request, client_address)


@dataclass
class FakeUpstream(ABC):
    """Base of the protocol fakes: start(), push(), requests, stop()."""

    requests: list[Recorded] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    #: What ``held`` answers wait for.
    gate: threading.Event = field(default_factory=threading.Event)

    #: What requests get when nothing was pushed (benchmarks set a latency here).
    default: Behaviour = field(default_factory=Behaviour)

    def __post_init__(self) -> None:
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._server: _Server | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        threading.Thread(
            target=self._server.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        ).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def origin(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting ----------------------------------------------------------------
    def push(self, **behaviour: Any) -> None:
        with self._lock:
            self._script.append(Behaviour(**behaviour))

    def next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def scripted(self, request: Recorded) -> bool:
        """Whether ``request`` consumes a pushed behaviour (model calls do)."""
        return True

    @abstractmethod
    def handle(self, exchange: Exchange, behaviour: Behaviour) -> None:
        """Answer one request as the provider would, misbehaving as ``behaviour`` says."""
