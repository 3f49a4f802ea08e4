"""The Anthropic Messages API as an entrance (``/v1/messages``), over the same path.

The official ``anthropic`` SDK, and tools built on it, work with ``base_url=<host>`` and
a DRF token as the API key (``x-api-key``, or ``Authorization: Bearer``); ``model`` is
an alias id, served by any upstream kind. Requests are translated to the gateway's
OpenAI-shaped request (text and system, images, ``tool_use``/``tool_result`` blocks,
tools and ``tool_choice``); answers and streams go back as Anthropic sends them (``message_start``
… ``content_block_*`` … ``message_delta``, ``message_stop``), errors in Anthropic's
shape. ``/v1/messages/count_tokens`` counts a request's input tokens, unbilled.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from .. import exceptions as exc
from ..envelope import describe, retry_headers
from ..services.chat import Delta, ToolCallDelta, achat, astream_chat
from ..services.chat.admission import Ask, admit
from ..services.chat.validation import validate
from ..services.db import run_db
from ..services.policy.rules import Labels, request_text
from ..text.fields import refuse_unknown
from ..text.tokens import count_message_tokens
from ..text.unicode import loads
from .authentication import BearerOrTokenAuthentication, key_of
from .views import SSE_HEADERS, GatewayAPIView

#: The fields of a Messages request the gateway carries; any other is refused by name.
MESSAGE_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
    }
)
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice"})
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
CHOICES = {"auto": "auto", "any": "required", "none": "none"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class APIKeyHeaderAuthentication(BearerOrTokenAuthentication):
    """A DRF token in ``x-api-key``, where Anthropic's SDK sends its key."""

    def _key(self, request) -> str | None:
        return request.META.get("HTTP_X_API_KEY") or None

    def authenticate_header(self, request) -> str:
        return "x-api-key"


def anthropic_error(error: BaseException, request_id: str) -> tuple[dict, int, dict]:
    """(body, status, headers) in Anthropic's error shape."""
    status, _code, _kind, message, retry_after = describe(error)
    kind = ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    headers = {"X-Request-ID": request_id, "request-id": request_id}
    return body, status, retry_headers(error, retry_after, headers)


class AnthropicView(GatewayAPIView):
    """The project's authenticators, then ``x-api-key``; errors in Anthropic's shape."""

    def get_authenticators(self):
        return [*super().get_authenticators(), APIKeyHeaderAuthentication()]

    def handle_exception(self, exc_):
        response = super().handle_exception(exc_)
        body, status, headers = anthropic_error(exc_, self.request_id)
        response.data, response.status_code = body, status
        for name, value in headers.items():
            response[name] = value
        return response


def _invalid(message: str, param: str) -> exc.InvalidRequest:
    return exc.InvalidRequest(message, param=param)


def _text_of(content: Any, where: str) -> str:
    """A string, or a list of text blocks, as one text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise exc.UnsupportedContent(
                    f"{where}[{j}]: only text blocks are supported here.", param=f"{where}[{j}]"
                )
            refuse_unknown(block, {"type", "text"}, prefix=f"{where}[{j}].")
            if not isinstance(block.get("text"), str):
                raise _invalid(f"{where}[{j}].text must be text.", f"{where}[{j}].text")
            texts.append(block["text"])
        return "".join(texts)
    raise _invalid(f"{where} must be text or a list of text blocks.", where)


def conversation(messages: Any) -> list[dict[str, Any]]:
    """Anthropic turns as the gateway's OpenAI-shaped messages: ``tool_use`` blocks
    become an assistant's ``tool_calls``, ``tool_result`` blocks ``tool`` messages (an
    ``is_error`` result's text starts with ``Error:``)."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list.", "messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(f"{where} must be an object with role and content.", where)
        refuse_unknown(m, {"role", "content"}, prefix=f"{where}.")
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(f"{where}.role must be user or assistant.", f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _invalid(f"{where}.content must be text or a list of blocks.", where)
        texts: list[str] = []
        parts: list[dict[str, Any]] = []  # text and images, in order (OpenAI's parts)
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_text_of([block], f"{where}.content"))
                parts.append({"type": "text", "text": texts[-1]})
            elif kind == "image" and role == "user":
                parts.append(image_part(block, at))
            elif kind == "tool_use" and role == "assistant":
                refuse_unknown(block, {"type", "id", "name", "input"}, prefix=f"{at}.")
                if not isinstance(block.get("input"), dict):
                    raise _invalid(f"{at}.input must be an object.", f"{at}.input")
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block["input"], ensure_ascii=False),
                        },
                    }
                )
            elif kind == "tool_result" and role == "user":
                refuse_unknown(
                    block, {"type", "tool_use_id", "content", "is_error"}, prefix=f"{at}."
                )
                text = _text_of(block.get("content") or "", f"{at}.content")
                if block.get("is_error") is True:
                    text = f"Error: {text}"
                results.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
                )
            else:
                raise exc.UnsupportedContent(
                    f"{at}: a {kind or 'malformed'} block is not supported here.", param=at
                )
        if role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
        else:
            out.extend(results)
            if any(part["type"] == "image_url" for part in parts):
                out.append({"role": "user", "content": parts})
            elif texts or not results:
                out.append({"role": "user", "content": "".join(texts)})
    return out


def image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as OpenAI's ``image_url`` part (base64 as a data URL)."""
    refuse_unknown(block, {"type", "source"}, prefix=f"{where}.")
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        refuse_unknown(source, {"type", "media_type", "data"}, prefix=f"{where}.source.")
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise _invalid(f"{where}.source needs media_type and data.", f"{where}.source")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        refuse_unknown(source, {"type", "url"}, prefix=f"{where}.source.")
        url = source.get("url")
        if not isinstance(url, str):
            raise _invalid(f"{where}.source.url must be a URL.", f"{where}.source.url")
    else:
        raise exc.UnsupportedContent(
            f"{where}.source: only base64 and url image sources are supported.",
            param=f"{where}.source",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def tool_options(data: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's ``tools`` and ``tool_choice`` in OpenAI's shapes."""
    options: dict[str, Any] = {}
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools must be a list.", "tools")
        converted = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
                raise exc.UnsupportedContent(
                    f"tools[{i}]: only custom (function) tools are supported.", param=f"tools[{i}]"
                )
            refuse_unknown(
                tool, {"type", "name", "description", "input_schema"}, prefix=f"tools[{i}]."
            )
            function = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
            if tool.get("description"):
                function["description"] = tool["description"]
            converted.append({"type": "function", "function": function})
        options["tools"] = converted or None
    choice = data.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in (*CHOICES, "tool"):
            raise _invalid("tool_choice.type must be auto, any, tool or none.", "tool_choice")
        refuse_unknown(choice, {"type", "name", "disable_parallel_tool_use"}, prefix="tool_choice.")
        if choice["type"] == "tool":
            options["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        else:
            options["tool_choice"] = CHOICES[choice["type"]]
        if choice.get("disable_parallel_tool_use") is True:
            options["parallel_tool_calls"] = False
    return options


def chat_arguments(user, data: Any, request_id: str) -> dict[str, Any]:
    """A Messages request as the chat service's arguments."""
    if not isinstance(data, dict):
        raise _invalid("Send a JSON object.", "body")
    refuse_unknown(data, MESSAGE_FIELDS)
    max_tokens = data.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _invalid("max_tokens is required: a whole number of at least 1.", "max_tokens")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model is required: an alias id.", "model")
    temperature = data.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 1
    ):
        raise _invalid("temperature must be a number from 0 to 1.", "temperature")
    metadata = data.get("metadata")
    options = tool_options(data)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid("metadata must be an object.", "metadata")
        refuse_unknown(metadata, {"user_id"}, prefix="metadata.")
        if metadata.get("user_id") is not None:
            options["user"] = metadata["user_id"]
    if data.get("top_p") is not None:
        options["top_p"] = data["top_p"]
    system = data.get("system")
    return {
        "user": user,
        "model": model,
        "messages": conversation(data.get("messages")),
        "system_prompt": None if system is None else _text_of(system, "system"),
        "temperature": temperature,
        "max_tokens": max_tokens,
        "stop": data.get("stop_sequences"),
        "request_id": request_id,
        "options": options,
        # Tool calls go back as tool_use objects: arguments that are not one are a 502.
        "json_tool_arguments": True,
    }


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as ``tool_use`` input. The gateway lets through only
    JSON objects, but for an answer cut at ``max_tokens`` (arguments unfinished:
    ``{}``, as the call could not be read)."""
    try:
        value = loads(arguments or "{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def message_body(result, request_id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if result.answer or not result.tool_calls:
        content.append({"type": "text", "text": result.answer})
    for call in result.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": tool_input(call.arguments),
            }
        )
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": content,
        "stop_reason": STOP_REASONS.get(result.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": result.usage.prompt_tokens,
            "output_tokens": result.usage.completion_tokens,
        },
    }


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def message_events(kwargs: dict[str, Any], request_id: str) -> AsyncIterator[bytes]:
    """The stream's events, Anthropic's sequence (already past the first chat event:
    failures before it get their own status)."""
    stream = astream_chat(**kwargs)
    first = await anext(stream)
    serving = stream.call.serving
    estimate = serving.prompt_tokens if serving is not None else 0

    async def events() -> AsyncIterator[bytes]:
        block = -1  # the open content block's index
        open_kind: str | None = None
        tool_blocks: dict[int, int] = {}  # tool call index -> block index

        def start(kind: str, content_block: dict[str, Any]) -> list[bytes]:
            nonlocal block, open_kind
            out = stop()
            block, open_kind = block + 1, kind
            out.append(
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": block, "content_block": content_block},
                )
            )
            return out

        def stop() -> list[bytes]:
            nonlocal open_kind
            if open_kind is None:
                return []
            open_kind = None
            return [event("content_block_stop", {"type": "content_block_stop", "index": block})]

        def delta(index: int, body: dict[str, Any]) -> bytes:
            return event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": body},
            )

        yield event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{request_id}",
                    "type": "message",
                    "role": "assistant",
                    "model": kwargs["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": estimate, "output_tokens": 0},
                },
            },
        )
        yield event("ping", {"type": "ping"})
        item = first
        try:
            while True:
                if isinstance(item, Delta):
                    if open_kind != "text":
                        for chunk in start("text", {"type": "text", "text": ""}):
                            yield chunk
                    yield delta(block, {"type": "text_delta", "text": item.text})
                elif isinstance(item, ToolCallDelta):
                    if item.id is not None:
                        tool = {"type": "tool_use", "id": item.id, "name": item.name, "input": {}}
                        for chunk in start("tool_use", tool):
                            yield chunk
                        tool_blocks[item.index] = block
                    if item.arguments:
                        index = tool_blocks.get(item.index, block)
                        yield delta(
                            index, {"type": "input_json_delta", "partial_json": item.arguments}
                        )
                else:
                    for chunk in stop():
                        yield chunk
                    yield event(
                        "message_delta",
                        {
                            "type": "message_delta",
                            "delta": {
                                "stop_reason": STOP_REASONS.get(item.finish_reason, "end_turn"),
                                "stop_sequence": None,
                            },
                            "usage": {
                                "input_tokens": item.usage.prompt_tokens,
                                "output_tokens": item.usage.completion_tokens,
                            },
                        },
                    )
                    yield event("message_stop", {"type": "message_stop"})
                    return
                item = await anext(stream)
        except Exception as error:  # after the 200 has gone out: an error event
            body, _status, _headers = anthropic_error(error, request_id)
            yield event("error", {"type": "error", "error": body["error"]})
        finally:
            await stream.aclose()

    return events()


class MessagesView(AnthropicView):
    @extend_schema(
        request=inline_serializer("AnthropicMessagesRequest", {"model": serializers.CharField()}),
        responses={200: inline_serializer("AnthropicMessage", {"id": serializers.CharField()})},
        summary="Anthropic-compatible Messages (JSON, or Anthropic's stream events)",
    )
    async def post(self, request):
        kwargs = chat_arguments(request.user, request.data, self.request_id)
        kwargs["labels"] = Labels.from_headers(request.META)  # Anthropic's body has no place
        kwargs["key"] = key_of(request)
        if request.data.get("stream") is True:
            events = await message_events(kwargs, self.request_id)
            return StreamingHttpResponse(
                events, content_type="text/event-stream", headers=SSE_HEADERS
            )
        if request.data.get("stream") not in (None, False):
            raise _invalid("stream must be true or false.", "stream")
        result = await achat(**kwargs)
        return Response(message_body(result, self.request_id))


class CountTokensView(AnthropicView):
    @extend_schema(
        request=inline_serializer(
            "AnthropicCountTokensRequest", {"model": serializers.CharField()}
        ),
        responses={
            200: inline_serializer(
                "AnthropicTokenCount", {"input_tokens": serializers.IntegerField()}
            )
        },
        summary="Anthropic-compatible input token count (not billed)",
    )
    async def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            raise _invalid("Send a JSON object.", "body")
        refuse_unknown(data, COUNT_FIELDS)
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model is required: an alias id.", "model")
        system = data.get("system")
        chat = validate(
            conversation(data.get("messages")),
            system_prompt=None if system is None else _text_of(system, "system"),
            options=tool_options(data),
        )
        # The alias the rules would pick counts them (as the Messages call would).
        text = functools.cache(functools.partial(request_text, chat))
        ask = Ask(model, Labels.from_headers(request.META), text, key=key_of(request))
        admission = await run_db(admit, request.user, ask)
        tokens = count_message_tokens(
            chat.messages, model=admission.alias.upstream_model, tools=chat.tools
        )
        return Response({"input_tokens": tokens})
