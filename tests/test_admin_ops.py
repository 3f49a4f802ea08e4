"""Admin as the control panel: dashboard, actions, the alias test form, CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from llm_integration.models import HealthCheck, ModelAlias, UsageRecord
from tests.factories import (
    BudgetFactory,
    ModelAliasFactory,
    ProviderFactory,
    UsageRecordFactory,
    UserFactory,
)


def month_of_usage():
    now = timezone.now()
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    rows = []
    for day in range(30):
        for i in range(day % 4 + 1):
            rows.append(
                UsageRecordFactory.build(
                    user=alice if i % 2 else bob,
                    alias="chat" if i % 3 else "premium",
                    provider="oa" if i % 2 else "an",
                    status="error" if i == 3 else "ok",
                    cost_usd=Decimal("0.01") * (day + 1),
                    prompt_tokens=100,
                    completion_tokens=50,
                    created_at=now - dt.timedelta(days=day, minutes=i),
                )
            )
    UsageRecord.objects.bulk_create(rows)
    return rows


@pytest.mark.django_db
def test_dashboard_shows_charts_tops_and_error_rates(admin_client):
    rows = month_of_usage()
    page = admin_client.get(reverse("admin:llm_integration_usage_dashboard"))
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('<svg class="llm-chart"') == 2
    assert html.count('class="bar"') == 60  # 30 days, two charts
    assert f"{len(rows)} requests" in html
    for name in ("alice", "bob", "chat", "premium", "oa", "an"):
        assert f"<td>{name}</td>" in html
    assert " %</td>" in html
    assert "0000000" not in html  # money rounded, not float noise
    changelist = admin_client.get(reverse("admin:llm_integration_usagerecord_changelist"))
    assert reverse("admin:llm_integration_usage_dashboard") in changelist.content.decode()


@pytest.mark.django_db
def test_usage_csv_action(admin_client):
    UsageRecordFactory.create_batch(3, alias="chat")
    ids = list(UsageRecord.objects.values_list("pk", flat=True))[:2]
    response = admin_client.post(
        reverse("admin:llm_integration_usagerecord_changelist"),
        {"action": "export_csv", "_selected_action": ids},
    )
    assert response["Content-Type"] == "text/csv"
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(table) == 2 and table[0]["alias"] == "chat"


@pytest.mark.django_db(transaction=True)
def test_check_health_action_stores_rows_and_reports(admin_client, openai_fake, api_key_env):
    up = ProviderFactory(
        name="up", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    down = ProviderFactory(name="down", kind="openai_compatible", base_url="http://127.0.0.1:9")
    response = admin_client.post(
        reverse("admin:llm_integration_provider_changelist"),
        {"action": "check_health", "_selected_action": [up.pk, down.pk]},
        follow=True,
    )
    text = response.content.decode()  # admin messages start with a capital
    assert "Up: connected" in text and "Down: down" in text
    assert HealthCheck.objects.count() == 2
    listing = admin_client.get(reverse("admin:llm_integration_provider_changelist"))
    assert "connected" in listing.content.decode()


@pytest.mark.django_db(transaction=True)
def test_import_models_creates_disabled_aliases_once(admin_client, openai_fake, api_key_env):
    provider = ProviderFactory(
        name="oa", kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    ModelAliasFactory(slug="mini", provider=provider, upstream_model="gpt-4o-mini")
    url = reverse("admin:llm_integration_provider_changelist")
    data = {"action": "import_models", "_selected_action": [provider.pk]}
    text = admin_client.post(url, data, follow=True).content.decode()
    assert "Oa: 1 new disabled aliases" in text
    imported = ModelAlias.objects.get(upstream_model="fake-model")
    assert (imported.slug, imported.enabled, imported.provider) == (
        "oa-fake-model",
        False,
        provider,
    )
    admin_client.post(url, data, follow=True)
    assert ModelAlias.objects.filter(provider=provider).count() == 2
    from django.contrib.admin.models import LogEntry

    assert LogEntry.objects.get().object_repr == "oa-fake-model"  # in the admin log


@pytest.mark.django_db(transaction=True)
def test_alias_test_form_goes_through_the_service(admin_client, admin_user):
    alias = ModelAliasFactory(slug="echo", provider__kind="dummy")
    url = reverse("admin:llm_integration_modelalias_test", args=[alias.pk])
    assert admin_client.get(url).status_code == 200
    page = admin_client.post(url, {"prompt": "ping", "max_tokens": 50}).content.decode()
    assert "You said: ping" in page and "completion tokens" in page and " ms" in page
    record = UsageRecord.objects.get()
    assert (record.user_id, record.alias, record.status) == (admin_user.pk, "echo", "ok")
    change = admin_client.get(
        reverse("admin:llm_integration_modelalias_change", args=[alias.pk])
    ).content.decode()
    assert url in change


@pytest.mark.django_db
def test_budget_progress_is_the_current_period(admin_client):
    from llm_integration.services.accounting import budgets

    budget = BudgetFactory(limit_usd=Decimal("10"))
    held = budgets.reserve([budget], Decimal("3"), now=timezone.now())
    budgets.settle(held, Decimal("2.5"))
    budgets.reserve([budget], Decimal("1"), now=timezone.now())
    html = admin_client.get(reverse("admin:llm_integration_budget_changelist")).content.decode()
    assert '<progress max="100" value="35"' in html
    assert "spent $2.5 · reserved $1 · left $6.5" in html


@pytest.mark.django_db
def test_error_rates_count_only_what_the_provider_failed():
    from llm_integration.services.accounting import reports

    since = timezone.now() - dt.timedelta(days=1)
    for status, error_type in (
        ("ok", ""),
        ("error", "upstream_unavailable"),  # the provider's failure
        ("error", "prompt_too_large"),  # the client's
        ("error", "invalid_request"),  # the client's
        ("refused", "budget_exceeded"),  # never reached the provider
    ):
        UsageRecordFactory(provider="oa", status=status, error_type=error_type)
    assert reports.provider_errors(since=since) == [
        {"provider": "oa", "requests": 4, "errors": 1, "rate": 25.0}
    ]


def test_chart_labels_are_plain_money_and_nothing_when_all_is_zero():
    from llm_integration.services.accounting.reports import axis_label, bar_chart

    assert axis_label(0.00009, "$") == "$0.00009" and axis_label(12.5, "$") == "$12.5"
    assert axis_label(0, "$") == "$0" and axis_label(1200, "tokens") == "1,200 tokens"
    empty = bar_chart([0.0, 0.0], ["a", "b"], title="Spend", unit="$")
    assert ">$0</text>" in empty and "$ 1" not in empty and "e-0" not in empty


@pytest.mark.django_db
def test_csv_money_is_plain_decimals(admin_client):
    UsageRecordFactory(alias="chat", cost_usd=Decimal("0"))
    UsageRecordFactory(alias="chat", cost_usd=Decimal("0.00012"))
    ids = list(UsageRecord.objects.values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:llm_integration_usagerecord_changelist"),
        {"action": "export_csv", "_selected_action": ids},
    )
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(row["cost_usd"] for row in table) == ["0", "0.00012"]


@pytest.mark.django_db(transaction=True)
async def test_the_api_csv_export_has_plain_decimals_too(async_client, admin_user):
    from asgiref.sync import sync_to_async

    await sync_to_async(UsageRecordFactory)(alias="chat", cost_usd=Decimal("0"))
    await sync_to_async(UsageRecordFactory)(alias="chat", cost_usd=Decimal("0.00012"))
    await sync_to_async(async_client.force_login)(admin_user)
    response = await async_client.get("/api/v1/usage?format=csv")
    text = b"".join([chunk async for chunk in response.streaming_content]).decode()
    table = list(csv.DictReader(io.StringIO(text)))
    assert sorted(row["cost_usd"] for row in table) == ["0", "0.00012"]


def test_the_usage_list_leads_with_what_operators_read():
    from django.contrib import admin

    columns = admin.site.get_model_admin(UsageRecord).list_display
    assert columns[:7] == (
        "created_at",
        "user",
        "alias",
        "status",
        "tokens",
        "cost",
        "latency_ms",
    )


def test_the_alias_test_form_prompt_is_a_placeholder_not_text():
    from llm_integration.admin import AliasTestForm

    field = AliasTestForm().fields["prompt"]
    assert field.initial is None and field.widget.attrs["placeholder"]
