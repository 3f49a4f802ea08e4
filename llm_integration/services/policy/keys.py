"""API keys (CONTRACT §14): issuing them, and finding who a secret belongs to.

A secret reads ``llm_<prefix>_<body>``. The row keeps the prefix (to find it) and an
HMAC-SHA256 of the whole secret keyed from ``SECRET_KEY`` (a fast keyed hash: a key is
random, so it needs no slow password hash, only one an attacker who reads the table
cannot check guesses against); the secret itself is shown once and never stored. A
lookup compares digests in constant time, also under ``SECRET_KEY_FALLBACKS`` so a
rotated ``SECRET_KEY`` does not lock every key out.

``KeyRing`` keeps what it found for at most ``TOKEN_CACHE_TTL`` and never more than
``MAX_CACHE_SECONDS``: a key revoked or changed in one process stops being honoured in
every other within that time (in this process at once: saving a key clears the cache).
Expiry is checked on every request against the ring's clock, cached or not.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.utils.crypto import salted_hmac

from ...conf import llm_settings
from ...models import ApiKey, Budget, ModelAlias
from ..clock import SYSTEM_CLOCK, Clock

SCHEME = "llm_"
SALT = "llm_integration.ApiKey"
#: The longest a process honours what it read of a key (CONTRACT §14: 5 seconds).
MAX_CACHE_SECONDS = 5.0
MAX_ENTRIES = 10_000
#: ``last_used_at`` is written at most this often per key and process.
LAST_USED_EVERY = dt.timedelta(seconds=60)


class KeyRefused(Exception):
    """The secret names no usable key (unknown, revoked, expired, inactive owner)."""


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a request may do under the key it came with (``request.auth``)."""

    id: int
    name: str
    prefix: str
    user_id: int
    #: Alias ids the key may call; empty: whatever the owner's plan allows.
    models: frozenset[int]
    rpm_limit: int | None
    expires_at: dt.datetime | None

    def allows(self, alias: ModelAlias) -> bool:
        return not self.models or alias.pk in self.models

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def is_key(credential: str) -> bool:
    """Whether ``credential`` is shaped like one of our keys (not a DRF token)."""
    return credential.startswith(SCHEME)


def digest(secret: str, key: str | None = None) -> str:
    return salted_hmac(SALT, secret, secret=key, algorithm="sha256").hexdigest()


def prefix_of(secret: str) -> str | None:
    head, sep, body = secret[len(SCHEME) :].partition("_")
    if not (sep and head and body and is_key(secret)) or len(head) > 24:
        return None
    return SCHEME + head


def new_secret() -> tuple[str, str]:
    """A fresh (secret, prefix)."""
    prefix = SCHEME + secrets.token_hex(6)
    return f"{prefix}_{secrets.token_urlsafe(30)}", prefix


def grant_of(key: ApiKey) -> KeyGrant:
    return KeyGrant(
        id=key.pk,
        name=key.name,
        prefix=key.prefix,
        user_id=key.user_id,
        models=frozenset(alias.pk for alias in key.allowed_models.all()),
        rpm_limit=key.rpm_limit,
        expires_at=key.expires_at,
    )


@transaction.atomic
def issue(
    user: Any,
    *,
    name: str,
    expires_at: dt.datetime | None = None,
    models: list[ModelAlias] | None = None,
    rpm_limit: int | None = None,
    budget_usd: Decimal | None = None,
    budget_period: str = Budget.Period.MONTH,
) -> tuple[ApiKey, str]:
    """A new key of ``user`` and its secret (the only time anyone sees it)."""
    secret, prefix = new_secret()
    key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=prefix,
        digest=digest(secret),
        expires_at=expires_at,
        rpm_limit=rpm_limit,
    )
    if models:
        key.allowed_models.set(models)
    set_budget(key, budget_usd, budget_period)
    return key, secret


def key_budget(key: ApiKey) -> Budget | None:
    return next(iter(key.budgets.all()), None)


def set_budget(key: ApiKey, limit_usd: Decimal | None, period: str | None) -> None:
    """Give ``key`` a hard budget of ``limit_usd`` per ``period`` (None: remove it)."""
    budget = key_budget(key)
    if limit_usd is None:
        if budget is not None:
            budget.delete()
        return
    if budget is None:
        budget = Budget(scope=Budget.Scope.KEY, api_key=key, hard=True)
    budget.name = f"key {key.prefix}"[:100]
    budget.limit_usd = limit_usd
    budget.period = period or budget.period or Budget.Period.MONTH
    budget.save()


def may_issue(actor: Any, owner: Any) -> bool:
    """Whether ``actor`` may make a key that acts as ``owner``: their own, anyone's for a
    superuser, a user without staff rights for other staff (a key for a superuser would
    carry the superuser's rights)."""
    return actor.pk == owner.pk or actor.is_superuser or not (owner.is_staff or owner.is_superuser)


def revoke(key: ApiKey, *, now: dt.datetime) -> None:
    if key.revoked_at is None:
        key.revoked_at = now
        key.save(update_fields=["revoked_at"])


class KeyRing:
    """Secrets to (user, ``KeyGrant``), cached briefly; ``clock`` decides expiry."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._entries: dict[str, tuple[Any, KeyGrant, float]] = {}
        self._lock = threading.Lock()

    def ttl(self) -> float:
        return max(0.0, min(float(llm_settings.TOKEN_CACHE_TTL), MAX_CACHE_SECONDS))

    def cached(self, secret: str) -> tuple[Any, KeyGrant] | None:
        """The key's owner and grant if this process read it lately (no I/O); raises
        ``KeyRefused`` if it has expired since."""
        entry = self._entries.get(secret)
        if entry is None or entry[2] < self.clock.monotonic():
            return None
        if entry[1].expired(self.clock.now()):
            raise KeyRefused("This API key has expired.")
        return entry[0], entry[1]

    def lookup(self, secret: str) -> tuple[Any, KeyGrant]:
        """The key's owner and grant, from the database (call it in a DB thread)."""
        prefix = prefix_of(secret)
        key = None
        if prefix is not None:
            key = (
                ApiKey.objects.select_related("user")
                .prefetch_related("allowed_models")
                .filter(prefix=prefix)
                .first()
            )
        if key is None or not matches(secret, key.digest):
            raise KeyRefused("Invalid API key.")
        now = self.clock.now()
        if key.revoked_at is not None:
            raise KeyRefused("This API key has been revoked.")
        if key.expires_at is not None and key.expires_at <= now:
            raise KeyRefused("This API key has expired.")
        if not key.user.is_active:
            raise KeyRefused("User inactive or deleted.")
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        grant = grant_of(key)
        if (ttl := self.ttl()) > 0:
            with self._lock:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[secret] = (key.user, grant, self.clock.monotonic() + ttl)
        return key.user, grant

    def clear(self, **kwargs: Any) -> None:
        with self._lock:
            self._entries.clear()


def matches(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` under ``SECRET_KEY`` or a fallback."""
    found = False
    for key in (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())):
        found |= hmac.compare_digest(digest(secret, key), stored)
    return found


key_ring = KeyRing()


def _forget(**kwargs: Any) -> None:
    """A saved or deleted key, a changed model list, a saved owner: forget what this
    process read, now and again when the change commits (a lookup in between would
    read and keep the row as it was); other processes within ``MAX_CACHE_SECONDS``."""
    key_ring.clear()
    transaction.on_commit(key_ring.clear)


post_save.connect(_forget, sender=ApiKey, dispatch_uid="llm-key-ring-save")
post_delete.connect(_forget, sender=ApiKey, dispatch_uid="llm-key-ring-delete")
m2m_changed.connect(_forget, sender=ApiKey.allowed_models.through, dispatch_uid="llm-key-ring-m")
post_save.connect(_forget, sender=settings.AUTH_USER_MODEL, dispatch_uid="llm-key-ring-u")
