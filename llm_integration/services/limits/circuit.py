"""Circuit breakers, kept in the shared store so all processes agree: one per endpoint
(a provider row: where it sends requests, with which key) and one per deployment (one
upstream model at that endpoint). An endpoint that cannot be reached or refuses the key
trips its own circuit; a model answering 5xx, timing out or sending garbage trips only
its deployment's, so its siblings on the same endpoint keep serving.

closed ──N consecutive failures──> open ──cool-down over──> half-open (one probe)
  ^                                                            │
  └──────────────── probe succeeds ─────────── probe fails: open again

Every request awaits ``allow()`` before its call and reports ``record_success()`` or
``record_failure()`` after it. A process keeps what it last read of a circuit (its
*view*) for ``CIRCUIT_BREAKER_CHECK_INTERVAL`` seconds: a healthy provider costs one
read per interval, not one per request. What this process changes (failures, opening,
closing) goes to the store at once and into its view; a circuit opened by another
process is seen here within the interval; a circuit the view holds half-open is read
again before a probe is claimed, so a probe that closed it elsewhere is not repeated.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

from ...conf import llm_settings
from ...metrics import CIRCUIT_OPEN
from ..clock import SYSTEM_CLOCK, Clock
from . import sharedstate
from .sharedstate import Store


@dataclass(slots=True)
class View:
    """What a process last read of a circuit."""

    read_at: float  # clock.monotonic()
    failures: int
    open_until: float | None


# store -> circuit -> view (weak: a replaced store takes its views along)
_views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget() -> None:
    """Drop every process-local view (tests, after clearing the store behind our back)."""
    _views.clear()


def endpoint_id(provider) -> str:
    """A provider row's circuit: its name and where it sends requests. A changed kind
    or URL (an admin fixing a wrong one) starts a fresh circuit instead of inheriting
    the open one of the old endpoint."""
    where = hashlib.sha256(f"{provider.kind} {provider.base_url}".encode()).hexdigest()[:12]
    return f"{provider.name}@{where}"


def deployment_id(provider, upstream_model: str) -> str:
    """The circuit of ``upstream_model`` at ``provider``'s endpoint (hashed: a model name
    may hold anything a key should not)."""
    model = hashlib.sha256(upstream_model.encode()).hexdigest()[:12]
    return f"{endpoint_id(provider)}/{model}"


class CircuitBreaker:
    """``provider`` and ``model`` (empty for an endpoint): the names metrics carry;
    ``circuit``: the shared keys' identity (``endpoint_id``, ``deployment_id``, or the
    provider's name itself)."""

    def __init__(
        self,
        provider: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        store: Store | None = None,
        circuit: str | None = None,
        model: str = "",
    ):
        self.provider = provider
        self.model = model
        self.circuit = circuit or provider
        #: This object claimed the half-open probe (``allow``) and has not reported yet.
        self.probing = False
        self.clock = clock
        self.store = store or sharedstate.store()
        self.failures_key = f"llm:cb:{self.circuit}:failures"
        self.open_until_key = f"llm:cb:{self.circuit}:open_until"
        self.probe_key = f"llm:cb:{self.circuit}:probe"

    @classmethod
    def of(cls, provider, *, clock: Clock = SYSTEM_CLOCK) -> CircuitBreaker:
        """The circuit of a ``Provider`` row's endpoint (see ``endpoint_id``)."""
        return cls(provider.name, clock=clock, circuit=endpoint_id(provider))

    @classmethod
    def of_deployment(cls, alias, *, clock: Clock = SYSTEM_CLOCK) -> CircuitBreaker:
        """The circuit of an alias's upstream model at its provider's endpoint (aliases
        of one model at one endpoint share it)."""
        provider = alias.provider
        return cls(
            provider.name,
            clock=clock,
            circuit=deployment_id(provider, alias.upstream_model),
            model=alias.upstream_model,
        )

    # -- the view ----------------------------------------------------------------------
    def known(self) -> View | None:
        views = _views.get(self.store)
        return views.get(self.circuit) if views is not None else None

    async def view(self, *, fresh: bool = False) -> View:
        view = self.known()
        interval = float(llm_settings.CIRCUIT_BREAKER_CHECK_INTERVAL)
        if view is not None and not fresh and self.clock.monotonic() - view.read_at < interval:
            return view
        keys = [self.failures_key, self.open_until_key]
        values = await sharedstate.guarded(lambda: self.store.get_many(keys), None)
        if values is None:  # the store is down: keep what was known (else closed)
            known = view or View(0.0, 0, None)
            return self.remember(known.failures, known.open_until)
        return self.remember(
            int(values.get(self.failures_key) or 0), values.get(self.open_until_key)
        )

    def remember(self, failures: int, open_until: float | None) -> View:
        view = View(self.clock.monotonic(), failures, open_until)
        _views.setdefault(self.store, {})[self.circuit] = view
        return view

    def state_of(self, view: View) -> str:
        if view.open_until is None:
            return "closed"
        return "open" if self.clock.time() < view.open_until else "half_open"

    # -- the breaker -------------------------------------------------------------------
    async def state(self) -> str:
        """The circuit's state as the shared store has it now (always read)."""
        return self.state_of(await self.view(fresh=True))

    async def allow(self) -> bool:
        """Whether a request may go to this provider now (claims the half-open probe)."""
        state = self.state_of(await self.view())
        if state == "half_open":  # another process's probe may have closed it
            state = self.state_of(await self.view(fresh=True))
        if state == "closed":
            return True
        if state == "open":
            return False
        cooldown = max(1.0, float(llm_settings.CIRCUIT_BREAKER_COOLDOWN))
        # The store down: no probe can be claimed, so every request may probe.
        claimed = await sharedstate.guarded(
            lambda: self.store.add(self.probe_key, 1, cooldown), True
        )
        self.probing = bool(claimed)
        return self.probing

    async def peek(self) -> str:
        """The state as this process sees it, claiming nothing (a half-open view is
        read again: another process's probe may have closed it)."""
        state = self.state_of(await self.view())
        if state == "half_open":
            state = self.state_of(await self.view(fresh=True))
        return state

    async def abandon(self) -> None:
        """Give back a probe this object claimed and will not report on (the request
        went elsewhere, or its outcome says nothing of this circuit): the next request
        may probe at once instead of after another cool-down."""
        if self.probing:
            self.probing = False
            await sharedstate.guarded(lambda: self.store.delete_many([self.probe_key]), None)

    async def record_success(self) -> None:
        self.probing = False
        view = await self.view()
        if view.failures or view.open_until is not None:
            await self.forget_failures()
            CIRCUIT_OPEN.labels(self.provider, self.model).set(0)

    async def record_failure(self) -> None:
        self.probing = False
        known = await self.view()
        counted = await sharedstate.guarded(
            lambda: self.store.incr_many([(self.failures_key, 1)], ttl=86_400), None
        )
        failures = counted[0] if counted else known.failures + 1
        view = await self.view(fresh=True)
        if failures >= int(llm_settings.CIRCUIT_BREAKER_THRESHOLD) or (
            self.state_of(view) == "half_open"
        ):
            await self.open(self.clock.time() + float(llm_settings.CIRCUIT_BREAKER_COOLDOWN))
        else:
            self.remember(failures, view.open_until)

    async def force_open(self) -> None:
        """Open the circuit now (a failed health check): requests skip this provider
        until the cool-down's probe."""
        await self.open(self.clock.time() + float(llm_settings.CIRCUIT_BREAKER_COOLDOWN))

    async def reset(self) -> None:
        await self.forget_failures()
        CIRCUIT_OPEN.labels(self.provider, self.model).set(0)

    async def open(self, open_until: float) -> None:
        failures = (self.known() or View(0.0, 0, None)).failures

        async def write() -> None:
            await self.store.set(self.open_until_key, open_until, None)
            await self.store.delete_many([self.probe_key])

        await sharedstate.guarded(write, None)
        self.remember(failures, open_until)
        CIRCUIT_OPEN.labels(self.provider, self.model).set(1)

    async def forget_failures(self) -> None:
        keys = [self.failures_key, self.open_until_key, self.probe_key]
        await sharedstate.guarded(lambda: self.store.delete_many(keys), None)
        self.remember(0, None)
