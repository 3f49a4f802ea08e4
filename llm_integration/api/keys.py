"""API keys over REST (CONTRACT §14): ``/api/v1/keys`` for a user's own keys; the staff
API's ``/api/v1/admin/keys`` uses the same serializer with an owner.

The secret is in the answer that creates a key and nowhere else. Keys are managed with
a session or the account's DRF token, never with an API key: a key limited to some
models or a budget could otherwise mint itself an unlimited one.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response

from ..formats.fields import StrictIntegerField
from ..models import ApiKey, Budget, ModelAlias
from ..services.accounting.pricing import format_money
from ..services.policy import keys
from ..text.fields import refuse_unknown
from .authentication import key_of
from .views import GatewayAPIView

#: Keys a user may hold at once (revoked keys do not count).
MAX_ACTIVE_KEYS = 100


class NotWithApiKey(BasePermission):
    """Key management needs the account's own credentials, not one of its API keys."""

    message = "API keys cannot manage API keys: sign in, or use your account's token."

    def has_permission(self, request, view) -> bool:
        return key_of(request) is None


@extend_schema_field({"type": "string", "enum": list(Budget.Period.values)})
class PeriodField(serializers.ChoiceField):
    """A budget period (described inline: the staff API's budgets name the same set)."""

    def __init__(self, **kwargs):
        super().__init__(choices=Budget.Period.choices, **kwargs)


class KeySerializer(serializers.Serializer):
    """A key as the API shows it (never its secret but once: ``key`` on creation)."""

    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(max_length=100)
    prefix = serializers.CharField(read_only=True)
    state = serializers.CharField(read_only=True, help_text="active, expired or revoked")
    created_at = serializers.DateTimeField(read_only=True)
    last_used_at = serializers.DateTimeField(read_only=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    revoked_at = serializers.DateTimeField(read_only=True)
    models = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        max_length=1000,
        help_text="Alias ids the key may call; empty: every model the owner's plan allows.",
    )
    budget_usd = serializers.DecimalField(
        max_digits=18, decimal_places=8, min_value=0, required=False, allow_null=True
    )
    budget_period = PeriodField(required=False)
    rpm_limit = StrictIntegerField(min_value=1, required=False, allow_null=True)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            refuse_unknown(data, {name for name, f in self.fields.items() if not f.read_only})
        return super().to_internal_value(data)

    def validate_models(self, slugs: list[str]) -> list[ModelAlias]:
        found = {a.slug: a for a in ModelAlias.objects.filter(slug__in=slugs)}
        unknown = [slug for slug in slugs if slug not in found]
        if unknown:
            raise serializers.ValidationError(f"Unknown model {unknown[0]!r}.")
        return list({slug: found[slug] for slug in slugs}.values())

    def validate_expires_at(self, value):
        if value is not None and value <= keys.key_ring.clock.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate(self, attrs: dict) -> dict:
        if "budget_period" in attrs and attrs.get("budget_usd") is None:
            budget = keys.key_budget(self.instance) if self.instance is not None else None
            if budget is None or "budget_usd" in attrs:
                raise serializers.ValidationError(
                    {"budget_period": ["Give budget_usd with budget_period."]}
                )
        return attrs

    def to_representation(self, key: ApiKey) -> dict:
        budget = keys.key_budget(key)
        return {
            "id": key.pk,
            "name": key.name,
            "prefix": key.prefix,
            "state": key.state(keys.key_ring.clock.now()),
            "created_at": serializers.DateTimeField().to_representation(key.created_at),
            "last_used_at": _when(key.last_used_at),
            "expires_at": _when(key.expires_at),
            "revoked_at": _when(key.revoked_at),
            "models": sorted(alias.slug for alias in key.allowed_models.all()),
            "budget_usd": format_money(budget.limit_usd) if budget is not None else None,
            "budget_period": budget.period if budget is not None else None,
            "rpm_limit": key.rpm_limit,
        }

    @transaction.atomic
    def create(self, validated: dict) -> ApiKey:
        owner = validated.pop("user", None) or self.context["request"].user
        key, secret = keys.issue(
            owner,
            name=validated["name"],
            expires_at=validated.get("expires_at"),
            models=validated.get("models"),
            rpm_limit=validated.get("rpm_limit"),
            budget_usd=validated.get("budget_usd"),
            budget_period=validated.get("budget_period") or Budget.Period.MONTH,
        )
        key.secret = secret  # for this answer only
        return key

    @transaction.atomic
    def update(self, key: ApiKey, validated: dict) -> ApiKey:
        for name in ("name", "expires_at", "rpm_limit"):
            if name in validated:
                setattr(key, name, validated[name])
        key.save()
        if "models" in validated:
            key.allowed_models.set(validated["models"])
        if "budget_usd" in validated or "budget_period" in validated:
            budget = keys.key_budget(key)
            limit = validated.get("budget_usd", budget.limit_usd if budget else None)
            keys.set_budget(key, limit, validated.get("budget_period"))
        return key


class OwnedKeySerializer(KeySerializer):
    """A key with its owner (staff)."""

    user = serializers.SlugRelatedField(
        slug_field=get_user_model().USERNAME_FIELD, queryset=get_user_model().objects.all()
    )

    def to_representation(self, key: ApiKey) -> dict:
        return {**super().to_representation(key), "user": key.user.get_username()}


def created(serializer: KeySerializer) -> dict:
    """The answer to a creation: the key, with its secret this once."""
    key = serializer.instance
    return {"key": key.secret, **serializer.data}


def _when(value):
    return None if value is None else serializers.DateTimeField().to_representation(value)


def user_keys(user):
    return (
        ApiKey.objects.filter(user=user)
        .select_related("user")
        .prefetch_related("allowed_models", "budgets")
    )


class KeyListView(GatewayAPIView):
    """The caller's keys; a new key."""

    def get_permissions(self):
        return [*super().get_permissions(), NotWithApiKey()]

    @extend_schema(responses={200: KeySerializer(many=True)}, summary="Your API keys")
    def get(self, request):
        return Response(KeySerializer(user_keys(request.user), many=True).data)

    @extend_schema(
        request=KeySerializer,
        responses={201: KeySerializer},
        summary="A new API key (its secret, `key`, is shown this once)",
    )
    def post(self, request):
        serializer = KeySerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        active = ApiKey.objects.filter(user=request.user, revoked_at__isnull=True).count()
        if active >= MAX_ACTIVE_KEYS:
            raise serializers.ValidationError(
                f"You hold {MAX_ACTIVE_KEYS} keys: revoke one before making another."
            )
        serializer.save()
        return Response(created(serializer), status=201)


class KeyDetailView(GatewayAPIView):
    """One of the caller's keys; ``DELETE`` revokes it (its usage stays on record)."""

    def get_permissions(self):
        return [*super().get_permissions(), NotWithApiKey()]

    @extend_schema(responses={200: KeySerializer}, summary="One of your API keys")
    def get(self, request, pk: int):
        key = get_object_or_404(user_keys(request.user), pk=pk)
        return Response(KeySerializer(key).data)

    @extend_schema(responses={200: KeySerializer}, summary="Revoke one of your API keys")
    def delete(self, request, pk: int):
        key = get_object_or_404(user_keys(request.user), pk=pk)
        keys.revoke(key, now=keys.key_ring.clock.now())
        return Response(KeySerializer(key).data)
