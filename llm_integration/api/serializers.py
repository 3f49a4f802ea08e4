"""Request and response shapes of the REST API (validation and the OpenAPI schema).

The service validates meaning (roles, sizes, context window); these check types so a
client gets a field-by-field 400, and document the API in ``/api/schema/``.
"""

from __future__ import annotations

from rest_framework import serializers

ROLES = ("system", "user", "assistant", "tool")


class ToolCallFunctionSerializer(serializers.Serializer):
    name = serializers.CharField()
    arguments = serializers.CharField(help_text="The arguments as JSON text.")


class ToolCallSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.ChoiceField(choices=("function",))
    function = ToolCallFunctionSerializer()


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.CharField(allow_blank=True, allow_null=True, trim_whitespace=False)
    tool_calls = ToolCallSerializer(
        many=True, required=False, help_text="An assistant's tool calls, as they were answered."
    )
    tool_call_id = serializers.CharField(
        required=False, help_text="For role tool: the call this message answers."
    )


class ChatRequestSerializer(serializers.Serializer):
    message = serializers.CharField(
        required=False,
        trim_whitespace=False,
        help_text="A single user message (or send `messages`).",
    )
    messages = MessageSerializer(many=True, required=False, allow_empty=False)
    model = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="Alias id; the default alias when omitted.",
    )
    system_prompt = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    stream = serializers.BooleanField(required=False, default=False)
    task = serializers.CharField(
        required=False, help_text="A task label routing rules may match (or X-LLM-Task)."
    )
    tags = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Labels for cost reporting, recorded on the usage row (or X-LLM-Tags: a,b).",
    )
    tools = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        allow_null=True,
        help_text="Function tools, in OpenAI's shape.",
    )
    tool_choice = serializers.JSONField(
        required=False, allow_null=True, help_text="auto, none, required or a function."
    )
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    response_format = serializers.DictField(
        required=False, allow_null=True, help_text="json_object or json_schema, as OpenAI's."
    )

    def validate(self, attrs):
        has_message, has_messages = "message" in attrs, "messages" in attrs
        if has_message == has_messages:
            raise serializers.ValidationError("Send either `message` or `messages`.")
        return attrs

    def conversation(self) -> list[dict[str, str]]:
        data = self.validated_data
        if "message" in data:
            return [{"role": "user", "content": data["message"]}]
        return [dict(m) for m in data["messages"]]


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
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


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: ``"100"`` (a string) or ``true`` is refused, as the REST API and
    OpenAI's own API refuse them."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number, not a string of one."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false``, not ``"yes"`` or ``1``."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data
