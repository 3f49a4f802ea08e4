"""The staff API (CONTRACT §9) under ``/api/v1/admin/``: the rows admin edits, costs and
provider health, for staff users with the model's Django permissions.

DRF viewsets over the same rows as Django admin, through the project's DRF
authentication and throttle classes, plus ``IsAdminUser`` and the model permissions
(view permission to read). Every change is written to Django's admin log and reaches
every process within ``CONFIG_CHECK_INTERVAL`` (the rows' signals); errors are the API's
one envelope.
"""

from __future__ import annotations

import json

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions as drf
from rest_framework import serializers, viewsets
from rest_framework.permissions import (
    BasePermission,
    DjangoModelPermissions,
    IsAdminUser,
    IsAuthenticated,
)
from rest_framework.response import Response

from ...models import (
    AliasFallback,
    ApiKey,
    Budget,
    HealthCheck,
    ModelAlias,
    Plan,
    Provider,
    RoutingRule,
    Subscription,
)
from ...services.accounting.budgets import period_start
from ...services.accounting.reports import COST_KEYS, costs
from ...services.db import run_db
from ...services.limits.circuit import CircuitBreaker
from ...services.ops.health import check_providers
from ...services.policy.keys import key_ring, may_issue, revoke
from ..keys import NotWithApiKey, OwnedKeySerializer
from ..parsers import JSONBodyParser
from ..views import Envelope, GatewayAPIView
from . import serializers as s


class ModelPermissions(DjangoModelPermissions):
    """Django's model permissions, the view permission included for reads."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }


class StaffViewSet(Envelope, viewsets.ModelViewSet):
    """CRUD over one kind of row; every change in the admin log."""

    parser_classes = [JSONBodyParser]
    pagination_class = None  # lists are JSON arrays: configuration, not data

    def get_permissions(self):
        own = [IsAuthenticated(), IsAdminUser(), ModelPermissions(), NotWithApiKey()]
        return [*super().get_permissions(), *own]

    def handle_exception(self, exc):
        if isinstance(exc, ProtectedError):
            exc = drf.ValidationError(
                f"In use by {', '.join(sorted({str(o) for o in exc.protected_objects}))}: "
                "change or delete those first."
            )
        return super().handle_exception(exc)

    def log(self, row, flag: int, message: list | str) -> None:
        LogEntry.objects.log_actions(
            user_id=self.request.user.pk,
            queryset=[row],
            action_flag=flag,
            change_message=json.dumps(message) if isinstance(message, list) else message,
            single_object=True,
        )

    @transaction.atomic  # the row and its log entry, or neither
    def perform_create(self, serializer):
        self.log(serializer.save(), ADDITION, [{"added": {}}])

    @transaction.atomic
    def perform_update(self, serializer):
        before = serializer.to_representation(serializer.instance)
        row = serializer.save()
        after = serializer.to_representation(row)
        changed = sorted(name for name in after if after[name] != before.get(name))
        self.log(row, CHANGE, [{"changed": {"fields": changed}}] if changed else [])

    @transaction.atomic
    def perform_destroy(self, row):
        if users := self.dependants(row):
            raise drf.ValidationError(
                f"In use by {'; '.join(users)}: change or delete those first."
            )
        self.log(row, DELETION, "")
        row.delete()

    def dependants(self, row) -> list[str]:
        """Other rows a delete would take along or leave pointing nowhere."""
        return []


def rules_naming(field: str, key: str) -> list[str]:
    """The routing rules whose ``field`` (``plans``, ``model_ids``) names ``key``."""
    return [
        f"routing rule {rule.name}"
        for rule in RoutingRule.objects.all()
        if isinstance(getattr(rule, field), list) and key in getattr(rule, field)
    ]


class ProviderViewSet(StaffViewSet):
    queryset = Provider.objects.all()
    serializer_class = s.ProviderSerializer
    lookup_field = "name"
    #: Where requests go and which variable's value they carry: a staff user who may set
    #: both could send any secret of the server's environment to a host of their own.
    SUPERUSER_FIELDS = ("base_url", "api_key_env")

    def perform_create(self, serializer):
        self.guard(serializer)
        super().perform_create(serializer)

    def perform_update(self, serializer):
        self.guard(serializer)
        super().perform_update(serializer)

    def guard(self, serializer) -> None:
        row = serializer.instance
        touched = [
            name
            for name in self.SUPERUSER_FIELDS
            if name in serializer.validated_data
            and serializer.validated_data[name] != (getattr(row, name) if row else "")
        ]
        if touched and not self.request.user.is_superuser:
            raise drf.PermissionDenied(
                f"Only a superuser may set {' and '.join(touched)}: together they decide "
                "which secret is sent where."
            )

    def dependants(self, row) -> list[str]:
        return [f"budget {b.name}" for b in Budget.objects.filter(provider=row)]


class AliasViewSet(StaffViewSet):
    queryset = ModelAlias.objects.select_related("provider")
    serializer_class = s.AliasSerializer
    lookup_field = "slug"
    lookup_url_kwarg = "id"

    def dependants(self, row) -> list[str]:
        return [
            *(f"budget {b.name}" for b in Budget.objects.filter(alias=row)),
            *(f"plan {e.plan.slug}" for e in row.entitlements.select_related("plan")),
            *(
                f"alias {f.alias.slug} (fallback)"
                for f in AliasFallback.objects.filter(fallback=row).select_related("alias")
            ),
            *rules_naming("model_ids", row.slug),
            *(f"API key {k}" for k in ApiKey.objects.filter(allowed_models=row)),
        ]


class PlanViewSet(StaffViewSet):
    queryset = Plan.objects.all()
    serializer_class = s.PlanSerializer
    lookup_field = "slug"

    def dependants(self, row) -> list[str]:
        return [
            *(f"budget {b.name}" for b in Budget.objects.filter(plan=row)),
            *rules_naming("plans", row.slug),
        ]


class SubscriptionViewSet(StaffViewSet):
    queryset = Subscription.objects.select_related("user", "plan")
    serializer_class = s.SubscriptionSerializer


class BudgetViewSet(StaffViewSet):
    queryset = Budget.objects.select_related("provider", "alias", "plan", "user")
    serializer_class = s.BudgetSerializer


class RoutingRuleViewSet(StaffViewSet):
    queryset = RoutingRule.objects.select_related("serve_with")
    serializer_class = s.RoutingRuleSerializer
    lookup_field = "name"


class ApiKeyViewSet(StaffViewSet):
    """Everyone's API keys (``?user=<username>`` for one user's). Creating one answers
    with its secret this once; ``DELETE`` revokes (the row and its usage stay)."""

    serializer_class = OwnedKeySerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        rows = ApiKey.objects.select_related("user").prefetch_related("allowed_models", "budgets")
        if username := self.request.query_params.get("user"):
            rows = rows.filter(**{f"user__{get_user_model().USERNAME_FIELD}": username})
        return rows

    def create(self, request, *args, **kwargs):
        response = super().create(request, *args, **kwargs)
        response.data = {"key": self.secret, **response.data}
        return response

    def perform_create(self, serializer):
        owner = serializer.validated_data["user"]
        if not may_issue(self.request.user, owner):
            raise drf.PermissionDenied(
                "Only a superuser may make a key for another staff user: it would act "
                "with their rights."
            )
        super().perform_create(serializer)
        self.secret = serializer.instance.secret

    def destroy(self, request, *args, **kwargs):
        key = self.get_object()
        with transaction.atomic():
            revoke(key, now=key_ring.clock.now())
            self.log(key, CHANGE, [{"changed": {"fields": ["revoked_at"]}}])
        return Response(self.get_serializer(key).data)


class StaffPermission(BasePermission):
    """A staff user with the view's ``permission`` (Django's, by its dotted name)."""

    message = "Staff users with the view permission of these rows only."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm(view.permission))


class StaffView(GatewayAPIView):
    """A staff read (async: it may call upstreams, as ``?check=1`` does)."""

    permission = ""

    def get_permissions(self):
        return [*super().get_permissions(), StaffPermission(), NotWithApiKey()]


COST_PERIODS = ("day", "week", "month")


class CostsView(StaffView):
    permission = "llm_integration.view_usagerecord"

    @extend_schema(
        parameters=[
            OpenApiParameter("period", str, enum=list(COST_PERIODS)),
            OpenApiParameter("by", str, enum=list(COST_KEYS)),
        ],
        responses={
            200: inline_serializer(
                "Costs",
                {
                    "period": serializers.CharField(),
                    "since": serializers.DateTimeField(),
                    "by": serializers.CharField(),
                    "items": serializers.ListField(child=serializers.DictField()),
                },
            )
        },
        summary="Requests, tokens and cost for the current period, by one key",
    )
    async def get(self, request):
        period = request.query_params.get("period") or "month"
        by = request.query_params.get("by") or "provider"
        if period not in COST_PERIODS:
            raise drf.ValidationError({"period": [f"Give one of: {', '.join(COST_PERIODS)}."]})
        if by not in COST_KEYS:
            raise drf.ValidationError({"by": [f"Give one of: {', '.join(COST_KEYS)}."]})
        since = period_start(period, timezone.now())
        items = await run_db(costs, by, since=since)
        return Response({"period": period, "since": since, "by": by, "items": items})


def latest_checks() -> list[tuple[Provider, HealthCheck | None]]:
    providers = list(Provider.objects.order_by("name"))
    latest: dict[int, HealthCheck] = {}
    for check in HealthCheck.objects.filter(provider__in=providers).order_by("-checked_at"):
        latest.setdefault(check.provider_id, check)
    return [(provider, latest.get(provider.pk)) for provider in providers]


class HealthView(StaffView):
    permission = "llm_integration.view_healthcheck"

    @extend_schema(
        parameters=[OpenApiParameter("check", int, description="1: check every provider now.")],
        responses={
            200: inline_serializer(
                "ProviderHealth", {"provider": serializers.CharField()}, many=True
            )
        },
        summary="Each provider's last health check and its circuit's state",
    )
    async def get(self, request):
        check = request.query_params.get("check") or "0"
        if check not in ("0", "1"):
            raise drf.ValidationError({"check": ["Give 1 to check now, or 0."]})
        if check == "1":
            if not await run_db(request.user.has_perm, "llm_integration.add_healthcheck"):
                raise drf.PermissionDenied("Checking now stores rows: add_healthcheck is needed.")
            await check_providers()
        rows = []
        for provider, last in await run_db(latest_checks):
            rows.append(
                {
                    "provider": provider.name,
                    "kind": provider.kind,
                    "status": last.status if last else None,
                    "latency_ms": last.latency_ms if last else None,
                    "checked_at": last.checked_at if last else None,
                    "circuit": await CircuitBreaker.of(provider).state(),
                    "error": last.error if last else "",
                }
            )
        return Response(rows)
