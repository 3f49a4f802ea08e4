"""The adapter interface every provider implements, and the types it speaks.

An adapter turns one chat request into one upstream call. It never touches the ORM,
never retries (the service layer does, with tenacity) and raises only the errors of
``llm_integration.exceptions``. ``complete`` returns a ``Completion`` and
``complete_stream`` yields ``StreamChunk``s: both are ``str`` (the seed's interface),
carrying ``usage`` and ``finish_reason`` (the stream's last chunk).

    adapter = OpenAIAdapter(model="gpt-4o-mini", api_key=..., base_url=...)
    answer = await adapter.complete("Hi", top_p=0.9)     # a str; answer.usage
    text = "".join([c async for c in adapter.complete_stream("Hi")])
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import traceback
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .. import exceptions as exc
from ..conf import llm_settings
from ..redaction import keys, redact_secret
from ..text.tokens import count_message_tokens, count_text_tokens, estimate_text_tokens
from ..text.unicode import clean
from .caching import mark_of
from .http import (
    CONNECT_TIMEOUTS,
    IDENTITY,
    TRANSPORT_ERRORS,
    CompressedAnswer,
    HTTPResult,
    PooledRequest,
    ResponseTooLarge,
    env_proxy,
    httpx,
    read_body,
    read_error_body,
    request_timeout,
    sessions,
)
from .images import ImagePart
from .thinking import ThinkingBlock, ThinkingDelta
from .tools import (
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    parse_response_format,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
)
from .untrusted import log_bad_count, token_count

logger = logging.getLogger("llm_integration.adapters")
#: Where this package's code lives (its frames in a traceback).
PACKAGE = str(Path(__file__).resolve().parents[1])

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class Message:
    """One turn: its text; for tool calling an assistant's ``tool_calls`` or the
    ``tool_call_id`` a ``tool`` message answers; for a message with images, its
    ``parts`` in order (text as ``str``, images as ``ImagePart``)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    parts: tuple[str | ImagePart, ...] = ()
    #: An assistant's reasoning blocks, sent back as they came (Anthropic upstreams).
    thinking: tuple[ThinkingBlock, ...] = ()

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart))

    def as_dict(self) -> dict[str, Any]:
        """The message in OpenAI's shape."""
        if self.images:
            return {
                "role": self.role,
                "content": [
                    p.as_openai() if isinstance(p, ImagePart) else {"type": "text", "text": p}
                    for p in self.parts
                ],
            }
        if self.tool_calls:
            return {
                "role": self.role,
                "content": self.content or None,
                "tool_calls": [call.as_openai() for call in self.tool_calls],
            }
        if self.tool_call_id is not None:
            return {"role": self.role, "content": self.content, "tool_call_id": self.tool_call_id}
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What to send upstream. ``messages`` may include a leading system message."""

    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: The end user, for the upstream's abuse monitoring (OpenAI's ``user``).
    user: str | None = None
    #: How hard a reasoning model thinks (OpenAI's ``reasoning_effort``).
    reasoning_effort: str | None = None
    #: OpenAI's prompt cache routing hint (a hint: other upstreams leave it out).
    prompt_cache_key: str | None = None
    #: OpenAI's ``verbosity`` (``low`` | ``medium`` | ``high``): how long an answer a
    #: GPT-5 model writes (OpenAI-compatible upstreams only).
    verbosity: str | None = None
    #: Anthropic's extended thinking setting and ``top_k`` sampling.
    thinking: Mapping[str, Any] | None = None
    top_k: int | None = None
    #: ``anthropic-beta`` features the client asked for (Anthropic upstreams only).
    betas: tuple[str, ...] = ()
    #: Anthropic's ``context_management`` and ``output_config``, carried as sent
    #: (``output_config.effort`` is ``reasoning_effort`` to OpenAI-compatible upstreams).
    context_management: Mapping[str, Any] | None = None
    output_config: Mapping[str, Any] | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    #: ``parallel_tool_calls`` is a hint (the Responses API's): an upstream that cannot
    #: hold to one tool call leaves it out rather than refusing.
    parallel_tool_calls_hint: bool = False
    response_format: ResponseFormat | None = None

    @property
    def uses_tools(self) -> bool:
        """Whether the model must understand tools: tools offered, or a conversation
        that already holds tool calls."""
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)

    @property
    def uses_images(self) -> bool:
        return any(m.images for m in self.messages)

    @property
    def cache_ttl(self) -> str:
        """``1h`` or ``5m``: how long the longest-lived prompt caching mark of the request
        keeps what it marks ("" for a request without one: nothing can be written)."""
        lasts = {
            mark.lasts
            for item in (
                *self.tools,
                *(part for m in self.messages for part in (*m.parts, *m.tool_calls)),
            )
            if (mark := mark_of(item)) is not None
        }
        return "1h" if "1h" in lasts else ("5m" if lasts else "")

    @property
    def system_prompt(self) -> str | None:
        parts = [m.content for m in self.messages if m.role == "system"]
        return "\n\n".join(parts) if parts else None

    @property
    def conversation(self) -> list[Message]:
        return [m for m in self.messages if m.role != "system"]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a call used. ``prompt_tokens`` counts every input token; of those,
    ``cache_read_tokens`` came from the upstream's prompt cache and
    ``cache_write_tokens`` were written to it (``cache_write_1h_tokens`` of them kept
    an hour), each priced on its own; ``reasoning_tokens`` are part of the completion
    and billed as output."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    #: Of the completion tokens, those the model spent reasoning (as the upstream said).
    reasoning_tokens: int = 0

    @property
    def uncached_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Completion(str):
    """An answer: its text, as a ``str`` (the seed's interface), with what came with it:
    ``usage``, ``finish_reason``, ``model``, the upstream's ``id`` and the
    ``tool_calls`` the model made."""

    usage: Usage
    finish_reason: str
    model: str
    id: str
    tool_calls: tuple[ToolCall, ...]
    #: The reasoning blocks before the answer (a model that was asked to think).
    thinking: tuple[ThinkingBlock, ...]

    def __new__(
        cls,
        text: str = "",
        usage: Usage | None = None,
        finish_reason: str = "stop",
        model: str = "",
        id: str = "",
        tool_calls: tuple[ToolCall, ...] = (),
        thinking: tuple[ThinkingBlock, ...] = (),
    ) -> Completion:
        answer = super().__new__(cls, text)
        answer.usage = usage or Usage()
        answer.finish_reason = finish_reason
        answer.model = model
        answer.id = id
        answer.tool_calls = tuple(tool_calls)
        answer.thinking = tuple(thinking)
        return answer

    @property
    def text(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Completion({self.text!r}, usage={self.usage!r}, finish={self.finish_reason!r})"


class StreamChunk(str):
    """A piece of a streamed answer, as a ``str`` (or a piece of a tool call, in
    ``tool_call``); the last one (often empty) carries ``usage`` and ``finish_reason``."""

    finish_reason: str | None
    usage: Usage | None
    tool_call: ToolCallDelta | None
    thinking: ThinkingDelta | None

    def __new__(
        cls,
        text: str = "",
        finish_reason: str | None = None,
        usage: Usage | None = None,
        tool_call: ToolCallDelta | None = None,
        thinking: ThinkingDelta | None = None,
    ) -> StreamChunk:
        chunk = super().__new__(cls, text)
        chunk.finish_reason = finish_reason
        chunk.usage = usage
        chunk.tool_call = tool_call
        chunk.thinking = thinking
        return chunk

    @property
    def text(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"StreamChunk({self.text!r}, finish={self.finish_reason!r}, usage={self.usage!r})"


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Vectors of the inputs, in order, with the tokens they cost: lists of floats, or
    (asked ``encoding_format="base64"`` of an upstream that has it) OpenAI's base64 of
    little-endian float32s, passed through undecoded."""

    vectors: list[list[float]] | list[str]
    usage: Usage
    model: str = ""


Prompt = str | ChatRequest | Sequence[Message | Mapping[str, Any]]


#: Options ``complete()`` and ``complete_stream()`` take besides the prompt.
OPTIONS = (
    "system_prompt",
    "temperature",
    "max_tokens",
    "stop",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "reasoning_effort",
    "prompt_cache_key",
    "verbosity",
    "thinking",
    "top_k",
    "betas",
    "context_management",
    "output_config",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "parallel_tool_calls_hint",
    "response_format",
)


def build_request(prompt: Prompt, **options: Any) -> ChatRequest:
    """Normalise a string, a list of messages or a ChatRequest (and ``OPTIONS``) into a
    ChatRequest; an option it does not know is refused by name."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise exc.InvalidRequest(
            f"Unknown option {unknown[0]!r}: the options are {', '.join(OPTIONS)}.",
            param=unknown[0],
        )
    system_prompt = options.pop("system_prompt", None)
    stop = options.pop("stop", None) or ()
    if isinstance(stop, str):
        stop = (stop,)
    tools = options.get("tools")
    if tools is not None and not all(isinstance(t, Tool) for t in tools):
        options["tools"] = tools = parse_tools(list(tools))
    choice = options.get("tool_choice")
    if choice is not None and not isinstance(choice, ToolChoice):
        options["tool_choice"] = parse_tool_choice(choice, tuple(tools or ()))
    fmt = options.get("response_format")
    if fmt is not None and not isinstance(fmt, ResponseFormat):
        options["response_format"] = parse_response_format(fmt)
    if isinstance(options.get("tools"), list):
        options["tools"] = tuple(options["tools"])
    if isinstance(prompt, ChatRequest):
        return dataclasses.replace(prompt, **options) if options else prompt
    if isinstance(prompt, str):
        messages = [Message("user", prompt)]
    else:
        messages = []
        for i, m in enumerate(prompt):
            if isinstance(m, Message):
                messages.append(m)
                continue
            role, content = m.get("role"), m.get("content")
            calls = parse_tool_calls(m.get("tool_calls"), f"messages[{i}].tool_calls")
            if calls and content is None:
                content = ""
            if role not in ROLES or not isinstance(content, str):
                raise exc.InvalidRequest(
                    "Each message needs a role (system, user, assistant or tool) and text."
                )
            messages.append(Message(role, content, calls, m.get("tool_call_id")))
    if system_prompt:
        messages.insert(0, Message("system", system_prompt))
    if not any(m.role != "system" for m in messages):
        raise exc.InvalidRequest("Send at least one user message.")
    return ChatRequest(messages=tuple(messages), stop=tuple(stop), **options)


class BaseLLMAdapter(ABC):
    """One upstream model behind one provider protocol."""

    #: The provider kind(s) this adapter serves (``Provider.kind``).
    kinds: ClassVar[tuple[str, ...]] = ()
    #: The public endpoint used when the provider row leaves base_url empty.
    default_base_url: ClassVar[str] = ""
    #: Whether the adapter needs an API key to talk to its upstream.
    requires_api_key: ClassVar[bool] = True
    #: Names of ``Provider.options`` keys passed to the constructor.
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "",
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        provider_name: str = "",
        default_max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self._api_key = api_key
        keys.register([api_key])
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.provider_name = provider_name or (self.kinds[0] if self.kinds else "upstream")
        self.default_max_tokens = default_max_tokens
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._timeout = request_timeout(timeout)
        self._headers: dict[str, str] | None = None
        self._proxy: dict = {}

    def __repr__(self) -> str:  # never shows the key
        return f"<{type(self).__name__} {self.provider_name}:{self.model} {self.base_url}>"

    @property
    def model_name(self) -> str:
        return self.model

    # -- public API -------------------------------------------------------------------
    async def complete(self, prompt: Prompt, **options: Any) -> Completion:
        request = build_request(prompt, **options)
        try:
            return await self._complete(request)
        except (exc.LLMError, asyncio.CancelledError):
            raise
        except Exception as error:
            raise self._unreadable(error) from None

    async def complete_stream(self, prompt: Prompt, **options: Any) -> AsyncIterator[StreamChunk]:
        request = build_request(prompt, **options)
        try:
            async for chunk in self._stream(request):
                yield chunk
        except (exc.LLMError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as error:
            raise self._unreadable(error) from None

    def _unreadable(self, error: Exception) -> exc.AdapterFailure:
        """What an unexpected failure inside the adapter becomes: a 502, never a 500.
        It is logged with where it happened in this package (it may be the adapter's
        own fault, or a request it could not build), not with its message, which may
        quote the upstream; it does not count against the provider's circuit."""
        ours = [
            frame
            for frame in traceback.extract_tb(error.__traceback__)
            if PACKAGE in frame.filename
        ]
        logger.error(
            "llm.adapter_failed",
            extra={
                "provider": self.provider_name,
                "error_type": type(error).__name__,
                "where": "".join(traceback.format_list(ours[-3:])),
            },
        )
        return exc.AdapterFailure(
            f"{self.provider_name} sent an answer the gateway could not read.",
            provider=self.provider_name,
        )

    def count_tokens(self, prompt: str | Prompt) -> int:
        """Tokens of a text or of a chat prompt, as this model would count them."""
        if isinstance(prompt, str):
            return count_text_tokens(prompt, model=self.model)
        request = build_request(prompt)
        return count_message_tokens(request.messages, model=self.model, tools=request.tools)

    def refuse_options(self, request: ChatRequest, names: Iterable[str]) -> None:
        """An option set on ``request`` that this upstream cannot take is refused by
        name, never dropped."""
        for name in names:
            if getattr(request, name) is not None:
                raise exc.InvalidRequest(
                    f"{self.provider_name} ({', '.join(self.kinds)}) does not take {name!r}.",
                    param=name,
                )

    def _request_headers(self) -> dict[str, str]:
        """Headers of every request to the upstream (aiohttp adapters)."""
        return {"Accept": "application/json", **IDENTITY, **self.headers}

    def _post(self, path: str, body: Any):
        """``async with self._post(path, body) as response``: a JSON POST (aiohttp)."""
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: Any = None):
        if self._headers is None:
            self._headers = self._request_headers()
            self._proxy = env_proxy(self.base_url)
        return PooledRequest(
            sessions.get().request,
            method,
            self.base_url + path,
            json=body,
            headers=self._headers,
            timeout=self._timeout,
            # A redirect would carry the prompt and the headers (keys) to another
            # origin: it is an error (is_error), never followed.
            allow_redirects=False,
            **self._proxy,
        )

    def _error(self, response: HTTPResult | httpx.Response, body: bytes) -> exc.UpstreamError:
        return error_from_http_response(
            response, body, provider=self.provider_name, redact=self._redact
        )

    async def _call(self, method: str, path: str, *, json: Any = None) -> HTTPResult:
        """One non-streaming HTTP request; transport failures, 4xx/5xx and bodies over
        ``MAX_UPSTREAM_BYTES`` become our errors."""
        try:
            async with self._request(method, path, json) as r:
                if is_error(r.status):
                    body = await read_error_body(r)
                    raise self._error(HTTPResult.of(r, body), body)
                result = HTTPResult.of(r, await read_body(r, max_upstream_bytes()))
        except (*TRANSPORT_ERRORS, ResponseTooLarge, CompressedAnswer) as e:
            raise error_from_transport(e, provider=self.provider_name) from None
        return result

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        dimensions: int | None = None,
        user: str | None = None,
        encoding_format: str = "float",
    ) -> Embeddings:
        """Vectors of ``inputs`` (an upstream without an embeddings API refuses);
        ``encoding_format`` is a wish: an upstream without base64 answers floats."""
        raise exc.UnsupportedContent(
            f"{self.provider_name} ({', '.join(self.kinds)}) has no embeddings API.",
            param="model",
        )

    async def list_models(self) -> list[str] | None:
        """The upstream's model ids, or None where there is no such endpoint."""
        return None

    def serves(self, model: str, served: set[str]) -> bool:
        return model in served

    async def probe(self, models: list[str]) -> list[str]:
        """Check that the upstream answers (UpstreamError if not); the ``models`` its list
        lacks (none where it has no list). A missing model is the caller's to judge: a
        list may omit what the endpoint still serves."""
        served = await self.list_models()
        if served is None:
            return []
        return [m for m in models if not self.serves(m, set(served))]

    async def aclose(self) -> None:
        for clients in list(self._clients.values()):
            for client in clients:
                # httpx clients have aclose(); the Anthropic SDK's async client close().
                await (getattr(client, "aclose", None) or client.close)()
        self._clients.clear()  # the aiohttp session is shared: it stays with its loop

    # -- for subclasses ---------------------------------------------------------------
    @abstractmethod
    async def _complete(self, request: ChatRequest) -> Completion: ...

    @abstractmethod
    def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]: ...

    def _client_for_loop(self, factory) -> Any:
        """An SDK client of this event loop (its connection pool cannot cross loops)."""
        loop = asyncio.get_running_loop()
        clients = self._clients.get(loop)
        if clients is None:
            clients = self._clients[loop] = [factory()]
        return clients[0]

    def _estimate_usage(self, request: ChatRequest, completion_text: str) -> Usage:
        return Usage(
            prompt_tokens=count_message_tokens(
                request.messages, model=self.model, tools=request.tools
            ),
            completion_tokens=estimate_text_tokens(completion_text, model=self.model),
            estimated=True,
        )

    def _redact(self, text: str) -> str:
        """Remove the key, and any part of it, from text that may leave the adapter
        (only its first ``MAX_QUOTED`` characters are kept, and looked at)."""
        return redact_secret(clean(text[:MAX_QUOTED]), self._api_key)

    def _reported_usage(
        self,
        prompt: Any,
        completion: Any,
        request: ChatRequest,
        text: str,
        *,
        cache_read: Any = None,
        cache_write: Any = None,
        cache_write_1h: Any = None,
        reasoning: Any = None,
    ) -> Usage:
        """The upstream's counts where they are counts (``untrusted.token_count``); an
        estimate in place of each that is missing or is not, flagged as such. Cache
        counts are kept when they are counts that fit in the prompt's, else left out
        (their tokens priced as plain input) and logged."""
        p, c = token_count(prompt), token_count(completion)
        if p is not None and c is not None:
            usage = Usage(prompt_tokens=p, completion_tokens=c)
        else:
            for field, raw, value in (("prompt", prompt, p), ("completion", completion, c)):
                if raw is not None and value is None:
                    log_bad_count(self.provider_name, field, raw)
            guess = self._estimate_usage(request, text)
            usage = Usage(
                prompt_tokens=guess.prompt_tokens if p is None else p,
                completion_tokens=guess.completion_tokens if c is None else c,
                estimated=True,
            )
        if reasoning is not None and c is not None:
            thought = token_count(reasoning)
            if thought is None or thought > c:
                log_bad_count(self.provider_name, "reasoning", reasoning)
            else:
                usage = dataclasses.replace(usage, reasoning_tokens=thought)
        if cache_read is None and cache_write is None:
            return usage
        cached = [
            (field, raw, token_count(0 if raw is None else raw))
            for field, raw in (
                ("cache_read", cache_read),
                ("cache_write", cache_write),
                ("cache_write_1h", cache_write_1h),
            )
        ]
        read, write, write_1h = (value for _field, _raw, value in cached)
        if p is None or None in (read, write, write_1h) or read + write > p or write_1h > write:
            for field, raw, _value in cached:
                if raw is not None:
                    log_bad_count(self.provider_name, field, raw)
            return usage
        return dataclasses.replace(
            usage, cache_read_tokens=read, cache_write_tokens=write, cache_write_1h_tokens=write_1h
        )


# -- shared HTTP error mapping ---------------------------------------------------------


def max_upstream_bytes() -> int:
    """The most bytes of one answer, or of one stream event, read from an upstream."""
    return int(llm_settings.MAX_UPSTREAM_BYTES)


#: The longest wait an upstream's ``Retry-After`` is taken for (a day): a longer, an
#: infinite or a nonsensical one says nothing a client could act on.
MAX_RETRY_AFTER = 86400.0


def parse_retry_after(headers: httpx.Headers | Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``,
    within 0 and ``MAX_RETRY_AFTER``; None when absent or not a number."""
    from email.utils import parsedate_to_datetime

    def bounded(seconds: float) -> float | None:
        return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else None

    value = headers.get("retry-after-ms")
    if value:
        try:
            return bounded(float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return bounded(float(value))
    except ValueError:
        pass
    try:
        import datetime as dt

        when = parsedate_to_datetime(value)
        return bounded((when - dt.datetime.now(dt.UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


#: How much of an upstream's error text is looked at (scrubbed, then cut to 500):
#: scrubbing megabytes would hold the event loop.
MAX_QUOTED = 2000

CONTEXT_MARKERS = (
    "context length",
    "context_length",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "context window",
)


def is_error(status: int) -> bool:
    """Whether an upstream's status is a failure: 4xx, 5xx, and redirects (never
    followed: they would take the prompt and the keys elsewhere)."""
    return status >= 300


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
) -> exc.UpstreamError:
    """The taxonomy's error for an upstream HTTP status and its (redacted) message."""
    kw = {"provider": provider, "status": status}
    if status in (401, 403):
        # Upstream auth messages may quote part of the key: never pass them on.
        return exc.UpstreamAuthenticationError(
            f"{provider} rejected the gateway's credentials (HTTP {status}).", **kw
        )
    if status == 429:
        return exc.UpstreamRateLimited(
            f"{provider} is rate limiting requests: {message}", retry_after=retry_after, **kw
        )
    if status == 408:
        return exc.UpstreamTimeout(f"{provider} timed out (HTTP 408).", **kw)
    if status >= 500:
        return exc.UpstreamServerError(
            f"{provider} failed (HTTP {status}): {message}", retry_after=retry_after, **kw
        )
    if status < 400:
        return exc.UpstreamBadRequest(
            f"{provider} answered with a redirect (HTTP {status}), which is not followed.", **kw
        )
    if any(marker in message.lower() for marker in CONTEXT_MARKERS):
        return exc.ContextTooLong(f"{provider}: {message}", **kw)
    return exc.UpstreamBadRequest(
        f"{provider} refused the request (HTTP {status}): {message}", **kw
    )


def error_from_http_response(
    response: HTTPResult | httpx.Response, body: bytes, *, provider: str, redact
) -> exc.UpstreamError:
    """Map an upstream error response (OpenAI, Anthropic or Ollama JSON) to the taxonomy."""
    import json

    message = ""
    try:
        data = json.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("type") or "")
        elif isinstance(err, str):
            message = err
    except ValueError:
        message = body[:200].decode("utf-8", "replace")
    message = redact(message.strip()[:MAX_QUOTED])[:500] or clean(response.reason_phrase)
    return error_for_status(
        response.status_code,
        message,
        provider=provider,
        retry_after=parse_retry_after(response.headers),
    )


def error_from_transport(
    error: Exception, *, provider: str, streaming_started: bool = False
) -> exc.UpstreamError:
    """Map an aiohttp/httpx transport exception (or an answer over
    ``MAX_UPSTREAM_BYTES``) to the taxonomy (its text may hold URLs: not used)."""
    name = type(error).__name__
    if isinstance(error, ResponseTooLarge):
        return exc.BadUpstreamResponse(
            f"{provider} sent an answer over {error.limit} bytes (MAX_UPSTREAM_BYTES).",
            provider=provider,
        )
    if isinstance(error, CompressedAnswer):
        return exc.BadUpstreamResponse(
            f"{provider} sent a compressed answer though asked for none.", provider=provider
        )
    if isinstance(error, CONNECT_TIMEOUTS):
        return exc.UpstreamConnectionError(
            f"Could not connect to {provider} in time ({name}).", provider=provider
        )
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return exc.UpstreamTimeout(
            f"{provider} did not answer in time ({name}).", provider=provider
        )
    if streaming_started:
        return exc.StreamInterrupted(
            f"The connection to {provider} was lost mid-stream ({name}).", provider=provider
        )
    return exc.UpstreamConnectionError(f"Could not reach {provider} ({name}).", provider=provider)


async def finish_body(response, lines: AsyncIterator[str]) -> None:
    """Read what follows the stream's last event (a chunked body's terminator, as a rule).

    A response closed before its end takes its connection with it; read to the end, the
    keep-alive connection goes back to the pool. A server that keeps talking after its
    last event gets a second, then the connection is dropped as before.
    """
    try:
        async with asyncio.timeout(1.0):
            async for _ in lines:
                pass
    except TRANSPORT_ERRORS:
        response.close()
