"""Prompt caching hints: Anthropic's ``cache_control`` on a content block, a system
block or a tool, which marks the end of a prefix the upstream may cache.

Carried from every surface that takes it (``/v1/messages`` blocks; LiteLLM's place on
``/v1`` and REST content parts, tools and tool calls) to Anthropic upstreams; other
upstreams ignore it, as a hint changes no answer. A marked text part is ``MarkedText``,
a ``str`` that carries its mark, so every reader of text parts reads it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import exceptions as exc
from ..text.fields import refuse_unknown

#: How long a cache entry lives: Anthropic's default, and the longer one it sells.
TTLS = ("5m", "1h")


@dataclass(frozen=True, slots=True)
class CacheControl:
    """``{"type": "ephemeral"}``, with ``ttl`` when the client gave one."""

    ttl: str = ""

    @property
    def lasts(self) -> str:
        """``5m`` or ``1h``: how long what it marks is kept (what a write costs)."""
        return self.ttl or "5m"

    def as_anthropic(self) -> dict[str, Any]:
        return {"type": "ephemeral", "ttl": self.ttl} if self.ttl else {"type": "ephemeral"}


def parse_cache_control(value: Any, where: str) -> CacheControl | None:
    """A ``cache_control`` object checked (``where``: the field it sits on); None is
    none."""
    if value is None:
        return None
    at = f"{where}.cache_control"
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        raise exc.InvalidRequest(f'{at} must be {{"type": "ephemeral"}}.', param=at)
    refuse_unknown(value, {"type", "ttl"}, prefix=f"{at}.")
    ttl = value.get("ttl")
    if ttl is not None and ttl not in TTLS:
        raise exc.InvalidRequest(f"{at}.ttl must be 5m or 1h.", param=f"{at}.ttl")
    return CacheControl(ttl or "")


class MarkedText(str):
    """A text part after which the prompt may be cached."""

    cache_control: CacheControl

    def __new__(cls, text: str, cache_control: CacheControl) -> MarkedText:
        part = super().__new__(cls, text)
        part.cache_control = cache_control
        return part


def mark_of(part: Any) -> CacheControl | None:
    """The cache mark on a text part, image part, tool or tool call (None: none)."""
    return getattr(part, "cache_control", None)


def with_mark(block: dict[str, Any], mark: CacheControl | None) -> dict[str, Any]:
    """An Anthropic block, with ``cache_control`` when it is marked."""
    if mark is not None:
        block["cache_control"] = mark.as_anthropic()
    return block
