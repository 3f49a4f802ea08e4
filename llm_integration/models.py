"""The rows that describe the gateway: providers, aliases, plans, usage and budgets.

Operators edit providers, aliases, plans and budgets in Django admin; the service layer
builds adapters from them and writes one UsageRecord per request. Money is Decimal,
prices are USD per million tokens.
"""

from __future__ import annotations

import json
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

MONEY = {"max_digits": 18, "decimal_places": 8}
PRICE = {"max_digits": 14, "decimal_places": 6}
ZERO = Decimal("0")


MONEY_UNIT = Decimal("0.00000001")


def usd_to_units(amount: Decimal) -> int:
    """Whole 1e-8 USD units, rounded up (a reservation never falls short)."""
    from decimal import ROUND_CEILING

    return int((amount / MONEY_UNIT).to_integral_value(rounding=ROUND_CEILING))


def units_to_usd(units: int) -> Decimal:
    return (Decimal(units) * MONEY_UNIT).quantize(MONEY_UNIT)


def default_thresholds() -> list[int]:
    return [75, 90, 100]


class Provider(models.Model):
    """An upstream LLM API and how to reach it."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OLLAMA = "ollama", "Ollama"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, LiteLLM, Gemini…)"
        DUMMY = "dummy", "Dummy (development)"

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    base_url = models.URLField(
        max_length=500, blank=True, help_text="Empty: the kind's public endpoint."
    )
    api_key_env = models.CharField(
        "API key environment variable",
        max_length=128,
        blank=True,
        help_text="Name of the environment variable holding the key (never the key).",
    )
    extra_headers = models.JSONField(
        default=dict,
        blank=True,
        help_text='Extra HTTP headers. A value "os.environ/NAME" is read from that variable.',
    )
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text='Adapter options, e.g. {"delay": 0.05} for the dummy, '
        '{"anthropic_version": "2023-06-01"} or {"keep_alive": "5m"} for Ollama.',
    )
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(0.1)])
    max_retries = models.PositiveSmallIntegerField(default=2)
    rpm_limit = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    max_concurrency = models.PositiveIntegerField(
        "max concurrent requests",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Requests in flight at once, across every process when Redis is configured "
        "(empty: no cap). Over it, requests wait their plan's queue timeout.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.extra_headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.extra_headers.items()
        ):
            raise ValidationError({"extra_headers": "Give a JSON object of string values."})


#: Provider kinds whose upstream runs on the operator's own machines by default.
LOCAL_KINDS = frozenset({"ollama", "dummy"})


class ModelAlias(models.Model):
    """A public model id (``chat-default``) mapped to a provider and upstream model."""

    class Locality(models.TextChoices):
        LOCAL = "local"
        EXTERNAL = "external"

    slug = models.SlugField("id", max_length=100, unique=True)
    label = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="aliases")
    upstream_model = models.CharField(max_length=200)
    input_price_per_mtok = models.DecimalField(
        "input price (USD / 1M tokens)", default=ZERO, validators=[MinValueValidator(ZERO)], **PRICE
    )
    output_price_per_mtok = models.DecimalField(
        "output price (USD / 1M tokens)",
        default=ZERO,
        validators=[MinValueValidator(ZERO)],
        **PRICE,
    )
    cache_read_price_per_mtok = models.DecimalField(
        "cache read price (USD / 1M tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(ZERO)],
        help_text="Prompt tokens read from the upstream's prompt cache. Blank: 0.1× the "
        "input price for Anthropic providers, the input price for others.",
        **PRICE,
    )
    cache_write_price_per_mtok = models.DecimalField(
        "cache write price (USD / 1M tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(ZERO)],
        help_text="Prompt tokens written to the upstream's prompt cache (for five minutes, "
        "Anthropic's default). Blank: 1.25× the input price for Anthropic providers, the "
        "input price for others.",
        **PRICE,
    )
    cache_write_1h_price_per_mtok = models.DecimalField(
        "cache write price, kept an hour (USD / 1M tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(ZERO)],
        help_text="Prompt tokens written to the upstream's prompt cache for an hour "
        '(Anthropic\'s ttl "1h"). Blank: 2× the input price for Anthropic providers, the '
        "cache write price for others.",
        **PRICE,
    )
    context_window = models.PositiveIntegerField(default=8192, validators=[MinValueValidator(1)])
    default_max_tokens = models.PositiveIntegerField(
        default=1024,
        validators=[MinValueValidator(1)],
        help_text="max_tokens of requests that give none (reserved on budgets, sent upstream).",
    )
    default_temperature = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(2.0)],
        help_text="Temperature of requests that give none (empty: the upstream's default).",
    )
    rpm_limit = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    max_concurrency = models.PositiveIntegerField(
        "max concurrent requests",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Requests in flight at once, across every process when Redis is configured "
        "(empty: no cap). Over it, requests wait their plan's queue timeout.",
    )
    cache_responses = models.BooleanField(
        default=False, help_text="Cache identical non-streaming answers (always at temperature 0)."
    )

    class Mode(models.TextChoices):
        CHAT = "chat", "chat"
        EMBEDDING = "embedding", "embedding"

    mode = models.CharField(
        max_length=16,
        choices=Mode.choices,
        default=Mode.CHAT,
        help_text="Chat models answer /chat and /messages; embedding models /v1/embeddings.",
    )
    supports_tools = models.BooleanField(
        "tool calling",
        default=True,
        help_text="The model takes tools and tool calls. Requests with tools to a model "
        "without get 400 unsupported_content, and never fall back to it.",
    )
    supports_vision = models.BooleanField(
        "images",
        default=False,
        help_text="The model reads images (image_url parts). Requests with images to a model "
        "without get 400 unsupported_content, and never fall back to it.",
    )
    supports_response_format = models.BooleanField(
        "structured output",
        default=True,
        help_text="The model takes response_format (JSON object or JSON Schema).",
    )
    locality = models.CharField(
        max_length=8,
        choices=Locality.choices,
        blank=True,
        help_text="Where its upstream runs. Empty: by the provider's kind (Ollama and dummy "
        "local, the others external). A request a routing rule keeps local is served by "
        "local aliases only.",
    )
    sort_order = models.IntegerField(default=0)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sort_order", "slug"]
        verbose_name = "model alias"
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return self.slug

    @property
    def display_label(self) -> str:
        return self.label or self.slug

    @property
    def is_paid(self) -> bool:
        return self.provider.kind != Provider.Kind.DUMMY

    @property
    def effective_locality(self) -> str:
        """``locality``, or the provider kind's default."""
        if self.locality:
            return self.locality
        local = self.provider.kind in LOCAL_KINDS
        return self.Locality.LOCAL if local else self.Locality.EXTERNAL

    @property
    def is_local(self) -> bool:
        return self.effective_locality == self.Locality.LOCAL

    def missing_capability(self, request) -> str | None:
        """The capability a chat request needs that this model lacks, or None."""
        if self.mode != self.Mode.CHAT:
            return "chat"
        if request.uses_tools and not self.supports_tools:
            return "tools"
        if request.uses_images and not self.supports_vision:
            return "images"
        if request.response_format is not None and not self.supports_response_format:
            return "response_format"
        return None

    def fallback_aliases(self) -> list[ModelAlias]:
        return [f.fallback for f in self.fallbacks.select_related("fallback__provider")]


class AliasFallback(models.Model):
    """An ordered fallback of an alias, tried when it (and earlier fallbacks) fail."""

    alias = models.ForeignKey(ModelAlias, on_delete=models.CASCADE, related_name="fallbacks")
    fallback = models.ForeignKey(ModelAlias, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["alias", "fallback"], name="llm_fallback_unique"),
            models.CheckConstraint(
                condition=~Q(alias=models.F("fallback")), name="llm_fallback_not_self"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alias_id} → {self.fallback_id} (#{self.position})"


class Plan(models.Model):
    """A subscription plan; entitlements say which aliases it may use."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    rpm_limit = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    priority = models.IntegerField(
        default=0,
        validators=[MinValueValidator(-1000), MaxValueValidator(1000)],
        help_text="Waiting requests of higher priority are served first (-1000 to 1000).",
    )
    queue_timeout_seconds = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(600)],
        help_text="How long a request over a concurrency cap or a rate limit waits for its "
        "turn before 429 (0: refused at once).",
    )
    aliases = models.ManyToManyField(ModelAlias, through="PlanEntitlement", related_name="plans")

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name or self.slug


class PlanEntitlement(models.Model):
    """Plan ↔ alias, with optional per-user quotas on that alias."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="entitlements")
    alias = models.ForeignKey(ModelAlias, on_delete=models.CASCADE, related_name="entitlements")
    rpm_limit = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    daily_request_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per user per day (in TIME_ZONE) on this alias."
    )
    monthly_token_limit = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per user per calendar month on this alias."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "alias"], name="llm_entitlement_unique")
        ]

    def __str__(self) -> str:
        return f"{self.plan_id}: {self.alias_id}"


class QuotaPeriod(models.Model):
    """What one user used of one entitlement's quota in one period: requests of a day or
    tokens of a month. ``reserved`` holds the worst case of requests in flight."""

    class Kind(models.TextChoices):
        REQUESTS_PER_DAY = "requests_day", "requests per day"
        TOKENS_PER_MONTH = "tokens_month", "tokens per month"

    entitlement = models.ForeignKey(
        PlanEntitlement, on_delete=models.CASCADE, related_name="quota_periods"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    period_start = models.DateTimeField()
    used = models.PositiveBigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["entitlement", "user", "kind", "period_start"], name="llm_quota_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.kind} from {self.period_start:%Y-%m-%d}"


class Subscription(models.Model):
    """Puts a user on a plan. Users without an active one are on ``DEFAULT_PLAN``."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_subscription"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    active = models.BooleanField(default=True)
    started_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user} on {self.plan}"

    def clean(self) -> None:
        if self.expires_at is not None and self.started_at and self.expires_at <= self.started_at:
            raise ValidationError({"expires_at": "It must be after started_at."})

    def is_current(self, now=None) -> bool:
        now = now or timezone.now()
        return self.active and (self.expires_at is None or self.expires_at > now)


class ApiKey(models.Model):
    """A named API key of a user (CONTRACT §14): the secret is shown once when issued and
    kept only as a keyed hash (``digest``); ``prefix`` finds the row. A key may be limited
    to some models and a rate, carry a hard budget of its own (a ``Budget`` of scope
    ``key``), expire, and be revoked (kept, with its usage, for the accounts)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=32, unique=True, editable=False, help_text="Shown in lists; finds the key."
    )
    digest = models.CharField(
        max_length=64, editable=False, help_text="HMAC-SHA256 of the secret (never the secret)."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.ManyToManyField(
        "ModelAlias",
        through="ApiKeyModel",
        verbose_name="models",
        blank=True,
        related_name="+",
        help_text="The models the key may call (none chosen: every model the owner's plan allows).",
    )
    rpm_limit = models.PositiveIntegerField(
        "requests per minute", null=True, blank=True, help_text="Empty: no limit of its own."
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def state(self, now) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class ApiKeyModel(models.Model):
    """A model an API key may call. The alias cannot be deleted while a key names it:
    the key would silently lose its limit and reach every model."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE)
    alias = models.ForeignKey("ModelAlias", on_delete=models.PROTECT, related_name="+")

    class Meta:
        verbose_name = "API key model"
        constraints = [
            models.UniqueConstraint(fields=["api_key", "alias"], name="llm_api_key_model_unique")
        ]

    def __str__(self) -> str:
        return f"{self.api_key} → {self.alias}"


class UsageRecord(models.Model):
    """One request that reached the service layer, whatever its outcome."""

    class Status(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        CANCELLED = "cancelled"
        REFUSED = "refused"

    request_id = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    plan = models.CharField(max_length=64, blank=True)
    alias = models.CharField(max_length=100, blank=True)
    provider = models.CharField(max_length=64, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    #: Of the prompt tokens, those read from and written to the upstream's prompt cache.
    cache_read_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    #: Of the cache writes, those kept an hour (priced on their own).
    cache_write_1h_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False)
    cost_usd = models.DecimalField(default=ZERO, **MONEY)
    unbilled_cost_usd = models.DecimalField(
        default=ZERO,
        help_text="What the upstream charged for an answer the gateway withheld "
        "(refused because its record could not be written in time): not counted on budgets.",
        **MONEY,
    )
    latency_ms = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices)
    error_type = models.CharField(max_length=64, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    cached = models.BooleanField(default=False)
    streamed = models.BooleanField(default=False)
    route = models.CharField(
        max_length=100, blank=True, help_text="The routing rule that applied (empty: none)."
    )
    tags = models.CharField(
        max_length=1100,
        blank=True,
        help_text="The caller's tags, stored as ,a,b, (so one tag is found with "
        "tags__contains=',a,'); shown as a,b.",
    )
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The API key the request came with (empty: a session or a DRF token).",
    )
    conversation = models.CharField(
        max_length=64,
        blank=True,
        help_text="The conversation (managed context) the request was a turn of; kept "
        "when the conversation is deleted.",
    )
    dropped = models.CharField(
        max_length=200,
        blank=True,
        help_text="What the gateway left out of the request as DROP_UNSUPPORTED_TOOLS "
        "allows (tool:web_search,…).",
    )
    queued_ms = models.PositiveIntegerField(
        default=0, help_text="Time spent waiting for a concurrency cap or a rate limit."
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"], name="llm_usage_user_time"),
            models.Index(fields=["created_at"], name="llm_usage_time"),
            models.Index(fields=["alias", "created_at"], name="llm_usage_alias_time"),
            models.Index(fields=["provider", "created_at"], name="llm_usage_provider_time"),
            models.Index(fields=["status", "created_at"], name="llm_usage_status_time"),
            models.Index(fields=["api_key", "created_at"], name="llm_usage_key_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.alias} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tag_list(self) -> list[str]:
        return [tag for tag in self.tags.split(",") if tag]

    @staticmethod
    def stored_tags(tags) -> str:
        """``tags`` as the column holds them."""
        return f",{','.join(tags)}," if tags else ""


class Budget(models.Model):
    """A spending limit on a scope (global, provider, alias, plan, user or API key) per
    period."""

    class Scope(models.TextChoices):
        GLOBAL = "global"
        PROVIDER = "provider"
        ALIAS = "alias"
        PLAN = "plan"
        USER = "user"
        KEY = "key"

    class Period(models.TextChoices):
        DAY = "day"
        WEEK = "week"
        MONTH = "month"
        TOTAL = "total"

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.GLOBAL)
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.CASCADE)
    alias = models.ForeignKey(ModelAlias, null=True, blank=True, on_delete=models.CASCADE)
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.CASCADE)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    limit_usd = models.DecimalField(validators=[MinValueValidator(ZERO)], **MONEY)
    hard = models.BooleanField(default=True, help_text="Refuse requests once the limit is reached.")
    alert_thresholds = models.JSONField(
        default=default_thresholds, blank=True, help_text="Percentages, e.g. [75, 90, 100]."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["scope", "name"]
        constraints = [
            models.CheckConstraint(
                name="llm_budget_scope_target",
                condition=(
                    Q(
                        scope="global",
                        provider__isnull=True,
                        alias__isnull=True,
                        plan__isnull=True,
                        user__isnull=True,
                        api_key__isnull=True,
                    )
                    | Q(
                        scope="provider",
                        provider__isnull=False,
                        alias__isnull=True,
                        plan__isnull=True,
                        user__isnull=True,
                        api_key__isnull=True,
                    )
                    | Q(
                        scope="alias",
                        provider__isnull=True,
                        alias__isnull=False,
                        plan__isnull=True,
                        user__isnull=True,
                        api_key__isnull=True,
                    )
                    | Q(
                        scope="plan",
                        provider__isnull=True,
                        alias__isnull=True,
                        plan__isnull=False,
                        user__isnull=True,
                        api_key__isnull=True,
                    )
                    | Q(
                        scope="user",
                        provider__isnull=True,
                        alias__isnull=True,
                        plan__isnull=True,
                        user__isnull=False,
                        api_key__isnull=True,
                    )
                    | Q(
                        scope="key",
                        provider__isnull=True,
                        alias__isnull=True,
                        plan__isnull=True,
                        user__isnull=True,
                        api_key__isnull=False,
                    )
                ),
                violation_error_message="Set exactly the target that the scope names.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.scope}, {self.period})"

    def clean(self) -> None:
        thresholds = self.alert_thresholds
        if not isinstance(thresholds, list) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1000
            for t in thresholds
        ):
            raise ValidationError(
                {"alert_thresholds": "A list of percentages of the limit, e.g. [75, 90, 100]."}
            )

    @property
    def target_name(self) -> str:
        target = {
            "provider": self.provider,
            "alias": self.alias,
            "plan": self.plan,
            "user": self.user,
            "key": self.api_key,
        }.get(self.scope)
        return str(target) if target is not None else "global"

    @property
    def described(self) -> str:
        """``global``, or the scope and its target: ``provider openai``."""
        return "global" if self.scope == self.Scope.GLOBAL else f"{self.scope} {self.target_name}"


class BudgetPeriod(models.Model):
    """The counters of one budget in one period; a new period starts a new row.

    Counters are whole units of 1e-8 USD (``MONEY_UNIT``) so that the conditional
    UPDATE that reserves money compares integers exactly on every database.
    """

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="periods")
    period_start = models.DateTimeField()
    spent_units = models.BigIntegerField(default=0)
    reserved_units = models.BigIntegerField(default=0)
    #: Highest alert threshold already fired in this period (percent).
    alerted_threshold = models.PositiveSmallIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start"], name="llm_budget_period_unique"
            ),
            models.CheckConstraint(
                condition=Q(reserved_units__gte=0), name="llm_budget_reserved_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.budget} from {self.period_start:%Y-%m-%d}"

    @property
    def spent_usd(self) -> Decimal:
        return units_to_usd(self.spent_units)

    @property
    def reserved_usd(self) -> Decimal:
        return units_to_usd(self.reserved_units)


class BudgetAlert(models.Model):
    """A threshold crossed by a budget in a period; unique, so it fires once."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    spent_usd = models.DecimalField(**MONEY)
    limit_usd = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start", "threshold"], name="llm_budget_alert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.budget.name}: {self.threshold}%"


class HealthCheck(models.Model):
    """The outcome of one provider health check (``llm_healthcheck`` or admin)."""

    class Status(models.TextChoices):
        CONNECTED = "connected"
        SLOW = "slow"
        DOWN = "down"
        UNKNOWN = "unknown"  # the checking process could not judge (no key in its env)

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="health_checks")
    status = models.CharField(max_length=16, choices=Status.choices)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [
            models.Index(fields=["provider", "-checked_at"], name="llm_health_provider_time")
        ]

    def __str__(self) -> str:
        return f"{self.provider_id} {self.status}"


class ConfigVersion(models.Model):
    """One row: a number that grows whenever providers, aliases, plans, entitlements,
    subscriptions or budgets change, so every serving process (with or without a shared
    cache) knows when to reload its snapshot of them (``services/config/snapshot.py``)."""

    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "configuration version"

    def __str__(self) -> str:
        return f"configuration version {self.version}"


class RoutingRule(models.Model):
    """A routing rule (CONTRACT §7): rules are tried in ``position`` order before an alias
    is chosen, and the first whose named conditions all hold applies. Empty conditions
    hold for every request; at least one action is required."""

    name = models.SlugField(max_length=100, unique=True)
    position = models.IntegerField(default=0)
    enabled = models.BooleanField(default=True)
    tasks = models.JSONField(
        default=list, blank=True, help_text="Task labels (a request's task is one of them)."
    )
    plans = models.JSONField(default=list, blank=True, help_text="Plan slugs.")
    model_ids = models.JSONField(
        "models",
        default=list,
        blank=True,
        help_text="Requested alias ids (a request without one asks for the default model).",
    )
    pattern = models.TextField(
        blank=True,
        help_text="An RE2 regular expression searched in every text of the request "
        "(messages, system, tool calls and results); (?i) for any case.",
    )
    serve_with = models.ForeignKey(
        ModelAlias,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The alias that serves a matching request.",
    )
    locality = models.CharField(
        max_length=8,
        choices=[("local", "local only")],
        blank=True,
        help_text="local: the request never reaches an external upstream (503 "
        "no_local_model when no local alias can serve it).",
    )
    refuse_message = models.TextField(
        blank=True, help_text="Refuse matching requests (403 policy_refused) with this message."
    )

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Every field that is wrong, by name: lists of known labels and slugs, a pattern
        RE2 can match (in linear time), one action at least, a refusal alone."""
        from django.core.exceptions import ValidationError

        from .text.patterns import LABEL, pattern_error

        errors: dict[str, str] = {}
        for name, known in (
            ("tasks", None),
            ("plans", lambda slugs: Plan.objects.filter(slug__in=slugs)),
            ("model_ids", lambda slugs: ModelAlias.objects.filter(slug__in=slugs)),
        ):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(
                isinstance(item, str) and LABEL.fullmatch(item) for item in value
            ):
                errors[name] = "A list of labels: letters, digits and _.:/- (at most 64 each)."
            elif value and known is not None:
                found = set(known(value).values_list("slug", flat=True))
                if missing := [slug for slug in value if slug not in found]:
                    errors[name] = f"Unknown: {', '.join(missing)}."
        if self.pattern and (reason := pattern_error(self.pattern)):
            errors["pattern"] = reason
        if not (self.serve_with_id or self.locality or self.refuse_message):
            errors["__all__"] = "Give an action: an alias to serve with, local only, or a refusal."
        elif self.refuse_message and (self.serve_with_id or self.locality):
            errors["refuse_message"] = "A refusal is the whole action: clear the other two."
        elif self.serve_with_id and self.locality == "local" and not self.serve_with.is_local:
            errors["serve_with"] = (
                f"{self.serve_with.slug} is external; the rule keeps requests local."
            )
        if errors:
            raise ValidationError(errors)

    @property
    def match(self) -> dict:
        """The conditions, as the staff API shows them."""
        found = {"tasks": self.tasks, "plans": self.plans, "models": self.model_ids}
        found = {name: value for name, value in found.items() if value}
        if self.pattern:
            found["pattern"] = self.pattern
        return found

    @property
    def action(self) -> dict:
        """What it decides, as the staff API shows it."""
        found: dict = {}
        if self.serve_with_id:
            found["model"] = self.serve_with.slug
        if self.locality:
            found["locality"] = self.locality
        if self.refuse_message:
            found["refuse"] = self.refuse_message
        return found


class StoredResponse(models.Model):
    """An answer of the Responses API kept for its owner (``store``, the default):
    read back by ``GET /v1/responses/<id>`` and continued by ``previous_response_id``.

    A row holds its own turn only, the new input items and the response object (its
    output); ``chain`` lists the ids of the earlier responses it continues, oldest
    first, so a continuation reads the whole conversation in two queries whatever its
    length, and storage grows with the turns, not with their square.

    Items and body are JSON text, not a JSON column: PostgreSQL's ``jsonb`` cannot hold
    a NUL character, which a prompt may."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    alias = models.CharField(max_length=100)
    input_json = models.TextField(help_text="This turn's input items, as the client sent them.")
    body_json = models.TextField(help_text="The response object, as it was answered.")
    chain = models.JSONField(
        default=list, blank=True, help_text="The ids of the responses it continues, oldest first."
    )
    thread = models.CharField(
        max_length=64,
        db_index=True,
        editable=False,
        help_text="The conversation's first response (its own id when it starts one): "
        "conversations are pruned whole.",
    )

    class Meta:
        verbose_name = "stored response"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.id

    @property
    def input_items(self) -> list[dict]:
        return json.loads(self.input_json)

    @property
    def body(self) -> dict:
        return json.loads(self.body_json)


class Conversation(models.Model):
    """A conversation whose context the gateway keeps (CONTRACT §10): the client sends
    only its new message; the system prompt and the turns still in context go upstream
    with it. Owner-only; staff read and delete them in admin."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    alias = models.CharField(max_length=100, help_text="The model alias the turns go to.")
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    summary = models.TextField(
        blank=True,
        help_text="What the turns left out of the context said (SUMMARY_MODEL's words); "
        "sent after the system prompt.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    #: What the last turn sent upstream, and how it stood against the limit.
    tokens = models.PositiveIntegerField(default=0)
    context_status = models.CharField(max_length=16, default="ok")

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "updated_at"], name="llm_conversation_user")]

    def __str__(self) -> str:
        return self.title or self.id


class ConversationMessage(models.Model):
    """One message of a conversation. A message removed from the context to make room
    stays here (``in_context`` false), so the conversation reads back whole."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    #: The message's place in the conversation (0, 1, ...): the order turns are sent in.
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=16)
    content = models.TextField()
    importance = models.FloatField(default=0.5)
    tokens = models.PositiveIntegerField(default=0)
    in_context = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "position"], name="llm_conversation_message_position"
            )
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id}#{self.position} {self.role}"
