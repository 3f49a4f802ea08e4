"""OpenAI chat completions over aiohttp: OpenAI itself and every compatible server
(vLLM, LiteLLM proxy, Gemini's OpenAI endpoint, llama.cpp, LocalAI…).

Streaming is SSE (``data: {chunk}`` … ``data: [DONE]``) with
``stream_options.include_usage`` so the provider reports the stream's tokens; servers
that ignore that option get their usage estimated and flagged.
"""

from __future__ import annotations

import array
import binascii
import json
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .. import exceptions as exc
from ..redaction import scrub
from ..text.fields import refuse_unknown
from ..text.tokens import count_text_tokens
from ..text.unicode import loads
from .base import (
    BaseLLMAdapter,
    ChatRequest,
    Completion,
    Embeddings,
    StreamChunk,
    Usage,
    error_from_transport,
    finish_body,
    is_error,
    max_upstream_bytes,
)
from .http import (
    IDENTITY,
    TRANSPORT_ERRORS,
    CompressedAnswer,
    HTTPResult,
    ResponseTooLarge,
    iter_lines,
    read_error_body,
)
from .sse import iter_sse
from .thinking import thinking_effort
from .tools import ToolCall, ToolCallDelta
from .untrusted import finish_reason, log_bad_count, token_count

#: Options passed on as they are (OpenAI's own names).
SAMPLING = (
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "reasoning_effort",
    "prompt_cache_key",
    "verbosity",
)


def endpoint_base(url: str) -> str:
    """The API base of an OpenAI-protocol URL given either way: the base
    (``https://host/v1``) or the full chat endpoint (``…/v1/chat/completions``)."""
    return url.rstrip("/").removesuffix("/chat/completions").rstrip("/")


class OpenAIAdapter(BaseLLMAdapter):
    kinds = ("openai",)
    default_base_url = "https://api.openai.com/v1"
    requires_api_key = True
    #: OpenAI itself wants max_completion_tokens (o-series refuse max_tokens).
    max_tokens_field = "max_completion_tokens"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = endpoint_base(self.base_url)

    def _request_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", **IDENTITY}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        headers.update(self.headers)
        return headers

    def _payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.as_dict() for m in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        max_tokens = request.max_tokens or self.default_max_tokens
        if max_tokens:
            body[self.max_tokens_field] = max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        self.refuse_options(request, ("top_k", "context_management"))
        if (effort := thinking_effort(request.thinking)) is not None:
            body["reasoning_effort"] = effort
        if request.output_config is not None:  # Anthropic's effort is OpenAI's
            refuse_unknown(request.output_config, {"effort"}, prefix="output_config.")
            if request.output_config.get("effort") is not None:
                body["reasoning_effort"] = request.output_config["effort"]
        for name in SAMPLING:
            if (value := getattr(request, name)) is not None:
                body[name] = value
        if request.tools:
            body["tools"] = [tool.as_openai() for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice.as_openai()
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.response_format is not None:
            body["response_format"] = request.response_format.as_openai()
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        dimensions: int | None = None,
        user: str | None = None,
        encoding_format: str = "float",
    ) -> Embeddings:
        """``POST {base}/embeddings``, always asking base64 (as the openai SDK does):
        a client that wants base64 gets the upstream's text undecoded, one that wants
        floats gets them unpacked from it, far cheaper than parsing thousands of JSON
        numbers. A server that ignores ``encoding_format`` is understood either way."""
        body: dict[str, Any] = {
            "model": self.model,
            "input": list(inputs),
            "encoding_format": "base64",
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        if user is not None:
            body["user"] = user
        response = await self._call("POST", "/embeddings", json=body)
        try:
            data = loads(response.content)
            rows = sorted(data["data"], key=lambda row: row["index"])
            vectors = [row["embedding"] for row in rows]
            if len(vectors) != len(inputs) or not all(isinstance(v, list | str) for v in vectors):
                raise ValueError
            if encoding_format == "float":
                vectors = [unpacked(v) if isinstance(v, str) else v for v in vectors]
            usage = data.get("usage") or {}
            reported = usage.get("prompt_tokens")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._bad("a malformed embeddings answer") from None
        tokens = token_count(reported)
        if tokens is not None:
            counted = Usage(prompt_tokens=tokens)
        else:
            if reported is not None:
                log_bad_count(self.provider_name, "prompt", reported)
            counted = Usage(
                prompt_tokens=sum(count_text_tokens(t, model=self.model) for t in inputs),
                estimated=True,
            )
        return Embeddings(vectors, counted, str(data.get("model") or self.model))

    async def list_models(self) -> list[str]:
        """``GET {base}/models``."""
        response = await self._call("GET", "/models")
        try:
            return [scrub(str(m["id"])) for m in loads(response.content)["data"]]
        except (ValueError, KeyError, TypeError):
            raise self._bad("a malformed model list") from None

    def _bad(self, what: str) -> exc.BadUpstreamResponse:
        return exc.BadUpstreamResponse(
            f"{self.provider_name} sent {what}.", provider=self.provider_name
        )

    async def _complete(self, request: ChatRequest) -> Completion:
        response = await self._call(
            "POST", "/chat/completions", json=self._payload(request, stream=False)
        )
        try:
            data = loads(response.content)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            if not isinstance(text, str):
                raise TypeError
            finish = finish_reason(choice.get("finish_reason"), self.provider_name)
            calls = tuple(
                ToolCall(
                    str(call["id"]),
                    str(call["function"]["name"]),
                    arguments_text(call["function"].get("arguments")) or "{}",
                )
                for call in choice["message"].get("tool_calls") or ()
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise self._bad("a malformed chat completion") from None
        usage = self._usage(
            data.get("usage"), request, text + "".join(c.name + c.arguments for c in calls)
        )
        return Completion(
            text=text,
            usage=usage,
            finish_reason=finish,
            model=str(data.get("model") or self.model),
            id=str(data.get("id") or ""),
            tool_calls=calls,
        )

    async def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        parts: list[str] = []
        calls: dict[Any, int] = {}  # the upstream's tool call index -> ours
        usage: Any = None
        finish: str | None = None
        done = started = False
        limit = max_upstream_bytes()
        try:
            payload = self._payload(request, stream=True)
            async with self._post("/chat/completions", payload) as response:
                if is_error(response.status):
                    body = await read_error_body(response)
                    raise self._error(HTTPResult.of(response, body), body)
                started = True
                lines = iter_lines(response, limit)
                async for event in iter_sse(lines, limit):
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    chunk = self._parse_chunk(event.data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        if not isinstance(choice, dict):
                            raise self._bad("a malformed stream chunk")
                        if choice.get("finish_reason"):
                            finish = finish_reason(choice["finish_reason"], self.provider_name)
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        if not isinstance(text, str):
                            raise self._bad("a malformed stream chunk")
                        if text:
                            parts.append(text)
                            yield StreamChunk(text=text)
                        for piece in delta.get("tool_calls") or ():
                            call = self._tool_call_delta(piece, calls)
                            if call.id is None and not call.arguments:
                                continue  # an empty piece is no content (nor a keep-alive)
                            parts.append((call.name or "") + call.arguments)
                            yield StreamChunk(tool_call=call)
                if done:
                    await finish_body(response, lines)
        except (*TRANSPORT_ERRORS, ResponseTooLarge, CompressedAnswer) as e:
            error = error_from_transport(e, provider=self.provider_name, streaming_started=started)
            raise (self._with_partial(error, request, parts) if started else error) from None
        except exc.BadUpstreamResponse as error:
            raise self._with_partial(error, request, parts) from None
        if not done and finish is None:
            error = exc.StreamInterrupted(
                f"{self.provider_name} ended the stream early.", provider=self.provider_name
            )
            raise self._with_partial(error, request, parts)
        yield StreamChunk(
            finish_reason=finish or "stop",
            usage=self._usage(usage, request, "".join(parts)),
        )

    def _usage(self, data: Any, request: ChatRequest, text: str) -> Usage:
        """The answer's ``usage`` object, checked; estimated when it is missing."""
        if not isinstance(data, dict):
            return self._estimate_usage(request, text)
        details = data.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        output = data.get("completion_tokens_details")
        reasoning = output.get("reasoning_tokens") if isinstance(output, dict) else None
        return self._reported_usage(
            data.get("prompt_tokens"),
            data.get("completion_tokens"),
            request,
            text,
            cache_read=cached or None,  # OpenAI's cached tokens are reads; writes are free
            reasoning=reasoning or None,
        )

    def _tool_call_delta(self, piece: Any, calls: dict[Any, int]) -> ToolCallDelta:
        """A piece of a streamed call, its ``index`` one of ours (0, 1, … in the order
        the calls began: an upstream's may be anything). Only a call's first piece
        names it; one that begins unnamed gets an id of ours."""
        try:
            function = piece.get("function") or {}
            key = piece["index"]
            hash(key)
            arguments = arguments_text(function.get("arguments"))
            name = function.get("name")
            if key in calls:
                return ToolCallDelta(calls[key], arguments)
            calls[key] = len(calls)
            return ToolCallDelta(
                calls[key],
                arguments,
                str(piece.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                None if name is None else str(name),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._bad("a malformed tool call in a stream chunk") from None

    def _parse_chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = loads(data)
        except ValueError:
            raise self._bad("a malformed stream chunk") from None
        if not isinstance(chunk, dict):
            raise self._bad("a malformed stream chunk")
        if chunk.get("error"):
            err = chunk["error"]
            message = err.get("message", "") if isinstance(err, dict) else str(err)
            raise exc.UpstreamServerError(
                f"{self.provider_name} failed mid-stream: {self._redact(str(message))[:300]}",
                provider=self.provider_name,
            )
        return chunk

    def _with_partial(
        self, error: exc.UpstreamError, request: ChatRequest, parts: list[str]
    ) -> exc.UpstreamError:
        error.partial_text = "".join(parts)
        error.partial_usage = self._estimate_usage(request, error.partial_text)
        return error


class OpenAICompatibleAdapter(OpenAIAdapter):
    """vLLM, LiteLLM proxy, Gemini's OpenAI endpoint…: key optional, classic max_tokens."""

    kinds = ("openai_compatible",)
    default_base_url = ""
    requires_api_key = False
    max_tokens_field = "max_tokens"


def unpacked(text: str) -> list[float]:
    """OpenAI's base64 vector (little-endian float32s) as floats; ``ValueError`` if it
    is not one."""
    vector = array.array("f", binascii.a2b_base64(text, strict_mode=True))
    if sys.byteorder == "big":
        vector.byteswap()
    return vector.tolist()


def arguments_text(value: Any) -> str:
    """A tool call's ``arguments`` as the JSON text OpenAI's shape carries (a server
    that sends an object gets it written as JSON, not as Python's repr)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
