"""Usage records read back: a user's totals for a period, and the rows of the CSV exports."""

from __future__ import annotations

import re
from decimal import Decimal

from .pricing import format_money

#: The columns of both usage exports (the API's ``?format=csv`` and admin's action).
CSV_FIELDS = [
    "created_at",
    "request_id",
    "user_id",
    "plan",
    "alias",
    "provider",
    "upstream_model",
    "status",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "tokens_estimated",
    "cost_usd",
    "latency_ms",
    "cached",
    "streamed",
    "finish_reason",
    "unbilled_cost_usd",
    "route",
    "tags",
    "api_key",
    "queued_ms",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "dropped",
    "conversation",
]
#: What each column reads (``api_key``: the key's name).
CSV_LOOKUPS = [{"api_key": "api_key__name"}.get(name, name) for name in CSV_FIELDS]
#: Where ``tags`` sits in an export row (stored ``,a,b,``, exported ``a,b``).
TAGS_COLUMN = CSV_FIELDS.index("tags")

#: What a spreadsheet reads as the start of a formula (OWASP's list, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def csv_cell(value):
    """``value`` as an export cell a spreadsheet shows as text, never runs as a formula:
    text from an upstream or a client (a ``finish_reason`` of ``=HYPERLINK(...)``) that
    starts like a formula gets a leading ``'``; a plain number (``-1.5``) stays one."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def csv_row(row) -> list:
    """A usage export row (``CSV_FIELDS``' values): money as plain decimals (``0``,
    ``0.00012``; never ``0E-8``), tags as ``a,b``, text neutralised by ``csv_cell``."""
    cells = [format_money(v) if isinstance(v, Decimal) else csv_cell(v) for v in row]
    cells[TAGS_COLUMN] = cells[TAGS_COLUMN].strip(",")  # labels: no formula can start them
    return cells


def period_usage(user_id: int, since) -> dict:
    """What a user used since ``since``: totals, by status and by model (CONTRACT §4)."""
    from django.db.models import Count, Sum

    from ...models import UsageRecord

    rows = UsageRecord.objects.filter(user_id=user_id, created_at__gte=since)
    totals = rows.aggregate(
        requests=Count("id"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cache_read=Sum("cache_read_tokens"),
        cache_write=Sum("cache_write_tokens"),
        cost=Sum("cost_usd"),
    )
    by_status = {s: n for s, n in rows.values_list("status").annotate(n=Count("id")).order_by()}
    by_model = {
        alias or "(none)": {"requests": n, "cost_usd": format_money(cost or Decimal(0))}
        for alias, n, cost in rows.values_list("alias")
        .annotate(n=Count("id"), cost=Sum("cost_usd"))
        .order_by()
    }
    return {
        "requests": totals["requests"] or 0,
        "prompt_tokens": totals["prompt"] or 0,
        "completion_tokens": totals["completion"] or 0,
        "cache_read_tokens": totals["cache_read"] or 0,
        "cache_write_tokens": totals["cache_write"] or 0,
        "cost_usd": format_money(totals["cost"] or Decimal(0)),
        "by_status": by_status,
        "by_model": by_model,
    }
