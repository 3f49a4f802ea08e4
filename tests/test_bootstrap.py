"""llm_bootstrap: the seed's environment variables and LiteLLM config.yaml import."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

from llm_integration import get_llm_adapter
from llm_integration.models import AliasFallback, Budget, ModelAlias, Provider

SEED_VARS = [
    "LLM_BACKEND",
    "OPENAI_API_KEY",
    "OPENAI_MODEL",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_BASE_URL",
    "OLLAMA_URL",
    "OLLAMA_MODEL",
    "CUSTOM_LLM_URL",
    "CUSTOM_LLM_API_KEY",
    "CUSTOM_LLM_MODEL",
    "CUSTOM_LLM_HEADERS",
    "CUSTOM_LLM_TIMEOUT",
    "LLM_MAX_RETRIES",
    "LLM_RATE_LIMIT_RPM",
    "LLM_ENABLE_CACHING",
    "LLM_ENABLE_RETRY",
    "BUDGET_LIMIT",
    "OPENAI_MAX_TOKENS",
    "OPENAI_TEMPERATURE",
    "ANTHROPIC_MAX_TOKENS",
    "CUSTOM_LLM_MAX_TOKENS",
    "LLM_INPUT_PRICE_PER_MTOK",
    "LLM_OUTPUT_PRICE_PER_MTOK",
]


@pytest.fixture
def env(monkeypatch):
    for name in SEED_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def bootstrap(*args) -> str:
    out = StringIO()
    call_command("llm_bootstrap", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_custom_backend_rows_and_idempotence(env):
    env(
        LLM_BACKEND="custom",
        CUSTOM_LLM_URL="http://127.0.0.1:8001/v1",
        CUSTOM_LLM_MODEL="qwen",
        CUSTOM_LLM_API_KEY="secret-value",
        CUSTOM_LLM_HEADERS='{"X-Org": "acme"}',
        CUSTOM_LLM_TIMEOUT="12.5",
        LLM_MAX_RETRIES="4",
        LLM_RATE_LIMIT_RPM="60",
        LLM_ENABLE_CACHING="true",
        BUDGET_LIMIT="25.50",
    )
    out = bootstrap()
    assert "created provider custom" in out and "created alias default" in out
    assert "created budget global-monthly" in out
    provider = Provider.objects.get(name="custom")
    assert (provider.kind, provider.base_url, provider.api_key_env) == (
        "openai_compatible",
        "http://127.0.0.1:8001/v1",
        "CUSTOM_LLM_API_KEY",
    )
    assert provider.extra_headers == {"X-Org": "acme"}
    assert (provider.timeout_seconds, provider.max_retries, provider.rpm_limit) == (12.5, 4, 60)
    alias = ModelAlias.objects.get(slug="default")
    assert (alias.provider, alias.upstream_model, alias.cache_responses) == (provider, "qwen", True)
    budget = Budget.objects.get(name="global-monthly")
    assert (budget.scope, budget.period, budget.limit_usd, budget.hard) == (
        "global",
        "month",
        Decimal("25.50"),
        True,
    )
    assert "secret-value" not in json.dumps(list(Provider.objects.values()), default=str)

    again = bootstrap()
    assert "unchanged provider custom" in again and "unchanged alias default" in again
    assert Provider.objects.count() == 1 and ModelAlias.objects.count() == 1

    env(CUSTOM_LLM_MODEL="qwen-2")
    assert "updated alias default (upstream_model)" in bootstrap()


@pytest.mark.django_db
def test_without_llm_backend_no_provider_or_alias_changes(env):
    env(LLM_BACKEND="custom", CUSTOM_LLM_URL="http://127.0.0.1:8001/v1", CUSTOM_LLM_MODEL="qwen")
    bootstrap()
    env(LLM_BACKEND="", BUDGET_LIMIT="0.001", OPENAI_MODEL="gpt-4o")
    err = StringIO()
    out = StringIO()
    call_command("llm_bootstrap", stdout=out, stderr=err)
    assert "LLM_BACKEND is not set: providers and aliases left as they are" in out.getvalue()
    assert "created budget global-monthly" in out.getvalue()
    assert "OPENAI_MODEL" in err.getvalue()  # named, not silently dropped
    alias = ModelAlias.objects.get(slug="default")
    assert (alias.provider.name, alias.upstream_model) == ("custom", "qwen")
    assert list(Provider.objects.values_list("name", flat=True)) == ["custom"]
    assert Budget.objects.get(name="global-monthly").limit_usd == Decimal("0.001")


@pytest.mark.django_db
def test_without_llm_backend_a_first_default_is_the_dummy(env):
    out = bootstrap()
    assert "created provider dummy" in out and "created alias default" in out
    assert ModelAlias.objects.get(slug="default").provider.kind == "dummy"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"LLM_BACKEND": "nope"}, "LLM_BACKEND='nope'"),
        ({"LLM_BACKEND": "custom"}, "CUSTOM_LLM_URL"),
        (
            {
                "LLM_BACKEND": "custom",
                "CUSTOM_LLM_URL": "http://x",
                "CUSTOM_LLM_MODEL": "m",
                "CUSTOM_LLM_HEADERS": "[1]",
            },
            "CUSTOM_LLM_HEADERS",
        ),
        ({"LLM_BACKEND": "dummy", "BUDGET_LIMIT": "lots"}, "BUDGET_LIMIT"),
        ({"LLM_BACKEND": "dummy", "LLM_MAX_RETRIES": "many"}, "LLM_MAX_RETRIES"),
    ],
)
def test_bad_environment_is_a_command_error(env, values, message):
    env(**values)
    with pytest.raises(CommandError, match=message):
        bootstrap()
    assert not Provider.objects.exists()  # nothing half-written


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["custom", "openai", "anthropic", "ollama"])
async def test_bootstrapped_backend_answers_through_get_llm_adapter(
    env, backend, openai_fake, anthropic_fake, ollama_fake
):
    if backend == "custom":
        env(
            LLM_BACKEND="custom", CUSTOM_LLM_URL=openai_fake.base_url, CUSTOM_LLM_MODEL="fake-model"
        )
        fake = openai_fake
    elif backend == "openai":
        env(
            LLM_BACKEND="openai",
            OPENAI_BASE_URL=openai_fake.base_url,
            OPENAI_API_KEY="sk-1",
            OPENAI_MODEL="gpt-4o-mini",
        )
        fake = openai_fake
    elif backend == "anthropic":
        env(
            LLM_BACKEND="anthropic",
            ANTHROPIC_BASE_URL=anthropic_fake.base_url,
            ANTHROPIC_API_KEY="sk-ant-1",
            ANTHROPIC_MODEL="claude-fake",
        )
        fake = anthropic_fake
    else:
        env(LLM_BACKEND="ollama", OLLAMA_URL=ollama_fake.base_url, OLLAMA_MODEL="llama3.2")
        fake = ollama_fake
    await sync_to_async(bootstrap)()

    fake.push(text=f"Hello from {backend}", prompt_tokens=13, completion_tokens=4)
    answer = await get_llm_adapter().complete("Hi")
    assert answer.text == f"Hello from {backend}"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (13, 4)

    fake.push(text="streamed words here", prompt_tokens=15, completion_tokens=3)
    chunks = [c async for c in get_llm_adapter().complete_stream("Hi")]
    assert "".join(c.text for c in chunks) == "streamed words here"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (15, 3)


LITELLM_CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      rpm: 500
      tpm: 100000
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001
  - model_name: local-qwen
    litellm_params:
      model: hosted_vllm/Qwen/Qwen2.5-7B-Instruct
      api_base: http://127.0.0.1:8001/v1
      api_key: os.environ/VLLM_KEY
      timeout: 30
    model_info:
      max_input_tokens: 32768
      supports_function_calling: false
      supports_response_schema: false
  - model_name: embed
    litellm_params:
      model: ollama/nomic-embed-text
      api_base: http://127.0.0.1:11434
    model_info:
      mode: embedding
  - model_name: painter
    litellm_params:
      model: openai/dall-e-3
    model_info:
      mode: image_generation
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: os.environ/ANTHROPIC_API_KEY
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015
      cache_read_input_token_cost: 0.0000003
      cache_creation_input_token_cost: 0.00000375
  - model_name: llama
    litellm_params:
      model: ollama_chat/llama3.2
      api_base: http://127.0.0.1:11434
  - model_name: proxy
    litellm_params:
      model: openai/fake
      api_base: http://127.0.0.1:4000
      api_key: sk-inline-should-not-be-stored
router_settings:
  fallbacks: [{"gpt-4o": ["claude", "local-qwen"]}]
"""


@pytest.mark.django_db
def test_litellm_config_import(env, tmp_path):
    env(BUDGET_LIMIT="100")
    path = tmp_path / "config.yaml"
    path.write_text(LITELLM_CONFIG)
    err = StringIO()
    call_command("llm_bootstrap", "--config", str(path), stdout=StringIO(), stderr=err)
    assert "inline api_key was ignored" in err.getvalue()
    assert "skipped: mode 'image_generation' is not served" in err.getvalue()
    assert not ModelAlias.objects.filter(slug="painter").exists()

    gpt = ModelAlias.objects.select_related("provider").get(slug="gpt-4o")
    assert (gpt.provider.kind, gpt.provider.api_key_env, gpt.upstream_model) == (
        "openai",
        "OPENAI_API_KEY",
        "gpt-4o",
    )
    assert (gpt.input_price_per_mtok, gpt.output_price_per_mtok) == (Decimal("2.5"), Decimal("10"))
    assert (gpt.rpm_limit, gpt.tpm_limit) == (500, 100000)

    qwen = ModelAlias.objects.select_related("provider").get(slug="local-qwen")
    assert (qwen.provider.kind, qwen.provider.base_url, qwen.provider.api_key_env) == (
        "openai_compatible",
        "http://127.0.0.1:8001/v1",
        "VLLM_KEY",
    )
    assert (qwen.upstream_model, qwen.context_window, qwen.provider.timeout_seconds) == (
        "Qwen/Qwen2.5-7B-Instruct",
        32768,
        30.0,
    )

    assert (qwen.supports_tools, qwen.supports_response_format, qwen.mode) == (False, False, "chat")
    assert (gpt.supports_tools, gpt.supports_response_format) == (True, True)
    assert ModelAlias.objects.get(slug="embed").mode == "embedding"
    claude = ModelAlias.objects.select_related("provider").get(slug="claude")
    assert claude.provider.kind == "anthropic"
    assert (claude.cache_read_price_per_mtok, claude.cache_write_price_per_mtok) == (
        Decimal("0.3"),
        Decimal("3.75"),
    )
    assert gpt.cache_read_price_per_mtok is None  # blank: the kind's default
    assert ModelAlias.objects.get(slug="llama").provider.kind == "ollama"
    proxy = ModelAlias.objects.get(slug="proxy").provider
    assert proxy.kind == "openai_compatible" and proxy.api_key_env == ""
    assert "sk-inline" not in json.dumps(list(Provider.objects.values()), default=str)

    fallbacks = list(
        AliasFallback.objects.filter(alias=gpt).values_list("fallback__slug", flat=True)
    )
    assert fallbacks == ["claude", "local-qwen"]
    assert Budget.objects.get(name="global-monthly").limit_usd == Decimal("100")

    before = (Provider.objects.count(), ModelAlias.objects.count(), AliasFallback.objects.count())
    out = StringIO()
    call_command("llm_bootstrap", "--config", str(path), stdout=out, stderr=StringIO())
    assert "created" not in out.getvalue() and "updated" not in out.getvalue()
    assert before == (
        Provider.objects.count(),
        ModelAlias.objects.count(),
        AliasFallback.objects.count(),
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_list: 3", "no model_list"),
        ("model_list:\n  - model_name: x\n    litellm_params: {model: azure/gpt}", "'azure'"),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: openai/x}\n"
            "router_settings:\n  fallbacks: [{x: [nope]}]",
            "unknown model 'nope'",
        ),
        ("model_list: [", "not valid YAML"),
    ],
)
def test_bad_config_is_a_command_error(env, tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(CommandError, match=message):
        bootstrap("--config", str(path))
    assert not ModelAlias.objects.exists()


@pytest.mark.django_db
def test_the_seeds_variables_each_land_on_the_row_they_mean(env):
    env(
        LLM_BACKEND="openai",
        OPENAI_API_KEY="sk-1",
        OPENAI_MAX_TOKENS="512",
        OPENAI_TEMPERATURE="0.3",
        LLM_ENABLE_RETRY="false",
        LLM_MAX_RETRIES="4",
        LLM_INPUT_PRICE_PER_MTOK="0.15",
        LLM_OUTPUT_PRICE_PER_MTOK="0.60",
        BUDGET_LIMIT="5",
    )
    bootstrap()
    alias = ModelAlias.objects.select_related("provider").get(slug="default")
    assert (alias.default_max_tokens, alias.default_temperature) == (512, 0.3)
    assert (alias.input_price_per_mtok, alias.output_price_per_mtok) == (
        Decimal("0.15"),
        Decimal("0.60"),
    )
    assert alias.provider.max_retries == 0  # retries off, whatever LLM_MAX_RETRIES says
    env(LLM_BACKEND="anthropic", ANTHROPIC_MAX_TOKENS="2048", ANTHROPIC_API_KEY="k")
    bootstrap()
    assert ModelAlias.objects.get(slug="default").default_max_tokens == 2048


@pytest.mark.django_db
def test_a_money_budget_over_an_unpriced_alias_is_called_out(env):
    env(LLM_BACKEND="openai", OPENAI_API_KEY="sk-1", BUDGET_LIMIT="5")
    err = StringIO()
    call_command("llm_bootstrap", stdout=StringIO(), stderr=err)
    assert "has no price" in err.getvalue() and "LLM_INPUT_PRICE_PER_MTOK" in err.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1/chat/completions/"]
)
def test_custom_url_as_base_or_as_full_endpoint(env, url):
    env(LLM_BACKEND="custom", CUSTOM_LLM_URL=url, CUSTOM_LLM_MODEL="m", CUSTOM_LLM_MAX_TOKENS="99")
    bootstrap()
    assert Provider.objects.get(name="custom").base_url == "http://127.0.0.1:8080/v1"
    assert ModelAlias.objects.get(slug="default").default_max_tokens == 99


async def test_the_adapter_takes_the_full_chat_endpoint_too(openai_fake):
    from llm_integration.adapters.openai import OpenAICompatibleAdapter

    adapter = OpenAICompatibleAdapter(
        model="m", base_url=f"{openai_fake.base_url}/chat/completions", timeout=5
    )
    openai_fake.push(text="found")
    assert (await adapter.complete("Hi")).text == "found"
    assert openai_fake.requests[-1].path == "/v1/chat/completions"


SEED_004_CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      max_tokens: 800
      temperature: 0.2
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: os.environ/ANTHROPIC_API_KEY
  - model_name: gemini-pro
    litellm_params:
      model: google/gemini-1.5-pro
      api_key: os.environ/GOOGLE_API_KEY
      drop_params: true
    model_info:
      mode: chat
      supports_vision: true
litellm_settings:
  drop_params: true
  fallbacks: [{"gpt-4o": ["claude-sonnet"]}]
general_settings:
  master_key: sk-1234
  database_url: postgres://litellm@db/litellm
"""


@pytest.mark.django_db
def test_a_config_as_the_seeds_write_it_imports_and_reports_what_it_does_not_use(env, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(SEED_004_CONFIG)
    err = StringIO()
    call_command("llm_bootstrap", "--config", str(path), stdout=StringIO(), stderr=err)
    gemini = ModelAlias.objects.select_related("provider").get(slug="gemini-pro")
    assert (gemini.provider.kind, gemini.provider.base_url, gemini.provider.api_key_env) == (
        "openai_compatible",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "GOOGLE_API_KEY",
    )
    assert gemini.supports_vision and not ModelAlias.objects.get(slug="gpt-4o").supports_vision
    gpt = ModelAlias.objects.get(slug="gpt-4o")
    assert (gpt.default_max_tokens, gpt.default_temperature) == (800, 0.2)
    warnings = err.getvalue()
    assert "model_info: not used" not in warnings
    for unused in (
        "config: not used: general_settings.",
        "litellm_settings: not used: drop_params.",
        "model_list[2].litellm_params: not used: drop_params.",
    ):
        assert unused in warnings, warnings
    assert list(AliasFallback.objects.values_list("fallback__slug", flat=True)) == ["claude-sonnet"]


def test_missing_config_file_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        bootstrap("--config", str(tmp_path / "missing.yaml"))
