"""The one error envelope of CONTRACT §4, for every entrance: DRF views, the /v1 views
and the WebSocket consumer.

    {"error": {"type": "...", "code": "...", "message": "...", "request_id": "..."}}

``LLMError`` subclasses carry their status and code; DRF's own exceptions (parse
errors, authentication, permissions, 404, 405, throttling) and Django's map to the same
shape. Anything else becomes a generic 500 whose message reveals nothing internal.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, UnreadablePostError
from rest_framework import exceptions as drf

from . import exceptions as exc

logger = logging.getLogger("llm_integration.api")

DRF_CODES: list[tuple[type[Exception], int, str, str]] = [
    (drf.NotAuthenticated, 401, "not_authenticated", "authentication_error"),
    (drf.AuthenticationFailed, 401, "authentication_failed", "authentication_error"),
    (drf.PermissionDenied, 403, "permission_denied", "permission_error"),
    (drf.NotFound, 404, "not_found", "invalid_request_error"),
    (drf.MethodNotAllowed, 405, "method_not_allowed", "invalid_request_error"),
    (drf.NotAcceptable, 406, "not_acceptable", "invalid_request_error"),
    (drf.UnsupportedMediaType, 415, "unsupported_media_type", "invalid_request_error"),
    (drf.Throttled, 429, "rate_limited", "rate_limit_error"),
    (drf.ParseError, 400, "invalid_request", "invalid_request_error"),
    (drf.ValidationError, 400, "invalid_request", "invalid_request_error"),
]


def flatten_detail(detail: Any, prefix: str = "") -> str:
    """DRF validation details as one readable sentence: 'messages.0.role: ...'."""
    if isinstance(detail, dict):
        parts = [
            flatten_detail(v, f"{prefix}{k}." if k != "non_field_errors" else prefix)
            for k, v in detail.items()
        ]
        return "; ".join(p for p in parts if p)
    if isinstance(detail, list):
        if all(not isinstance(d, dict | list) for d in detail):
            text = " ".join(str(d) for d in detail)
            return f"{prefix.rstrip('.')}: {text}" if prefix else text
        return "; ".join(flatten_detail(d, f"{prefix}{i}.") for i, d in enumerate(detail))
    return f"{prefix.rstrip('.')}: {detail}" if prefix else str(detail)


#: A UTF-16 surrogate: alone, it is no text UTF-8 can carry.
SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with any lone surrogate as U+FFFD: messages echo what a client sent (a
    field name, a role), and must render."""
    return SURROGATE.sub("\ufffd", text)


def describe(error: BaseException) -> tuple[int, str, str, str, float | None]:
    """(HTTP status, code, type, message, retry_after) for any exception; the message
    always renders (see ``printable``)."""
    status, code, kind, message, retry_after = classify(error)
    return status, code, kind, printable(str(message)), retry_after


def classify(error: BaseException) -> tuple[int, str, str, str, float | None]:
    """``describe`` before the message is made printable."""
    if isinstance(error, exc.LLMError):
        return error.status_code, error.code, error.type, error.message, error.retry_after
    if isinstance(error, Http404):
        error = drf.NotFound()
    elif isinstance(error, DjangoPermissionDenied):
        error = drf.PermissionDenied()
    if isinstance(error, RequestDataTooBig):
        return (
            413,
            "request_too_large",
            "invalid_request_error",
            ("The request body is larger than the server accepts."),
            None,
        )
    if isinstance(error, SuspiciousOperation | UnreadablePostError):
        return (
            400,
            "invalid_request",
            "invalid_request_error",
            "The request could not be read.",
            None,
        )
    for cls, status, code, kind in DRF_CODES:
        if isinstance(error, cls):
            message = flatten_detail(error.detail) if isinstance(error, drf.APIException) else ""
            wait = getattr(error, "wait", None)
            return status, code, kind, message or code.replace("_", " "), wait
    if isinstance(error, drf.APIException):
        return (
            error.status_code,
            str(error.default_code),
            "invalid_request_error",
            str(error.detail),
            None,
        )
    return 500, "internal_error", "server_error", "The gateway failed unexpectedly.", None


def error_param(error: BaseException) -> str | None:
    """OpenAI's ``error.param``: the request parameter at fault, when there is one."""
    param = getattr(error, "param", None)
    if param is None and isinstance(error, drf.ValidationError):
        if isinstance(error.detail, dict):
            fields = [k for k in error.detail if k != "non_field_errors"]
            param = fields[0] if fields else None
    return None if param is None else printable(str(param))


def envelope(
    error: BaseException, *, request_id: str, openai: bool = False
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """(body, status, headers) of the error response."""
    status, code, kind, message, retry_after = describe(error)
    if status >= 500 and not isinstance(error, exc.LLMError):
        logger.error("llm.internal_error", exc_info=error, extra={"request_id": request_id})
    body: dict[str, Any] = {
        "type": kind,
        "code": code,
        "message": message,
        "request_id": request_id,
    }
    if openai:
        body["param"] = error_param(error)
    return {"error": body}, status, retry_headers(error, retry_after, {"X-Request-ID": request_id})


def retry_headers(
    error: BaseException, retry_after: float | None, headers: dict[str, str]
) -> dict[str, str]:
    """``headers`` with when a retry may succeed (``Retry-After``) and whether an SDK
    should retry at once (``x-should-retry: false``, which the OpenAI and Anthropic SDKs
    obey: a spent budget or a policy refusal fails the same way on every retry)."""
    if getattr(error, "final", False):
        headers["x-should-retry"] = "false"
    if retry_after is not None and math.isfinite(retry_after):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return headers
