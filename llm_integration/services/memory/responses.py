"""Stored responses of the Responses API: kept for their owner, read back, continued.

A response is kept (``store``, the default) before its answer is sent, so the very next
request can continue it. Each row holds its own turn; a continuation reads the rows of
its chain (two queries, however long the conversation) and replays their items in
order. Only the owner sees a response: anyone else's is "not found". Functions here are
synchronous: callers on the event loop run them with ``run_db``.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Max

from ... import exceptions as exc
from ...conf import llm_settings
from ...models import StoredResponse
from ..db import write_lock


@dataclass(frozen=True, slots=True)
class Earlier:
    """What a continuation replays: the items of its chain, oldest first, and the ids of
    the responses they came from (the new response's ``chain``)."""

    items: list[dict[str, Any]] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)


NOTHING_EARLIER = Earlier()
#: A response id, as the gateway makes them: anything else names no stored response
#: (and never reaches the database: PostgreSQL's text cannot hold a NUL).
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}", re.ASCII)


def mine(user: Any, response_id: str):
    """``user``'s stored response of that id, as a query (empty for a malformed id)."""
    if not RESPONSE_ID.fullmatch(response_id):
        return StoredResponse.objects.none()
    return StoredResponse.objects.filter(pk=response_id, user_id=user.pk)


def earlier(user: Any, response_id: str) -> Earlier:
    """The conversation up to and including ``response_id``, one of ``user``'s."""
    last = mine(user, response_id).first()
    if last is None:
        raise exc.PreviousResponseNotFound(
            f"Previous response with id {response_id[:80]!r} not found.",
            param="previous_response_id",
        )
    # Two messages a turn at least, and the new input: the chain must leave room.
    if 2 * (len(last.chain) + 1) + 1 > llm_settings.MAX_MESSAGES:
        raise exc.InvalidRequest(
            f"The conversation of {response_id!r} is longer than MAX_MESSAGES allows.",
            param="previous_response_id",
        )
    rows = {
        row.pk: row for row in StoredResponse.objects.filter(pk__in=last.chain, user_id=user.pk)
    }
    chain = [*last.chain, last.pk]
    rows[last.pk] = last
    if gone := [pk for pk in chain if pk not in rows]:
        raise exc.PreviousResponseNotFound(
            f"Response {response_id!r} continues {gone[0]!r}, which was deleted: its "
            "conversation cannot be replayed whole.",
            param="previous_response_id",
        )
    items: list[dict[str, Any]] = []
    for pk in chain:
        items += rows[pk].input_items
        items += rows[pk].body.get("output", [])
    return Earlier(items, chain)


def keep(
    user: Any,
    body: dict[str, Any],
    *,
    input_items: list[dict[str, Any]],
    chain: list[str],
) -> None:
    """Store a response (its id is the body's)."""
    with write_lock():
        StoredResponse.objects.create(
            id=body["id"],
            user_id=user.pk,
            alias=body["model"],
            input_json=json.dumps(input_items),
            body_json=json.dumps(body),
            chain=chain,
            thread=chain[0] if chain else body["id"],
        )


def prune(cutoff: datetime.datetime, batch_size: int) -> int:
    """Delete the conversations whose newest response is older than ``cutoff``, whole
    (a link deleted alone would leave its later responses unable to continue), in
    batches of threads; returns how many responses were deleted."""
    stale = (
        StoredResponse.objects.values("thread")
        .annotate(newest=Max("created_at"))
        .filter(newest__lt=cutoff)
        .values_list("thread", flat=True)
        .order_by()
    )
    deleted = 0
    while threads := list(stale[:batch_size]):
        with write_lock():
            deleted += StoredResponse.objects.filter(thread__in=threads).delete()[0]
    return deleted


def find(user: Any, response_id: str) -> dict[str, Any]:
    """A stored response of ``user``'s, as it was answered."""
    body = mine(user, response_id).values_list("body_json", flat=True).first()
    if body is None:
        raise exc.ResponseNotFound(f"Response with id {response_id[:80]!r} not found.")
    return json.loads(body)


def forget(user: Any, response_id: str) -> None:
    """Delete a stored response of ``user``'s."""
    with write_lock():
        deleted, _ = mine(user, response_id).delete()
    if not deleted:
        raise exc.ResponseNotFound(f"Response with id {response_id[:80]!r} not found.")
