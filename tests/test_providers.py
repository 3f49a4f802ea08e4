"""Rows -> adapters: building, caching, rebuilding on change, and the seed's factory."""

from __future__ import annotations

import pytest

from llm_integration import exceptions as exc
from llm_integration import get_llm_adapter
from llm_integration.adapters.anthropic import AnthropicAdapter
from llm_integration.adapters.dummy import DummyAdapter
from llm_integration.adapters.openai import OpenAICompatibleAdapter
from llm_integration.models import Provider
from llm_integration.services.config.providers import adapter_for, build_adapter, get_alias
from tests.conftest import TEST_KEY
from tests.factories import ModelAliasFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def test_build_adapter_takes_everything_from_the_rows(api_key_env, monkeypatch):
    monkeypatch.setenv("TEAM_HEADER", "from-env")
    provider = ProviderFactory(
        kind=Provider.Kind.OPENAI_COMPATIBLE,
        base_url="http://127.0.0.1:9/v1/",
        api_key_env=api_key_env,
        extra_headers={"X-Team": "os.environ/TEAM_HEADER", "X-Plain": "yes"},
        timeout_seconds=7.5,
    )
    alias = ModelAliasFactory(provider=provider, upstream_model="qwen2.5", default_max_tokens=99)
    adapter = build_adapter(alias)
    assert isinstance(adapter, OpenAICompatibleAdapter)
    assert (adapter.model, adapter.base_url, adapter.timeout) == (
        "qwen2.5",
        "http://127.0.0.1:9/v1",
        7.5,
    )
    assert adapter.headers == {"X-Team": "from-env", "X-Plain": "yes"}
    assert adapter._api_key == TEST_KEY and adapter.default_max_tokens == 99
    assert adapter.provider_name == provider.name


def test_missing_key_is_a_clear_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    alias = ModelAliasFactory(provider=ProviderFactory(kind="anthropic", api_key_env="NOPE_KEY"))
    with pytest.raises(exc.MissingAPIKey, match="NOPE_KEY"):
        build_adapter(alias)


def test_unknown_kind_never_falls_back_to_the_dummy():
    alias = ModelAliasFactory(provider=ProviderFactory(kind="mystery"))
    with pytest.raises(exc.UnknownAdapterKind, match="'mystery'"):
        build_adapter(alias)


def test_provider_options_reach_the_adapter():
    alias = ModelAliasFactory(
        provider=ProviderFactory(kind="dummy", options={"delay": 0.25, "x": 1})
    )
    adapter = build_adapter(alias)
    assert isinstance(adapter, DummyAdapter) and adapter.delay == 0.25


def test_adapters_are_cached_and_rebuilt_when_a_row_changes(api_key_env):
    provider = ProviderFactory(kind="anthropic", api_key_env=api_key_env, base_url="http://a")
    alias = ModelAliasFactory(provider=provider, upstream_model="claude-1")
    first = adapter_for(get_alias(alias.slug))
    assert isinstance(first, AnthropicAdapter)
    assert adapter_for(get_alias(alias.slug)) is first
    alias.upstream_model = "claude-2"
    alias.save()
    second = adapter_for(get_alias(alias.slug))
    assert second is not first and second.model == "claude-2"
    provider.base_url = "http://b"
    provider.save()
    assert adapter_for(get_alias(alias.slug)).base_url == "http://b"


def test_get_alias_defaults_and_refusals(settings):
    ModelAliasFactory(slug="zeta", sort_order=5)
    first = ModelAliasFactory(slug="alpha", sort_order=1)
    assert get_alias(None) == first  # no "default" alias: the first by sort order
    default = ModelAliasFactory(slug="default", sort_order=9)
    assert get_alias(None) == default
    settings.LLM_INTEGRATION = {"DEFAULT_MODEL": "zeta"}
    assert get_alias(None).slug == "zeta"
    with pytest.raises(exc.ModelNotFound):
        get_alias("nope")
    ModelAliasFactory(slug="off", enabled=False)
    with pytest.raises(exc.ModelNotFound):
        get_alias("off")
    ModelAliasFactory(slug="dead", provider=ProviderFactory(enabled=False))
    with pytest.raises(exc.NoUpstreamAvailable):
        get_alias("dead")


def test_seed_factory_works_in_sync_code():
    ModelAliasFactory(slug="default", upstream_model="echo")
    adapter = get_llm_adapter()
    assert adapter.model_name == "echo"
    assert adapter.count_tokens("hello world") == 2


@pytest.mark.django_db(transaction=True)
async def test_seed_factory_works_in_async_code(openai_fake, api_key_env):
    from asgiref.sync import sync_to_async

    provider = await sync_to_async(ProviderFactory)(
        kind="openai", base_url=openai_fake.base_url, api_key_env=api_key_env
    )
    await sync_to_async(ModelAliasFactory)(
        slug="default", provider=provider, upstream_model="gpt-4o"
    )
    openai_fake.push(text="Hi back", prompt_tokens=5, completion_tokens=2)
    adapter = get_llm_adapter()  # created inside the event loop: no query yet
    answer = await adapter.complete("Hi")
    assert answer.text == "Hi back" and answer.usage.total_tokens == 7
    assert adapter.model_name == "gpt-4o"  # resolved in a worker thread, loop untouched
