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
    assert set(ModelAlias.objects.values_list("slug", flat=True)) == {
        "default",
        "dummy-premium",
        "dummy-embed",
    }
    assert set(Plan.objects.values_list("slug", flat=True)) == {"free", "pro"}
    assert PlanEntitlement.objects.count() == 3

    again = demo()
    assert "already there" in again and token in again
    assert get_user_model().objects.count() == 1 and ModelAlias.objects.count() == 3


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


def test_a_taken_port_is_one_clear_line_and_a_failing_exit():
    import socket
    import subprocess
    import sys

    from django.conf import settings

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "manage.py", "llm_demo", "--port", str(port)],
            cwd=settings.BASE_DIR,
            env={**__import__("os").environ, "DATABASE_URL": "sqlite:///:memory:"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        f"CommandError: Cannot serve on 127.0.0.1:{port}: Address already in use."
    ]
    assert "Serving on" not in run.stdout


def test_production_profile_refuses_to_start_without_a_secret_key():
    import os
    import subprocess
    import sys

    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    run = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env={**env, "DEBUG": "False"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "SECRET_KEY is not set" in run.stderr


@pytest.mark.django_db(transaction=True)  # the API reads in its own database threads
def test_the_demo_shows_a_locked_model(client, admin_user):
    demo()
    client.force_login(admin_user)
    models = client.get("/api/v1/models").json()
    assert {m["id"]: m["locked"] for m in models} == {
        "default": False,
        "dummy-premium": True,
        "dummy-embed": False,
    }
