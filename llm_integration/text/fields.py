"""Fields a payload may carry: anything else is refused by name, never dropped silently.

A leaf: the adapters (tool and image parts) and the surfaces (REST, /v1, WebSocket)
check their fields with the same words."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ..exceptions import UnsupportedParameter


def refuse_unknown(
    data: Mapping[str, Any],
    known: Collection[str],
    *,
    noops: Mapping[str, Any] | None = None,
    prefix: str = "",
) -> None:
    """400 ``unsupported_parameter`` naming the first field of ``data`` the gateway does
    not carry (``prefix`` places it: ``messages[0].``). ``null`` is the same as leaving
    a field out, and a field set to its value in ``noops`` asks for nothing
    (``logprobs: false``)."""
    for name, value in data.items():
        if name in known or value is None or (noops and name in noops and value == noops[name]):
            continue
        raise UnsupportedParameter(
            f"The parameter '{prefix}{name}' is not supported by this gateway.",
            param=f"{prefix}{name}",
        )


def refuse_unknown_in_message(message: Mapping[str, Any], index: int) -> None:
    """A message carries ``role`` and ``content`` (and for tool calling ``tool_calls``
    or ``tool_call_id``; an assistant's reasoning, ``thinking_blocks``); anything else
    is refused by name."""
    refuse_unknown(message, MESSAGE_FIELDS, prefix=f"messages[{index}].")


MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id", "thinking_blocks"})
