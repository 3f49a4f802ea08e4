"""Authentication for the API: DRF authentication classes, run by DRF's own ``initial``.

- ``BearerOrTokenAuthentication``: DRF tokens as ``Token <key>`` or ``Bearer <key>``
  (what OpenAI SDKs send), and the gateway's API keys the same way. Looked-up tokens
  are kept in memory for ``TOKEN_CACHE_TTL`` seconds (deleting a token or saving its
  user forgets them at once in this process; other processes within that TTL), so most
  requests skip the query.
- ``ApiKeyAuthentication``: the gateway's API keys alone (``Bearer``, ``Token`` or
  ``x-api-key``), for hosts that list DRF's own ``TokenAuthentication``. A key's request
  has ``request.auth`` set to its ``KeyGrant`` (``services/policy/keys.py``).
- Sessions: DRF's own ``SessionAuthentication`` (``AsyncSessionAuthentication`` is the
  same class, under the name earlier settings list).
"""

from __future__ import annotations

import threading
import time

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    TokenAuthentication,
    get_authorization_header,
)
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from ..conf import llm_settings
from ..services.db import call_db
from ..services.policy.keys import KeyGrant, KeyRefused, is_key, key_ring

MAX_TOKENS = 10_000


class _TokenCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[object, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str):
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key: str, user) -> None:
        ttl = float(llm_settings.TOKEN_CACHE_TTL)
        if ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_TOKENS:
                self._entries.clear()
            self._entries[key] = (user, time.monotonic() + ttl)

    def clear(self, **kwargs) -> None:
        with self._lock:
            self._entries.clear()


token_cache = _TokenCache()
post_delete.connect(token_cache.clear, sender=Token, dispatch_uid="llm-token-cache-del")
post_save.connect(token_cache.clear, sender=Token, dispatch_uid="llm-token-cache-save")


def _forget_user(sender, **kwargs) -> None:
    token_cache.clear()


post_save.connect(_forget_user, sender=get_user_model(), dispatch_uid="llm-token-cache-user")
# A cached user keeps the permissions Django read for it: a changed permission or group
# membership forgets every cached user (in this process; others within the TTL).
for _relation in ("user_permissions", "groups"):
    if (_field := getattr(get_user_model(), _relation, None)) is not None:
        m2m_changed.connect(
            _forget_user, sender=_field.through, dispatch_uid=f"llm-token-cache-{_relation}"
        )
m2m_changed.connect(
    _forget_user, sender=Group.permissions.through, dispatch_uid="llm-token-cache-group-perms"
)
post_delete.connect(_forget_user, sender=Group, dispatch_uid="llm-token-cache-group-del")


def authenticate_key(secret: str) -> tuple[object, KeyGrant]:
    """The owner and grant of an API key, or 401 (the database is read in the gateway's
    DB threads, and only when this process has not read the key lately)."""
    try:
        return key_ring.cached(secret) or call_db(key_ring.lookup, secret)
    except KeyRefused as refused:
        raise AuthenticationFailed(str(refused)) from None


def key_of(request) -> KeyGrant | None:
    """The API key a DRF request came with (None: a session or a DRF token)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, KeyGrant) else None


def authorization_credential(request, keywords) -> str | None:
    """The credential after one of ``keywords`` in ``Authorization``, or None."""
    auth = get_authorization_header(request).split()
    if not auth or auth[0].lower().decode(errors="replace") not in keywords:
        return None
    if len(auth) != 2:
        raise AuthenticationFailed("Invalid token header: give one token after the scheme.")
    try:
        return auth[1].decode()
    except UnicodeError:
        raise AuthenticationFailed("Invalid token header: non-ASCII characters.") from None


class ApiKeyAuthentication(BaseAuthentication):
    """The gateway's API keys in ``Authorization: Bearer``/``Token`` or ``x-api-key``;
    anything else is left to the next authentication class."""

    keywords = ("token", "bearer")

    def authenticate(self, request):
        secret = authorization_credential(request, self.keywords)
        if secret is None:
            secret = request.META.get("HTTP_X_API_KEY") or None
        if secret is None or not is_key(secret):
            return None
        return authenticate_key(secret)

    def authenticate_header(self, request) -> str:
        return "Bearer"


class BearerOrTokenAuthentication(TokenAuthentication):
    keywords = ("token", "bearer")

    def _key(self, request) -> str | None:
        return authorization_credential(request, self.keywords)

    def _lookup(self, key: str):
        if is_key(key):
            return authenticate_key(key)
        user = token_cache.get(key)
        if user is None:
            # In the gateway's database threads, not this request's: under load, every
            # request thread would otherwise open a connection of its own.
            user = call_db(self.authenticate_credentials, key)[0]
            token_cache.put(key, user)
        return user, key

    def authenticate(self, request):
        key = self._key(request)
        return None if key is None else self._lookup(key)

    def authenticate_header(self, request) -> str:
        return "Bearer"


#: DRF's ``SessionAuthentication`` (CSRF enforced) under the name earlier settings list.
AsyncSessionAuthentication = SessionAuthentication
