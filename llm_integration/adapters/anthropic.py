"""Anthropic Messages through the official ``anthropic`` SDK.

The system prompt goes top level, ``max_tokens`` is always sent (the API requires it),
images become image blocks (base64 or URL source), OpenAI-shaped tool calls and results
become ``tool_use``/``tool_result`` blocks (and back: ``input_json_delta`` pieces become
tool-call deltas), ``response_format`` is a forced tool whose input is the answer, and
the SDK's own retries are off: the service layer retries. Streaming reads the raw
events: ``message_start`` carries the input tokens, ``message_delta`` the cumulative
output tokens (never added to those of ``message_start``; a stream without one has its
output estimated).

The SDK's HTTP client gets a transport of ours (``BoundedTransport``, httpx's public
transport API) that holds every answer to ``MAX_UPSTREAM_BYTES``, every stream event
too; answers are asked uncompressed, so what is counted is what is kept.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2  # the SDK's HTTP client (anthropic 2.x runs on this fork of httpx)

from .. import exceptions as exc
from ..redaction import scrub
from ..text.unicode import clean
from .base import (
    BaseLLMAdapter,
    ChatRequest,
    Completion,
    Message,
    StreamChunk,
    error_for_status,
    error_from_transport,
    max_upstream_bytes,
    parse_retry_after,
)
from .caching import mark_of, with_mark
from .http import (
    CONNECT_TIMEOUTS,
    IDENTITY,
    CompressedAnswer,
    ResponseTooLarge,
    env_proxy,
    refuse_compressed,
)
from .images import ImagePart
from .thinking import MIN_BUDGET, ThinkingBlock, ThinkingDelta
from .tools import ToolCall, ToolCallDelta
from .untrusted import MAX_TOKEN_COUNT, finish_reason, log_bad_count, token_count

TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.HTTPError,)
TIMEOUTS: tuple[type[Exception], ...] = (httpx2.TimeoutException,)

DEFAULT_MAX_TOKENS = 1024


class AnthropicAdapter(BaseLLMAdapter):
    kinds = ("anthropic",)
    default_base_url = "https://api.anthropic.com"
    requires_api_key = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The SDK appends /v1/messages itself.
        self.base_url = self.base_url.removesuffix("/v1")

    def _sdk(self) -> anthropic.AsyncAnthropic:
        return self._client_for_loop(self._new_sdk)

    def _new_sdk(self) -> anthropic.AsyncAnthropic:
        proxy = env_proxy(self.base_url)  # HTTP(S)_PROXY and NO_PROXY, as the others
        transport = httpx2.AsyncHTTPTransport(
            limits=anthropic.DEFAULT_CONNECTION_LIMITS,
            proxy=httpx_proxy(proxy) if proxy.get("proxy") else None,
            socket_options=KEEPALIVE,
        )
        return anthropic.AsyncAnthropic(
            api_key=self._api_key or "",
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            default_headers={**IDENTITY, **self.headers},
            http_client=anthropic.DefaultAsyncHttpxClient(
                transport=BoundedTransport(transport),
                timeout=self.timeout,
                # A redirect would carry the prompt and the key elsewhere: an error.
                follow_redirects=False,
            ),
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.default_max_tokens or DEFAULT_MAX_TOKENS,
            "messages": anthropic_messages(request.conversation),
        }
        params.update(tool_params(request))
        if system := system_param(request):
            params["system"] = system
        sampling: dict[str, Any] = {}
        if request.temperature is not None:
            if request.temperature > 1.0:
                raise exc.InvalidRequest(
                    f"{self.provider_name} (anthropic) takes a temperature from 0 to 1.",
                    param="temperature",
                )
            sampling["temperature"] = request.temperature
        if request.top_p is not None:
            sampling["top_p"] = request.top_p
        if request.top_k is not None:
            sampling["top_k"] = request.top_k
        if request.context_management is not None:  # not among the SDK's arguments
            sampling["context_management"] = dict(request.context_management)
        if sampling:
            # Recent SDKs dropped the typed sampling arguments; the API still takes them
            # for models that support sampling, so they travel in the body.
            params["extra_body"] = sampling
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        self.refuse_options(request, ("seed", "presence_penalty", "frequency_penalty", "verbosity"))
        if request.user is not None:
            params["metadata"] = {"user_id": request.user}
        if request.thinking is not None:
            params["thinking"] = dict(request.thinking)
        elif request.reasoning_effort is not None:
            params["thinking"] = effort_thinking(request.reasoning_effort, params["max_tokens"])
        if request.betas:
            params["extra_headers"] = {"anthropic-beta": ",".join(request.betas)}
        if request.output_config is not None:
            params["output_config"] = dict(request.output_config)
        return params

    def _map_error(self, e: Exception, *, started: bool = False) -> exc.UpstreamError:
        name, provider = type(e).__name__, self.provider_name
        if isinstance(e.__cause__, OURS):
            e = e.__cause__
        if isinstance(e, OURS):
            return error_from_transport(e, provider=provider)
        if isinstance(e, CONNECT_TIMEOUTS) or isinstance(e.__cause__, CONNECT_TIMEOUTS):
            return exc.UpstreamConnectionError(
                f"Could not connect to {provider} in time ({name}).", provider=provider
            )
        if isinstance(e, (anthropic.APITimeoutError, *TIMEOUTS)):
            return exc.UpstreamTimeout(
                f"{provider} did not answer in time ({name}).", provider=provider
            )
        if isinstance(e, anthropic.APIStatusError):
            message = ""
            body = e.body
            if isinstance(body, dict):
                err = body.get("error")
                message = str(err.get("message", "")) if isinstance(err, dict) else ""
            message = self._redact(message)[:500] or "no message"  # _redact cuts first
            status = e.status_code
            if status == 200:  # an `error` event inside a stream
                err = body.get("error") if isinstance(body, dict) else None
                kind = err.get("type", "") if isinstance(err, dict) else ""
                status = 529 if kind == "overloaded_error" else 500
            return error_for_status(
                status,
                message,
                provider=provider,
                retry_after=parse_retry_after(e.response.headers),
            )
        if started:
            return exc.StreamInterrupted(
                f"The connection to {provider} was lost mid-stream ({name}).", provider=provider
            )
        if isinstance(e, anthropic.APIResponseValidationError):
            return exc.BadUpstreamResponse(
                f"{provider} sent a malformed answer.", provider=provider
            )
        if isinstance(e, (anthropic.APIConnectionError, *TRANSPORT_ERRORS)):
            return exc.UpstreamConnectionError(
                f"Could not reach {provider} ({name}).", provider=provider
            )
        return exc.BadUpstreamResponse(
            f"{provider} sent a malformed answer ({name}).", provider=provider
        )

    async def list_models(self) -> list[str]:
        """The Models API (``GET /v1/models``)."""
        try:
            page = await self._sdk().models.list(limit=1000)
            return [scrub(clean(str(m.id))) for m in page.data]
        except (anthropic.AnthropicError, *TRANSPORT_ERRORS, *OURS) as e:
            raise self._map_error(e) from None
        except (AttributeError, TypeError, ValueError):
            raise exc.BadUpstreamResponse(
                f"{self.provider_name} sent a malformed model list.", provider=self.provider_name
            ) from None

    async def _complete(self, request: ChatRequest) -> Completion:
        try:
            message = await self._sdk().messages.create(**self._params(request))
            text = clean(
                "".join(
                    block.text for block in message.content if getattr(block, "type", "") == "text"
                )
            )
            calls = tuple(
                ToolCall(
                    clean(str(block.id)),
                    clean(str(block.name)),
                    clean(json.dumps(block.input or {}, ensure_ascii=False)),
                )
                for block in message.content
                if getattr(block, "type", "") == "tool_use"
            )
            thinking = tuple(
                ThinkingBlock(clean(str(block.thinking)), str(block.signature))
                if block.type == "thinking"
                else ThinkingBlock(redacted=str(block.data))
                for block in message.content
                if getattr(block, "type", "") in ("thinking", "redacted_thinking")
            )
            stop_reason = message.stop_reason or ""
            if request.response_format is not None:
                # The forced tool's input is the answer.
                text, calls = "".join(call.arguments for call in calls) or text, ()
                stop_reason = "end_turn" if stop_reason == "tool_use" else stop_reason
            report = PromptReport()
            report.update(message.usage)
            usage = self._reported_usage(
                report.prompt_tokens(self.provider_name),
                getattr(message.usage, "output_tokens", None),
                request,
                text
                + "".join(b.thinking for b in thinking)
                + "".join(c.name + c.arguments for c in calls),
                **report.cache_counts(),
            )
            model, message_id = clean(str(message.model or self.model)), clean(str(message.id))
        except (anthropic.AnthropicError, *TRANSPORT_ERRORS, *OURS) as e:
            raise self._map_error(e) from None
        except (AttributeError, TypeError, ValueError):
            raise exc.BadUpstreamResponse(
                f"{self.provider_name} sent a malformed answer.", provider=self.provider_name
            ) from None
        return Completion(
            text=text,
            usage=usage,
            finish_reason=finish_reason(stop_reason, self.provider_name),
            model=model,
            id=message_id,
            tool_calls=calls,
            thinking=thinking,
        )

    async def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        parts: list[str] = []
        report = PromptReport()  # the input counts reported so far
        output_tokens: Any = None
        stop_reason: str | None = None
        finished = started = False
        formatted = request.response_format is not None
        calls: dict[int, int] = {}  # content block index -> tool call index
        thoughts: dict[int, int] = {}  # content block index -> reasoning block index
        try:
            stream = await self._sdk().messages.create(**self._params(request), stream=True)
            started = True
            async with stream:
                async for event in stream:
                    kind = event.type
                    if kind == "message_start":
                        report.update(event.message.usage)
                    elif kind == "content_block_start":
                        block = event.content_block
                        block_type = getattr(block, "type", "")
                        if block_type in ("thinking", "redacted_thinking"):
                            thoughts[event.index] = len(thoughts)
                            if block_type == "redacted_thinking":
                                piece = ThinkingDelta(thoughts[event.index], redacted=block.data)
                                yield StreamChunk(thinking=piece)
                        elif block_type == "tool_use" and not formatted:
                            if not getattr(block, "name", None):
                                continue  # a call without a name is none (nor content)
                            calls[event.index] = len(calls)
                            name = clean(str(block.name))
                            parts.append(name)
                            yield StreamChunk(
                                tool_call=ToolCallDelta(
                                    calls[event.index], "", clean(str(block.id)), name
                                )
                            )
                    elif kind == "content_block_delta":
                        delta_type = getattr(event.delta, "type", "")
                        if delta_type == "thinking_delta" and event.index in thoughts:
                            text = clean(event.delta.thinking)
                            parts.append(text)
                            piece = ThinkingDelta(thoughts[event.index], thinking=text)
                            yield StreamChunk(thinking=piece)
                        elif delta_type == "signature_delta" and event.index in thoughts:
                            piece = ThinkingDelta(
                                thoughts[event.index], signature=str(event.delta.signature)
                            )
                            yield StreamChunk(thinking=piece)
                        elif delta_type == "text_delta" and event.delta.text:
                            text = clean(event.delta.text)
                            parts.append(text)
                            yield StreamChunk(text=text)
                        elif delta_type == "input_json_delta" and event.delta.partial_json:
                            piece = clean(event.delta.partial_json)
                            parts.append(piece)
                            if formatted:  # the forced tool's input is the answer
                                yield StreamChunk(text=piece)
                            elif event.index in calls:
                                yield StreamChunk(
                                    tool_call=ToolCallDelta(calls[event.index], piece)
                                )
                    elif kind == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        if event.usage and event.usage.output_tokens is not None:
                            output_tokens = event.usage.output_tokens  # cumulative
                        report.update(event.usage)  # cumulative, where it says anything
                    elif kind == "message_stop":
                        finished = True
        except (anthropic.AnthropicError, *TRANSPORT_ERRORS, *OURS) as e:
            error = self._map_error(e, started=started)
            raise self._partial(error, request, parts, report) from None
        except (AttributeError, TypeError, ValueError):
            error = exc.BadUpstreamResponse(
                f"{self.provider_name} sent a malformed stream event.", provider=self.provider_name
            )
            raise self._partial(error, request, parts, report) from None
        if not finished:
            error = exc.StreamInterrupted(
                f"{self.provider_name} ended the stream early.", provider=self.provider_name
            )
            raise self._partial(error, request, parts, report)
        usage = self._reported_usage(
            report.prompt_tokens(self.provider_name),
            output_tokens,
            request,
            "".join(parts),
            **report.cache_counts(),
        )
        if formatted and stop_reason == "tool_use":
            stop_reason = "end_turn"
        finish = finish_reason(stop_reason, self.provider_name)
        yield StreamChunk(finish_reason=finish, usage=usage)

    def _partial(
        self,
        error: exc.UpstreamError,
        request: ChatRequest,
        parts: list[str],
        report: PromptReport | None = None,
    ) -> exc.UpstreamError:
        """``error`` with what the stream delivered before it, and its usage: the
        output estimated, the input as reported (with its cache reads and writes)."""
        if parts:
            error.partial_text = "".join(parts)
            if report is None:
                error.partial_usage = self._estimate_usage(request, error.partial_text)
            else:
                error.partial_usage = self._reported_usage(
                    report.prompt_tokens(self.provider_name),
                    None,
                    request,
                    error.partial_text,
                    **report.cache_counts(),
                )
        return error


def anthropic_messages(conversation: list[Message]) -> list[dict[str, Any]]:
    """OpenAI-shaped turns as Anthropic's: an assistant's tool calls become ``tool_use``
    blocks, tool results ``tool_result`` blocks of a user turn; consecutive turns of one
    role merge (the API wants user and assistant to alternate). Prompt caching marks go
    on the blocks they were on."""
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(conversation):
        role = "user" if m.role == "tool" else m.role
        if m.role == "tool":
            marks = [mark for p in m.parts if (mark := mark_of(p)) is not None]
            result = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            blocks = [with_mark(result, marks[-1] if marks else None)]
        else:
            blocks = [block.as_anthropic() for block in m.thinking]
            blocks += content_blocks(m, f"messages[{i}].content")
            for call in m.tool_calls:
                use = {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": call.arguments_object(f"messages[{i}].tool_calls"),
                }
                blocks.append(with_mark(use, call.cache_control))
        if turns and turns[-1]["role"] == role:
            previous = turns[-1]["content"]
            if isinstance(previous, str):
                previous = turns[-1]["content"] = [{"type": "text", "text": previous}]
            previous.extend(blocks)
        elif not m.tool_calls and m.role != "tool" and not m.parts and not m.thinking:
            turns.append({"role": role, "content": m.content})
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def content_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    """A message's text and images as Anthropic's blocks, in order, with their marks."""
    if not message.parts:
        return [{"type": "text", "text": message.content}] if message.content else []
    return [
        part.as_anthropic(where)
        if isinstance(part, ImagePart)
        else with_mark({"type": "text", "text": str(part)}, mark_of(part))
        for part in message.parts
    ]


def system_param(request: ChatRequest) -> str | list[dict[str, Any]] | None:
    """The system prompt: text, or text blocks when one of them is marked for caching."""
    systems = [m for m in request.messages if m.role == "system"]
    if not any(mark_of(part) is not None for m in systems for part in m.parts):
        return request.system_prompt
    return [block for i, m in enumerate(systems) for block in content_blocks(m, f"system[{i}]")]


def tool_params(request: ChatRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` in Anthropic's shape; ``response_format`` as a
    forced tool whose input is the answer (Anthropic's way to structured output)."""
    params: dict[str, Any] = {}
    fmt = request.response_format
    if fmt is not None:
        if request.tools:
            raise exc.UnsupportedParameter(
                "An Anthropic upstream cannot take response_format together with tools.",
                param="response_format",
            )
        params["tools"] = [
            {
                "name": fmt.name,
                "description": fmt.description or "Answer with this tool's input.",
                "input_schema": fmt.object_schema,
            }
        ]
        params["tool_choice"] = {"type": "tool", "name": fmt.name}
        return params
    if request.tools:
        params["tools"] = [
            with_mark(
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                if t.description
                else {"name": t.name, "input_schema": t.input_schema},
                t.cache_control,
            )
            for t in request.tools
        ]
    choice = request.tool_choice
    mode = choice.mode if choice is not None else ("auto" if request.tools else None)
    if mode is not None:
        spec: dict[str, Any] = {"type": TOOL_CHOICES[mode]}
        if mode == "tool":
            spec["name"] = choice.name
        if request.parallel_tool_calls is False and mode != "none":
            spec["disable_parallel_tool_use"] = True
        params["tool_choice"] = spec
    return params


#: The gateway's tool choice modes as Anthropic's ``tool_choice.type`` (the entrance
#: that speaks Anthropic reads this backwards).
TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}
#: The gateway's finish reasons as Anthropic's ``stop_reason`` (its own words for them
#: come back through ``untrusted.FINISH_SYNONYMS``, shared with other upstreams).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


#: OpenAI's ``reasoning_effort`` as a thinking budget (LiteLLM's figures, and beyond).
EFFORT_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}


def effort_thinking(effort: str, max_tokens: int) -> dict[str, Any]:
    """``reasoning_effort`` as Anthropic's ``thinking``: a budget that leaves room for
    the answer under ``max_tokens`` (Anthropic wants it below), or a 400 when even the
    smallest budget does not fit."""
    if effort == "none":
        return {"type": "disabled"}
    budget = min(EFFORT_BUDGETS.get(effort, 2048), max_tokens - 1)
    if budget < MIN_BUDGET:
        raise exc.InvalidRequest(
            f"reasoning_effort {effort!r} needs max_tokens above {MIN_BUDGET} on an Anthropic "
            "upstream (thinking takes at least that many).",
            param="reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": budget}


@dataclass(slots=True)
class PromptReport:
    """Anthropic's input counts as reported so far: a stream's ``message_start`` gives
    them all, and a later ``message_delta`` overrides only those it carries (its usage
    has no ``cache_creation`` breakdown, for one)."""

    input_tokens: Any = None
    cache_creation_input_tokens: Any = None
    cache_read_input_tokens: Any = None
    ephemeral_1h_input_tokens: Any = None

    def update(self, usage: Any) -> None:
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            if (value := getattr(usage, name, None)) is not None:
                setattr(self, name, value)
        creation = getattr(usage, "cache_creation", None)
        if (value := getattr(creation, "ephemeral_1h_input_tokens", None)) is not None:
            self.ephemeral_1h_input_tokens = value

    def prompt_tokens(self, provider: str) -> int | None:
        """Input, cache writes and cache reads together (None: not a count)."""
        return _input_tokens(self, provider)

    def cache_counts(self) -> dict[str, Any]:
        """The cache counts as ``_reported_usage`` takes them."""
        return {
            "cache_read": self.cache_read_input_tokens,
            "cache_write": self.cache_creation_input_tokens,
            "cache_write_1h": self.ephemeral_1h_input_tokens,
        }


def _input_tokens(usage: Any, provider: str) -> int | None:
    """The prompt's tokens: input, cache writes and cache reads together (None if the
    input count is missing or is not a count)."""
    total = 0
    for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        raw = getattr(usage, name, None)
        if raw is None and name != "input_tokens":
            continue
        value = token_count(raw)
        if value is None:
            if raw is not None:
                log_bad_count(provider, name, raw)
            return None
        total += value
    return total if total <= MAX_TOKEN_COUNT else None


class BoundedTransport(httpx2.AsyncBaseTransport):
    """httpx's transport with every answer held to ``MAX_UPSTREAM_BYTES``: a body in all,
    a server-sent event (the bytes since the last blank line) in a stream."""

    def __init__(self, transport: httpx2.AsyncBaseTransport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.transport.handle_async_request(request)
        limit = max_upstream_bytes()
        try:
            refuse_compressed(response.headers)
        except CompressedAnswer:
            await response.aclose()
            raise
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await response.aclose()
            raise ResponseTooLarge(limit)
        events = response.headers.get("content-type", "").startswith("text/event-stream")
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=BoundedStream(response, limit, events=events),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.transport.aclose()


class BoundedStream(httpx2.AsyncByteStream):
    """The raw bytes of ``response``; ``ResponseTooLarge`` past ``limit`` in all or, for
    an event stream, since the last blank line."""

    def __init__(self, response: httpx2.Response, limit: int, *, events: bool) -> None:
        self.response, self.limit, self.events = response, limit, events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size, tail = 0, b""
        async for chunk in self.response.aiter_raw():
            if self.events:
                seen = tail + chunk
                end = max(seen.rfind(b"\n\n"), seen.rfind(b"\r\r"), seen.rfind(b"\n\r\n"))
                size = len(seen) - end if end >= 0 else size + len(chunk)
                tail = seen[-3:]
            else:
                size += len(chunk)
            if size > self.limit:
                raise ResponseTooLarge(self.limit)
            yield chunk

    async def aclose(self) -> None:
        await self.response.aclose()


def httpx_proxy(proxy: dict[str, Any]) -> httpx2.Proxy:
    """``env_proxy``'s aiohttp arguments as httpx's proxy."""
    auth = proxy.get("proxy_auth")
    return httpx2.Proxy(
        str(proxy["proxy"]), auth=(auth.login, auth.password) if auth is not None else None
    )


#: TCP keep-alive probes on idle connections (what the SDK's own client sets): a long
#: answer behind a NAT or load balancer is not dropped while the model thinks.
KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, True),
    *(
        (socket.IPPROTO_TCP, getattr(socket, name), value)
        for name, value in (("TCP_KEEPINTVL", 60), ("TCP_KEEPCNT", 5), ("TCP_KEEPIDLE", 60))
        if hasattr(socket, name)
    ),
]

#: Our own failures raised from inside the SDK's reads.
OURS: tuple[type[Exception], ...] = (ResponseTooLarge, CompressedAnswer)
