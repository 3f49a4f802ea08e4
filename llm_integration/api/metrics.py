"""``GET /metrics``: Prometheus text format, for whom ``METRICS_ACCESS`` allows.

"staff"  logged-in staff (session) — the default
"token"  ``Authorization: Bearer <METRICS_TOKEN>`` (for a Prometheus scraper)
"ip"     a client address in ``METRICS_ALLOWED_IPS``
"public" anyone (behind your own proxy rules)
"""

from __future__ import annotations

import hmac

from asgiref.sync import sync_to_async
from django.http import HttpResponse, HttpResponseForbidden
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..conf import llm_settings


def _allowed(request) -> bool:
    modes = llm_settings.METRICS_ACCESS
    modes = [modes] if isinstance(modes, str) else list(modes)
    if "public" in modes:
        return True
    if "token" in modes and llm_settings.METRICS_TOKEN:
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip()
        if given and hmac.compare_digest(given, str(llm_settings.METRICS_TOKEN)):
            return True
    if "ip" in modes and request.META.get("REMOTE_ADDR") in set(llm_settings.METRICS_ALLOWED_IPS):
        return True
    if "staff" in modes:
        user = request.user
        return bool(user.is_authenticated and user.is_staff)
    return False


async def metrics_view(request):
    if not await sync_to_async(_allowed)(request):
        return HttpResponseForbidden("Metrics are restricted (LLM_INTEGRATION['METRICS_ACCESS']).")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
