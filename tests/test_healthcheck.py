"""llm_healthcheck against fake upstreams that are up, slow and down."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command

from llm_integration.models import HealthCheck, Provider
from llm_integration.services.limits.circuit import CircuitBreaker
from tests.factories import ModelAliasFactory, ProviderFactory
from tests.fakes.openai import OpenAIFake
from tests.fakes.server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def slow_fake():
    fake = OpenAIFake()
    fake.default = Behaviour(mode="slow", delay=0.7)  # every answer after 700 ms
    fake.start()
    yield fake
    fake.stop()


def run(*args) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("llm_healthcheck", *args, stdout=out, stderr=StringIO())
    except SystemExit as exit_:
        return int(exit_.code), out.getvalue()
    return 0, out.getvalue()


def provider(name, kind, fake=None, model="gpt-4o-mini", **kw):
    row = ProviderFactory(name=name, kind=kind, base_url=fake.base_url if fake else "", **kw)
    ModelAliasFactory(slug=f"{name}-alias", provider=row, upstream_model=model)
    return row


@pytest.fixture
def gone_url():
    """The address of an upstream that is no longer there (connection refused)."""
    fake = OpenAIFake().start()
    fake.stop()
    return fake.base_url


def state(provider_row) -> str:
    return async_to_sync(CircuitBreaker.of(provider_row).state)()


def test_up_slow_and_down_give_three_statuses_rows_and_exit_1(
    openai_fake, slow_fake, gone_url, api_key_env
):
    provider("a-up", "openai", openai_fake, api_key_env=api_key_env)
    provider("b-slow", "openai_compatible", slow_fake)
    down = ProviderFactory(name="c-down", kind="openai_compatible", base_url=gone_url)
    provider("d-dummy", "dummy", model="echo")
    code, out = run()
    assert code == 1
    lines = out.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["a-up", "connected"],
        ["b-slow", "slow"],
        ["c-down", "down"],
        ["d-dummy", "connected"],
    ]
    assert "Could not reach" in lines[2]
    assert all(line[len("d-dummy") + 2 :].startswith(line.split()[1]) for line in lines)
    assert list(
        HealthCheck.objects.order_by("provider__name").values_list("provider__name", "status")
    ) == [("a-up", "connected"), ("b-slow", "slow"), ("c-down", "down"), ("d-dummy", "connected")]
    assert state(down) == "open"  # it failed to answer: the serving processes skip it
    assert state(Provider.objects.get(name="a-up")) == "closed"
    assert openai_fake.requests[-1].path == "/v1/models"


def test_all_up_exits_0_and_json_shape(openai_fake, anthropic_fake, api_key_env):
    provider("oa", "openai", openai_fake, api_key_env=api_key_env)
    provider("an", "anthropic", anthropic_fake, model="claude-fake", api_key_env=api_key_env)
    code, out = run("--json")
    assert code == 0
    data = json.loads(out)
    assert [d["provider"] for d in data] == ["an", "oa"]
    assert set(data[0]) == {"provider", "kind", "base_url", "status", "latency_ms", "error"}
    assert all(d["status"] == "connected" and d["error"] == "" for d in data)
    assert data[1]["base_url"] == openai_fake.base_url


def test_what_the_checking_process_cannot_judge_takes_nothing_out_of_service(
    ollama_fake, monkeypatch
):
    monkeypatch.delenv("ABSENT_KEY", raising=False)
    keyless = provider("keyless", "openai", api_key_env="ABSENT_KEY")
    unlisted = provider("unlisted", "ollama", ollama_fake, model="not-pulled")
    code, out = run("--json")
    data = {d["provider"]: d for d in json.loads(out)}
    assert code == 0  # nothing is down
    assert data["keyless"]["status"] == "unknown" and "ABSENT_KEY" in data["keyless"]["error"]
    assert data["unlisted"]["status"] == "connected"
    assert data["unlisted"]["error"] == "warning: its model list lacks not-pulled"
    assert state(keyless) == state(unlisted) == "closed"
    assert HealthCheck.objects.get(provider=keyless).status == "unknown"


def test_a_refused_key_is_down_but_leaves_the_circuit_to_the_servers(openai_fake, api_key_env):
    def refuse(exchange) -> None:
        error = {"message": "Incorrect API key provided.", "type": "invalid_request_error"}
        exchange.send_json(401, {"error": error})

    openai_fake.default = Behaviour(raw=refuse)
    refused = provider("refused", "openai", openai_fake, api_key_env=api_key_env)
    code, out = run()
    assert code == 1 and out.split()[:2] == ["refused", "down"]
    assert state(refused) == "closed"


def test_named_providers_and_bad_usage(openai_fake, api_key_env):
    provider("one", "openai", openai_fake, api_key_env=api_key_env)
    provider("two", "dummy", model="echo", enabled=False)
    code, out = run("--provider", "two")  # named: checked even when disabled
    assert code == 0 and out.split()[:2] == ["two", "connected"]
    with pytest.raises(CommandError, match="Unknown provider") as info:
        call_command("llm_healthcheck", "--provider", "nope", stdout=StringIO())
    assert info.value.returncode == 2
    with pytest.raises(CommandError) as info:
        call_command("llm_healthcheck", "--timeout", "0", stdout=StringIO())
    assert info.value.returncode == 2


def test_timeout_marks_down(slow_fake):
    provider("sleepy", "openai_compatible", slow_fake)
    code, out = run("--timeout", "0.2")
    assert code == 1 and "no answer within 0.2 s" in out


def test_prune_usage_deletes_only_old_records_in_batches():
    import datetime as dt

    from django.utils import timezone

    from llm_integration.models import UsageRecord
    from tests.factories import UsageRecordFactory

    now = timezone.now()
    old = UsageRecordFactory.create_batch(5, created_at=now - dt.timedelta(days=100))
    fresh = UsageRecordFactory.create_batch(3, created_at=now - dt.timedelta(days=10))
    out = StringIO()
    call_command("llm_prune_usage", "--older-than", "90d", "--batch-size", "2", stdout=out)
    assert "Deleted 5 usage records" in out.getvalue()
    assert set(UsageRecord.objects.values_list("pk", flat=True)) == {r.pk for r in fresh}
    assert old
    with pytest.raises(CommandError, match="36h, 90d or 12w") as info:
        call_command("llm_prune_usage", "--older-than", "soon", stdout=StringIO())
    assert info.value.returncode == 2


def test_a_provider_naming_no_key_is_down_and_a_busy_one_is_up(openai_fake, api_key_env):
    provider("keyless-row", "openai", api_key_env="")
    busy = provider("busy", "openai", openai_fake, api_key_env=api_key_env)

    def rate_limited(exchange) -> None:
        error = {"message": "Slow down.", "type": "rate_limit_error"}
        exchange.send_json(429, {"error": error}, headers={"Retry-After": "1"})

    openai_fake.default = Behaviour(raw=rate_limited)
    code, out = run("--json")
    data = {d["provider"]: d for d in json.loads(out)}
    assert code == 1 and data["keyless-row"]["status"] == "down"
    assert data["busy"]["status"] == "connected"
    assert data["busy"]["error"].startswith("warning: ") and "Slow down." in data["busy"]["error"]
    assert state(busy) == "closed"
