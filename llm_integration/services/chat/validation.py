"""Step 1 of the path: turn what a client sent into a ChatRequest, or a clear 400/413."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...adapters.base import ROLES, ChatRequest, Message
from ...adapters.caching import MarkedText, mark_of, parse_cache_control
from ...adapters.images import ImagePart, parse_image_part
from ...adapters.thinking import parse_thinking, parse_thinking_blocks
from ...adapters.tools import (
    parse_response_format,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
)
from ...conf import llm_settings
from ...exceptions import InvalidRequest, PromptTooLarge, UnsupportedContent
from ...text.fields import refuse_unknown, refuse_unknown_in_message
from ...text.tokens import count_message_tokens


def _text(value: str, where: str) -> str:
    """``value``, if it is valid Unicode (a lone surrogate cannot be sent anywhere)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where} is not valid Unicode (a lone surrogate).") from None
    return value


@dataclass(slots=True)
class ImageTally:
    """The images of a request so far, for its limits."""

    count: int = 0
    size: int = 0


def _content(value: Any, index: int, images: ImageTally) -> tuple[str, tuple[str | ImagePart, ...]]:
    """(the text, the parts when there are images or prompt caching marks). OpenAI's
    content parts: ``text`` (or ``input_text``) and ``image_url``, each with an optional
    ``cache_control`` (LiteLLM's place for Anthropic's)."""
    where = f"messages[{index}].content"
    if isinstance(value, str):
        return _text(value, where), ()
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be text or a list of content parts.", param=where)
    parts: list[str | ImagePart] = []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            refuse_unknown(part, {"type", "text", "cache_control"}, prefix=f"{at}.")
            text = _text(part["text"], f"{at}.text")
            mark = parse_cache_control(part.get("cache_control"), at)
            parts.append(text if mark is None else MarkedText(text, mark))
        elif kind == "image_url":
            refuse_unknown(part, {"type", "image_url", "cache_control"}, prefix=f"{at}.")
            image = parse_image_part(part, at, max_bytes=llm_settings.MAX_IMAGE_BYTES)
            if (mark := parse_cache_control(part.get("cache_control"), at)) is not None:
                image = dataclasses.replace(image, cache_control=mark)
            images.count += 1
            images.size += image.size
            if images.count > llm_settings.MAX_IMAGES:
                raise PromptTooLarge(
                    f"At most {llm_settings.MAX_IMAGES} images per request.", param=at
                )
            if images.size > llm_settings.MAX_REQUEST_IMAGE_BYTES:
                raise PromptTooLarge(
                    f"The images add up to more than {llm_settings.MAX_REQUEST_IMAGE_BYTES} "
                    "bytes, the limit per request.",
                    param=at,
                )
            parts.append(image)
        else:
            raise InvalidRequest(f"{at} must be a text or image_url part.", param=at)
    text = "".join(p for p in parts if isinstance(p, str))
    # Parts are kept for what joined text would lose: images, and prompt caching marks.
    kept = any(isinstance(p, ImagePart) or mark_of(p) is not None for p in parts)
    return text, tuple(parts) if kept else ()


def parse_messages(messages: Any, *, system_prompt: Any = None) -> tuple[Message, ...]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or isinstance(messages, bytes) or not messages:
        raise InvalidRequest("Send a message, or a non-empty list of messages.")
    if len(messages) > llm_settings.MAX_MESSAGES:
        raise InvalidRequest(f"At most {llm_settings.MAX_MESSAGES} messages per request.")
    parsed: list[Message] = []
    called: set[str] = set()  # ids of the tool calls made so far
    images = ImageTally()
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            parsed.append(m)
            continue
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object with role and content.")
        refuse_unknown_in_message(m, i)
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role must be one of: {', '.join(ROLES)}.")
        calls = parse_tool_calls(m.get("tool_calls"), f"messages[{i}].tool_calls")
        for j, call in enumerate(calls):
            at = f"messages[{i}].tool_calls[{j}]"
            _text(call.id, f"{at}.id")
            _text(call.name, f"{at}.function.name")
            _text(call.arguments, f"{at}.function.arguments")
        if m.get("tool_calls") is not None and role != "assistant":
            raise InvalidRequest(
                f"messages[{i}]: only assistant messages carry tool_calls.",
                param=f"messages[{i}].tool_calls",
            )
        content = m.get("content")
        bare = content is None and (calls or m.get("thinking_blocks"))
        text, parts = ("", ()) if bare else _content(content, i, images)
        if any(isinstance(p, ImagePart) for p in parts) and role != "user":
            raise UnsupportedContent(
                f"messages[{i}]: only user messages carry images.", param=f"messages[{i}].content"
            )
        call_id = m.get("tool_call_id")
        if role == "tool":
            if not isinstance(call_id, str) or call_id not in called:
                raise InvalidRequest(
                    f"messages[{i}] (role tool) must answer an earlier assistant tool call "
                    "by its tool_call_id.",
                    param=f"messages[{i}].tool_call_id",
                )
        elif call_id is not None:
            raise InvalidRequest(
                f"messages[{i}]: only tool messages carry tool_call_id.",
                param=f"messages[{i}].tool_call_id",
            )
        thinking = parse_thinking_blocks(m.get("thinking_blocks"), f"messages[{i}].thinking_blocks")
        if thinking and role != "assistant":
            raise InvalidRequest(
                f"messages[{i}]: only assistant messages carry thinking_blocks.",
                param=f"messages[{i}].thinking_blocks",
            )
        called.update(call.id for call in calls)
        parsed.append(Message(role, text, calls, call_id, parts, thinking))
    if system_prompt is not None:
        if not isinstance(system_prompt, str):
            raise InvalidRequest("system_prompt must be text.")
        _text(system_prompt, "system_prompt")
        if system_prompt.strip():
            parsed.insert(0, Message("system", system_prompt))
    if not any(m.role == "user" and (m.content.strip() or m.images) for m in parsed):
        raise InvalidRequest("Send at least one non-empty user message.")
    return tuple(parsed)


def _number(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number.")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}.")
    return float(value)


def validate(
    messages: Any,
    *,
    system_prompt: Any = None,
    temperature: Any = None,
    max_tokens: Any = None,
    stop: Any = None,
    options: Mapping[str, Any] | None = None,
) -> ChatRequest:
    """A ChatRequest from client input; max_tokens is checked against the alias later.
    ``options``: the sampling, tool and output options an adapter passes on
    (``adapters.base.OPTIONS``), in OpenAI's shapes."""
    parsed = parse_messages(messages, system_prompt=system_prompt)
    temperature = _number(temperature, "temperature", 0, 2)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InvalidRequest("max_tokens must be a whole number of at least 1.")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (_text(stop, "stop"),)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(_text(s, "stop") for s in stop)
    else:
        raise InvalidRequest("stop must be a string or a list of at most 4 strings.")
    options = dict(options or {})
    tools = parse_tools(options.pop("tools", None))
    tool_choice = parse_tool_choice(options.pop("tool_choice", None), tools)
    thinking = parse_thinking(options.pop("thinking", None))
    carried = {}  # Anthropic's own objects, passed on as sent
    for name in ("context_management", "output_config"):
        value = options.pop(name, None)
        if value is not None and not isinstance(value, dict):
            raise InvalidRequest(f"{name} must be an object.", param=name)
        carried[name] = value
    betas = options.pop("betas", None) or ()
    if not isinstance(betas, list | tuple) or not all(isinstance(b, str) for b in betas):
        raise InvalidRequest("betas must be a list of feature names.", param="betas")
    parallel = options.pop("parallel_tool_calls", None)
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(
            "parallel_tool_calls must be true or false.", param="parallel_tool_calls"
        )
    hint = options.pop("parallel_tool_calls_hint", False) is True
    return ChatRequest(
        messages=parsed,
        temperature=temperature,
        max_tokens=max_tokens,
        stop=stops,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        parallel_tool_calls_hint=hint,
        response_format=parse_response_format(options.pop("response_format", None)),
        thinking=thinking,
        betas=tuple(betas),
        **carried,
        **sampling(options),
    )


#: Sampling options and their checks: (kind, low, high).
SAMPLING = {
    "top_p": ("number", 0, 1),
    "presence_penalty": ("number", -2, 2),
    "frequency_penalty": ("number", -2, 2),
    "seed": ("integer", None, None),
    "user": ("text", None, None),
    "reasoning_effort": ("text", None, None),
    "prompt_cache_key": ("text", None, None),
    "verbosity": ("text", None, None),
    "top_k": ("integer", None, None),
}


#: Tool and output options, in OpenAI's shapes.
TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
#: ``parallel_tool_calls`` as a hint (the Responses API's): an upstream that cannot hold
#: to one call leaves it out instead of refusing the request.
HINTS = ("parallel_tool_calls_hint",)
#: Every option ``validate`` takes in ``options``.
OPTIONS = (
    *SAMPLING,
    *TOOL_OPTIONS,
    *HINTS,
    "thinking",
    "betas",
    "context_management",
    "output_config",
)


def sampling(options: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name not in SAMPLING:
            raise InvalidRequest(f"Unknown option {name!r}.", param=name)
        kind, low, high = SAMPLING[name]
        if value is None:
            continue
        if kind == "number":
            checked[name] = _number(value, name, low, high)
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequest(f"{name} must be a whole number.", param=name)
            checked[name] = value
        else:
            if not isinstance(value, str):
                raise InvalidRequest(f"{name} must be text.", param=name)
            checked[name] = _text(value, name)
    return checked


def check_prompt_size(request: ChatRequest, *, model: str) -> int:
    """Prompt tokens (the model's tokenizer or an estimate); over the limit is a 413."""
    limit = llm_settings.MAX_PROMPT_TOKENS
    # A cheap bound first: no tokenizer yields fewer tokens than characters / 16.
    chars = sum(
        len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in request.messages
    )
    if limit and chars > limit * 16:
        raise PromptTooLarge(f"The prompt is larger than the limit of {limit} tokens.")
    tokens = count_message_tokens(request.messages, model=model, tools=request.tools)
    if limit and tokens > limit:
        raise PromptTooLarge(f"The prompt has about {tokens} tokens; the limit is {limit}.")
    return tokens
