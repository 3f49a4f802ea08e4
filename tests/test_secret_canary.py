"""A provider key that must never come back: a unique canary, and an upstream that
echoes it in every error it can. No response, log line, admin page, metric, command
output or exception text may contain it."""

from __future__ import annotations

import json
import logging
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from llm_integration import exceptions as exc
from llm_integration.models import Provider
from llm_integration.services.chat import Gateway
from tests.factories import ModelAliasFactory, ProviderFactory, UserFactory

CANARY = "sk-CANARY-7f3a9c1e5b2dQZWX"
#: Parts of the key an upstream may quote: its start and its end around an elision.
PARTS = ("sk-CANAR", "QZWX")
FAULTS = [
    {"mode": "error", "status": 400, "message": "bad request (partial sk-CANAR...QZWX)"},
    {"mode": "error", "status": 500, "message": "crash with key sk-CANARY-****QZWX"},
    {"mode": "error", "status": 401, "message": f"Incorrect API key provided: {CANARY}"},
    {"mode": "error", "status": 403, "message": f"key {CANARY} lacks access"},
    {"mode": "error", "status": 400, "message": f"bad request from key {CANARY}"},
    {"mode": "error", "status": 429, "retry_after": "1", "message": f"{CANARY} is limited"},
    {"mode": "error", "status": 500, "message": f"crash while using {CANARY}"},
    {"mode": "malformed"},
    {"mode": "cut", "text": "a b c d"},
]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def setup(openai_fake, monkeypatch):
    monkeypatch.setenv("CANARY_KEY", CANARY)
    provider = ProviderFactory(
        name="canary",
        kind="openai",
        base_url=openai_fake.base_url,
        api_key_env="CANARY_KEY",
        max_retries=0,
        extra_headers={"X-Org-Key": "os.environ/CANARY_KEY"},
    )
    ModelAliasFactory(slug="chat", provider=provider)
    user = UserFactory(username="victim", is_staff=True, is_superuser=True)
    return {"token": Token.objects.create(user=user).key, "user": user}


async def test_canary_never_leaks(setup, openai_fake, caplog, admin_client):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    headers = {"Authorization": f"Token {setup['token']}"}
    client = AsyncClient()
    for stream in (False, True):
        for path in ("/api/v1/chat", "/v1/chat/completions"):
            for fault in FAULTS:
                openai_fake.push(**fault)
                body = (
                    {"message": "hi", "model": "chat", "stream": stream}
                    if path.startswith("/api")
                    else {
                        "model": "chat",
                        "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                )
                response = await client.post(
                    path, json.dumps(body), content_type="application/json", headers=headers
                )
                if response.streaming:
                    seen.append(b"".join([p async for p in response.streaming_content]).decode())
                else:
                    seen.append(response.content.decode())
                seen.append(json.dumps(dict(response.items())))
    # The service's exceptions, as Python callers see them.
    gateway = Gateway()
    for fault in FAULTS:
        openai_fake.push(**fault)
        try:
            await gateway.chat(model="chat", messages="hi")
        except exc.LLMError as error:
            seen.append(f"{error!s} {error!r} {error.message}")
    # Every request reached the upstream with the key (so the canary was really in play).
    assert all(r.headers.get("authorization") == f"Bearer {CANARY}" for r in openai_fake.requests)

    def sync_part() -> None:
        out = StringIO()
        try:
            call_command("llm_healthcheck", "--json", stdout=out, stderr=out)
        except SystemExit:
            pass
        seen.append(out.getvalue())
        from django.urls import reverse

        for name in (
            "admin:llm_integration_provider_changelist",
            "admin:llm_integration_usagerecord_changelist",
            "admin:llm_integration_healthcheck_changelist",
            "admin:llm_integration_usage_dashboard",
        ):
            seen.append(admin_client.get(reverse(name)).content.decode())
        provider_pk = Provider.objects.get().pk
        seen.append(
            admin_client.get(
                reverse("admin:llm_integration_provider_change", args=[provider_pk])
            ).content.decode()
        )
        admin_client.force_login(setup["user"])
        seen.append(admin_client.get("/metrics").content.decode())

    await sync_to_async(sync_part)()
    seen.extend(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    leaks = [text[:300] for text in seen if CANARY in text]
    assert leaks == []
    partial = [text[:300] for text in seen if any(part in text for part in PARTS)]
    assert partial == []
    assert len(seen) > 60
