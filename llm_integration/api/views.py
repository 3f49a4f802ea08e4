"""The REST API (CONTRACT §4): models, chat (JSON and SSE) and usage.

Views are asynchronous end to end (adrf's APIView): a slow upstream holds no thread,
so other requests never queue behind it. Every response carries ``X-Request-ID``;
every error is the one envelope of ``llm_integration.envelope``.
"""

from __future__ import annotations

import csv
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

from adrf.views import APIView
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections, router
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions as drf
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from ..conf import llm_settings
from ..formats import rest
from ..formats.inputs import ChatInput
from ..formats.streams import StreamFormat, event_stream_response, opened
from ..services.accounting.reports import usage_report
from ..services.accounting.usage import CSV_FIELDS, CSV_LOOKUPS, csv_row
from ..services.chat import ChatResult, achat, astream_chat, new_request_id
from ..services.config.entitlements import visible_aliases
from ..services.db import run_db
from ..services.policy.rules import Labels
from . import serializers as s
from .authentication import key_of
from .errors import error_response
from .parsers import JSONBodyParser

logger = logging.getLogger("llm_integration.api")

ERRORS = {
    code: OpenApiResponse(s.ErrorSerializer)
    for code in (400, 401, 403, 404, 413, 429, 502, 503, 504)
}


class _Echo:
    def write(self, value):
        return value


async def csv_rows(filters: dict):
    """CSV lines of the matching usage records, fetched in chunks (never all in memory).

    The 200 has gone out with the first line: a failure after it is logged and cuts the
    response off, so that the download fails rather than hangs or looks complete."""
    from ..models import UsageRecord

    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_FIELDS)
    rows = UsageRecord.objects.filter(**filters).order_by("id")

    def page(after: int) -> list[tuple]:
        return list(rows.filter(id__gt=after).values_list("id", *CSV_LOOKUPS)[:2000])

    last = 0
    try:
        while chunk := await run_db(page, last):  # keyset pages: flat cost, bounded memory
            last = chunk[-1][0]
            for row in chunk:
                yield writer.writerow(csv_row(row[1:]))
    except Exception:
        # Ended, not finished: the response is cut off (no last chunk), so the client
        # sees a download that failed rather than a file that looks whole.
        logger.exception("llm.usage_export_failed", extra={"after_id": last})
        raise


class Envelope:
    """A DRF view's request id (``X-Request-ID`` on every answer) and errors in the one
    envelope (``llm_integration.envelope``); 401 with ``WWW-Authenticate``."""

    openai_errors = False

    def initialize_request(self, request, *args, **kwargs):
        request.llm_request_id = new_request_id()
        return super().initialize_request(request, *args, **kwargs)

    @property
    def request_id(self) -> str:
        return self.request.llm_request_id

    def handle_exception(self, exc):
        response = error_response(exc, request_id=self.request_id, openai=self.openai_errors)
        if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
            # DRF would answer 403 without a WWW-Authenticate header: it is a 401.
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        response.exception = True
        return response

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["X-Request-ID"] = request.llm_request_id
        return response


class GatewayAPIView(Envelope, APIView):
    """Base of the API views: the project's DRF authentication, permission and throttle
    classes (``REST_FRAMEWORK`` defaults, plus ``IsAuthenticated``), a request id, the
    error envelope.

    Views are async (adrf): DRF's own ``initial`` (content negotiation, authentication,
    permissions, throttles) runs in the request's thread, as adrf's dispatch runs it, so
    a host's synchronous classes may query the database; the handler then awaits the
    gateway on the event loop.
    """

    #: The API speaks JSON only; no body, however malformed, is a 500.
    parser_classes = [JSONBodyParser]

    def get_permissions(self):
        permissions = super().get_permissions()
        if not any(isinstance(permission, IsAuthenticated) for permission in permissions):
            permissions.insert(0, IsAuthenticated())
        return permissions

    async def serve_chat(
        self,
        ask: ChatInput,
        stream: Callable[[], StreamFormat],
        answer: Callable[[ChatResult], dict],
    ):
        """``ask`` served to the caller: ``answer(result)`` as JSON, or the events of
        ``stream()``, the format's stream writer."""
        request = self.request
        arguments = ask.arguments(
            user=request.user, request_id=self.request_id, key=key_of(request)
        )
        if ask.stream:
            return event_stream_response(await opened(astream_chat(**arguments), stream()))
        return Response(answer(await achat(**arguments)))


class ModelListView(GatewayAPIView):
    @extend_schema(
        responses={200: s.ModelSerializer(many=True), 401: ERRORS[401]},
        summary="Models (aliases) the caller may use",
    )
    async def get(self, request):
        rows = await run_db(visible_aliases, request.user)
        if (key := key_of(request)) is not None:  # a key may narrow the plan's models
            rows = [(alias, locked or not key.allows(alias)) for alias, locked in rows]
        show_locked = llm_settings.SHOW_LOCKED_MODELS
        return Response(
            [
                {
                    "id": alias.slug,
                    "label": alias.display_label,
                    "provider": alias.provider.kind,
                    "context_window": alias.context_window,
                    "mode": alias.mode,
                    "locked": locked,
                }
                for alias, locked in rows
                if show_locked or not locked
            ]
        )


class ChatView(GatewayAPIView):
    @extend_schema(
        request=rest.ChatRequestSerializer,
        responses={200: s.ChatResponseSerializer, **ERRORS},
        summary="Chat with a model (JSON, or server-sent events with stream: true)",
    )
    async def post(self, request):
        ask = rest.parse(request.data, Labels.from_headers(request.META))
        return await self.serve_chat(ask, lambda: rest.RestStream(self.request_id), rest.answer)


def user_id_range() -> tuple[int, int]:
    """The ids the user model's key can hold in its database (PostgreSQL's ``integer``
    up to 2**31 - 1, SQLite's up to 2**63 - 1): one beyond is refused, not sent."""
    model = get_user_model()
    key = model._meta.pk
    while key.is_relation:  # a user model that extends another by its key
        key = key.target_field
    try:
        return connections[router.db_for_read(model)].ops.integer_field_range(
            key.get_internal_type()
        )
    except KeyError:  # not an integer key
        return (0, 2**31 - 1)


def user_id(text: str) -> int:
    """A user id given as a query parameter: ASCII digits, in the key's range."""
    low, high = user_id_range()
    if text.isascii() and text.isdigit() and len(text) <= 20 and low <= int(text) <= high:
        return int(text)
    raise drf.ValidationError({"user": [f"Give a user id (a whole number up to {high})."]})


def moment(name: str, text: str) -> datetime.datetime:
    """A ``since``/``until`` bound: an ISO date (midnight) or date-time that exists, in
    the current time zone unless it names one."""
    when = None
    if text.isascii() and len(text) <= 64:
        try:
            when = parse_datetime(text)
            if when is None and (day := parse_date(text)) is not None:
                when = datetime.datetime.combine(day, datetime.time.min)
            if when is not None and settings.USE_TZ:
                if timezone.is_naive(when):
                    when = timezone.make_aware(when)
                when.astimezone(datetime.UTC)  # the database stores UTC: must exist there
            elif when is not None and timezone.is_aware(when):
                when = timezone.make_naive(when)
        except (ValueError, OverflowError):  # 2026-02-30, +25:00, a year past 9999 in UTC
            when = None
    if when is None:
        raise drf.ValidationError({name: ["Give a real ISO date or date-time."]})
    return when


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """The query parameters of ``GET /api/v1/usage``, checked."""

    csv: bool = False
    user_id: int | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    @classmethod
    def parse(cls, params) -> UsageQuery:
        """Every parameter the endpoint reads, or a 400 naming the first that is wrong,
        before anything is answered (a CSV export streams: too late then)."""
        kind = params.get("format") or "json"
        if kind not in ("json", "csv"):
            raise drf.ValidationError({"format": ["Give json or csv."]})
        user, since, until = (params.get(name) for name in ("user", "since", "until"))
        return cls(
            csv=kind == "csv",
            user_id=user_id(user) if user else None,
            since=moment("since", since) if since else None,
            until=moment("until", until) if until else None,
        )


class UsageView(GatewayAPIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("user", int, description="Staff only: another user's id."),
            OpenApiParameter(
                "format", str, enum=["json", "csv"], description="Staff only: csv exports."
            ),
            OpenApiParameter("since", str, description="CSV: from this ISO date or date-time."),
            OpenApiParameter("until", str, description="CSV: before this ISO date or date-time."),
        ],
        responses={
            200: s.UsageReportSerializer,
            401: ERRORS[401],
            403: ERRORS[403],
            404: ERRORS[404],
        },
        summary="The caller's usage today and this month, and their budgets",
    )
    async def get(self, request):
        # Staff rights come with the account's own credentials, never with an API key.
        staff = request.user.is_staff and key_of(request) is None
        if request.query_params.get("user") and not staff:
            raise drf.PermissionDenied("Only staff (not an API key) may read another user's usage.")
        if request.query_params.get("format") == "csv" and not staff:
            raise drf.PermissionDenied("Only staff (not an API key) may export usage.")
        query = UsageQuery.parse(request.query_params)
        if query.csv:
            return self.csv(query)
        user = request.user
        if query.user_id is not None:
            user = await get_user_model().objects.filter(pk=query.user_id).afirst()
            if user is None:
                raise drf.NotFound("No such user.")
        return Response(await run_db(usage_report, user, now=timezone.now()))

    def csv(self, query: UsageQuery) -> StreamingHttpResponse:
        """Staff only: usage records as CSV, streamed (filters: user, since, until)."""
        filters = {}
        if query.user_id is not None:
            filters["user_id"] = query.user_id
        if query.since is not None:
            filters["created_at__gte"] = query.since
        if query.until is not None:
            filters["created_at__lt"] = query.until
        response = StreamingHttpResponse(csv_rows(filters), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="llm-usage.csv"'
        return response
