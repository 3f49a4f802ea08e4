"""System checks: exact check objects for each problem."""

from __future__ import annotations

import pytest
from django.core.checks import Error, Warning

from llm_integration import checks
from llm_integration.models import AliasFallback
from tests.factories import BudgetFactory, ModelAliasFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def run_row_checks():
    return checks.check_rows(databases=["default"])


def test_clean_rows_have_no_findings(api_key_env):
    ModelAliasFactory(provider=ProviderFactory(kind="openai", api_key_env=api_key_env))
    ModelAliasFactory(
        provider=ProviderFactory(kind="dummy"), input_price_per_mtok=0, output_price_per_mtok=0
    )
    assert run_row_checks() == []


def test_unknown_kind():
    provider = ProviderFactory(name="weird", kind="mystery")
    kinds = "anthropic, dummy, ollama, openai, openai_compatible"
    assert run_row_checks() == [
        Error(
            "Provider 'weird' has unknown adapter kind 'mystery'.",
            hint=f"Use one of: {kinds}; or add the kind to LLM_INTEGRATION['ADAPTERS'].",
            obj=provider,
            id="llm_integration.E001",
        )
    ]


def test_key_variable_not_set(monkeypatch):
    monkeypatch.delenv("MISSING_KEY", raising=False)
    provider = ProviderFactory(name="oa", kind="openai", api_key_env="MISSING_KEY")
    assert run_row_checks() == [
        Warning(
            "Provider 'oa' reads its API key from MISSING_KEY, which is not set.",
            hint="Set the environment variable MISSING_KEY in the environment of every process.",
            obj=provider,
            id="llm_integration.W002",
        )
    ]


def test_key_variable_not_named():
    provider = ProviderFactory(name="oa", kind="anthropic", api_key_env="")
    assert run_row_checks() == [
        Warning(
            "Provider 'oa' needs an API key but names no environment variable.",
            hint="Fill in 'API key environment variable' with the variable's name, "
            "e.g. OPENAI_API_KEY.",
            obj=provider,
            id="llm_integration.W007",
        )
    ]


def test_alias_on_disabled_provider_and_missing_price():
    provider = ProviderFactory(name="off", kind="ollama", enabled=False)
    alias = ModelAliasFactory(
        slug="a", provider=provider, input_price_per_mtok=0, output_price_per_mtok=0
    )
    assert run_row_checks() == [
        Error(
            "Model alias 'a' points at disabled provider 'off'.",
            hint="Enable the provider, point the alias at another one, or disable the alias.",
            obj=alias,
            id="llm_integration.E003",
        ),
        Warning(
            "Model alias 'a' of paid provider 'off' has no price.",
            hint="Set its input and output prices (USD per million tokens) so costs and "
            "budgets count.",
            obj=alias,
            id="llm_integration.W004",
        ),
    ]


def test_an_unpriced_alias_under_a_money_budget_is_an_error():
    provider = ProviderFactory(name="openai", kind="openai", api_key_env="")
    alias = ModelAliasFactory(
        slug="default", provider=provider, input_price_per_mtok=0, output_price_per_mtok=0
    )
    BudgetFactory(name="elsewhere", scope="provider", provider=ProviderFactory(name="other"))
    assert [e.id for e in run_row_checks()] == ["llm_integration.W007", "llm_integration.W004"]
    BudgetFactory(name="global-monthly", limit_usd=5)
    assert run_row_checks()[-1] == Error(
        "Model alias 'default' of paid provider 'openai' has no price, but budget "
        "'global-monthly' counts spending in USD: its requests would count $0 and never "
        "reach the limit.",
        hint="Set its input and output prices (USD per million tokens), in admin or with "
        "LLM_INPUT_PRICE_PER_MTOK / LLM_OUTPUT_PRICE_PER_MTOK and llm_bootstrap.",
        obj=alias,
        id="llm_integration.E010",
    )


def test_fallback_cycle():
    a, b, c = (ModelAliasFactory(slug=s) for s in "abc")
    AliasFallback.objects.create(alias=a, fallback=b)
    AliasFallback.objects.create(alias=b, fallback=c)
    AliasFallback.objects.create(alias=c, fallback=a)
    assert run_row_checks() == [
        Error(
            "Model alias fallbacks form a cycle: a → b → c → a.",
            hint="Remove one of the fallbacks in the cycle.",
            id="llm_integration.E005",
        )
    ]


def test_settings_typo(settings):
    settings.LLM_INTEGRATION = {"DEFAULT_MODLE": "x"}
    assert checks.check_settings() == [
        Error(
            "Unknown LLM_INTEGRATION setting 'DEFAULT_MODLE'.",
            hint="Known settings: see llm_integration/conf.py (DEFAULTS).",
            id="llm_integration.E006",
        )
    ]


def test_row_checks_skip_while_tables_are_missing():
    from django.db import connection

    ProviderFactory(kind="mystery")  # would be E001 if the checks could read the rows
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE llm_integration_aliasfallback")
    assert run_row_checks() == []


def test_hard_budget_without_limit():
    from tests.factories import BudgetFactory

    budget = BudgetFactory(name="zero", limit_usd=0)
    BudgetFactory(name="soft", limit_usd=0, hard=False)
    assert run_row_checks() == [
        Warning(
            "Hard budget 'zero' has a limit of 0: every request in its scope is refused.",
            hint="Give it a limit, make it soft (alerts only), or disable it.",
            obj=budget,
            id="llm_integration.W008",
        )
    ]


def test_several_processes_without_a_shared_cache(settings):
    settings.LLM_INTEGRATION = {"EXPECTED_PROCESSES": 4}
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert checks.check_settings() == [
        Warning(
            "4 processes are expected (LLM_INTEGRATION['EXPECTED_PROCESSES']) but the cache "
            "is process-local: rate limits, circuit breakers and the response cache are not "
            "shared.",
            hint="Set REDIS_URL (a Redis cache and channel layer) in every process.",
            id="llm_integration.W009",
        )
    ]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/15",
        }
    }
    assert checks.check_settings() == []


def test_check_deploy_is_clean_with_the_production_profile(tmp_path):
    import os
    import subprocess
    import sys

    from django.conf import settings

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "False",
        "SECRET_KEY": "x" * 20 + "-a-long-random-production-secret-" + "y" * 20,
        "ALLOWED_HOSTS": "gateway.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
    }
    run = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout
