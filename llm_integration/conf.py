"""The app's settings: one ``LLM_INTEGRATION`` dict in Django settings.

Modelled on DRF's ``api_settings``: every key has a documented default below, values
that name code are dotted import strings, and the object reloads itself when Django's
``setting_changed`` signal fires (``override_settings`` in tests). Read settings at call
time (``llm_settings.CACHE_TTL``), never at import or class-definition time.

    LLM_INTEGRATION = {
        "DEFAULT_MODEL": "default",
        "DEFAULT_PLAN": "free",
    }
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

SETTING_NAME = "LLM_INTEGRATION"

DEFAULTS: dict[str, Any] = {
    # --- Models and plans -------------------------------------------------------
    # Alias id used when a request names no model.
    "DEFAULT_MODEL": "default",
    # Plan slug of users without an active subscription.
    "DEFAULT_PLAN": "free",
    # List aliases outside the caller's plan with "locked": true instead of hiding them.
    "SHOW_LOCKED_MODELS": False,
    # --- Request limits ---------------------------------------------------------
    # Largest prompt (all messages, estimated tokens) accepted; larger gets 413.
    "MAX_PROMPT_TOKENS": 100_000,
    # Most messages one request may carry.
    "MAX_MESSAGES": 500,
    # Images (content parts): the largest one, as decoded bytes of a data URL, and the
    # most bytes and images one request may carry; over them is a 413.
    "MAX_IMAGE_BYTES": 5 * 1024 * 1024,
    "MAX_REQUEST_IMAGE_BYTES": 20 * 1024 * 1024,
    "MAX_IMAGES": 20,
    # Tools no upstream here runs (hosted tools: web_search, namespace groups, Anthropic's
    # server tools) are left out of a request instead of refused; the usage row says so.
    "DROP_UNSUPPORTED_TOOLS": False,
    # --- Conversations (managed context) ----------------------------------------
    # A conversation's context: the alias's window, or this many tokens when fewer. At
    # CONTEXT_WARNING of it a turn's status is "warning"; a turn that would pass
    # CONTEXT_COMPRESS_AT has older, less important turns removed down to
    # CONTEXT_COMPRESS_TO (fractions of the limit).
    "CONTEXT_TOKENS": 8000,
    "CONTEXT_WARNING": 0.8,
    "CONTEXT_COMPRESS_AT": 0.9,
    "CONTEXT_COMPRESS_TO": 0.6,
    # An alias that summarizes the turns a conversation's context leaves out; the
    # summary goes with the system prompt from then on (None: turns are left out only).
    "SUMMARY_MODEL": None,
    # --- Upstream calls ---------------------------------------------------------
    # Used when a provider row leaves them empty.
    "DEFAULT_TIMEOUT": 60.0,
    "DEFAULT_MAX_RETRIES": 2,
    # Exponential backoff between retries (seconds): base * 2**n, capped, with jitter.
    "RETRY_BACKOFF_BASE": 0.5,
    "RETRY_BACKOFF_MAX": 20.0,
    # Overall deadline of one request across retries and fallbacks (seconds).
    "REQUEST_DEADLINE": 120.0,
    # A Retry-After longer than this is not waited for: the next fallback is tried.
    "RETRY_AFTER_MAX": 10.0,
    # The most bytes read of one upstream answer, or of one stream event or line; over
    # it is a 502 bad_upstream_response (memory stays bounded).
    "MAX_UPSTREAM_BYTES": 32 * 1024 * 1024,
    # A stream that delivers no content (keep-alive comments and empty deltas are not
    # content) for this many seconds, or runs longer than MAX_STREAM_SECONDS in all,
    # ends with an upstream_timeout error and is recorded.
    "STREAM_IDLE_TIMEOUT": 60.0,
    "MAX_STREAM_SECONDS": 900.0,
    # Worst-case prompt tokens for models counted by estimate: estimate * factor + 16.
    "ESTIMATE_SAFETY_FACTOR": 1.5,
    # Circuit breaker: open after this many consecutive failures, probe after cooldown.
    "CIRCUIT_BREAKER_THRESHOLD": 5,
    "CIRCUIT_BREAKER_COOLDOWN": 30.0,
    # Seconds a process trusts what it last read of a circuit before reading the shared
    # cache again (0: read it on every request). A circuit opened by another process is
    # seen here at most this much later; this process's own failures count at once.
    "CIRCUIT_BREAKER_CHECK_INTERVAL": 1.0,
    # Threads (each with its own database connection) for the gateway's queries, besides
    # the one that group-commits its accounting writes; 0 runs them all in the caller's
    # thread, as Django does.
    "DB_THREADS": 8,
    # Seconds a looked-up API token stays in memory (0: look it up every request).
    "TOKEN_CACHE_TTL": 5,
    # Seconds a WebSocket may stay open without authenticating before it is closed (4401).
    "WEBSOCKET_AUTH_TIMEOUT": 10.0,
    # Seconds one call to the channel layer (a socket joining or leaving its user's
    # group, a notice sent to it) may take before the layer counts as down; after a
    # failure, seconds before this process tries the layer again. Chats never need it.
    "CHANNEL_LAYER_TIMEOUT": 1.0,
    "CHANNEL_LAYER_RETRY_INTERVAL": 5.0,
    # --- Rate limits, caching ---------------------------------------------------
    # Requests per minute per user when no row sets one (None: no limit).
    "RATE_LIMIT_RPM": None,
    # How many server processes share this configuration (a system check warns when
    # more than one runs without a shared cache).
    "EXPECTED_PROCESSES": 1,
    # Seconds between reads of the configuration version row: a change made by any
    # process (admin, llm_bootstrap) applies in every process within this time.
    "CONFIG_CHECK_INTERVAL": 1.0,
    # Django cache alias used for rate limits, circuit breakers and the response cache.
    "CACHE_BACKEND": "default",
    # Seconds one call to that cache may take (Redis stalled or unreachable) before the
    # gateway treats the cache as down.
    "CACHE_TIMEOUT": 1.0,
    # After the cache fails (Redis down), seconds before it is tried again; meanwhile
    # circuits read closed, cached answers miss and rate limits refuse (503) or, with
    # RATE_LIMIT_FAIL_OPEN, admit uncounted.
    "CACHE_RETRY_INTERVAL": 1.0,
    "RATE_LIMIT_FAIL_OPEN": False,
    # Response cache: on for every alias (otherwise opt-in per alias or temperature 0).
    "CACHE_ENABLED": False,
    "CACHE_TTL": 3600,
    # Cached answers are kept this much longer, served only when every upstream is down.
    "CACHE_STALE_TTL": 86400,
    # Django cache alias for cached answers (None: CACHE_BACKEND). A local-memory cache
    # of its own bounds how many answers are kept (its OPTIONS["MAX_ENTRIES"]) without
    # pushing rate-limit counters and circuits out.
    "RESPONSE_CACHE_BACKEND": None,
    # --- Budgets ----------------------------------------------------------------
    # Seconds a request waits for its reservation or usage record to be written before
    # it gets 503 accounting_unavailable (the database refuses writes or is locked);
    # after a failed write, seconds before new requests try the database again.
    "ACCOUNTING_TIMEOUT": 5.0,
    "ACCOUNTING_RETRY_INTERVAL": 2.0,
    # Percentages at which a budget alert fires (once per threshold and period).
    "BUDGET_ALERT_THRESHOLDS": [75, 90, 100],
    # Reservations come from an allowance each process holds on the budget's row
    # (services/allowances.py): at most this share of a hard budget's room left; 0
    # writes every request's reservation to the database.
    "BUDGET_ALLOWANCE_SHARE": 0.125,
    # Seconds without a request after which a process gives its unused allowance back.
    "BUDGET_ALLOWANCE_IDLE": 2.0,
    # --- Secrets and adapters ---------------------------------------------------
    # Callable(name) -> key value or None. Provider rows hold the *name* only.
    "SECRET_RESOLVER": "llm_integration.secrets.environ_secret",
    # Extra or replacement adapter classes: {"kind": "dotted.path.Adapter"}.
    "ADAPTERS": {},
    # --- Observability ----------------------------------------------------------
    # Put prompt text in log lines (off: only sizes and ids are logged).
    "LOG_PROMPTS": False,
    # Who may read /metrics: "staff", "token" (METRICS_TOKEN) or "ip" (METRICS_ALLOWED_IPS).
    "METRICS_ACCESS": "staff",
    "METRICS_TOKEN": None,
    "METRICS_ALLOWED_IPS": ["127.0.0.1", "::1"],
}

IMPORT_STRINGS = {"SECRET_RESOLVER"}


class LLMSettings:
    """Attribute access to ``LLM_INTEGRATION`` with defaults, cached until reload()."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        if not hasattr(self, "_user_settings"):
            self._user_settings = getattr(settings, SETTING_NAME, {}) or {}
        return self._user_settings

    def __getattr__(self, attr: str) -> Any:
        if attr not in self.defaults:
            raise AttributeError(f"Invalid {SETTING_NAME} setting: {attr!r}")
        value = self.user_settings.get(attr, self.defaults[attr])
        if attr in IMPORT_STRINGS and isinstance(value, str):
            value = import_string(value)
        self._cached.add(attr)
        setattr(self, attr, value)
        return value

    def unknown_keys(self) -> list[str]:
        """Keys of ``LLM_INTEGRATION`` that are not settings (typos)."""
        return sorted(set(self.user_settings) - set(self.defaults))

    def reload(self) -> None:
        for attr in self._cached:
            delattr(self, attr)
        self._cached.clear()
        if hasattr(self, "_user_settings"):
            delattr(self, "_user_settings")


llm_settings = LLMSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        llm_settings.reload()


setting_changed.connect(_reload)
