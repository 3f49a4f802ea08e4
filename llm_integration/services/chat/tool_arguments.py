"""Tool calls a client receives as objects (the Messages API's ``tool_use`` blocks):
arguments that are not a JSON object cannot be passed on, and are the upstream's
failure (502 ``bad_upstream_response``), recorded as such and charged to nobody. An
answer cut at ``max_tokens`` may end inside a call's arguments: that is no failure."""

from __future__ import annotations

from collections.abc import Sequence

from ... import exceptions as exc
from ...adapters import ToolCall
from ...text.unicode import loads


def not_json(calls: Sequence[ToolCall]) -> exc.BadUpstreamResponse | None:
    """The error for tool calls whose arguments are not a JSON object, if any are."""
    for call in calls:
        try:
            if isinstance(loads(call.arguments or "{}"), dict):
                continue
        except (ValueError, RecursionError):  # not JSON, or nested past Python's limit
            pass
        return exc.BadUpstreamResponse(
            f"The model called {call.name!r} with arguments that are not a JSON object.",
        )
    return None


def not_json_pieces(arguments: dict[int, list[str]]) -> exc.BadUpstreamResponse | None:
    """``not_json`` of streamed tool calls: per call, its name then its pieces."""
    return not_json([ToolCall("", name, "".join(rest)) for name, *rest in arguments.values()])
