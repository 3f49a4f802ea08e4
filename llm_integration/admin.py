"""Django admin: the gateway's control panel.

Providers, aliases, plans and budgets are editable; usage and health checks are
read-only. Keys never appear: a provider shows only whether its variable is set.
"""

from __future__ import annotations

import csv
import datetime
import time
from decimal import Decimal

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import Count, Sum
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from .exceptions import LLMError
from .models import (
    AliasFallback,
    ApiKey,
    Budget,
    BudgetAlert,
    BudgetPeriod,
    Conversation,
    ConversationMessage,
    HealthCheck,
    ModelAlias,
    Plan,
    PlanEntitlement,
    Provider,
    QuotaPeriod,
    RoutingRule,
    StoredResponse,
    Subscription,
    UsageRecord,
)
from .secrets import resolve_secret
from .services.accounting.budgets import budget_status
from .services.accounting.pricing import format_money
from .services.accounting.usage import CSV_FIELDS, CSV_LOOKUPS, csv_row
from .services.clock import SYSTEM_CLOCK
from .services.policy import keys


class _Echo:
    def write(self, value):
        return value


class AliasTestForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 4, "cols": 80, "placeholder": "Say hello in five words."}
        )
    )
    max_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=64)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the gateway itself: viewable, never edited by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    actions = ["check_health", "import_models"]

    def get_readonly_fields(self, request, obj=None):
        """Where requests go and which variable's value they carry: only a superuser
        sets both (anyone else could send any secret of the environment anywhere)."""
        fields = tuple(super().get_readonly_fields(request, obj))
        if request.user.is_superuser:
            return fields
        return (*fields, "base_url", "api_key_env")

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
            {
                "fields": (
                    "timeout_seconds",
                    "max_retries",
                    "rpm_limit",
                    "tpm_limit",
                    "max_concurrency",
                    "options",
                )
            },
        ),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(boolean=True, description="key set")
    def key_is_set(self, obj: Provider) -> bool | None:
        if not obj.api_key_env:
            return None
        return bool(resolve_secret(obj.api_key_env))

    @admin.action(description="Check health now")
    def check_health(self, request, queryset):
        from .services.ops.health import check_providers

        names = list(queryset.values_list("name", flat=True))
        for result in async_to_sync(check_providers)(names, probe_timeout=5.0):
            latency = f" in {result.latency_ms} ms" if result.latency_ms is not None else ""
            text = f"{result.provider.name}: {result.status}{latency}"
            if result.error:
                text += f" — {result.error}"
            level = (
                messages.ERROR
                if result.status == "down"
                else (messages.WARNING if result.status == "slow" else messages.SUCCESS)
            )
            self.message_user(request, text, level)

    @admin.action(description="Import models from provider (as disabled aliases)")
    def import_models(self, request, queryset):
        from .services.config.catalog import import_models

        for provider in queryset:
            try:
                created = async_to_sync(import_models)(provider)
            except LLMError as error:
                self.message_user(request, f"{provider.name}: {error.message}", messages.ERROR)
                continue
            for alias in created:  # in Django's admin log, like any admin change
                self.log_addition(request, alias, [{"added": {}}])
            self.message_user(
                request,
                f"{provider.name}: {len(created)} new disabled aliases"
                + (f" ({', '.join(a.slug for a in created[:10])}…)" if created else ""),
                messages.SUCCESS,
            )

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
        "mode",
        "where",
        "enabled",
    )
    list_filter = (
        "provider",
        "locality",
        "enabled",
        "cache_responses",
        "mode",
        "supports_tools",
        "supports_vision",
        "supports_response_format",
    )
    list_editable = ("enabled",)
    search_fields = ("slug", "label", "upstream_model")
    list_select_related = ("provider",)
    inlines = [AliasFallbackInline]
    readonly_fields = ("created_at", "updated_at", "test_link")

    @admin.display(description="locality")
    def where(self, obj: ModelAlias) -> str:
        """Local or external; "(by kind)" when the provider's kind decides."""
        return obj.effective_locality + ("" if obj.locality else " (by kind)")

    @admin.display(description="try it")
    def test_link(self, obj: ModelAlias):
        if not obj.pk:
            return "-"
        url = reverse("admin:llm_integration_modelalias_test", args=[obj.pk])
        return format_html('<a href="{}">Send a test prompt through the gateway</a>', url)

    def get_urls(self):
        return [
            path(
                "<int:pk>/test/",
                self.admin_site.admin_view(self.test_view),
                name="llm_integration_modelalias_test",
            ),
            *super().get_urls(),
        ]

    def test_view(self, request, pk: int):
        from .services.chat import chat

        alias = get_object_or_404(ModelAlias.objects.select_related("provider"), pk=pk)
        form = AliasTestForm(request.POST or None)
        context = {
            **self.admin_site.each_context(request),
            "alias": alias,
            "form": form,
            "title": f"Test {alias.slug}",
            "opts": self.model._meta,
        }
        if request.method == "POST" and form.is_valid():
            started = time.monotonic()
            try:
                result = chat(
                    user=request.user,
                    model=alias.slug,
                    messages=form.cleaned_data["prompt"],
                    max_tokens=form.cleaned_data["max_tokens"],
                )
            except LLMError as error:
                context["error"] = f"{error.code}: {error.message}"
            else:
                context.update(
                    result=result,
                    cost=format_money(result.cost_usd),
                    latency_ms=int((time.monotonic() - started) * 1000),
                )
        return TemplateResponse(request, "admin/llm_integration/alias_test.html", context)


class LabelListField(forms.CharField):
    """A list of labels or slugs, edited as ``a, b``."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        text = super().to_python(value) or ""
        return [item.strip() for item in text.split(",") if item.strip()]


class RoutingRuleForm(forms.ModelForm):
    tasks = LabelListField(required=False, help_text="Task labels, separated by commas.")
    plans = LabelListField(required=False, help_text="Plan slugs, separated by commas.")
    model_ids = LabelListField(
        label="Models", required=False, help_text="Requested alias ids, separated by commas."
    )

    class Meta:
        model = RoutingRule
        fields = (
            "name",
            "position",
            "enabled",
            "tasks",
            "plans",
            "model_ids",
            "pattern",
            "serve_with",
            "locality",
            "refuse_message",
        )


@admin.register(RoutingRule)
class RoutingRuleAdmin(admin.ModelAdmin):
    """Routing rules, tried in position order; the first that matches applies."""

    form = RoutingRuleForm
    list_display = ("name", "position", "conditions", "decision", "enabled")
    list_editable = ("position", "enabled")
    search_fields = ("name", "pattern")
    list_select_related = ("serve_with",)
    autocomplete_fields = ("serve_with",)
    fieldsets = (
        (None, {"fields": ("name", "position", "enabled")}),
        (
            "When (every condition given must hold)",
            {"fields": ("tasks", "plans", "model_ids", "pattern")},
        ),
        ("Then", {"fields": ("serve_with", "locality", "refuse_message")}),
    )

    @admin.display(description="when")
    def conditions(self, obj: RoutingRule) -> str:
        match = obj.match
        return (
            "; ".join(
                f"{name} {', '.join(v) if isinstance(v, list) else v}" for name, v in match.items()
            )
            or "every request"
        )

    @admin.display(description="then")
    def decision(self, obj: RoutingRule) -> str:
        return "; ".join(f"{name} {value}" for name, value in obj.action.items())


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "name",
        "rpm_limit",
        "tpm_limit",
        "priority",
        "queue_timeout_seconds",
        "alias_count",
    )
    search_fields = ("slug", "name")
    inlines = [EntitlementInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(alias_count=Count("entitlements"))

    @admin.display(description="models", ordering="alias_count")
    def alias_count(self, obj) -> int:
        return obj.alias_count


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
        "user",
        "alias",
        "status",
        "tokens",
        "cost",
        "latency_ms",
        "request_id",
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
    actions = ["export_csv"]

    @admin.display(description="tokens", ordering="completion_tokens")
    def tokens(self, obj: UsageRecord) -> str:
        estimated = "~" if obj.tokens_estimated else ""
        return f"{estimated}{obj.prompt_tokens} + {obj.completion_tokens}"

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, obj: UsageRecord) -> str:
        return "cached" if obj.cached else f"${format_money(obj.cost_usd)}"

    def get_urls(self):
        return [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="llm_integration_usage_dashboard",
            ),
            *super().get_urls(),
        ]

    def dashboard_view(self, request):
        from django.core.exceptions import PermissionDenied

        from .services.accounting import reports

        if not self.has_view_permission(request):
            raise PermissionDenied

        days = 30
        series = reports.daily(days)
        since = timezone.now() - datetime.timedelta(days=days)
        labels = [d["day"].strftime("%m-%d") for d in series]
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "days": days,
            "opts": self.model._meta,
            "spend_chart": mark_safe(
                reports.bar_chart(
                    [float(d["cost"]) for d in series], labels, title="Spend per day", unit="$"
                )
            ),
            "token_chart": mark_safe(
                reports.bar_chart(
                    [float(d["tokens"]) for d in series],
                    labels,
                    title="Tokens per day",
                    unit="tokens",
                )
            ),
            "totals": {
                "requests": sum(d["requests"] for d in series),
                "tokens": sum(d["tokens"] for d in series),
                "cost": format_money(sum((d["cost"] for d in series), Decimal(0))),
            },
            "top_users": reports.top("user__username", since=since),
            "top_aliases": reports.top("alias", since=since),
            "by_rule": reports.by_rule(since=since),
            "by_tag": reports.by_tag(since=since),
            "by_key": reports.by_key(since=since),
            "errors": reports.provider_errors(since=since),
        }
        return TemplateResponse(request, "admin/llm_integration/dashboard.html", context)

    @admin.action(description="Export selected usage as CSV")
    def export_csv(self, request, queryset):
        writer = csv.writer(_Echo())

        def rows():
            yield writer.writerow(CSV_FIELDS)
            for row in queryset.order_by("id").values_list(*CSV_LOOKUPS).iterator(2000):
                yield writer.writerow(csv_row(row))

        response = StreamingHttpResponse(rows(), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="llm-usage.csv"'
        return response

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
    raw_id_fields = ("user", "api_key")
    inlines = [BudgetPeriodInline, BudgetAlertInline]
    clock = SYSTEM_CLOCK  # which period is "this period" (tests give a FakeClock)

    @admin.display(description="target")
    def target(self, obj: Budget) -> str:
        return obj.target_name

    @admin.display(description="this period")
    def progress(self, obj: Budget):
        status = budget_status(obj, now=self.clock.now())
        used = status["spent"] + status["reserved"]
        pct = min(100, int(used * 100 / obj.limit_usd)) if obj.limit_usd else 100
        return format_html(
            '<progress max="100" value="{}" title="{}%"></progress> spent ${} · reserved ${} '
            "· left ${}",
            pct,
            pct,
            format_money(status["spent"]),
            format_money(status["reserved"]),
            format_money(status["remaining"]),
        )


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "budget", "threshold", "spent_usd", "limit_usd", "period_start")
    list_filter = ("threshold",)


@admin.register(BudgetPeriod)
class BudgetPeriodAdmin(ReadOnlyAdmin):
    list_display = ("budget", "period_start", "spent_usd", "reserved_usd", "updated_at")


@admin.register(StoredResponse)
class StoredResponseAdmin(ReadOnlyAdmin):
    """Responses kept for ``previous_response_id``: read and deleted here, never edited."""

    list_display = ("id", "created_at", "user", "alias", "turns")
    list_filter = ("alias",)
    search_fields = ("id", "user__username")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    show_full_result_count = False

    @admin.display(description="turns")
    def turns(self, obj: StoredResponse) -> int:
        return len(obj.chain) + 1

    def get_exclude(self, request, obj=None):
        """Prompts and answers are shown to superusers only (staff see who and when)."""
        if request.user.is_superuser:
            return ()
        return ("input_json", "body_json")


class ConversationMessageInline(admin.TabularInline):
    model = ConversationMessage
    fields = ("position", "role", "content", "importance", "tokens", "in_context", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    """Conversations with managed context: read and deleted here, never edited (their
    usage rows stay when they go)."""

    list_display = ("id", "title", "user", "alias", "tokens", "context_status", "updated_at")
    list_filter = ("alias", "context_status")
    search_fields = ("id", "title", "user__username")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    show_full_result_count = False
    inlines = [ConversationMessageInline]


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdmin):
    list_display = ("checked_at", "provider", "status", "latency_ms", "error")
    list_filter = ("status", "provider")
    date_hierarchy = "checked_at"


@admin.register(QuotaPeriod)
class QuotaPeriodAdmin(ReadOnlyAdmin):
    list_display = ("period_start", "user", "entitlement", "kind", "used", "reserved")
    list_filter = ("kind", "entitlement__plan", "entitlement__alias")
    date_hierarchy = "period_start"
    raw_id_fields = ("user",)


class ApiKeyForm(forms.ModelForm):
    """A key's settings, with its models and its own budget (a ``Budget`` of scope
    ``key``) as the API takes them."""

    models = forms.ModelMultipleChoiceField(
        ModelAlias.objects.all(),
        required=False,
        widget=admin.widgets.FilteredSelectMultiple("models", is_stacked=False),
        help_text="The models the key may call (none chosen: every model the owner's plan allows).",
    )
    budget_usd = forms.DecimalField(
        label="budget (USD)",
        max_digits=18,
        decimal_places=8,
        min_value=0,
        required=False,
        help_text="A hard budget of the key's own (empty: none).",
    )
    budget_period = forms.ChoiceField(choices=Budget.Period.choices, initial="month")

    class Meta:
        model = ApiKey
        fields = ("user", "name", "expires_at", "rpm_limit")

    #: Who is making the key (``ApiKeyAdmin.get_form`` sets it).
    actor = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["models"].initial = list(self.instance.allowed_models.all())
            if (budget := keys.key_budget(self.instance)) is not None:
                self.fields["budget_usd"].initial = budget.limit_usd
                self.fields["budget_period"].initial = budget.period

    def clean_user(self):
        owner = self.cleaned_data["user"]
        if self.actor is not None and not keys.may_issue(self.actor, owner):
            raise forms.ValidationError(
                "Only a superuser may make a key for another staff user: it would act with "
                "their rights."
            )
        return owner


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Everyone's API keys. Adding one shows its secret once; keys are revoked, not
    deleted, so their usage stays attributed."""

    form = ApiKeyForm
    list_display = ("name", "prefix", "user", "state", "created_at", "last_used_at", "expires_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("name", "prefix", "user__username")
    raw_id_fields = ("user",)
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        return obj.state(keys.key_ring.clock.now())

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, "user") if obj is not None else self.readonly_fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"actor": request.user})

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj: ApiKey, form, change) -> None:
        if not change:
            obj.secret, obj.prefix = keys.new_secret()
            obj.digest = keys.digest(obj.secret)
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change) -> None:
        super().save_related(request, form, formsets, change)
        key = form.instance
        key.allowed_models.set(form.cleaned_data["models"])
        keys.set_budget(key, form.cleaned_data["budget_usd"], form.cleaned_data["budget_period"])

    def response_add(self, request, obj: ApiKey, post_url_continue=None):
        """The secret, once, on the page itself (never in a message: messages may be
        stored in a cookie or the session)."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "key": obj,
            "secret": obj.secret,
        }
        response = TemplateResponse(request, "admin/llm_integration/apikey_secret.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        now = keys.key_ring.clock.now()
        for key in queryset.filter(revoked_at__isnull=True):
            keys.revoke(key, now=now)
        messages.success(request, "The selected keys are revoked.")
