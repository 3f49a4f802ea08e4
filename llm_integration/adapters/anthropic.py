"""Anthropic Messages through the official ``anthropic`` SDK.

The system prompt goes top level, ``max_tokens`` is always sent (the API requires it),
images become image blocks (base64 or URL source), OpenAI-shaped tool calls and results
become ``tool_use``/``tool_result`` blocks (and back: ``input_json_delta`` pieces become
tool-call deltas), ``response_format`` is a forced tool whose input is the answer, and
the SDK's own retries are off: the service layer retries. Streaming reads the raw
events: ``message_start`` carries the input tokens, ``message_delta`` the cumulative
output tokens (never added to those of ``message_start``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2  # the SDK's HTTP client (anthropic 2.x runs on this fork of httpx)

from .. import exceptions as exc
from .base import (
    BaseLLMAdapter,
    ChatRequest,
    Completion,
    Message,
    StreamChunk,
    Usage,
    error_for_status,
    parse_retry_after,
)
from .images import ImagePart
from .tools import ToolCall, ToolCallDelta

TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.HTTPError,)
TIMEOUTS: tuple[type[Exception], ...] = (httpx2.TimeoutException,)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
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
        return self._client_for_loop(
            lambda: anthropic.AsyncAnthropic(
                api_key=self._api_key or "",
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=0,
                default_headers=self.headers or None,
            )
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.default_max_tokens or DEFAULT_MAX_TOKENS,
            "messages": anthropic_messages(request.conversation),
        }
        params.update(tool_params(request))
        if request.system_prompt:
            params["system"] = request.system_prompt
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
        if sampling:
            # Recent SDKs dropped the typed sampling arguments; the API still takes them
            # for models that support sampling, so they travel in the body.
            params["extra_body"] = sampling
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        self.refuse_options(request, ("seed", "presence_penalty", "frequency_penalty"))
        if request.user is not None:
            params["metadata"] = {"user_id": request.user}
        return params

    def _map_error(self, e: Exception, *, started: bool = False) -> exc.UpstreamError:
        name, provider = type(e).__name__, self.provider_name
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
            message = self._redact(message)[:500] or "no message"
            status = e.status_code
            if status == 200:  # an `error` event inside a stream
                kind = body.get("error", {}).get("type", "") if isinstance(body, dict) else ""
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
            return [m.id for m in page.data]
        except (anthropic.AnthropicError, *TRANSPORT_ERRORS) as e:
            raise self._map_error(e) from None

    async def _complete(self, request: ChatRequest) -> Completion:
        try:
            message = await self._sdk().messages.create(**self._params(request))
            text = "".join(
                block.text for block in message.content if getattr(block, "type", "") == "text"
            )
            calls = tuple(
                ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False))
                for block in message.content
                if getattr(block, "type", "") == "tool_use"
            )
            stop_reason = message.stop_reason or ""
            if request.response_format is not None:
                # The forced tool's input is the answer.
                text, calls = "".join(call.arguments for call in calls) or text, ()
                stop_reason = "end_turn" if stop_reason == "tool_use" else stop_reason
            usage = _usage(message.usage)
        except (anthropic.AnthropicError, *TRANSPORT_ERRORS) as e:
            raise self._map_error(e) from None
        except (AttributeError, TypeError, ValueError):
            raise exc.BadUpstreamResponse(
                f"{self.provider_name} sent a malformed answer.", provider=self.provider_name
            ) from None
        return Completion(
            text=text,
            usage=usage or self._estimate_usage(request, text),
            finish_reason=FINISH_REASONS.get(stop_reason, "stop"),
            model=message.model or self.model,
            id=message.id,
            tool_calls=calls,
        )

    async def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        parts: list[str] = []
        prompt_tokens: int | None = None
        output_tokens: int | None = None
        stop_reason: str | None = None
        finished = started = False
        formatted = request.response_format is not None
        calls: dict[int, int] = {}  # content block index -> tool call index
        try:
            stream = await self._sdk().messages.create(**self._params(request), stream=True)
            started = True
            async with stream:
                async for event in stream:
                    kind = event.type
                    if kind == "message_start":
                        prompt_tokens = _input_tokens(event.message.usage)
                        output_tokens = event.message.usage.output_tokens
                    elif kind == "content_block_start":
                        block = event.content_block
                        if getattr(block, "type", "") == "tool_use" and not formatted:
                            calls[event.index] = len(calls)
                            parts.append(block.name)
                            yield StreamChunk(
                                tool_call=ToolCallDelta(
                                    calls[event.index], "", block.id, block.name
                                )
                            )
                    elif kind == "content_block_delta":
                        delta_type = getattr(event.delta, "type", "")
                        if delta_type == "text_delta" and event.delta.text:
                            parts.append(event.delta.text)
                            yield StreamChunk(text=event.delta.text)
                        elif delta_type == "input_json_delta" and event.delta.partial_json:
                            piece = event.delta.partial_json
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
                        if getattr(event.usage, "input_tokens", None):
                            prompt_tokens = _input_tokens(event.usage)
                    elif kind == "message_stop":
                        finished = True
        except (anthropic.AnthropicError, *TRANSPORT_ERRORS) as e:
            raise self._partial(self._map_error(e, started=started), request, parts) from None
        except (AttributeError, TypeError, ValueError):
            error = exc.BadUpstreamResponse(
                f"{self.provider_name} sent a malformed stream event.", provider=self.provider_name
            )
            raise self._partial(error, request, parts) from None
        if not finished:
            error = exc.StreamInterrupted(
                f"{self.provider_name} ended the stream early.", provider=self.provider_name
            )
            raise self._partial(error, request, parts)
        if prompt_tokens is None or output_tokens is None:
            usage = self._estimate_usage(request, "".join(parts))
        else:
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=output_tokens)
        if formatted and stop_reason == "tool_use":
            stop_reason = "end_turn"
        yield StreamChunk(finish_reason=FINISH_REASONS.get(stop_reason or "", "stop"), usage=usage)

    def _partial(
        self, error: exc.UpstreamError, request: ChatRequest, parts: list[str]
    ) -> exc.UpstreamError:
        if parts:
            error.partial_text = "".join(parts)
            error.partial_usage = self._estimate_usage(request, error.partial_text)
        return error


def anthropic_messages(conversation: list[Message]) -> list[dict[str, Any]]:
    """OpenAI-shaped turns as Anthropic's: an assistant's tool calls become ``tool_use``
    blocks, tool results ``tool_result`` blocks of a user turn; consecutive turns of one
    role merge (the API wants user and assistant to alternate)."""
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(conversation):
        role = "user" if m.role == "tool" else m.role
        if m.role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}]
        elif m.images:
            blocks = [
                p.as_anthropic(f"messages[{i}].content")
                if isinstance(p, ImagePart)
                else {"type": "text", "text": p}
                for p in m.parts
            ]
        else:
            blocks = [{"type": "text", "text": m.content}] if m.content else []
            for call in m.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": call.arguments_object(f"messages[{i}].tool_calls"),
                    }
                )
        if turns and turns[-1]["role"] == role:
            previous = turns[-1]["content"]
            if isinstance(previous, str):
                previous = turns[-1]["content"] = [{"type": "text", "text": previous}]
            previous.extend(blocks)
        elif not m.tool_calls and m.role != "tool" and not m.images:
            turns.append({"role": role, "content": m.content})
        else:
            turns.append({"role": role, "content": blocks})
    return turns


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
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            if t.description
            else {"name": t.name, "input_schema": t.input_schema}
            for t in request.tools
        ]
    choice = request.tool_choice
    mode = choice.mode if choice is not None else ("auto" if request.tools else None)
    if mode is not None:
        spec: dict[str, Any] = {"type": ANTHROPIC_CHOICE[mode]}
        if mode == "tool":
            spec["name"] = choice.name
        if request.parallel_tool_calls is False and mode != "none":
            spec["disable_parallel_tool_use"] = True
        params["tool_choice"] = spec
    return params


ANTHROPIC_CHOICE = {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}


def _input_tokens(usage: Any) -> int:
    return (
        int(usage.input_tokens or 0)
        + int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        + int(getattr(usage, "cache_read_input_tokens", 0) or 0)
    )


def _usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    return Usage(
        prompt_tokens=_input_tokens(usage), completion_tokens=int(usage.output_tokens or 0)
    )
