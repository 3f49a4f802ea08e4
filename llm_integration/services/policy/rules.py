"""Routing rules (CONTRACT §7): rows evaluated in ``position`` order before an alias is
chosen; the first whose named conditions all hold decides. Conditions: the request's
task label, the caller's plan, the requested alias, and a pattern searched in every
text of the request. Decisions: the alias that serves it, ``local`` only, or a refusal.

Patterns are RE2 expressions (google-re2): matching takes time linear in the text, so no
pattern can backtrack catastrophically on a large message, and all of a snapshot's
patterns are searched in one pass (``re2.Set``) however many rules there are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import re2

from ... import exceptions as exc
from ...adapters import ChatRequest
from ...models import ModelAlias, RoutingRule
from ...text.patterns import LABEL, pattern_error, pattern_options
from ..config.snapshot import Snapshot

logger = logging.getLogger("llm_integration.policy")

MAX_TAGS = 16


@dataclass(frozen=True, slots=True)
class Labels:
    """What a caller says about a request: its task, and tags for cost reporting."""

    task: str = ""
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        task: object = None,
        tags: object = None,
        *,
        task_field: str = "task",
        tags_field: str = "tags",
    ) -> Labels:
        """Checked labels; a 400 names the field at fault (``metadata.task``,
        ``X-LLM-Tags``). Tags may come as a list or as one comma-separated string."""
        if task is not None and task != "":
            if not isinstance(task, str) or not LABEL.fullmatch(task):
                raise exc.InvalidRequest(
                    f"'{task_field}' must be a label: letters, digits and _.:/- (at most 64).",
                    param=task_field,
                )
        if isinstance(tags, str):
            tags = [tag.strip() for tag in tags.split(",") if tag.strip()]
        if tags is None:
            tags = []
        if not isinstance(tags, list | tuple) or len(tags) > MAX_TAGS:
            raise exc.InvalidRequest(
                f"'{tags_field}' must be a list of at most {MAX_TAGS} labels.", param=tags_field
            )
        for tag in tags:
            if not isinstance(tag, str) or not LABEL.fullmatch(tag):
                raise exc.InvalidRequest(
                    f"'{tags_field}' must hold labels: letters, digits and _.:/- (at most 64).",
                    param=tags_field,
                )
        return cls(task or "", tuple(dict.fromkeys(tags)))

    @classmethod
    def from_headers(cls, meta) -> Labels:
        """``X-LLM-Task`` and ``X-LLM-Tags`` (any HTTP surface)."""
        return cls.parse(
            meta.get("HTTP_X_LLM_TASK"),
            meta.get("HTTP_X_LLM_TAGS"),
            task_field="X-LLM-Task",
            tags_field="X-LLM-Tags",
        )

    def merged(self, other: Labels) -> Labels:
        """These labels, with ``other``'s where these have none (body over headers)."""
        return Labels(self.task or other.task, self.tags or other.tags)


NO_LABELS = Labels()


@dataclass(frozen=True, slots=True)
class Route:
    """What the rule that applied decided (``rule`` empty: none applied)."""

    rule: str = ""
    model: ModelAlias | None = None
    local_only: bool = False
    refusal: str = ""


NO_ROUTE = Route()


def request_text(request: ChatRequest) -> str:
    """Every text of a request, one per line: what a rule's pattern is searched in."""
    texts: list[str] = []
    for message in request.messages:
        texts.append(message.content)
        texts.extend(part for part in message.parts if isinstance(part, str))
        texts.extend(call.arguments for call in message.tool_calls)
    return "\n".join(texts)


def as_labels(value: object) -> frozenset[str]:
    """A rule's list field as a set (a row saved without ``clean()`` may hold a string:
    one label, never a substring match)."""
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list | tuple):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule's conditions as sets, and where its pattern sits in the book's set."""

    row: RoutingRule
    tasks: frozenset[str]
    plans: frozenset[str]
    models: frozenset[str]
    slot: int | None
    #: Why its pattern could not be compiled (a row saved without ``clean()``).
    broken: str = ""


class RuleBook:
    """A snapshot's enabled rules in order, their patterns compiled into one RE2 set.

    A rule whose pattern RE2 refuses (saved past ``clean()``) is not skipped: a request
    its other conditions hold for gets 503 ``configuration_error`` naming it, rather
    than go where the rule might have forbidden."""

    def __init__(self, rules: Iterable[RoutingRule]) -> None:
        self.patterns = None
        self.rules: list[CompiledRule] = []
        for row in rules:
            if not row.enabled:
                continue
            slot, broken = None, ""
            if row.pattern:
                broken = pattern_error(row.pattern) or ""
                if not broken:
                    if self.patterns is None:
                        self.patterns = re2.Set.SearchSet(pattern_options())
                    slot = self.patterns.Add(row.pattern)
            self.rules.append(
                CompiledRule(
                    row,
                    as_labels(row.tasks),
                    as_labels(row.plans),
                    as_labels(row.model_ids),
                    slot,
                    broken,
                )
            )
            if broken:
                logger.error("llm.rule_broken", extra={"rule": row.name, "reason": broken})
        if self.patterns is not None:
            self.patterns.Compile()

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def searches(self) -> bool:
        """Whether some rule searches the request's text."""
        return self.patterns is not None

    def route(self, *, task: str, plan: str, model: str, text: Callable[[], str]) -> Route:
        """The first rule whose conditions hold (``text()`` is read at most once, and
        only when a rule's other conditions hold and it names a pattern)."""
        matched: set[int] | None = None
        for rule in self.rules:
            if rule.tasks and task not in rule.tasks:
                continue
            if rule.plans and plan not in rule.plans:
                continue
            if rule.models and model not in rule.models:
                continue
            if rule.broken:
                raise exc.ConfigurationError(
                    f"Routing rule {rule.row.name!r} cannot be applied: {rule.broken}"
                )
            if rule.slot is not None:
                if matched is None:
                    matched = set(self.patterns.Match(text()) or ())
                if rule.slot not in matched:
                    continue
            row = rule.row
            return Route(
                rule=row.name,
                model=row.serve_with,
                local_only=row.locality == ModelAlias.Locality.LOCAL,
                refusal=row.refuse_message,
            )
        return NO_ROUTE


_compiled: tuple[Snapshot, RuleBook] | None = None


def rule_book(snapshot: Snapshot) -> RuleBook:
    """The rules of ``snapshot``, compiled once per snapshot (a new snapshot: new rules)."""
    global _compiled
    compiled = _compiled
    if compiled is None or compiled[0] is not snapshot:
        compiled = _compiled = (snapshot, RuleBook(snapshot.rules))
    return compiled[1]
