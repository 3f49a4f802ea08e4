"""llm_demo --no-serve: migrate, demo rows, superuser and token; idempotent."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from llm_integration.models import ModelAlias, Plan, PlanEntitlement, Provider

pytestmark = pytest.mark.django_db


def demo() -> str:
    out = StringIO()
    call_command("llm_demo", "--no-serve", stdout=out)
    return out.getvalue()


def test_demo_prepares_everything_once():
    out = demo()
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("admin")
    token = Token.objects.get(user=admin).key
    assert f"API token of 'admin': {token}" in out
    assert Provider.objects.get(name="dummy").kind == "dummy"
    assert set(ModelAlias.objects.values_list("slug", flat=True)) == {"default", "dummy-premium"}
    assert set(Plan.objects.values_list("slug", flat=True)) == {"free", "pro"}
    assert PlanEntitlement.objects.count() == 3

    again = demo()
    assert "already there" in again and token in again
    assert get_user_model().objects.count() == 1 and ModelAlias.objects.count() == 2


def test_no_admin_is_created_when_users_exist(django_user_model):
    django_user_model.objects.create_user("alice", password="x")
    out = demo()
    assert not django_user_model.objects.filter(username="admin").exists()
    assert "API token" not in out


def test_chat_page_lists_aliases_for_logged_in_users(client, admin_user):
    demo()
    assert client.get("/").status_code == 302
    client.force_login(admin_user)
    page = client.get("/").content.decode()
    assert "/api/v1/models" in page and "/ws/llm/chat/" in page
