"""Conversations whose context the gateway keeps (CONTRACT §10).

The client sends only its new message. A turn sends the system prompt, the turns still
in context and the new message; what that comes to (``tokens``) is measured against the
limit (the alias's context window, or ``CONTEXT_TOKENS`` when lower). At
``CONTEXT_WARNING`` of it the status is ``warning``. A turn that would pass
``CONTEXT_COMPRESS_AT`` has turns removed until it is at most ``CONTEXT_COMPRESS_TO``:
less important turns before more important ones, older before newer; the system prompt,
the newest turn and the new message always stay. A removed message stays stored
(``in_context`` false) and is no longer sent.

Only the owner sees a conversation: anyone else's is "not found". Functions here are
synchronous (callers on the event loop run them with ``run_db``), except a turn's slot
(``turn_slot``), which is awaited.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
import weakref
from dataclasses import dataclass, replace
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from ... import exceptions as exc
from ...conf import llm_settings
from ...models import Conversation, ConversationMessage
from ...text.tokens import TOKENS_PER_MESSAGE, estimate_text_tokens
from ...text.unicode import clean
from ..config.entitlements import visible_aliases
from ..config.snapshot import config
from ..db import write_lock
from ..limits import concurrency, sharedstate

logger = logging.getLogger("llm_integration.conversations")

#: A conversation id, as the gateway makes them: anything else names none (and never
#: reaches the database).
CONVERSATION_ID = re.compile(r"conv_[0-9a-f]{32}", re.ASCII)
#: How many of the caller's conversations a listing shows, newest first.
LISTED = 100


@dataclass(frozen=True, slots=True)
class Entry:
    """A message still in context, as the plan weighs it."""

    id: int
    position: int
    role: str
    tokens: int
    importance: float


@dataclass(frozen=True, slots=True)
class Context:
    """Where a turn's context stands: what it sent (``tokens``) against ``limit``, and
    the messages it removed to get there."""

    tokens: int
    limit: int
    status: str
    dropped: tuple[int, ...] = ()
    #: How many of the removed messages a summary now stands for.
    summarized: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "limit": self.limit,
            "percent": round(self.tokens * 100 / self.limit, 1) if self.limit else 0.0,
            "status": self.status,
            "dropped": len(self.dropped),
            "summarized": self.summarized,
        }


@dataclass(frozen=True, slots=True)
class Turn:
    """A turn ready to send: the conversation, its messages for the chat path, and the
    context plan that chose them."""

    conversation: Conversation
    messages: list[dict[str, str]]
    message: str
    importance: float
    message_tokens: int
    context: Context
    #: The system text sent: the system prompt, then the summary of removed turns.
    system: str | None = None
    summary: str = ""
    #: The messages this turn removes, oldest first (what a summary would cover).
    left_out: tuple[dict[str, str], ...] = ()

    def summarized(self, summary: str) -> Turn:
        """This turn with ``summary`` standing for everything removed so far."""
        system = system_text(self.conversation.system_prompt, summary)
        tokens = self.context.tokens - text_tokens(self.system) + text_tokens(system)
        context = replace(self.context, tokens=tokens, summarized=len(self.left_out))
        return replace(self, system=system, summary=summary, context=context)


def system_text(prompt: str, summary: str) -> str | None:
    """What goes as the system message: the prompt, then the summary, if any."""
    if not summary:
        return prompt or None
    note = "Summary of the conversation so far:\n" + summary
    return f"{prompt}\n\n{note}" if prompt else note


def text_tokens(text: str | None) -> int:
    return message_tokens(text) if text else 0


def storable(text: str) -> str:
    """An answer as a text column keeps it: PostgreSQL's cannot hold a NUL, nor any
    encoding a lone surrogate; each becomes U+FFFD (clients' text is refused with
    either before it gets here)."""
    return clean(text).replace("\x00", "\ufffd")


def message_tokens(text: str) -> int:
    """A message's tokens as the context plan counts them (an estimate: the limit is a
    budget, not a bill)."""
    return estimate_text_tokens(text) + TOKENS_PER_MESSAGE


def plan(system: int, history: list[Entry], new: int, limit: int) -> Context:
    """Which turns of ``history`` go with the new message (``new`` tokens) and the
    system prompt (``system`` tokens), by the rules above."""
    total = system + sum(entry.tokens for entry in history) + new
    dropped: list[int] = []
    if total > float(llm_settings.CONTEXT_COMPRESS_AT) * limit:
        target = float(llm_settings.CONTEXT_COMPRESS_TO) * limit
        turns = turns_of(history)[:-1]  # the newest turn stays
        for turn in sorted(turns, key=lambda t: (max(e.importance for e in t), t[0].position)):
            if total <= target:
                break
            total -= sum(entry.tokens for entry in turn)
            dropped.extend(entry.id for entry in turn)
    if dropped:
        status = "compressed"
    elif total >= float(llm_settings.CONTEXT_WARNING) * limit:
        status = "warning"
    else:
        status = "ok"
    return Context(total, limit, status, tuple(dropped))


def turns_of(history: list[Entry]) -> list[list[Entry]]:
    """Messages grouped into turns: a user message and the replies after it."""
    turns: list[list[Entry]] = []
    for entry in history:
        if entry.role == "user" or not turns:
            turns.append([entry])
        else:
            turns[-1].append(entry)
    return turns


def context_limit(alias_slug: str) -> int:
    alias = config.current().aliases.get(alias_slug)
    window = alias.context_window if alias is not None else 0
    ceiling = int(llm_settings.CONTEXT_TOKENS)
    return min(window, ceiling) if window else ceiling


def not_found(conversation_id: str) -> exc.ConversationNotFound:
    return exc.ConversationNotFound(f"Conversation {conversation_id!r:.80} not found.")


def mine(user: Any, conversation_id: str) -> Conversation:
    """``user``'s conversation of that id (404 for anyone else's, or a malformed id)."""
    if CONVERSATION_ID.fullmatch(conversation_id):
        try:
            return Conversation.objects.get(pk=conversation_id, user_id=user.pk)
        except Conversation.DoesNotExist:
            pass
    raise not_found(conversation_id)


def create(user: Any, *, model: str | None, system_prompt: str, title: str) -> dict[str, Any]:
    """A new conversation with an alias ``user`` may use (404 unknown, 403 locked)."""
    slug = model or llm_settings.DEFAULT_MODEL
    for alias, locked in visible_aliases(user):
        if alias.slug == slug:
            if locked:
                raise exc.ModelNotAllowed(f"Your plan does not include {slug!r}.")
            break
    else:
        raise exc.ModelNotFound(f"Unknown model {slug!r:.120}.")
    with write_lock():
        made = Conversation.objects.create(
            id=f"conv_{uuid.uuid4().hex}",
            user_id=user.pk,
            alias=slug,
            system_prompt=system_prompt,
            title=title,
        )
    return summary(made)


def summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "model": conversation.alias,
        "title": conversation.title,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def listed(user: Any) -> list[dict[str, Any]]:
    """``user``'s conversations, the most recently used first."""
    rows = Conversation.objects.filter(user_id=user.pk).order_by("-updated_at")[:LISTED]
    return [summary(row) for row in rows]


def read(user: Any, conversation_id: str) -> dict[str, Any]:
    """A conversation whole: its messages (removed ones marked) and its context."""
    conversation = mine(user, conversation_id)
    messages = [
        {
            "role": m.role,
            "content": m.content,
            "importance": m.importance,
            "tokens": m.tokens,
            "in_context": m.in_context,
            "created_at": m.created_at.isoformat(),
        }
        for m in conversation.messages.order_by("position")
    ]
    limit = context_limit(conversation.alias)
    status = Context(conversation.tokens, limit, conversation.context_status).as_dict()
    return {
        **summary(conversation),
        "system_prompt": conversation.system_prompt,
        "summary": conversation.summary,
        "messages": messages,
        "context": {k: status[k] for k in ("tokens", "limit", "percent", "status")},
    }


def forget(user: Any, conversation_id: str) -> None:
    """Delete a conversation and its messages (its usage rows stay)."""
    conversation = mine(user, conversation_id)
    with write_lock():
        conversation.delete()


def prepare(user: Any, conversation_id: str, message: str, importance: float) -> Turn:
    """The next turn of ``user``'s conversation: what to send, and the context plan."""
    conversation = mine(user, conversation_id)
    kept = list(
        conversation.messages.filter(in_context=True)
        .order_by("position")
        .values_list("id", "position", "role", "content", "tokens", "importance")
    )
    history = [Entry(i, pos, role, tokens, imp) for i, pos, role, _c, tokens, imp in kept]
    system = system_text(conversation.system_prompt, conversation.summary)
    new = message_tokens(message)
    context = plan(text_tokens(system), history, new, context_limit(conversation.alias))
    dropped = set(context.dropped)
    messages, left_out = [], []
    for i, _pos, role, content, _t, _imp in kept:
        (left_out if i in dropped else messages).append({"role": role, "content": content})
    messages.append({"role": "user", "content": message})
    return Turn(
        conversation,
        messages,
        message,
        importance,
        new,
        context,
        system=system,
        summary=conversation.summary,
        left_out=tuple(left_out),
    )


def may_summarize(turn: Turn) -> str | None:
    """The alias that may summarize what ``turn`` removes (``SUMMARY_MODEL``), or None.
    Never an external one for a conversation that may have to stay local: one on a
    local alias, or while any routing rule keeps requests local (the rule could apply
    to this conversation's turns, whose text the summary would carry out)."""
    slug = llm_settings.SUMMARY_MODEL
    if not slug or not turn.left_out:
        return None
    snapshot = config.current()
    summarizer = snapshot.aliases.get(slug)
    if summarizer is None:
        logger.warning("llm.summary_model_missing", extra={"alias": slug})
        return None
    if summarizer.is_local:
        return slug
    serving = snapshot.aliases.get(turn.conversation.alias)
    if (serving is not None and serving.is_local) or any(
        rule.locality == "local" for rule in snapshot.rules
    ):
        return None
    return slug


def summary_request(turn: Turn) -> list[dict[str, str]]:
    """The summarizer's prompt: the summary so far and the removed messages."""
    transcript = "\n\n".join(f"{m['role']}: {m['content']}" for m in turn.left_out)
    earlier = f"The summary so far:\n{turn.summary}\n\n" if turn.summary else ""
    return [
        {
            "role": "user",
            "content": "Summarize this earlier part of a conversation in a few sentences, "
            "keeping names, facts, decisions and open questions; write only the "
            f"summary.\n\n{earlier}The messages:\n{transcript}",
        }
    ]


def record(turn: Turn, answer: str) -> None:
    """Keep the turn: the removed messages out of context, the new message and the
    answer appended after whatever the conversation holds by now (a turn recorded
    meanwhile by another process is not overwritten), the context's standing."""
    conversation = turn.conversation
    now = timezone.now()
    with write_lock(), transaction.atomic():
        # First, so that the row is locked (PostgreSQL) while the turn is appended.
        kept = Conversation.objects.filter(pk=conversation.pk).update(
            tokens=turn.context.tokens,
            context_status=turn.context.status,
            summary=storable(turn.summary),
            updated_at=now,
        )
        if not kept:  # deleted while the turn ran: nothing to keep it in
            return
        if turn.context.dropped:
            ConversationMessage.objects.filter(pk__in=turn.context.dropped).update(in_context=False)
        last = conversation.messages.aggregate(last=Max("position"))["last"]
        position = -1 if last is None else last
        ConversationMessage.objects.bulk_create(
            [
                ConversationMessage(
                    conversation=conversation,
                    position=position + 1,
                    role="user",
                    content=turn.message,
                    importance=turn.importance,
                    tokens=turn.message_tokens,
                    created_at=now,
                ),
                ConversationMessage(
                    conversation=conversation,
                    position=position + 2,
                    role="assistant",
                    content=storable(answer),
                    importance=turn.importance,
                    tokens=message_tokens(answer),
                    created_at=now,
                ),
            ]
        )


_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
#: Seconds between two asks for a conversation another process holds.
POLL_SECONDS = 0.05


class TurnSlot:
    """A conversation's turns one at a time, in the order they came, so that two
    messages posted at once are answered in order, each seeing the one before.

    In this process, a lock per conversation. Across processes, a concurrency cap of one
    in the shared store (Redis), taken after the lock: a lease renewed while the turn
    runs (a process killed mid-turn frees it within ``LEASE_SECONDS``), and a line in
    arrival order. Without Redis, or while it is down, turns are ordered per process.
    A turn waits at most ``REQUEST_DEADLINE`` for both, then is ``ConversationBusy``."""

    def __init__(self, conversation_id: str) -> None:
        lock = _locks.get(conversation_id)
        if lock is None:
            lock = _locks[conversation_id] = asyncio.Lock()
        self.lock = lock
        self.caps = [concurrency.Cap(f"conversation:{conversation_id}", 1, "conversation")]
        self.member = concurrency.new_member()
        self.slots = None

    async def acquire(self) -> None:
        wait = float(llm_settings.REQUEST_DEADLINE)
        wait_until = time.monotonic() + wait
        try:
            async with asyncio.timeout(wait):
                await self.lock.acquire()
        except TimeoutError:
            raise busy() from None
        try:
            slots = concurrency.slots_for(sharedstate.store())
            if slots is concurrency.local_slots():
                return  # one process: the lock is the order
            order = concurrency.place(0, time.time())

            async def ask() -> bool:
                return await slots.acquire(self.caps, self.member, order, time.time())

            while not await sharedstate.guarded(ask, True):  # store down: per process
                if time.monotonic() > wait_until:
                    await sharedstate.guarded(self.give_back(slots), None)
                    raise busy()
                await asyncio.sleep(POLL_SECONDS)
            self.slots = slots
            concurrency.leases.add(slots, self.caps, self.member, time.time)
        except BaseException:
            self.lock.release()
            raise

    def give_back(self, slots):
        return lambda: slots.release(self.caps, self.member)

    async def release(self) -> None:
        slots, self.slots = self.slots, None
        try:
            if slots is not None:
                concurrency.leases.remove(self.member)
                await sharedstate.guarded(self.give_back(slots), None)
        finally:
            self.lock.release()


def busy() -> exc.ConversationBusy:
    return exc.ConversationBusy(
        "Another turn of this conversation is still running; try again.", retry_after=1
    )


def turn_slot(conversation_id: str) -> TurnSlot:
    """The slot a turn of ``conversation_id`` holds while it runs (``acquire``, then
    ``release`` however the turn ends); a malformed id is not found, before any line."""
    if not CONVERSATION_ID.fullmatch(conversation_id):
        raise not_found(conversation_id)
    return TurnSlot(conversation_id)
