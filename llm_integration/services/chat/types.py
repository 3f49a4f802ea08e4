"""The chat service's types: what callers get back, and what a request carries on its
way through (its admission, the request prepared for a candidate alias)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from ...adapters import ChatRequest, ToolCall, ToolCallDelta, Usage
from ...adapters.thinking import ThinkingBlock, ThinkingDelta
from ...models import ModelAlias, Plan, PlanEntitlement
from ..config.snapshot import Snapshot
from ..limits.ratelimit import Count
from ..policy.rules import NO_LABELS, NO_ROUTE, Labels, Route

if TYPE_CHECKING:
    from .settlement import Call


@dataclass(slots=True)
class ChatResult:
    """A non-streamed answer."""

    answer: str
    model: str
    request_id: str
    usage: Usage
    cost_usd: Decimal
    finish_reason: str = "stop"
    cached: bool = False
    degraded: bool = False
    #: The tools the model called (``finish_reason: tool_calls``).
    tool_calls: tuple[ToolCall, ...] = ()
    #: The model's reasoning blocks, when it was asked to think.
    thinking: tuple[ThinkingBlock, ...] = ()


@dataclass(slots=True)
class Delta:
    """A piece of a streamed answer."""

    text: str


@dataclass(slots=True)
class Done:
    """The end of a streamed answer, with what it used and cost."""

    model: str
    request_id: str
    usage: Usage
    cost_usd: Decimal
    finish_reason: str = "stop"
    cached: bool = False
    #: A stale answer from the cache, served because every upstream was down.
    degraded: bool = False


@dataclass(slots=True)
class Outcome:
    """How a request ended, as recorded: for surfaces that must report a cancel's usage."""

    status: str
    usage: Usage
    cost_usd: Decimal
    finish_reason: str


class ChatStream:
    """The events of a streamed chat (Delta or ToolCallDelta..., Done) with its request
    id; once it has ended, however it ended, ``outcome`` holds what was recorded."""

    def __init__(
        self, events: AsyncIterator[Delta | ToolCallDelta | ThinkingDelta | Done], call: Call
    ) -> None:
        self.events = events
        self.call = call

    @property
    def request_id(self) -> str:
        return self.call.request_id

    @property
    def outcome(self) -> Outcome | None:
        return self.call.outcome

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Delta | ToolCallDelta | ThinkingDelta | Done:
        return await self.events.__anext__()

    async def aclose(self) -> None:
        await self.events.aclose()


@dataclass(slots=True)
class Admission:
    """What the configuration says about a request: alias, plan, entitlement, the
    candidates in order (the alias, then its fallbacks) and the snapshot it came from."""

    alias: ModelAlias
    plan: Plan | None
    entitlement: PlanEntitlement | None
    candidates: list[ModelAlias]
    snapshot: Snapshot
    #: The routing rule that applied (``NO_ROUTE``: none), and the caller's labels.
    route: Route = NO_ROUTE
    labels: Labels = NO_LABELS


@dataclass(slots=True)
class Prepared:
    """A request made ready for one candidate alias: its messages fitted to the
    context window, its ``max_tokens`` set, its worst case counted."""

    alias: ModelAlias
    request: ChatRequest
    prompt_tokens: int
    worst_cost: Decimal

    @property
    def worst_tokens(self) -> int:
        return self.prompt_tokens + (self.request.max_tokens or 0)


@dataclass(slots=True)
class Taken:
    """Rate-limit counts a request took, with the tokens they counted for it."""

    counts: list[Count]
    tokens: int
