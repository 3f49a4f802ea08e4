"""The staff API's serializers (CONTRACT §9): the rows admin edits, as JSON.

Every serializer refuses a field it does not carry (by name, as the chat surfaces do),
runs the model's own checks (``full_clean``: field validators, ``clean``, constraints),
and names rows by what people call them: providers and routing rules by name, aliases
by id, plans by slug, users by username. No key is ever shown: a provider shows the
name of the variable that holds its key.
"""

from __future__ import annotations

import copy
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from rest_framework import serializers

from ...models import (
    AliasFallback,
    Budget,
    ModelAlias,
    Plan,
    PlanEntitlement,
    Provider,
    RoutingRule,
    Subscription,
)
from ...text.fields import refuse_unknown


class RowSerializer(serializers.ModelSerializer):
    """Unknown fields refused by name; the model's own checks (``full_clean``: fields,
    ``clean``, uniqueness, constraints) run before a save."""

    #: Fields written by ``save_related`` after the row (not model fields).
    related: tuple[str, ...] = ()
    #: The field a row is named by in URLs and in other rows (rules name aliases and
    #: plans): it cannot change; a renamed row is a new row.
    key: str = ""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            refuse_unknown(data, set(self.fields))
        return super().to_internal_value(data)

    def validate(self, attrs: dict) -> dict:
        if self.instance is not None and self.key in attrs:
            if attrs[self.key] != getattr(self.instance, self.key):
                name = self.public(self.key)
                raise serializers.ValidationError(
                    {name: [f"{name} cannot change: create a new row instead."]}
                )
        row = copy.copy(self.instance) if self.instance is not None else self.Meta.model()
        for name, value in attrs.items():
            if name not in self.related:
                setattr(row, name, value)
        try:
            row.full_clean()
        except DjangoValidationError as error:
            errors = {self.public(name): value for name, value in error.message_dict.items()}
            raise serializers.ValidationError(errors) from None
        for name in attrs:  # the values as the model cleaned them
            if name not in self.related and hasattr(row, name):
                attrs[name] = getattr(row, name)
        return attrs

    def public(self, name: str) -> str:
        """A model field's name in the API."""
        return name

    @transaction.atomic
    def save(self, **kwargs):
        related = {
            name: self.validated_data.pop(name)
            for name in self.related
            if name in self.validated_data
        }
        row = super().save(**kwargs)
        if related:
            self.save_related(row, related)
        return row

    def save_related(self, row, related: dict[str, Any]) -> None:
        """Write what lives in other tables (an alias's fallbacks, a plan's models)."""


class ProviderSerializer(RowSerializer):
    key = "name"

    class Meta:
        model = Provider
        fields = (
            "name",
            "kind",
            "base_url",
            "api_key_env",
            "timeout_seconds",
            "max_retries",
            "rpm_limit",
            "tpm_limit",
            "max_concurrency",
            "enabled",
        )


class AliasSerializer(RowSerializer):
    id = serializers.SlugField(source="slug", max_length=100)
    provider = serializers.SlugRelatedField(slug_field="name", queryset=Provider.objects.all())
    locality = serializers.CharField(
        source="effective_locality",
        required=False,
        allow_blank=True,
        help_text="local or external; empty: by the provider's kind.",
    )
    fallbacks = serializers.ListField(
        child=serializers.SlugField(),
        required=False,
        write_only=True,  # read back by to_representation, from their own table
        help_text="Alias ids, in order.",
    )
    related = ("fallbacks",)
    key = "slug"

    class Meta:
        model = ModelAlias
        fields = (
            "id",
            "label",
            "provider",
            "upstream_model",
            "mode",
            "input_price_per_mtok",
            "output_price_per_mtok",
            "cache_read_price_per_mtok",
            "cache_write_price_per_mtok",
            "cache_write_1h_price_per_mtok",
            "context_window",
            "default_max_tokens",
            "default_temperature",
            "locality",
            "fallbacks",
            "max_concurrency",
            "rpm_limit",
            "tpm_limit",
            "cache_responses",
            "supports_tools",
            "supports_vision",
            "supports_response_format",
            "enabled",
        )

    def to_representation(self, row):
        data = super().to_representation(row)
        data["fallbacks"] = [fb.fallback.slug for fb in row.fallbacks.order_by("position", "id")]
        return data

    def validate(self, attrs: dict) -> dict:
        if "effective_locality" in attrs:
            locality = attrs.pop("effective_locality")
            if locality not in ("", *ModelAlias.Locality.values):
                raise serializers.ValidationError({"locality": ["Give local, external or ''."]})
            attrs["locality"] = locality
        if "fallbacks" in attrs:
            slugs = attrs["fallbacks"]
            found = {a.slug: a for a in ModelAlias.objects.filter(slug__in=slugs)}
            if missing := [slug for slug in slugs if slug not in found]:
                raise serializers.ValidationError(
                    {"fallbacks": [f"Unknown: {', '.join(missing)}."]}
                )
            if len(set(slugs)) != len(slugs):
                raise serializers.ValidationError({"fallbacks": ["Name each alias once."]})
            own = self.instance.slug if self.instance is not None else attrs.get("slug")
            if own in slugs:
                raise serializers.ValidationError(
                    {"fallbacks": ["An alias cannot fall back to itself."]}
                )
            attrs["fallbacks"] = [found[slug] for slug in slugs]
        return super().validate(attrs)

    def public(self, name: str) -> str:
        return "id" if name == "slug" else name

    def save_related(self, row, related):
        row.fallbacks.all().delete()
        for i, fallback in enumerate(related["fallbacks"]):  # each save tells every process
            AliasFallback.objects.create(alias=row, fallback=fallback, position=i)


class PlanSerializer(RowSerializer):
    models = serializers.ListField(
        child=serializers.SlugField(),
        required=False,
        write_only=True,  # read back by to_representation, from the entitlements
        help_text="Entitled alias ids (an alias no plan names is open to every plan).",
    )
    related = ("models",)
    key = "slug"

    class Meta:
        model = Plan
        fields = (
            "slug",
            "name",
            "priority",
            "queue_timeout_seconds",
            "rpm_limit",
            "tpm_limit",
            "models",
        )

    def to_representation(self, row):
        data = super().to_representation(row)
        data["models"] = sorted(e.alias.slug for e in row.entitlements.select_related("alias"))
        return data

    def validate(self, attrs: dict) -> dict:
        if "models" in attrs:
            slugs = attrs["models"]
            found = {a.slug: a for a in ModelAlias.objects.filter(slug__in=slugs)}
            if missing := [slug for slug in slugs if slug not in found]:
                raise serializers.ValidationError({"models": [f"Unknown: {', '.join(missing)}."]})
            attrs["models"] = list(found.values())
        return super().validate(attrs)

    def save_related(self, row, related):
        """Entitlements added and removed; a kept one keeps its quotas."""
        wanted = {alias.pk: alias for alias in related["models"]}
        for entitlement in row.entitlements.all():
            if entitlement.alias_id not in wanted:
                entitlement.delete()
            else:
                wanted.pop(entitlement.alias_id)
        for alias in wanted.values():
            PlanEntitlement.objects.create(plan=row, alias=alias)


class SubscriptionSerializer(RowSerializer):
    user = serializers.SlugRelatedField(
        slug_field=get_user_model().USERNAME_FIELD, queryset=get_user_model().objects.all()
    )
    plan = serializers.SlugRelatedField(slug_field="slug", queryset=Plan.objects.all())

    class Meta:
        model = Subscription
        fields = ("id", "user", "plan", "active", "started_at", "expires_at")
        read_only_fields = ("id",)


class BudgetSerializer(RowSerializer):
    provider = serializers.SlugRelatedField(
        slug_field="name", queryset=Provider.objects.all(), required=False, allow_null=True
    )
    alias = serializers.SlugRelatedField(
        slug_field="slug", queryset=ModelAlias.objects.all(), required=False, allow_null=True
    )
    plan = serializers.SlugRelatedField(
        slug_field="slug", queryset=Plan.objects.all(), required=False, allow_null=True
    )
    user = serializers.SlugRelatedField(
        slug_field=get_user_model().USERNAME_FIELD,
        queryset=get_user_model().objects.all(),
        required=False,
        allow_null=True,
    )
    #: A key's own budget names its key (by prefix); it is made and removed with the
    #: key (``/keys``), here only read and tuned.
    api_key = serializers.SlugRelatedField(slug_field="prefix", read_only=True)

    class Meta:
        model = Budget
        fields = (
            "id",
            "name",
            "scope",
            "provider",
            "alias",
            "plan",
            "user",
            "api_key",
            "period",
            "limit_usd",
            "hard",
            "alert_thresholds",
            "enabled",
        )
        read_only_fields = ("id",)

    def public(self, name: str) -> str:
        return "scope" if name == "__all__" else name  # the scope and its target disagree


class MatchSerializer(serializers.Serializer):
    """A rule's conditions; any other key is refused by name."""

    tasks = serializers.ListField(child=serializers.CharField(), required=False)
    plans = serializers.ListField(child=serializers.CharField(), required=False)
    models = serializers.ListField(child=serializers.CharField(), required=False)
    pattern = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            refuse_unknown(data, set(self.fields), prefix="match.")
        return super().to_internal_value(data)


class ActionSerializer(serializers.Serializer):
    """What a rule decides; any other key is refused by name."""

    model = serializers.CharField(required=False, allow_null=True)
    locality = serializers.ChoiceField(choices=["local", ""], required=False, allow_blank=True)
    refuse = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            refuse_unknown(data, set(self.fields), prefix="action.")
        return super().to_internal_value(data)


class RoutingRuleSerializer(RowSerializer):
    """A rule as CONTRACT §7 names its parts: ``match`` and ``action``."""

    match = MatchSerializer(required=False, help_text="tasks, plans, models, pattern")
    action = ActionSerializer(help_text="model, locality, refuse")
    key = "name"

    MATCH = {"tasks": "tasks", "plans": "plans", "models": "model_ids", "pattern": "pattern"}
    ACTION = {"model": "serve_with", "locality": "locality", "refuse": "refuse_message"}

    class Meta:
        model = RoutingRule
        fields = ("name", "position", "match", "action", "enabled")

    def to_representation(self, row):
        return {
            "name": row.name,
            "position": row.position,
            "match": row.match,
            "action": row.action,
            "enabled": row.enabled,
        }

    def validate(self, attrs: dict) -> dict:
        if "match" in attrs:
            match = attrs.pop("match")
            for name, field in self.MATCH.items():
                attrs[field] = match.get(name, "" if name == "pattern" else [])
        if "action" in attrs:
            action = attrs.pop("action")
            model = action.get("model")
            serve_with = None
            if model is not None:
                serve_with = ModelAlias.objects.filter(slug=model).first()
                if serve_with is None:
                    raise serializers.ValidationError(
                        {"action.model": [f"Unknown alias {model!r}."]}
                    )
            attrs["serve_with"] = serve_with
            attrs["locality"] = action.get("locality") or ""
            attrs["refuse_message"] = action.get("refuse") or ""
        return super().validate(attrs)

    def public(self, name: str) -> str:
        names = {field: f"match.{name}" for name, field in self.MATCH.items()}
        names |= {field: f"action.{name}" for name, field in self.ACTION.items()}
        return names.get(name, "action" if name == "__all__" else name)

    def create(self, validated_data):
        return RoutingRule.objects.create(**validated_data)

    def update(self, row, validated_data):
        for name, value in validated_data.items():
            setattr(row, name, value)
        row.save()
        return row
