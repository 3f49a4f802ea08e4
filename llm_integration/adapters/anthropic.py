"""Anthropic Messages through the official ``anthropic`` SDK.

The system prompt goes top level, ``max_tokens`` is always sent (the API requires it),
and the SDK's own retries are off: the service layer retries. Streaming reads the raw
events: ``message_start`` carries the input tokens, ``message_delta`` the cumulative
output tokens (never added to those of ``message_start``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2  # the SDK's HTTP client (anthropic 2.x runs on this fork of httpx)

from .. import exceptions as exc
from .base import (
    BaseLLMAdapter,
    ChatRequest,
    Completion,
    StreamChunk,
    Usage,
    error_for_status,
    parse_retry_after,
)

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
            "messages": [m.as_dict() for m in request.conversation],
        }
        if request.system_prompt:
            params["system"] = request.system_prompt
        sampling: dict[str, Any] = {}
        if request.temperature is not None:
            sampling["temperature"] = min(request.temperature, 1.0)
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
            finish_reason=FINISH_REASONS.get(message.stop_reason or "", "stop"),
            model=message.model or self.model,
            id=message.id,
        )

    async def _stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        parts: list[str] = []
        prompt_tokens: int | None = None
        output_tokens: int | None = None
        stop_reason: str | None = None
        finished = started = False
        try:
            stream = await self._sdk().messages.create(**self._params(request), stream=True)
            started = True
            async with stream:
                async for event in stream:
                    kind = event.type
                    if kind == "message_start":
                        prompt_tokens = _input_tokens(event.message.usage)
                        output_tokens = event.message.usage.output_tokens
                    elif kind == "content_block_delta":
                        if getattr(event.delta, "type", "") == "text_delta" and event.delta.text:
                            parts.append(event.delta.text)
                            yield StreamChunk(text=event.delta.text)
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
        yield StreamChunk(finish_reason=FINISH_REASONS.get(stop_reason or "", "stop"), usage=usage)

    def _partial(
        self, error: exc.UpstreamError, request: ChatRequest, parts: list[str]
    ) -> exc.UpstreamError:
        if parts:
            error.partial_text = "".join(parts)
            error.partial_usage = self._estimate_usage(request, error.partial_text)
        return error


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
