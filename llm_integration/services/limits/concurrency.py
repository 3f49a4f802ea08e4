"""Concurrency caps (CONTRACT §8): at most ``max_concurrency`` requests of an alias or a
provider in flight at once, across every process that shares the store.

A cap is a set of *leases* (one per request in flight, each with an expiry) and a line
of *waiters* (each with its place: priority first, then arrival). A request takes a
slot only if fewer than ``cap`` leases are live and no waiter with a better place is
still owed one, so a freed slot goes to the best waiter in any process; a request
refused joins the line of the caps that are full only (a waiter for a full alias does
not hold back its provider's other aliases). Both live in
the shared store: in Redis, two sorted sets per cap changed by one Lua script (atomic
across caps); in this process's memory otherwise (the same rules under a lock).

Leases and waiters expire: a process killed mid-request frees its slots within
``LEASE_SECONDS``, and a waiter that stopped asking leaves the line within
``WAITER_SECONDS``. The process renews the leases of its requests in flight
(``renew``) while they run.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from . import sharedstate
from .sharedstate import RedisStore, Store

#: A request's slot outlives a killed process by at most this long.
LEASE_SECONDS = 30.0
#: A waiter that has not asked again for this long has left the line.
WAITER_SECONDS = 5.0
#: Priorities are clamped to this range (they are part of a sorted set's float score).
PRIORITY_RANGE = 1000


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``limit`` requests in flight for ``key`` (``alias:3``, ``provider:1``)."""

    key: str
    limit: int
    label: str


def caps_for(alias) -> list[Cap]:
    """The caps of a candidate: its provider's and its own."""
    caps = []
    provider = alias.provider
    if provider.max_concurrency:
        label = f"provider {provider.name}"
        caps.append(Cap(f"provider:{provider.pk}", provider.max_concurrency, label))
    if alias.max_concurrency:
        caps.append(Cap(f"alias:{alias.pk}", alias.max_concurrency, f"model {alias.slug}"))
    return caps


_sequence = itertools.count()


def place(priority: int, arrived: float) -> int:
    """A waiter's place in line (lower is served first): priority, then arrival (ms).
    An integer below 2**53, so a sorted set's double score holds it exactly (it goes to
    Redis as its decimal digits, never through Lua's number formatting)."""
    clamped = max(-PRIORITY_RANGE, min(PRIORITY_RANGE, priority))
    return (PRIORITY_RANGE - clamped) * 2**42 + int(arrived * 1000)


# -- Redis ------------------------------------------------------------------------------------
#: KEYS: for each cap, its leases then its waiters then its waiters' expiries.
#: ARGV: now, lease expiry, waiter expiry, member, place, then each cap's limit.
ACQUIRE = """
local now, lease_until, wait_until = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local member, place = ARGV[4], ARGV[5]
local n = #KEYS / 3
local ok = true
local full = {}
for i = 0, n - 1 do
  local leases, waiters, expiries = KEYS[i*3+1], KEYS[i*3+2], KEYS[i*3+3]
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local gone = redis.call('ZRANGEBYSCORE', expiries, '-inf', now)
  for _, m in ipairs(gone) do redis.call('ZREM', waiters, m) end
  redis.call('ZREMRANGEBYSCORE', expiries, '-inf', now)
  local free = tonumber(ARGV[6+i]) - redis.call('ZCARD', leases)
  local ahead = redis.call('ZCOUNT', waiters, '-inf', '(' .. place)
  full[i] = free <= ahead
  if full[i] then ok = false end
end
for i = 0, n - 1 do
  local leases, waiters, expiries = KEYS[i*3+1], KEYS[i*3+2], KEYS[i*3+3]
  if ok then
    redis.call('ZADD', leases, lease_until, member)
  end
  if full[i] and not ok then
    redis.call('ZADD', waiters, place, member)
    redis.call('ZADD', expiries, wait_until, member)
  else
    redis.call('ZREM', waiters, member)
    redis.call('ZREM', expiries, member)
  end
  redis.call('PEXPIRE', leases, math.ceil((tonumber(lease_until) - now) * 1000) + 1000)
  redis.call('PEXPIRE', waiters, math.ceil((tonumber(wait_until) - now) * 1000) + 1000)
  redis.call('PEXPIRE', expiries, math.ceil((tonumber(wait_until) - now) * 1000) + 1000)
end
if ok then return 1 else return 0 end
"""


def _keys(store: RedisStore, cap: Cap) -> list[str]:
    base = store.key(f"llm:cc:{cap.key}")
    return [f"{base}:leases", f"{base}:waiters", f"{base}:expiries"]


class RedisSlots:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def script(self):
        """``ACQUIRE`` registered with this loop's client (sent by its SHA1 after the
        first call)."""
        client = self.store.client()
        script = self._scripts.get(client)
        if script is None:
            script = self._scripts[client] = client.register_script(ACQUIRE)
        return script

    async def acquire(self, caps: list[Cap], member: str, place: int, now: float) -> bool:
        keys = [k for cap in caps for k in _keys(self.store, cap)]
        args = [now, now + LEASE_SECONDS, now + WAITER_SECONDS, member, place]
        args += [cap.limit for cap in caps]
        return bool(await self.script()(keys=keys, args=args))

    async def release(self, caps: list[Cap], member: str) -> None:
        pipe = self.store.client().pipeline(transaction=False)
        for cap in caps:
            leases, waiters, expiries = _keys(self.store, cap)
            pipe.zrem(leases, member)
            pipe.zrem(waiters, member)
            pipe.zrem(expiries, member)
        await pipe.execute()

    async def renew(self, held: list[tuple[Cap, str]], now: float) -> None:
        pipe = self.store.client().pipeline(transaction=False)
        for cap, member in held:
            leases = _keys(self.store, cap)[0]
            pipe.zadd(leases, {member: now + LEASE_SECONDS}, xx=True)
            # The set outlives its longest lease (every other one ends sooner).
            pipe.pexpire(leases, int((LEASE_SECONDS + 1) * 1000))
        await pipe.execute()


# -- this process's memory --------------------------------------------------------------------
class LocalSlots:
    """The same rules as ``ACQUIRE``, in this process only (no shared store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, dict[str, float]] = {}
        self._waiters: dict[str, dict[str, tuple[int, float]]] = {}

    async def acquire(self, caps: list[Cap], member: str, place: int, now: float) -> bool:
        with self._lock:
            full = []
            for cap in caps:
                leases = self._leases.setdefault(cap.key, {})
                waiters = self._waiters.setdefault(cap.key, {})
                for m in [m for m, until in leases.items() if until <= now]:
                    del leases[m]
                for m in [m for m, (_, until) in waiters.items() if until <= now]:
                    del waiters[m]
                ahead = sum(1 for p, _ in waiters.values() if p < place)
                full.append(cap.limit - len(leases) <= ahead)
            ok = not any(full)
            for cap, is_full in zip(caps, full, strict=True):
                if ok:
                    self._leases[cap.key][member] = now + LEASE_SECONDS
                if is_full and not ok:  # in line only where the cap is full
                    self._waiters[cap.key][member] = (place, now + WAITER_SECONDS)
                else:
                    self._waiters[cap.key].pop(member, None)
            return ok

    async def release(self, caps: list[Cap], member: str) -> None:
        with self._lock:
            for cap in caps:
                self._leases.get(cap.key, {}).pop(member, None)
                self._waiters.get(cap.key, {}).pop(member, None)

    async def renew(self, held: list[tuple[Cap, str]], now: float) -> None:
        with self._lock:
            for cap, member in held:
                leases = self._leases.get(cap.key, {})
                if member in leases:
                    leases[member] = now + LEASE_SECONDS

    def in_flight(self, key: str) -> int:
        with self._lock:
            return len(self._leases.get(key, {}))


_local = LocalSlots()


def local_slots() -> LocalSlots:
    return _local


class Leases:
    """The slots this process's requests hold, renewed every third of ``LEASE_SECONDS``
    while any is held (one task, which ends at its first turn with nothing held)."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[RedisSlots | LocalSlots, list[Cap], Callable[[], float]]] = {}
        self.task: asyncio.Task | None = None

    def add(self, slots, caps: list[Cap], member: str, now: Callable[[], float]) -> None:
        self.held[member] = (slots, caps, now)
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self.renew_while_held())

    def remove(self, member: str) -> None:
        self.held.pop(member, None)  # the task ends at its next turn if nothing is held

    async def renew_while_held(self) -> None:
        while self.held:
            await asyncio.sleep(LEASE_SECONDS / 3)
            by_store: dict[int, tuple[RedisSlots | LocalSlots, list, float]] = {}
            for member, (slots, caps, now) in list(self.held.items()):
                entry = by_store.setdefault(id(slots), (slots, [], now()))
                entry[1].extend((cap, member) for cap in caps)
            for slots, held, now in by_store.values():
                await sharedstate.guarded(lambda s=slots, h=held, n=now: s.renew(h, n), None)


leases = Leases()


def slots_for(store: Store) -> RedisSlots | LocalSlots:
    """Slots in ``store`` when it is Redis, else in this process's memory (a local or
    other Django cache cannot run the script atomically: caps are then per process)."""
    if isinstance(store, RedisStore):
        return _redis_slots(store)
    return _local


@functools.lru_cache(maxsize=8)
def _redis_slots(store: RedisStore) -> RedisSlots:
    return RedisSlots(store)


_PROCESS = secrets.token_hex(6)


def new_member() -> str:
    """A lease's name: unique across processes."""
    return f"{_PROCESS}-{next(_sequence)}"
