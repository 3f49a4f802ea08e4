"""Response shapes of the REST API, for the OpenAPI schema (``/api/schema/``).

Request shapes belong to their wire format (``llm_integration.formats``).
"""

from __future__ import annotations

from rest_framework import serializers

from ..formats.rest import ToolCallSerializer


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField(
        required=False,
        help_text="Of the prompt tokens, those read from the upstream's prompt cache "
        "(present when the upstream read or wrote any).",
    )
    cache_write_tokens = serializers.IntegerField(
        required=False,
        help_text="Of the prompt tokens, those written to the upstream's prompt cache.",
    )
    cost_usd = serializers.CharField(help_text="USD as a decimal string.")


class ChatResponseSerializer(serializers.Serializer):
    answer = serializers.CharField()
    model = serializers.CharField()
    request_id = serializers.CharField()
    cached = serializers.BooleanField()
    degraded = serializers.BooleanField(required=False)
    finish_reason = serializers.CharField()
    tool_calls = ToolCallSerializer(
        many=True, help_text="Empty unless finish_reason is tool_calls."
    )
    usage = UsageSerializer()


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    label = serializers.CharField()
    provider = serializers.CharField(help_text="The provider's kind (a badge for UIs).")
    context_window = serializers.IntegerField()
    mode = serializers.ChoiceField(choices=("chat", "embedding"))
    locked = serializers.BooleanField()


class ErrorBodySerializer(serializers.Serializer):
    type = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()
    request_id = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


class PeriodUsageSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    cost_usd = serializers.CharField()
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_model = serializers.DictField(child=serializers.DictField())


class BudgetStatusSerializer(serializers.Serializer):
    scope = serializers.CharField()
    name = serializers.CharField()
    period = serializers.CharField()
    limit_usd = serializers.CharField()
    spent_usd = serializers.CharField()
    reserved_usd = serializers.CharField()
    remaining_usd = serializers.CharField()


class QuotaStatusSerializer(serializers.Serializer):
    model = serializers.CharField()
    period = serializers.ChoiceField(choices=("day", "month"))
    unit = serializers.ChoiceField(choices=("requests", "tokens"))
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    reserved = serializers.IntegerField()
    remaining = serializers.IntegerField()
    resets_at = serializers.DateTimeField()


class KeySpendSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    cost_usd = serializers.CharField()


class KeyUsageSerializer(serializers.Serializer):
    """One of the caller's API keys: what it spent, and its own budget (or null)."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    state = serializers.CharField()
    day = KeySpendSerializer()
    month = KeySpendSerializer()
    budget = BudgetStatusSerializer(allow_null=True)


class UsageReportSerializer(serializers.Serializer):
    day = PeriodUsageSerializer()
    month = PeriodUsageSerializer()
    budgets = BudgetStatusSerializer(many=True)
    quotas = QuotaStatusSerializer(many=True)
    keys = KeyUsageSerializer(many=True)
