"""Step 5: the response cache, in the shared store (Redis: shared by every process), or
the Django cache ``RESPONSE_CACHE_BACKEND`` names.

Identical requests, streamed or not, to an alias that opted in (``cache_responses``),
or any temperature-0 request while ``CACHE_ENABLED`` is on, are answered from the cache
for ``CACHE_TTL`` seconds (a stream as one piece of text, then its end). Entries live
on for ``CACHE_STALE_TTL`` more seconds as a last resort: when every upstream is down,
a stale answer is served, flagged degraded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ...adapters.base import ChatRequest, Usage
from ...conf import llm_settings
from ...models import ModelAlias
from ..limits import sharedstate


@dataclass(slots=True)
class CachedAnswer:
    text: str
    finish_reason: str
    usage: Usage
    stored_at: float


def cacheable(alias: ModelAlias, request: ChatRequest) -> bool:
    """Whether an answer to ``request`` may come from the cache (an answer that calls
    tools is never cached: the cache keeps text)."""
    if request.uses_tools:
        return False
    if alias.cache_responses:
        return True
    return bool(llm_settings.CACHE_ENABLED) and request.temperature == 0


def cache_key(alias: ModelAlias, request: ChatRequest) -> str:
    payload = json.dumps(
        [
            alias.slug,
            alias.provider_id,
            alias.upstream_model,
            [
                [m.role, m.content, *([[i.url, i.detail] for i in m.images] if m.images else [])]
                for m in request.messages
            ],
            request.temperature,
            request.max_tokens or alias.default_max_tokens,
            list(request.stop),
            [request.top_p, request.seed, request.presence_penalty, request.frequency_penalty],
            [request.top_k, request.reasoning_effort, request.thinking, request.output_config],
            request.response_format.as_openai() if request.response_format else None,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "llm:cache:" + hashlib.sha256(payload.encode()).hexdigest()


def _store() -> sharedstate.Store:
    return sharedstate.store(llm_settings.RESPONSE_CACHE_BACKEND)


async def lookup(key: str, *, now: float, stale: bool = False) -> CachedAnswer | None:
    store = _store()
    found = await sharedstate.guarded(lambda: store.get_many([key]), {})  # down: a miss
    data = found.get(key)
    if not data:
        return None
    answer = CachedAnswer(
        text=data["text"],
        finish_reason=data["finish_reason"],
        usage=Usage(data["prompt_tokens"], data["completion_tokens"]),
        stored_at=data["at"],
    )
    if not stale and now - answer.stored_at > llm_settings.CACHE_TTL:
        return None
    return answer


async def store(key: str, *, text: str, finish_reason: str, usage: Usage, now: float) -> None:
    entry = {
        "text": text,
        "finish_reason": finish_reason,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "at": now,
    }
    timeout = int(llm_settings.CACHE_TTL) + int(llm_settings.CACHE_STALE_TTL)
    shared = _store()
    await sharedstate.guarded(lambda: shared.set(key, entry, timeout), None)
