"""OpenAI's Responses API (``/v1/responses``): requests translated to the gateway's chat
(text or items, ``instructions``, function tools and their outputs, text formats,
reasoning effort), answers and streams written as OpenAI sends them.

Items are the conversation's unit here: a request's input items, then the answer's
output items (``message``, ``function_call``). A continuation (``previous_response_id``)
is the stored items replayed before the new input; this module translates items, the
service layer (``services.memory.responses``) keeps them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rest_framework import serializers

from .. import exceptions as exc
from ..adapters import Usage
from ..conf import llm_settings
from ..envelope import describe
from ..services.chat import ChatResult
from ..services.memory.responses import RESPONSE_ID
from ..services.policy.rules import NO_LABELS, Labels
from ..text.fields import refuse_unknown
from . import response_items as items
from .fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from .inputs import ChatInput, Shape
from .openai import REASONING_EFFORTS, VERBOSITIES, labels_of
from .response_items import invalid, required_text

#: Why an answer stopped short, in the Responses API's words (others are complete).
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
#: OpenAI's metadata: at most 16 pairs, keys of 64 characters, values of 512.
METADATA_PAIRS = 16


class ResponsesRequestSerializer(serializers.Serializer):
    """The fields of a Responses request the gateway carries; any other is refused by
    name. ``input``, ``tools``, ``tool_choice``, ``text`` and ``reasoning`` are checked
    and translated below."""

    model = StrictCharField(max_length=100, help_text="An alias id.")
    input = serializers.JSONField(help_text="Text, or a list of items.")
    instructions = StrictCharField(
        required=False, allow_blank=True, trim_whitespace=False, help_text="A system message."
    )
    previous_response_id = StrictCharField(
        required=False,
        max_length=64,
        help_text="A stored response of the caller's to continue: its items come first.",
    )
    store = StrictBooleanField(
        required=False, default=True, help_text="Keep the response (false: nothing is kept)."
    )
    stream = StrictBooleanField(required=False, default=False)
    max_output_tokens = StrictIntegerField(required=False, min_value=1)
    temperature = StrictFloatField(required=False, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, min_value=0, max_value=1)
    tools = serializers.ListField(required=False, help_text="Function tools (flat).")
    tool_choice = serializers.JSONField(required=False)
    parallel_tool_calls = StrictBooleanField(required=False)
    text = serializers.JSONField(
        required=False, help_text="format: text, json_object, json_schema."
    )
    reasoning = serializers.JSONField(
        required=False, help_text="effort: the upstream's reasoning effort; summary is accepted."
    )
    metadata = serializers.DictField(
        child=StrictCharField(max_length=512, allow_blank=True, trim_whitespace=False),
        required=False,
        help_text="Up to 16 pairs, kept with the response; task and tags label the request.",
    )
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    prompt_cache_key = StrictCharField(
        required=False,
        max_length=1024,
        help_text="Passed to OpenAI-compatible upstreams; it changes no answer.",
    )
    include = serializers.ListField(
        child=StrictCharField(),
        required=False,
        help_text="OpenAI's extra output (such as reasoning.encrypted_content): accepted; "
        "the gateway returns no such items.",
    )
    client_metadata = serializers.JSONField(
        required=False, help_text="A client's own notes to OpenAI: accepted, not sent upstream."
    )


#: Fields whose value asks for what the gateway does anyway (it fits a conversation too
#: long for the model's window by leaving out its oldest turns: ``truncation: auto``).
RESPONSES = Shape(ResponsesRequestSerializer, noops={"background": False, "truncation": "auto"})
#: ``include`` values that ask for nothing the gateway would leave out: the reasoning's
#: ``encrypted_content`` (reasoning items always carry it), and the outputs of hosted
#: tools or images, which never occur here. Others (``message.output_text.logprobs``:
#: no logprobs are returned) are refused by name.
INCLUDED = frozenset(
    {
        "reasoning.encrypted_content",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
    }
)
#: ``reasoning.summary`` values (no summaries are made: accepted, as OpenAI's models
#: may make none either).
SUMMARIES = frozenset({"auto", "concise", "detailed"})


TOOL_FIELDS = frozenset({"type", "name", "description", "parameters", "strict"})


def function_tools(tools: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Flat function tools as the chat's nested ones, and the hosted tools left out
    (``DROP_UNSUPPORTED_TOOLS``; else they are refused by name)."""
    out, dropped = [], []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(f"{where} must be an object.", where)
        kind = tool.get("type")
        if kind != "function":
            if not isinstance(kind, str) or not kind:
                raise invalid(f"{where}.type must be a tool type.", f"{where}.type")
            if llm_settings.DROP_UNSUPPORTED_TOOLS:
                dropped.append(f"tool:{kind[:64]}")
                continue
            raise exc.UnsupportedParameter(
                f"Tools of type {kind!r} are not supported by this gateway (function tools "
                "are; DROP_UNSUPPORTED_TOOLS leaves the others out).",
                param=f"{where}.type",
            )
        refuse_unknown(
            tool, {"type", "name", "description", "parameters", "strict"}, prefix=f"{where}."
        )
        function = {"name": required_text(tool.get("name"), f"{where}.name")}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    return out, dropped


def tool_choice(choice: Any) -> Any:
    """``auto``/``none``/``required``, or ``{"type": "function", "name"}``."""
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        refuse_unknown(choice, {"type", "name"}, prefix="tool_choice.")
        name = required_text(choice.get("name"), "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise exc.UnsupportedParameter(
        "tool_choice must be auto, none, required or a function.", param="tool_choice"
    )


def verbosity(text: Any) -> str | None:
    """``text.verbosity``, as OpenAI-compatible upstreams take it (others refuse it)."""
    value = text.get("verbosity") if isinstance(text, dict) else None
    if value is not None and value not in VERBOSITIES:
        raise invalid(f"text.verbosity must be one of: {', '.join(VERBOSITIES)}.", "text.verbosity")
    return value


def response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as the chat's ``response_format`` (None: plain text)."""
    if not isinstance(text, dict):
        raise invalid("text must be an object.", "text")
    refuse_unknown(text, {"format", "verbosity"}, prefix="text.")
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict):
        raise invalid("text.format must be an object.", "text.format")
    kind = form.get("type")
    if kind in ("text", "json_object"):
        refuse_unknown(form, {"type"}, prefix="text.format.")
        return None if kind == "text" else {"type": "json_object"}
    if kind == "json_schema":
        refuse_unknown(
            form, {"type", "name", "schema", "strict", "description"}, prefix="text.format."
        )
        if not isinstance(form.get("name"), str) or not isinstance(form.get("schema"), dict):
            raise invalid(
                "text.format needs a name (text) and a schema (an object).", "text.format.name"
            )
        schema = {k: form[k] for k in ("name", "schema", "strict", "description") if k in form}
        return {"type": "json_schema", "json_schema": schema}
    raise invalid("text.format.type must be text, json_object or json_schema.", "text.format.type")


def refuse_includes(values: Any) -> None:
    """``include`` values the gateway cannot honour, refused by name."""
    for value in values:
        if value not in INCLUDED:
            raise exc.UnsupportedParameter(
                f"include {str(value)[:80]!r} is not supported by this gateway.", param="include"
            )


def reasoning_effort(reasoning: Any) -> str | None:
    """``reasoning.effort`` (``summary`` is accepted: no summaries are made)."""
    if not isinstance(reasoning, dict):
        raise invalid("reasoning must be an object.", "reasoning")
    refuse_unknown(reasoning, {"effort", "summary", "generate_summary"}, prefix="reasoning.")
    for name in ("summary", "generate_summary"):
        value = reasoning.get(name)
        if value is not None and (not isinstance(value, str) or value not in SUMMARIES):
            raise invalid(
                f"reasoning.{name} must be auto, concise or detailed.", f"reasoning.{name}"
            )
    effort = reasoning.get("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise invalid(
            f"reasoning.effort must be one of: {', '.join(REASONING_EFFORTS)}.", "reasoning.effort"
        )
    return effort


def metadata_labels(metadata: Mapping[str, str], headers: Labels) -> Labels:
    """``metadata.task`` and ``metadata.tags`` over the headers' labels (other pairs are
    the client's own, kept with the response)."""
    if len(metadata) > METADATA_PAIRS or any(len(key) > 64 for key in metadata):
        raise invalid("metadata holds at most 16 pairs, keys of up to 64 characters.", "metadata")
    if "task" not in metadata and "tags" not in metadata:
        return headers
    return labels_of(metadata, headers)


@dataclass(frozen=True, slots=True)
class ResponsesInput:
    """A Responses request as parsed: the chat to run for the new input (``chat``, given
    the stored items it continues), and what the response object echoes back."""

    model: str
    items: list[dict[str, Any]]
    instructions: str | None
    options: dict[str, Any]
    echo: dict[str, Any]
    labels: Labels
    previous_response_id: str | None
    store: bool
    stream: bool
    temperature: float | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: Hosted tools left out (``DROP_UNSUPPORTED_TOOLS``), for the usage row.
    dropped: tuple[str, ...] = ()

    def chat(self, earlier: list[dict[str, Any]] = ()) -> ChatInput:
        """The chat service's input: the earlier items, then the new ones."""
        return ChatInput(
            messages=items.conversation(list(earlier), self.items),
            model=self.model,
            system_prompt=self.instructions,
            temperature=self.temperature,
            max_tokens=self.max_output_tokens,
            options=self.options,
            labels=self.labels,
            stream=self.stream,
            dropped=self.dropped,
        )


def parse(payload: Any, headers: Labels = NO_LABELS) -> ResponsesInput:
    """A Responses request (``headers``: the ``X-LLM-*`` labels)."""
    data = RESPONSES.validate(payload)
    options: dict[str, Any] = {}
    for name in ("top_p", "user", "prompt_cache_key"):
        if data.get(name) is not None:
            options[name] = data[name]
    if data.get("parallel_tool_calls") is not None:
        # A hint here: upstreams that cannot hold to one call (Ollama) leave it out.
        options["parallel_tool_calls"] = data["parallel_tool_calls"]
        options["parallel_tool_calls_hint"] = True
    refuse_includes(data.get("include") or ())
    previous = data.get("previous_response_id")
    if previous is not None and not RESPONSE_ID.fullmatch(previous):
        raise exc.PreviousResponseNotFound(
            f"Previous response with id {previous[:80]!r} not found.",
            param="previous_response_id",
        )
    tools, dropped = function_tools(data.get("tools") or [])
    if tools:
        options["tools"] = tools
    if data.get("tool_choice") is not None:
        options["tool_choice"] = tool_choice(data["tool_choice"])
    if data.get("text") is not None and (form := response_format(data["text"])) is not None:
        options["response_format"] = form
    if (wordiness := verbosity(data.get("text"))) is not None:
        options["verbosity"] = wordiness
    reasoning = data.get("reasoning")
    effort = reasoning_effort(reasoning) if reasoning is not None else None
    if effort is not None:
        options["reasoning_effort"] = effort
    metadata = data.get("metadata") or {}
    return ResponsesInput(
        model=data["model"],
        items=items.checked_items(data["input"]),
        instructions=data.get("instructions"),
        options=options,
        echo={
            "tools": data.get("tools") or [],
            "tool_choice": data.get("tool_choice", "auto"),
            "parallel_tool_calls": data.get("parallel_tool_calls", True),
            "text": data.get("text") or {"format": {"type": "text"}},
            "reasoning": {
                "effort": effort,
                "summary": (data.get("reasoning") or {}).get("summary"),
            },
            "top_p": data.get("top_p"),
            "user": data.get("user"),
        },
        labels=metadata_labels(metadata, headers),
        previous_response_id=previous,
        store=data["store"],
        stream=data["stream"],
        temperature=data.get("temperature"),
        max_output_tokens=data.get("max_output_tokens"),
        metadata=metadata,
        dropped=tuple(dropped),
    )


#: The chat's parameters as a Responses client wrote them, for errors the chat path raises.
CLIENT_PARAMS = {
    "reasoning_effort": "reasoning.effort",
    "verbosity": "text.verbosity",
    "max_tokens": "max_output_tokens",
    "system_prompt": "instructions",
}
CLIENT_PATHS = (
    (re.compile(r"response_format(?:\.json_schema)?"), "text.format"),
    (re.compile(r"tools\[(\d+)\]\.function"), r"tools[\1]"),
    (re.compile(r"tool_choice\.function"), "tool_choice"),
)


def client_param(param: str | None) -> str | None:
    """An error's ``param`` in the Responses API's words (``reasoning.effort`` where the
    chat path says ``reasoning_effort``)."""
    if param is None:
        return None
    if param in CLIENT_PARAMS:
        return CLIENT_PARAMS[param]
    for pattern, replacement in CLIENT_PATHS:
        if (found := pattern.match(param)) is not None:
            return found.expand(replacement) + param[found.end() :]
    return param


def response_id(request_id: str) -> str:
    """``resp_`` and the request's own hex: a response is found by its usage row."""
    return "resp_" + request_id.removeprefix("req_")


def usage(usage: Usage) -> dict[str, Any]:
    """The Responses API's usage: all input (cache reads included), all output
    (reasoning included), with their details."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


#: The gateway's error codes as the Responses API's (``response.failed``), which agents
#: act on (Codex stops on ``insufficient_quota``, compacts on
#: ``context_length_exceeded``, retries ``rate_limit_exceeded`` and ``server_error``).
FAILURE_CODES = {
    "rate_limited": "rate_limit_exceeded",
    "budget_exceeded": "insufficient_quota",
    "quota_exceeded": "insufficient_quota",
    "prompt_too_large": "context_length_exceeded",
    "context_length_exceeded": "context_length_exceeded",
}


def failure_error(error: BaseException) -> dict[str, Any]:
    """A failure after the first event as the response's ``error``."""
    status, code, _kind, message, _retry = describe(error)
    mapped = FAILURE_CODES.get(code) or ("invalid_prompt" if status < 500 else "server_error")
    return {"code": mapped, "message": message}


class Answer:
    """The response object of one request: its id, the fields it echoes, its output
    items (ids ``msg_``, ``fc_``, ``rs_`` with the response's hex and the item's place),
    the same for a plain answer and a stream's ``response.*`` events."""

    def __init__(self, ask: ResponsesInput, request_id: str) -> None:
        self.ask = ask
        self.id = response_id(request_id)
        self.hex = self.id.removeprefix("resp_")
        self.created_at = int(time.time())

    def item_id(self, kind: str, index: int) -> str:
        return f"{ITEM_PREFIXES[kind]}_{self.hex}_{index}"

    def status(self, finish_reason: str) -> tuple[str, dict[str, str] | None]:
        """``completed``, or ``incomplete`` with why (an answer cut short)."""
        reason = INCOMPLETE.get(finish_reason)
        return ("incomplete", {"reason": reason}) if reason else ("completed", None)

    def body(
        self,
        *,
        status: str,
        model: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        incomplete: dict[str, str] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        ask = self.ask
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": ask.instructions,
            "max_output_tokens": ask.max_output_tokens,
            "model": model,
            "output": output,
            "previous_response_id": ask.previous_response_id,
            "store": ask.store,
            "temperature": ask.temperature,
            "truncation": "auto",
            "usage": usage,
            "metadata": ask.metadata,
            **ask.echo,
        }

    def of(self, result: ChatResult) -> dict[str, Any]:
        """A plain answer's response object: reasoning, the text, the calls (the last
        item is ``incomplete`` when the answer was cut short)."""
        status, incomplete = self.status(result.finish_reason)
        output: list[dict[str, Any]] = [
            items.reasoning_item(self.item_id("reasoning", i), block)
            for i, block in enumerate(result.thinking)
        ]
        if result.answer or not result.tool_calls:
            output.append(items.message_item(self.item_id("message", len(output)), result.answer))
        for call in result.tool_calls:
            item_id = self.item_id("function_call", len(output))
            output.append(items.call_item(item_id, call.id, call.name, call.arguments))
        if incomplete is not None:
            output[-1]["status"] = "incomplete"
        return self.body(
            status=status,
            model=result.model,
            output=output,
            usage=usage(result.usage),
            incomplete=incomplete,
        )


ITEM_PREFIXES = {"message": "msg", "function_call": "fc", "reasoning": "rs"}
