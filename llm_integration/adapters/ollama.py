"""Ollama's native chat API over aiohttp: newline-delimited JSON streaming.

The last line (``done: true``) carries ``prompt_eval_count`` and ``eval_count``. Ollama
counts only the prompt tokens its cache did not hold (none, or the field left out, when
it held them all): a count under half the prompt's is taken for that, and the prompt
side is estimated and flagged. Tools go as OpenAI-shaped ``tools``; Ollama
answers with whole ``message.tool_calls`` (arguments as objects), which become OpenAI's
shape; ``response_format`` becomes ``format`` (``"json"`` or the schema); images go as
base64 ``images``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .. import exceptions as exc
from ..redaction import scrub
from ..text.tokens import (
    ECONOMICAL_MODEL,
    TOKENS_PER_IMAGE,
    count_message_tokens,
    count_text_tokens,
)
from ..text.unicode import loads
from .base import (
    BaseLLMAdapter,
    ChatRequest,
    Completion,
    Embeddings,
    Message,
    StreamChunk,
    Usage,
    error_from_transport,
    finish_body,
    is_error,
    max_upstream_bytes,
)
from .http import (
    TRANSPORT_ERRORS,
    CompressedAnswer,
    HTTPResult,
    ResponseTooLarge,
    iter_lines,
    read_error_body,
)
from .images import ImagePart
from .tools import ToolCall, ToolCallDelta
from .untrusted import finish_reason, log_bad_count, token_count


class OllamaAdapter(BaseLLMAdapter):
    kinds = ("ollama",)
    default_base_url = "http://127.0.0.1:11434"
    requires_api_key = False
    options = ("keep_alive",)

    def __init__(self, *, keep_alive: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keep_alive = keep_alive

    def _request_headers(self) -> dict[str, str]:
        headers = super()._request_headers()
        if self._api_key:  # Ollama behind an authenticating proxy
            headers.setdefault("Authorization", f"Bearer {self._api_key}")
        return headers

    def _payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        max_tokens = request.max_tokens or self.default_max_tokens
        if max_tokens:
            options["num_predict"] = max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        self.refuse_options(
            request,
            ("user", "reasoning_effort", "verbosity", "context_management", "output_config"),
        )
        for name in ("top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
            if (value := getattr(request, name)) is not None:
                options[name] = value
        body: dict[str, Any] = {
            "model": self.model,
            "messages": ollama_messages(request.messages),
            "stream": stream,
        }
        kind = (request.thinking or {}).get("type")
        if kind in ("enabled", "disabled"):  # Ollama's switch for thinking models
            body["think"] = kind == "enabled"
        choice = request.tool_choice.mode if request.tool_choice else "auto"
        if choice in ("required", "tool"):
            raise exc.UnsupportedParameter(
                f"{self.provider_name} (ollama) cannot be made to call a tool; "
                "tool_choice may be auto or none.",
                param="tool_choice",
            )
        if request.parallel_tool_calls is False and not request.parallel_tool_calls_hint:
            raise exc.UnsupportedParameter(
                f"{self.provider_name} (ollama) cannot limit itself to one tool call.",
                param="parallel_tool_calls",
            )
        if request.tools and choice != "none":
            body["tools"] = [tool.as_openai() for tool in request.tools]
        fmt = request.response_format
        if fmt is not None:
            body["format"] = "json" if fmt.type == "json_object" else fmt.object_schema
        if options:
            body["options"] = options
        if self.keep_alive:
            body["keep_alive"] = self.keep_alive
        return body

    async def embed(
        self,
        inputs: Sequence[str],
        *,
        dimensions: int | None = None,
        user: str | None = None,
        encoding_format: str = "float",
    ) -> Embeddings:
        """``POST /api/embed``."""
        if user is not None:
            raise exc.UnsupportedParameter(
                f"{self.provider_name} (ollama) does not take 'user'.", param="user"
            )
        body: dict[str, Any] = {"model": self.model, "input": list(inputs)}
        if dimensions is not None:
            body["dimensions"] = dimensions
        if self.keep_alive:
            body["keep_alive"] = self.keep_alive
        response = await self._call("POST", "/api/embed", json=body)
        try:
            data = loads(response.content)
            vectors = [[float(x) for x in row] for row in data["embeddings"]]
            if len(vectors) != len(inputs):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise self._bad("a malformed embeddings answer") from None
        reported = data.get("prompt_eval_count")
        tokens = token_count(reported)
        if tokens is not None:
            usage = Usage(prompt_tokens=tokens)
        else:
            if reported is not None:
                log_bad_count(self.provider_name, "prompt", reported)
            counted = sum(count_text_tokens(t, model=self.model) for t in inputs)
            usage = Usage(prompt_tokens=counted, estimated=True)
        return Embeddings(vectors, usage, str(data.get("model") or self.model))

    async def list_models(self) -> list[str]:
        """The pulled models (``GET /api/tags``)."""
        response = await self._call("GET", "/api/tags")
        try:
            return [scrub(str(m["name"])) for m in loads(response.content)["models"]]
        except (ValueError, KeyError, TypeError):
            raise self._bad("a malformed model list") from None

    def serves(self, model: str, served: set[str]) -> bool:
        return model in served or f"{model}:latest" in served

    def _bad(self, what: str) -> exc.BadUpstreamResponse:
        return exc.BadUpstreamResponse(
            f"{self.provider_name} sent {what}.", provider=self.provider_name
        )

    def _usage(self, final: dict[str, Any], request: ChatRequest, text: str) -> Usage:
        prompt = final.get("prompt_eval_count")
        evaluated = token_count(prompt)
        if evaluated is not None:
            counted = count_message_tokens(
                request.messages, model=ECONOMICAL_MODEL, tools=request.tools
            ) - TOKENS_PER_IMAGE * sum(len(m.images) for m in request.messages)
            if evaluated * 2 < counted:
                prompt = None  # only what its cache did not hold was evaluated: estimated
        return self._reported_usage(prompt, final.get("eval_count"), request, text)

    async def _complete(self, request: ChatRequest) -> Completion:
        response = await self._call("POST", "/api/chat", json=self._payload(request, stream=False))
        try:
            data = loads(response.content)
            text = data["message"]["content"] or ""
            if not isinstance(text, str):
                raise TypeError
            calls = self._tool_calls(data["message"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._bad("a malformed chat answer") from None
        return Completion(
            text=text,
            usage=self._usage(data, request, text + "".join(c.name + c.arguments for c in calls)),
            finish_reason="tool_calls"
            if calls
            else finish_reason(data.get("done_reason"), self.provider_name),
            model=str(data.get("model") or self.model),
            tool_calls=calls,
        )

    @staticmethod
    def _tool_calls(message: dict[str, Any]) -> tuple[ToolCall, ...]:
        """Ollama's ``message.tool_calls`` (arguments as an object, ids only in recent
        versions) in OpenAI's shape; calls without an id get one."""
        return tuple(
            ToolCall(
                str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                str(call["function"]["name"]),
                json.dumps(call["function"].get("arguments") or {}, ensure_ascii=False),
            )
            for call in message.get("tool_calls") or ()
        )

    async def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        parts: list[str] = []
        final: dict[str, Any] | None = None
        started = False
        called = 0
        try:
            async with self._post("/api/chat", self._payload(request, stream=True)) as response:
                if is_error(response.status):
                    body = await read_error_body(response)
                    raise self._error(HTTPResult.of(response, body), body)
                started = True
                lines = iter_lines(response, max_upstream_bytes())
                async for line in lines:
                    if not line.strip():
                        continue
                    try:
                        data = loads(line)
                        if not isinstance(data, dict):
                            raise ValueError
                    except ValueError:
                        raise self._bad("a malformed stream line") from None
                    if data.get("error"):
                        raise exc.UpstreamServerError(
                            f"{self.provider_name} failed mid-stream: "
                            f"{self._redact(str(data['error']))[:300]}",
                            provider=self.provider_name,
                        )
                    message = data.get("message") or {}
                    text = message.get("content") or "" if isinstance(message, dict) else None
                    if not isinstance(text, str):
                        raise self._bad("a malformed stream line")
                    if text:
                        parts.append(text)
                        yield StreamChunk(text=text)
                    try:
                        calls = self._tool_calls(message)
                    except (KeyError, TypeError, AttributeError):
                        raise self._bad("a malformed tool call") from None
                    for call in calls:  # Ollama sends each call whole
                        parts.append(call.name + call.arguments)
                        yield StreamChunk(
                            tool_call=ToolCallDelta(called, call.arguments, call.id, call.name)
                        )
                        called += 1
                    if data.get("done"):
                        final = data
                        break
                if final is not None:
                    await finish_body(response, lines)
        except (*TRANSPORT_ERRORS, ResponseTooLarge, CompressedAnswer) as e:
            error = error_from_transport(e, provider=self.provider_name, streaming_started=started)
            raise self._partial(error, request, parts) from None
        except exc.UpstreamError as error:
            raise self._partial(error, request, parts) from None
        if final is None:
            raise self._partial(
                exc.StreamInterrupted(
                    f"{self.provider_name} ended the stream early.", provider=self.provider_name
                ),
                request,
                parts,
            )
        text = "".join(parts)
        yield StreamChunk(
            finish_reason="tool_calls"
            if called
            else finish_reason(final.get("done_reason"), self.provider_name),
            usage=self._usage(final, request, text),
        )

    def _partial(
        self, error: exc.UpstreamError, request: ChatRequest, parts: list[str]
    ) -> exc.UpstreamError:
        if parts:
            error.partial_text = "".join(parts)
            error.partial_usage = self._estimate_usage(request, error.partial_text)
        return error


def ollama_image(image: ImagePart, where: str) -> str:
    """Ollama takes images as base64 bytes only (the gateway fetches no URL)."""
    image.refuse_detail(where, "ollama")
    if not image.inline:
        raise exc.UnsupportedContent(
            f"{where}: an Ollama upstream takes images as data URLs only, not links.",
            param=where,
        )
    return image.data


def ollama_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """OpenAI-shaped turns as Ollama's: tool call arguments as objects, a tool result
    named by its tool (Ollama's ``tool_name``)."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        turn: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.images:
            turn["images"] = [ollama_image(image, f"messages[{i}].content") for image in m.images]
        if m.tool_calls:
            turn["tool_calls"] = [
                {
                    "function": {
                        "name": call.name,
                        "arguments": call.arguments_object(f"messages[{i}].tool_calls"),
                    }
                }
                for call in m.tool_calls
            ]
            names.update((call.id, call.name) for call in m.tool_calls)
        if m.role == "tool" and m.tool_call_id in names:
            turn["tool_name"] = names[m.tool_call_id]
        out.append(turn)
    return out
