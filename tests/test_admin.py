"""Django admin as the control panel: every model reachable, keys never shown."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib import admin
from django.urls import reverse

from llm_integration import models
from llm_integration.admin import BudgetAdmin
from llm_integration.services.clock import FakeClock
from tests.conftest import TEST_KEY
from tests.factories import (
    BudgetFactory,
    ModelAliasFactory,
    PlanEntitlementFactory,
    ProviderFactory,
    SubscriptionFactory,
    UsageRecordFactory,
)

pytestmark = pytest.mark.django_db

ALL_MODELS = [
    models.Provider,
    models.ModelAlias,
    models.Plan,
    models.PlanEntitlement,
    models.Subscription,
    models.UsageRecord,
    models.Budget,
    models.BudgetPeriod,
    models.BudgetAlert,
    models.HealthCheck,
]


@pytest.fixture
def rows(api_key_env):
    provider = ProviderFactory(name="openai-main", kind="openai", api_key_env=api_key_env)
    alias = ModelAliasFactory(slug="chat", provider=provider)
    fallback = ModelAliasFactory(slug="backup")
    models.AliasFallback.objects.create(alias=alias, fallback=fallback, position=1)
    entitlement = PlanEntitlementFactory(alias=alias)
    SubscriptionFactory(plan=entitlement.plan)
    budget = BudgetFactory()
    models.BudgetPeriod.objects.create(
        budget=budget, period_start="2026-11-01T00:00Z", spent_units=250_000_000
    )
    models.BudgetAlert.objects.create(
        budget=budget,
        period_start="2026-11-01T00:00Z",
        threshold=75,
        spent_usd="7.5",
        limit_usd="10",
    )
    models.HealthCheck.objects.create(provider=provider, status="connected", latency_ms=42)
    UsageRecordFactory.create_batch(3, alias="chat", cost_usd="0.25")
    return provider, alias


def test_every_model_is_registered():
    assert all(admin.site.is_registered(m) for m in ALL_MODELS)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_pages_render_without_the_key(admin_client, rows, model):
    opts = model._meta
    response = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert response.status_code == 200
    assert TEST_KEY not in response.content.decode()
    obj = model.objects.first()
    response = admin_client.get(
        reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    )
    assert response.status_code == 200
    assert TEST_KEY not in response.content.decode()


def test_provider_list_shows_whether_the_key_is_set(admin_client, rows, monkeypatch):
    url = reverse("admin:llm_integration_provider_changelist")
    page = admin_client.get(url).content.decode()
    assert 'alt="True"' in page and "connected 42 ms" in page
    monkeypatch.delenv("LLM_TEST_API_KEY")
    assert 'alt="False"' in admin_client.get(url).content.decode()


def test_alias_page_has_ordered_fallback_inline(admin_client, rows):
    _, alias = rows
    page = admin_client.get(reverse("admin:llm_integration_modelalias_change", args=[alias.pk]))
    html = page.content.decode()
    assert "fallbacks-0-position" in html and "fallbacks-0-fallback" in html


def test_alias_capabilities_are_edited_in_admin(admin_client, rows):
    """Mode and what the model can do are fields of the alias form; a saved change is
    what the gateway checks."""
    from django.forms.models import model_to_dict

    _, alias = rows
    url = reverse("admin:llm_integration_modelalias_change", args=[alias.pk])
    html = admin_client.get(url).content.decode()
    for field in ("mode", "supports_tools", "supports_vision", "supports_response_format"):
        assert f'name="{field}"' in html
    data = {k: v for k, v in model_to_dict(alias).items() if v is not None}
    data.update(
        {
            "supports_vision": "on",
            "supports_response_format": "",
            "fallbacks-TOTAL_FORMS": "0",
            "fallbacks-INITIAL_FORMS": "0",
        }
    )
    data.pop("supports_response_format")
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    alias.refresh_from_db()
    assert alias.supports_vision and not alias.supports_response_format


def test_usage_is_read_only_filterable_and_totalled(admin_client, rows):
    url = reverse("admin:llm_integration_usagerecord_changelist")
    assert admin_client.get(reverse("admin:llm_integration_usagerecord_add")).status_code == 403
    page = admin_client.get(url, {"status__exact": "ok", "alias": "chat"}).content.decode()
    assert "3 requests" in page and "$0.75" in page
    for name in ("created_at", "status", "alias", "provider", "user"):
        assert f"By {name.replace('_', ' ')}" in page or name in page
    record = models.UsageRecord.objects.first()
    change = admin_client.post(
        reverse("admin:llm_integration_usagerecord_change", args=[record.pk]), {"status": "error"}
    )
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.status == "ok"


def test_budget_list_shows_progress(admin_client, rows, monkeypatch):
    # "This period" is November 2026 whatever the calendar says today.
    monkeypatch.setattr(BudgetAdmin, "clock", FakeClock(dt.datetime(2026, 11, 21, tzinfo=dt.UTC)))
    page = admin_client.get(reverse("admin:llm_integration_budget_changelist")).content.decode()
    assert '<progress max="100" value="25"' in page
