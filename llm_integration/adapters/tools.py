"""Tool calling and structured output, in OpenAI's shape (the lingua franca every
surface speaks and every adapter translates from), with the checks of what a client
sends: ``tools``, ``tool_choice``, an assistant's ``tool_calls`` and ``response_format``.

    tools = parse_tools([{"type": "function", "function": {"name": "get_weather", ...}}])
    choice = parse_tool_choice("required", tools)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import exceptions as exc
from ..text.fields import refuse_unknown
from .caching import CacheControl, parse_cache_control

#: OpenAI's rule for function names (Anthropic's is the same).
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
CHOICE_MODES = ("auto", "none", "required")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its name, what it does, its JSON Schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None
    #: A prompt caching mark (Anthropic upstreams only).
    cache_control: CacheControl | None = None

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = dict(self.parameters)
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}

    @property
    def input_schema(self) -> dict[str, Any]:
        """The parameters as a schema of an object (what Anthropic requires)."""
        return dict(self.parameters or {}) or {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: ``arguments`` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str = "{}"
    #: A prompt caching mark (Anthropic upstreams only).
    cache_control: CacheControl | None = None

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def arguments_object(self, where: str) -> dict[str, Any]:
        """The arguments parsed (for upstreams that take an object); 400 if not JSON."""
        try:
            value = json.loads(self.arguments or "{}")
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
            value = None
        if not isinstance(value, dict):
            raise exc.InvalidRequest(
                f"{where}.function.arguments must be a JSON object in text.", param=where
            )
        return value


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first piece of call ``index`` carries its
    ``id`` and ``name``, later ones pieces of ``arguments`` (OpenAI's stream shape)."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def as_openai(self) -> dict[str, Any]:
        piece: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.id is not None:
            piece["id"] = self.id
            piece["type"] = "function"
        if self.name is not None:
            function = {"name": self.name, **function}
        piece["function"] = function
        return piece

    def as_event(self) -> dict[str, Any]:
        """The gateway's own flat shape (REST SSE, WebSocket)."""
        return {
            "index": self.index,
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
        }


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto``, ``none``, ``required``, or ``tool`` (call the one named)."""

    mode: str = "auto"
    name: str | None = None

    def as_openai(self) -> str | dict[str, Any]:
        if self.mode == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return self.mode


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output: ``json_object`` (any JSON object) or ``json_schema``."""

    type: str
    name: str = "response"
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None
    description: str = ""

    def as_openai(self) -> dict[str, Any]:
        if self.type == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name}
        if self.description:
            spec["description"] = self.description
        if self.schema is not None:
            spec["schema"] = dict(self.schema)
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}

    @property
    def object_schema(self) -> dict[str, Any]:
        return dict(self.schema) if self.schema else {"type": "object"}


def _refuse(message: str, param: str) -> exc.InvalidRequest:
    return exc.InvalidRequest(message, param=param)


def _check_fields(data: Mapping[str, Any], known: set[str], where: str) -> None:
    """A field of ``data`` outside ``known`` is refused by name (``where.field``)."""
    refuse_unknown(data, known, prefix=f"{where}.")


def parse_tools(value: Any) -> tuple[Tool, ...]:
    """OpenAI's ``tools`` (function tools) checked and typed; ``null`` is none."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise _refuse("tools must be a non-empty list of function tools.", "tools")
    if len(value) > MAX_TOOLS:
        raise _refuse(f"At most {MAX_TOOLS} tools per request.", "tools")
    tools: list[Tool] = []
    for i, item in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function":
            raise _refuse(f'{where} must be {{"type": "function", "function": {{...}}}}.', where)
        _check_fields(item, {"type", "function", "cache_control"}, where)
        function = item.get("function")
        if not isinstance(function, dict):
            raise _refuse(f"{where}.function must be an object.", f"{where}.function")
        _check_fields(
            function, {"name", "description", "parameters", "strict"}, f"{where}.function"
        )
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise _refuse(
                f"{where}.function.name must be 1-64 letters, digits, '_' or '-'.",
                f"{where}.function.name",
            )
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise _refuse(f"{where}.function.description must be text.", f"{where}.function")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _refuse(
                f"{where}.function.parameters must be a JSON Schema object.",
                f"{where}.function.parameters",
            )
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _refuse(f"{where}.function.strict must be true or false.", where)
        if any(t.name == name for t in tools):
            raise _refuse(f"Two tools are named {name!r}.", f"{where}.function.name")
        mark = parse_cache_control(item.get("cache_control"), where)
        tools.append(Tool(name, description, parameters, strict, mark))
    return tuple(tools)


def parse_tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice | None:
    """OpenAI's ``tool_choice``: a mode, or the one function to call (it must be one of
    ``tools``)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in CHOICE_MODES:
            raise _refuse("tool_choice must be auto, none, required or a function.", "tool_choice")
        if value == "required" and not tools:
            raise _refuse("tool_choice 'required' needs tools.", "tool_choice")
        return ToolChoice(value)
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(name, str):
        raise _refuse(
            'tool_choice must be auto, none, required or {"type": "function", '
            '"function": {"name": ...}}.',
            "tool_choice",
        )
    if not any(t.name == name for t in tools):
        raise _refuse(f"tool_choice names {name!r}, which is not one of the tools.", "tool_choice")
    return ToolChoice("tool", name)


def parse_tool_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls`` (as the API returned them)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _refuse(f"{where} must be a list.", where)
    calls: list[ToolCall] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        function = item.get("function") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("type", "function") != "function"
            or not isinstance(item.get("id"), str)
            or not item["id"]
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments", ""), str)
        ):
            raise _refuse(
                f'{at} must be {{"id": ..., "type": "function", "function": '
                '{"name": ..., "arguments": "<JSON text>"}}.',
                at,
            )
        _check_fields(item, {"id", "type", "function", "index", "cache_control"}, at)
        _check_fields(function, {"name", "arguments"}, f"{at}.function")
        mark = parse_cache_control(item.get("cache_control"), at)
        arguments = function.get("arguments") or "{}"
        calls.append(ToolCall(item["id"], function["name"], arguments, mark))
    return tuple(calls)


def parse_response_format(value: Any) -> ResponseFormat | None:
    """OpenAI's ``response_format``: ``text`` (the default: None), ``json_object`` or
    ``json_schema``."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        _check_fields(value, {"type"}, "response_format")
        return None
    if kind == "json_object":
        _check_fields(value, {"type"}, "response_format")
        return ResponseFormat("json_object")
    if kind == "json_schema":
        _check_fields(value, {"type", "json_schema"}, "response_format")
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise _refuse("response_format.json_schema must be an object.", "response_format")
        _check_fields(
            spec, {"name", "schema", "strict", "description"}, "response_format.json_schema"
        )
        name = spec.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise _refuse(
                "response_format.json_schema.name must be 1-64 letters, digits, '_' or '-'.",
                "response_format.json_schema.name",
            )
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise _refuse(
                "response_format.json_schema.schema must be a JSON Schema object.",
                "response_format.json_schema.schema",
            )
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _refuse(
                "response_format.json_schema.strict must be true or false.", "response_format"
            )
        description = spec.get("description") or ""
        if not isinstance(description, str):
            raise _refuse(
                "response_format.json_schema.description must be text.", "response_format"
            )
        return ResponseFormat("json_schema", name, schema, strict, description)
    raise _refuse(
        "response_format.type must be text, json_object or json_schema.", "response_format"
    )
