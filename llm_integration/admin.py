"""Django admin: the gateway's control panel.

Providers, aliases, plans and budgets are editable; usage and health checks are
read-only. Keys never appear: a provider shows only whether its variable is set.
"""

from __future__ import annotations

from django.contrib import admin
from django.db import models
from django.db.models import Count, Sum
from django.utils.html import format_html

from .models import (
    AliasFallback,
    Budget,
    BudgetAlert,
    BudgetPeriod,
    HealthCheck,
    ModelAlias,
    Plan,
    PlanEntitlement,
    Provider,
    Subscription,
    UsageRecord,
)
from .secrets import resolve_secret


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the gateway itself: viewable, never edited by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "kind",
        "base_url",
        "api_key_env",
        "key_is_set",
        "enabled",
        "latest_health",
    )
    list_filter = ("kind", "enabled")
    search_fields = ("name", "base_url")
    readonly_fields = ("created_at", "updated_at")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = (
        (None, {"fields": ("name", "kind", "enabled", "base_url")}),
        ("Credentials", {"fields": ("api_key_env", "extra_headers")}),
        (
            "Behaviour",
            {"fields": ("timeout_seconds", "max_retries", "rpm_limit", "tpm_limit", "options")},
        ),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(boolean=True, description="key set")
    def key_is_set(self, obj: Provider) -> bool | None:
        if not obj.api_key_env:
            return None
        return bool(resolve_secret(obj.api_key_env))

    @admin.display(description="health")
    def latest_health(self, obj: Provider) -> str:
        check = obj.health_checks.first()
        if check is None:
            return "–"
        latency = f" {check.latency_ms} ms" if check.latency_ms is not None else ""
        return f"{check.status}{latency}"


class AliasFallbackInline(admin.TabularInline):
    model = AliasFallback
    fk_name = "alias"
    extra = 0
    fields = ("position", "fallback")
    ordering = ("position",)
    autocomplete_fields = ("fallback",)


class EntitlementInline(admin.TabularInline):
    model = PlanEntitlement
    extra = 0
    autocomplete_fields = ("alias",)


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "label",
        "provider",
        "upstream_model",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "context_window",
        "enabled",
    )
    list_filter = ("provider", "enabled", "cache_responses")
    list_editable = ("enabled",)
    search_fields = ("slug", "label", "upstream_model")
    list_select_related = ("provider",)
    inlines = [AliasFallbackInline]
    readonly_fields = ("created_at", "updated_at")


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "rpm_limit", "tpm_limit", "alias_count")
    search_fields = ("slug", "name")
    inlines = [EntitlementInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_aliases=Count("entitlements"))

    @admin.display(description="models", ordering="_aliases")
    def alias_count(self, obj) -> int:
        return obj._aliases


@admin.register(PlanEntitlement)
class PlanEntitlementAdmin(admin.ModelAdmin):
    list_display = (
        "plan",
        "alias",
        "rpm_limit",
        "tpm_limit",
        "daily_request_limit",
        "monthly_token_limit",
    )
    list_filter = ("plan",)
    autocomplete_fields = ("alias",)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("user", "plan", "active", "started_at", "expires_at")
    list_filter = ("plan", "active")
    search_fields = ("user__username", "user__email")
    raw_id_fields = ("user",)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "request_id",
        "user",
        "alias",
        "provider",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "cached",
        "streamed",
    )
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        "status",
        "alias",
        "provider",
        "cached",
        "streamed",
        ("user", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("request_id", "user__username", "alias", "upstream_model", "error_type")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    show_full_result_count = False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context=extra_context)
        cl = (
            getattr(response, "context_data", {}).get("cl")
            if hasattr(response, "context_data")
            else None
        )
        if cl is not None:
            response.context_data["usage_totals"] = cl.queryset.aggregate(
                requests=Count("id"),
                prompt_tokens=Sum("prompt_tokens"),
                completion_tokens=Sum("completion_tokens"),
                cost_usd=Sum("cost_usd"),
            )
        return response


class BudgetPeriodInline(admin.TabularInline):
    model = BudgetPeriod
    extra = 0
    max_num = 0
    can_delete = False
    fields = readonly_fields = ("period_start", "spent_usd", "reserved_usd", "updated_at")


class BudgetAlertInline(admin.TabularInline):
    model = BudgetAlert
    extra = 0
    max_num = 0
    can_delete = False
    readonly_fields = ("period_start", "threshold", "spent_usd", "limit_usd", "created_at")


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("name", "scope", "target", "period", "limit_usd", "hard", "progress", "enabled")
    list_filter = ("scope", "period", "hard", "enabled")
    search_fields = ("name",)
    autocomplete_fields = ("provider", "alias")
    raw_id_fields = ("user",)
    inlines = [BudgetPeriodInline, BudgetAlertInline]

    @admin.display(description="target")
    def target(self, obj: Budget) -> str:
        return obj.target_name

    @admin.display(description="spent this period")
    def progress(self, obj: Budget):
        period = obj.periods.first()
        spent = period.spent_usd if period else 0
        pct = min(100, int(spent * 100 / obj.limit_usd)) if obj.limit_usd else 0
        return format_html(
            '<progress max="100" value="{}" title="{}%"></progress> ${}', pct, pct, spent
        )


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "budget", "threshold", "spent_usd", "limit_usd", "period_start")
    list_filter = ("threshold",)


@admin.register(BudgetPeriod)
class BudgetPeriodAdmin(ReadOnlyAdmin):
    list_display = ("budget", "period_start", "spent_usd", "reserved_usd", "updated_at")


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdmin):
    list_display = ("checked_at", "provider", "status", "latency_ms", "error")
    list_filter = ("status", "provider")
    date_hierarchy = "checked_at"
