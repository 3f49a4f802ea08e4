"""A token lookup on the request path runs in the gateway's database threads: under load,
every request's thread would otherwise open a database connection of its own (on
PostgreSQL, past ``max_connections`` with a few hundred concurrent requests)."""

from __future__ import annotations

import threading

import pytest
from django.db.backends.signals import connection_created
from django.test import RequestFactory
from rest_framework.authtoken.models import Token

from llm_integration.api.authentication import BearerOrTokenAuthentication, token_cache
from llm_integration.services.db import POOL_PREFIX
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_request_threads_open_no_connection_to_look_up_a_token(settings):
    settings.LLM_INTEGRATION = {"DB_THREADS": 2}
    keys = [Token.objects.create(user=UserFactory()).key for _ in range(8)]
    token_cache.clear()
    opened: list[str] = []

    def record(sender, connection, **kwargs) -> None:
        opened.append(threading.current_thread().name)

    found: list[str] = []

    def request_thread(key: str) -> None:
        request = RequestFactory().get("/", headers={"Authorization": f"Bearer {key}"})
        user, _ = BearerOrTokenAuthentication().authenticate(request)
        found.append(user.username)

    connection_created.connect(record)
    try:
        threads = [threading.Thread(target=request_thread, args=(key,)) for key in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        connection_created.disconnect(record)
    assert len(found) == len(keys)
    assert all(name.startswith(POOL_PREFIX) for name in opened), opened
